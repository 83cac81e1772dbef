"""The robustness protocol: draw, cross-fit, one clean pass, FGSM per budget, metrics, self-checks.

For one dataset, shot count and seed:

1. ``shots`` normal references are drawn from the training pool, and at most ``max_images`` test
   images per class from the test pool, all with the seed.
2. The test set is split into two stratified folds. Whatever is fitted on labels (Platt scaling,
   the decision threshold, the surrogate head) is fitted on one fold and applied to the other.
3. One forward and backward pass per test image gives its clean score, pooled feature and attack
   gradient. Every budget reuses the gradient's sign, so budgets cost one forward pass each.
4. Attacked images ``clamp(x + eps * sign(grad), 0, 1)`` are scored without gradients.

Pass counts for N test images, E nonzero budgets and R references:

- ``score`` attack: R forwards, N forward+backward passes, N x E forwards, and N forwards for the
  random-sign noise control at the largest budget.
- ``surrogate`` attack: the same plus N/2 forwards, because the head that attacks the second fold
  is fitted on the first fold's features before that fold's own backward pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, final

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from pytest_adrobust.attacks import SurrogateHead, fgsm, random_sign, score_attack_loss
from pytest_adrobust.data import DatasetSplit, ImageRecord, load_images, records_fingerprint, sample_case
from pytest_adrobust.detectors import Detector
from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics import (
    PlattScaler,
    auroc,
    average_precision,
    binary_entropy,
    brier_score,
    entropy_auroc,
    expected_calibration_error,
    f1_at_threshold,
    f1_max,
    fit_f1_threshold,
    flag_rate,
    gmean_at_threshold,
    mann_whitney_p,
    minmax_scale,
    negative_log_likelihood,
)
from pytest_adrobust.progress import ProgressReporter, SilentProgress
from pytest_adrobust.settings import Budget

logger = logging.getLogger("pytest_adrobust")

ECE_BINS: Final = 15
ECE_VARIANT: Final = "l1 ECE, positive-class reliability, 15 equal-width bins, right-closed (scikit-learn calibration_curve binning)"
# Scores of the same image from the differentiable torch path and the faiss path differ only by
# float32 rounding. A larger gap means the detector is not deterministic (dropout, train mode).
SCORE_AGREEMENT_ATOL: Final = 1e-4
NOISE_SEED_OFFSET: Final = 7919


@final
@dataclass(frozen=True)
class CaseKey:
    """Identity of the expensive work shared by every budget of one dataset and shot count."""

    dataset: str
    shots: int
    seed: int
    max_images: int | None
    attack: str
    detector: str


@final
@dataclass
class PreparedCase:
    """The clean pass of one case: draws, folds, clean scores, gradient signs and calibration."""

    key: CaseKey
    dataset_name: str
    references: list[ImageRecord]
    test: list[ImageRecord]
    labels: np.ndarray
    folds: np.ndarray
    images: torch.Tensor = field(repr=False)
    gradient_sign: torch.Tensor = field(repr=False)
    clean_scores: np.ndarray
    zero_gradient: list[str]
    platt: list[PlattScaler]
    fold_thresholds: list[float]
    clean_probabilities: np.ndarray
    clean_auroc: float
    files_fingerprint: str
    passes: dict[str, int]
    seconds: dict[str, float]


@final
@dataclass(frozen=True)
class BudgetMetrics:
    """Every metric of one budget; clean metrics at eps 0.

    AUROC, AP and F1 are on the attacked scores. ``f1`` and ``gmean`` use the decision threshold
    fitted on the other fold's clean scores. ``*_raw`` metrics use scores min-max mapped to [0, 1]
    with the clean scores, the others use Platt-calibrated probabilities. Entropies are in bits.
    """

    eps: Budget
    auroc: float
    auroc_drop: float
    ap: float
    f1_max: float
    f1: float
    gmean: float
    ece_raw: float
    ece: float
    nll_raw: float
    nll: float
    brier_raw: float
    brier: float
    entropy_clean: float
    entropy_attacked: float
    entropy_gap: float
    entropy_auroc: float
    mannwhitney_p: float
    flag_rate: float
    attacked_scores: np.ndarray = field(repr=False, compare=False)
    attacked_probabilities: np.ndarray = field(repr=False, compare=False)

    def scalars(self) -> dict[str, float]:
        """Return the metrics as a name-to-float mapping, without the per-image arrays."""
        skip = {"eps", "attacked_scores", "attacked_probabilities"}
        return {name: float(value) for name, value in vars(self).items() if name not in skip}


@final
@dataclass
class CaseEvaluation:
    """All budgets of one case, with the self-check findings."""

    prepared: PreparedCase
    budgets: dict[Budget, BudgetMetrics]
    noise_control: dict[str, float] | None
    warnings: list[str]


def stratified_folds(labels: np.ndarray, seed: int) -> np.ndarray:
    """Assign each image to fold 0 or 1, stratified by label and shuffled with ``seed``."""
    folds = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        folds[held_out] = fold
    return folds


def _batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]


def _score_batches(
    detector: Detector,
    images: torch.Tensor,
    batch_size: int,
    progress: ProgressReporter,
    description: str,
) -> np.ndarray:
    """Score images without gradients, batch by batch."""
    scores = np.empty(images.shape[0], dtype=np.float64)
    with progress.task(description, images.shape[0]) as advance:
        for batch in _batches(np.arange(images.shape[0]), batch_size):
            with torch.no_grad():
                scores[batch] = detector.score(images[batch].to(detector.device)).detach().cpu().double().numpy()
            advance(len(batch))
    if not np.all(np.isfinite(scores)):
        raise AdrobustError(f"{description}: the detector returned non-finite scores; check its weights and inputs")
    return scores


def _gradient_pass(
    detector: Detector,
    images: torch.Tensor,
    labels: np.ndarray,
    indices: np.ndarray,
    head: SurrogateHead | None,
    batch_size: int,
    advance: Callable[[int], None],
    scores: np.ndarray,
    embeddings: list[np.ndarray | None],
    gradient_sign: torch.Tensor,
    zero_gradient: list[int],
) -> None:
    """Run one forward and backward pass per image in ``indices``, filling the output arrays."""
    for batch in _batches(indices, batch_size):
        x = images[batch].to(detector.device).requires_grad_(True)
        y = torch.as_tensor(labels[batch], device=detector.device)
        batch_scores, batch_embeddings = detector.score_and_embed(x)
        loss = score_attack_loss(batch_scores, y) if head is None else head.loss(batch_embeddings, y)
        (gradient,) = torch.autograd.grad(loss, x)

        scores[batch] = batch_scores.detach().cpu().double().numpy()
        for position, index in enumerate(batch):
            embeddings[index] = batch_embeddings[position].detach().cpu().double().numpy()
        gradient_sign[batch] = gradient.sign().to("cpu", torch.int8)
        flat = gradient.detach().flatten(1).abs().sum(dim=1).cpu()
        zero_gradient.extend(int(index) for index, total in zip(batch, flat) if total == 0)
        advance(len(batch))


def prepare_case(
    detector: Detector,
    split: DatasetSplit,
    key: CaseKey,
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
) -> PreparedCase:
    """Run steps 1 to 3 of the protocol for one case and fit the per-fold calibration.

    Raises
    ------
    AdrobustError
        When the draw is impossible (too many shots, one class) or the detector returns
        non-finite scores.
    """
    progress = progress or SilentProgress()
    seconds: dict[str, float] = {}
    passes = {"reference_forward": 0, "forward_backward": 0, "forward": 0}

    started = time.perf_counter()
    references, test = sample_case(split, key.shots, key.max_images, key.seed)
    labels = np.array([record.label for record in test], dtype=np.int64)
    folds = stratified_folds(labels, key.seed)
    reference_images = load_images(references, detector.resolution, detector.patch_size)
    images = load_images(test, detector.resolution, detector.patch_size)
    if reference_images.shape[2:] != images.shape[2:]:
        raise AdrobustError(
            f"{split.name}: reference images load as {tuple(reference_images.shape[2:])} but test images as "
            f"{tuple(images.shape[2:])}; give every image of a dataset the same aspect ratio"
        )
    fingerprint = records_fingerprint([*references, *test])
    seconds["load"] = time.perf_counter() - started

    started = time.perf_counter()
    with progress.task(f"{split.name} {key.shots}-shot: references", len(references)) as advance:
        detector.fit(reference_images)
        advance(len(references))
    passes["reference_forward"] = len(references)
    seconds["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    count = len(test)
    clean_scores = np.empty(count, dtype=np.float64)
    embeddings: list[np.ndarray | None] = [None] * count
    gradient_sign = torch.empty(images.shape, dtype=torch.int8)
    zero_gradient: list[int] = []
    fold_indices = [np.flatnonzero(folds == fold) for fold in (0, 1)]

    with progress.task(f"{split.name} {key.shots}-shot: clean pass and gradients", count) as advance:
        if key.attack == "score":
            _gradient_pass(detector, images, labels, np.arange(count), None, batch_size, advance,
                           clean_scores, embeddings, gradient_sign, zero_gradient)
            passes["forward_backward"] = count
        else:
            # The head that attacks fold 1 is fitted on fold 0, whose features need a forward pass
            # first; fold 1's features, from its own backward pass, then fit the head for fold 0.
            first = fold_indices[0]
            with torch.no_grad():
                for batch in _batches(first, batch_size):
                    _, batch_embeddings = detector.score_and_embed(images[batch].to(detector.device))
                    for position, index in enumerate(batch):
                        embeddings[index] = batch_embeddings[position].cpu().double().numpy()
            passes["forward"] += len(first)
            for target, source in ((1, 0), (0, 1)):
                source_features = np.stack([embeddings[i] for i in fold_indices[source]])  # type: ignore[misc]
                head = SurrogateHead(source_features, labels[fold_indices[source]], seed=key.seed)
                _gradient_pass(detector, images, labels, fold_indices[target], head, batch_size, advance,
                               clean_scores, embeddings, gradient_sign, zero_gradient)
            passes["forward_backward"] = count
    seconds["clean_pass"] = time.perf_counter() - started

    if not np.all(np.isfinite(clean_scores)):
        bad = [test[i].image_id for i in np.flatnonzero(~np.isfinite(clean_scores))[:5]]
        raise AdrobustError(f"{split.name}: the detector returned non-finite scores for {bad}; check its weights")

    # Calibration and decision threshold for each fold come from the other fold's clean scores.
    platt = [PlattScaler().fit(clean_scores[fold_indices[1 - fold]], labels[fold_indices[1 - fold]]) for fold in (0, 1)]
    thresholds = [fit_f1_threshold(labels[fold_indices[1 - fold]], clean_scores[fold_indices[1 - fold]]) for fold in (0, 1)]
    clean_probabilities = _apply_platt(platt, folds, clean_scores)

    return PreparedCase(
        key=key,
        dataset_name=split.name,
        references=list(references),
        test=list(test),
        labels=labels,
        folds=folds,
        images=images,
        gradient_sign=gradient_sign,
        clean_scores=clean_scores,
        zero_gradient=[test[i].image_id for i in zero_gradient],
        platt=platt,
        fold_thresholds=thresholds,
        clean_probabilities=clean_probabilities,
        clean_auroc=auroc(labels, clean_scores),
        files_fingerprint=fingerprint,
        passes=passes,
        seconds=seconds,
    )


def _apply_platt(platt: Sequence[PlattScaler], folds: np.ndarray, scores: np.ndarray) -> np.ndarray:
    probabilities = np.empty(len(scores), dtype=np.float64)
    for fold in (0, 1):
        mask = folds == fold
        probabilities[mask] = platt[fold].predict_proba(scores[mask])
    return probabilities


def budget_metrics(prepared: PreparedCase, eps: Budget, attacked_scores: np.ndarray) -> BudgetMetrics:
    """Compute every metric of one budget from the clean pass and the attacked scores.

    Parameters
    ----------
    prepared : PreparedCase
        The case's clean pass, with its per-fold calibration and thresholds.
    eps : Budget
        The budget the scores were attacked with; eps 0 passes the clean scores.
    attacked_scores : np.ndarray
        ``(N,)`` scores of the attacked test images, in the order of ``prepared.test``.

    Returns
    -------
    BudgetMetrics
    """
    labels, folds = prepared.labels, prepared.folds
    attacked_auroc = auroc(labels, attacked_scores)

    # Shifting each image's score by its fold's threshold lets one threshold of 0 serve both folds.
    threshold_per_image = np.array([prepared.fold_thresholds[fold] for fold in folds])
    shifted = attacked_scores - threshold_per_image
    f1 = f1_at_threshold(labels, shifted, 0.0)
    gmean = gmean_at_threshold(labels, shifted, 0.0)

    raw = minmax_scale(attacked_scores, prepared.clean_scores)
    calibrated = _apply_platt(prepared.platt, folds, attacked_scores)

    clean_entropy = binary_entropy(prepared.clean_probabilities)
    attacked_entropy = binary_entropy(calibrated)
    rate, _ = flag_rate(clean_entropy, attacked_entropy, 0.95)

    return BudgetMetrics(
        eps=eps,
        auroc=attacked_auroc,
        auroc_drop=prepared.clean_auroc - attacked_auroc,
        ap=average_precision(labels, attacked_scores),
        f1_max=f1_max(labels, attacked_scores)[0],
        f1=f1,
        gmean=gmean,
        ece_raw=expected_calibration_error(labels, raw, n_bins=ECE_BINS),
        ece=expected_calibration_error(labels, calibrated, n_bins=ECE_BINS),
        nll_raw=negative_log_likelihood(labels, raw),
        nll=negative_log_likelihood(labels, calibrated),
        brier_raw=brier_score(labels, raw),
        brier=brier_score(labels, calibrated),
        entropy_clean=float(clean_entropy.mean()),
        entropy_attacked=float(attacked_entropy.mean()),
        entropy_gap=float(attacked_entropy.mean() - clean_entropy.mean()),
        entropy_auroc=entropy_auroc(clean_entropy, attacked_entropy),
        mannwhitney_p=mann_whitney_p(clean_entropy, attacked_entropy),
        flag_rate=rate,
        attacked_scores=attacked_scores,
        attacked_probabilities=calibrated,
    )


def attacked_scores(
    detector: Detector,
    prepared: PreparedCase,
    eps: Budget,
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
) -> np.ndarray:
    """Score the FGSM images of one budget; eps 0 returns the clean scores without a pass."""
    if eps.value == 0:
        return prepared.clean_scores.copy()
    images = fgsm(prepared.images, prepared.gradient_sign, eps.value)
    description = f"{prepared.dataset_name} {prepared.key.shots}-shot: FGSM eps {eps}"
    prepared.passes["forward"] += len(images)
    return _score_batches(detector, images, batch_size, progress or SilentProgress(), description)


def evaluate_case(
    detector: Detector,
    split: DatasetSplit,
    key: CaseKey,
    budgets: Sequence[Budget],
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
) -> CaseEvaluation:
    """Run the whole protocol for one case and every budget in ``budgets``, with the self-checks."""
    progress = progress or SilentProgress()
    prepared = prepare_case(detector, split, key, batch_size, progress)
    results: dict[Budget, BudgetMetrics] = {}
    started = time.perf_counter()
    for eps in sorted(set(budgets)):
        results[eps] = budget_metrics(prepared, eps, attacked_scores(detector, prepared, eps, batch_size, progress))
    prepared.seconds["attacks"] = time.perf_counter() - started

    started = time.perf_counter()
    noise = noise_control(detector, prepared, results, batch_size, progress)
    prepared.seconds["noise_control"] = time.perf_counter() - started
    warnings = self_check(detector, prepared, results, noise)
    return CaseEvaluation(prepared, results, noise, warnings)


def noise_control(
    detector: Detector,
    prepared: PreparedCase,
    results: dict[Budget, BudgetMetrics],
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
) -> dict[str, float] | None:
    """Measure the AUROC drop of uniform random signs at the largest budget, beside FGSM's drop.

    A gradient attack that hurts no more than random noise of the same budget points to a masked
    or broken gradient, and then the measured robustness flatters the model.
    """
    nonzero = [eps for eps in results if eps.value > 0]
    if not nonzero:
        return None
    largest = max(nonzero)
    generator = torch.Generator().manual_seed(prepared.key.seed + NOISE_SEED_OFFSET)
    noisy = fgsm(prepared.images, random_sign(prepared.images.shape, generator), largest.value)
    description = f"{prepared.dataset_name} {prepared.key.shots}-shot: noise control eps {largest}"
    scores = _score_batches(detector, noisy, batch_size, progress or SilentProgress(), description)
    prepared.passes["forward"] += len(noisy)
    noise_drop = prepared.clean_auroc - auroc(prepared.labels, scores)
    return {"eps": largest.value, "fgsm_auroc_drop": results[largest].auroc_drop, "noise_auroc_drop": noise_drop}


def self_check(
    detector: Detector,
    prepared: PreparedCase,
    results: dict[Budget, BudgetMetrics],
    noise: dict[str, float] | None,
) -> list[str]:
    """Return a message for every self-check that fails; an empty list means all passed.

    The checks: the no-gradient scoring path reproduces the clean scores (so eps 0 reproduces the
    clean metrics), every image has a nonzero input gradient, the AUROC drop does not shrink as
    the budget grows, and FGSM hurts more than random signs of the same budget.
    """
    name = f"{prepared.dataset_name} {prepared.key.shots}-shot"
    messages: list[str] = []

    sample = np.arange(min(len(prepared.test), 4))
    with torch.no_grad():
        rescored = detector.score(prepared.images[sample].to(detector.device)).cpu().double().numpy()
    prepared.passes["forward"] += len(sample)
    gap = float(np.max(np.abs(rescored - prepared.clean_scores[sample])))
    if gap > SCORE_AGREEMENT_ATOL:
        messages.append(
            f"{name}: scoring without gradients differs from the gradient pass by {gap:.2e} on clean images, so eps 0 "
            "does not reproduce the clean metrics; make the detector deterministic (eval mode, no dropout)"
        )

    if prepared.zero_gradient:
        examples = ", ".join(prepared.zero_gradient[:5])
        messages.append(
            f"{name}: the input gradient is zero for {len(prepared.zero_gradient)} images ({examples}); FGSM cannot move "
            "them, so their robustness is not measured"
        )

    ordered = sorted(results)
    for smaller, larger in zip(ordered, ordered[1:]):
        if results[larger].auroc_drop < results[smaller].auroc_drop - 1e-12:
            messages.append(
                f"{name}: AUROC drop shrinks from {results[smaller].auroc_drop:.4f} at eps {smaller} to "
                f"{results[larger].auroc_drop:.4f} at eps {larger}; a one-step attack overshooting is a likely cause"
            )

    if noise is not None and noise["fgsm_auroc_drop"] <= noise["noise_auroc_drop"]:
        messages.append(
            f"{name}: FGSM at eps {noise['eps']:.4g} lowers AUROC by {noise['fgsm_auroc_drop']:.4f}, no more than "
            f"random signs of the same budget ({noise['noise_auroc_drop']:.4f}); the gradient may be masked"
        )
    return messages
