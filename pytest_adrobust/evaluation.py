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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, final

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from pytest_adrobust.attacks import SurrogateHead, fgsm, random_sign, score_attack_loss
from pytest_adrobust.cache import ScoreCache, cache_key, pack_signs, unpack_signs
from pytest_adrobust.data import DatasetSplit, ImageRecord, load_images, records_fingerprint, sample_case
from pytest_adrobust.detectors import Detector
from pytest_adrobust.detectors.base import validate_detector
from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics import (
    PlattScaler,
    auroc,
    average_precision,
    binary_entropy,
    brier_score,
    entropy_auroc,
    expected_calibration_error,
    expected_calibration_error_floor,
    f1_at_threshold,
    f1_max,
    fit_f1_threshold,
    flag_rate,
    gmean_at_threshold,
    mann_whitney_p,
    minmax_scale,
    negative_log_likelihood,
)
from pytest_adrobust.metrics.bootstrap import bootstrap_replicates, metric_intervals, stratified_resamples
from pytest_adrobust.progress import ProgressReporter, SilentProgress
from pytest_adrobust.settings import Budget

logger = logging.getLogger("pytest_adrobust")

ECE_BINS: Final = 15
ECE_VARIANT: Final = "l1 ECE, positive-class reliability, 15 equal-width bins, right-closed (scikit-learn calibration_curve binning)"
# Scores of the same image from the differentiable torch path and the faiss path differ only by
# float32 rounding. A larger gap means the detector is not deterministic (dropout, train mode).
SCORE_AGREEMENT_ATOL: Final = 1e-4
NOISE_SEED_OFFSET: Final = 7919
RESCORE_COUNT: Final = 4
# Largest difference, in cosine-distance units, allowed between bf16 and fp32 image scores. Measured
# on ELPV cells with random-init ViT-S/14 at 224 px on the CPU: 1.6e-4 at most over 16 images.
BF16_SCORE_ATOL: Final = 5e-3


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
    selection: str = "random"
    """``random`` or ``anomalydino``: how the references are drawn."""
    masking: bool = False
    rotation: bool = False


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
    images: torch.Tensor | None = field(repr=False)
    """Test images in [0, 1]; ``None`` for a case restored from the cache until reloaded."""
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
    cache: str = "off"
    """``off``, ``stored`` (computed and saved) or ``hit`` (restored without model passes)."""
    dataset_layout: str = ""
    """Layout the dataset loader found, such as ``visa split_csv/1cls.csv``."""
    bf16_max_difference: float | None = None
    """Largest bf16-against-fp32 score difference on the self-check sample, when bf16 is on."""


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
    ece_raw_floor: float
    """Expected ``ece_raw`` of a perfectly calibrated model with the same probabilities."""
    ece_floor: float
    """Expected ``ece`` of a perfectly calibrated model with the same probabilities: the noise floor."""
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
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict, repr=False, compare=False)
    """Bootstrap percentile interval per metric; empty when the bootstrap is off."""

    def scalars(self) -> dict[str, float]:
        """Return the metrics as a name-to-float mapping, without the per-image arrays."""
        skip = {"eps", "attacked_scores", "attacked_probabilities", "intervals"}
        return {name: float(value) for name, value in vars(self).items() if name not in skip}


@final
@dataclass(frozen=True)
class BootstrapPlan:
    """The resamples shared by every budget of a case, and the interval coverage."""

    resamples: np.ndarray = field(repr=False)
    """``(n_resamples, n)`` test-image positions from :func:`stratified_resamples`."""
    confidence: float

    @classmethod
    def for_case(cls, prepared: PreparedCase, n_resamples: int, confidence: float) -> BootstrapPlan | None:
        """Return the plan of a case, seeded with the case's seed, or ``None`` for 0 resamples."""
        if n_resamples == 0:
            return None
        return cls(stratified_resamples(prepared.labels, n_resamples, prepared.key.seed), confidence)


@final
@dataclass
class CaseEvaluation:
    """All budgets of one case, with the self-check findings."""

    prepared: PreparedCase
    budgets: dict[Budget, BudgetMetrics]
    noise_control: dict[str, float] | None
    warnings: list[str]
    bootstrap: BootstrapPlan | None = None


def _draw(split: DatasetSplit, key: CaseKey) -> tuple[list[ImageRecord], list[ImageRecord]]:
    return sample_case(split, key.shots, key.max_images, key.seed, selection=key.selection)


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

    def score(batch: np.ndarray) -> None:
        with torch.no_grad():
            scores[batch] = detector.score(images[batch].to(detector.device)).detach().cpu().double().numpy()

    with progress.task(description, images.shape[0]) as advance:
        for batch in _batches(np.arange(images.shape[0]), batch_size):
            split_on_oom(batch, score)
            advance(len(batch))
    if not np.all(np.isfinite(scores)):
        raise AdrobustError(f"{description}: the detector returned non-finite scores; check its weights and inputs")
    return scores


def split_on_oom(batch: np.ndarray, run: Callable[[np.ndarray], None]) -> None:
    """Call ``run(batch)``, halving the batch and retrying each half when the device runs out of memory.

    Raises
    ------
    AdrobustError
        When even a single image does not fit.
    """
    try:
        run(batch)
        return
    except torch.OutOfMemoryError as error:
        if len(batch) == 1:
            raise AdrobustError(
                "out of memory on a single image: lower --adrobust-resolution or use a smaller backbone"
            ) from error
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = len(batch) // 2
    logger.info("out of memory at batch size %d; retrying with %d", len(batch), half)
    split_on_oom(batch[:half], run)
    split_on_oom(batch[half:], run)


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

    def run(batch: np.ndarray) -> None:
        x = images[batch].to(detector.device).requires_grad_(True)
        y = torch.as_tensor(labels[batch], device=detector.device)
        batch_scores, batch_embeddings = detector.score_and_embed(x)
        loss = score_attack_loss(batch_scores, y) if head is None else head.loss(batch_embeddings, y)
        if not loss.requires_grad:
            output = "scores" if head is None else "pooled features"
            raise AdrobustError(
                f"the detector's score_and_embed returned {output} without a gradient path to the images: "
                "remove detach(), .numpy() or torch.no_grad() from the scoring path, or the attack cannot run"
            )
        (gradient,) = torch.autograd.grad(loss, x)
        if not bool(torch.isfinite(gradient).all()):
            finite = torch.isfinite(gradient).flatten(1).all(dim=1).cpu()
            bad = [int(index) for index, ok in zip(batch, finite) if not ok]
            raise AdrobustError(
                f"the input gradient is NaN or infinite for test images at positions {bad[:5]}; "
                "check the detector for divisions by zero or log of zero in its scoring path"
            )

        scores[batch] = batch_scores.detach().cpu().double().numpy()
        for position, index in enumerate(batch):
            embeddings[index] = batch_embeddings[position].detach().cpu().double().numpy()
        gradient_sign[batch] = gradient.sign().to("cpu", torch.int8)
        flat = gradient.detach().flatten(1).abs().sum(dim=1).cpu()
        zero_gradient.extend(int(index) for index, total in zip(batch, flat) if total == 0)

    for batch in _batches(indices, batch_size):
        split_on_oom(batch, run)
        advance(len(batch))


def prepare_case(
    detector: Detector,
    split: DatasetSplit,
    key: CaseKey,
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
    draw: tuple[list[ImageRecord], list[ImageRecord]] | None = None,
    files_fingerprint: str | None = None,
) -> PreparedCase:
    """Run steps 1 to 3 of the protocol for one case and fit the per-fold calibration.

    ``draw`` passes references and test images already drawn with :func:`sample_case`, and
    ``files_fingerprint`` their :func:`records_fingerprint`, so that callers need not read the
    image files twice.

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
    references, test = draw if draw is not None else _draw(split, key)
    labels = np.array([record.label for record in test], dtype=np.int64)
    folds = stratified_folds(labels, key.seed)
    reference_images = load_images(references, detector.resolution, detector.patch_size)
    images = load_images(test, detector.resolution, detector.patch_size)
    if reference_images.shape[2:] != images.shape[2:]:
        raise AdrobustError(
            f"{split.name}: reference images load as {tuple(reference_images.shape[2:])} but test images as "
            f"{tuple(images.shape[2:])}; give every image of a dataset the same aspect ratio"
        )
    fingerprint = files_fingerprint or records_fingerprint([*references, *test])
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
            # first. Fold 1's features, from its own backward pass, then fit the head for fold 0.
            first = fold_indices[0]

            def embed(batch: np.ndarray) -> None:
                with torch.no_grad():
                    _, batch_embeddings = detector.score_and_embed(images[batch].to(detector.device))
                for position, index in enumerate(batch):
                    embeddings[index] = batch_embeddings[position].cpu().double().numpy()

            for batch in _batches(first, batch_size):
                split_on_oom(batch, embed)
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

    platt, thresholds, clean_probabilities = _cross_fit(labels, folds, clean_scores)
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
        dataset_layout=split.layout,
    )


def _cross_fit(
    labels: np.ndarray, folds: np.ndarray, clean_scores: np.ndarray
) -> tuple[list[PlattScaler], list[float], np.ndarray]:
    """Fit Platt scaling and the F1 threshold for each fold on the other fold's clean scores."""
    platt = []
    thresholds = []
    for fold in (0, 1):
        other = folds == 1 - fold
        platt.append(PlattScaler().fit(clean_scores[other], labels[other]))
        thresholds.append(fit_f1_threshold(labels[other], clean_scores[other]))
    return platt, thresholds, _apply_platt(platt, folds, clean_scores)


def _apply_platt(platt: Sequence[PlattScaler], folds: np.ndarray, scores: np.ndarray) -> np.ndarray:
    probabilities = np.empty(len(scores), dtype=np.float64)
    for fold in (0, 1):
        mask = folds == fold
        probabilities[mask] = platt[fold].predict_proba(scores[mask])
    return probabilities


def budget_metrics(
    prepared: PreparedCase,
    eps: Budget,
    attacked_scores: np.ndarray,
    bootstrap: BootstrapPlan | None = None,
) -> BudgetMetrics:
    """Compute every metric of one budget from the clean pass and the attacked scores.

    Parameters
    ----------
    prepared : PreparedCase
        The case's clean pass, with its per-fold calibration and thresholds.
    eps : Budget
        The budget the scores were attacked with; eps 0 passes the clean scores.
    attacked_scores : np.ndarray
        ``(N,)`` scores of the attacked test images, in the order of ``prepared.test``.
    bootstrap : BootstrapPlan, optional
        Resamples for the confidence intervals; without it ``intervals`` stays empty.

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

    intervals: dict[str, tuple[float, float]] = {}
    if bootstrap is not None:
        replicates = bootstrap_replicates(
            bootstrap.resamples,
            labels=labels,
            clean_scores=prepared.clean_scores,
            attacked_scores=attacked_scores,
            predicted_anomalous=shifted >= 0.0,
            raw_probabilities=raw,
            probabilities=calibrated,
            clean_entropy=clean_entropy,
            attacked_entropy=attacked_entropy,
            n_bins=ECE_BINS,
        )
        intervals = metric_intervals(replicates, bootstrap.confidence)

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
        ece_raw_floor=expected_calibration_error_floor(raw, n_bins=ECE_BINS),
        ece_floor=expected_calibration_error_floor(calibrated, n_bins=ECE_BINS),
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
        intervals=intervals,
    )


def ensure_inputs(detector: Detector, prepared: PreparedCase) -> None:
    """Reload the images of a case restored from the cache and refit the detector on its references.

    Needed before scoring a budget that was not computed with the rest of the case, because the
    detector may have been fitted on another case since.
    """
    if prepared.images is None:
        prepared.images = load_images(prepared.test, detector.resolution, detector.patch_size)
    detector.fit(load_images(prepared.references, detector.resolution, detector.patch_size))


def attacked_scores(
    detector: Detector,
    prepared: PreparedCase,
    eps: Budget,
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
) -> np.ndarray:
    """Score the FGSM images of one budget; eps 0 returns the clean scores without a pass.

    The detector must be fitted on the case's references and ``prepared.images`` loaded.
    """
    if eps.value == 0:
        return prepared.clean_scores.copy()
    assert prepared.images is not None, "call ensure_inputs() on a case restored from the cache"
    images = fgsm(prepared.images, prepared.gradient_sign, eps.value)
    description = f"{prepared.dataset_name} {prepared.key.shots}-shot: FGSM eps {eps}"
    prepared.passes["forward"] += len(images)
    return _score_batches(detector, images, batch_size, progress or SilentProgress(), description)


def noise_scores(
    detector: Detector,
    prepared: PreparedCase,
    eps: Budget,
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
) -> np.ndarray:
    """Score the test images under uniform random signs of budget ``eps``, the control for FGSM."""
    assert prepared.images is not None, "call ensure_inputs() on a case restored from the cache"
    generator = torch.Generator().manual_seed(prepared.key.seed + NOISE_SEED_OFFSET)
    noisy = fgsm(prepared.images, random_sign(prepared.images.shape, generator), eps.value)
    description = f"{prepared.dataset_name} {prepared.key.shots}-shot: noise control eps {eps}"
    prepared.passes["forward"] += len(noisy)
    return _score_batches(detector, noisy, batch_size, progress or SilentProgress(), description)


def noise_control(
    prepared: PreparedCase, results: dict[Budget, BudgetMetrics], eps: Budget, scores: np.ndarray
) -> dict[str, float]:
    """Compare FGSM's AUROC drop at ``eps`` with the drop under random signs of the same budget.

    A gradient attack that hurts no more than random noise of the same budget points to a masked
    or broken gradient, and then the measured robustness flatters the model.
    """
    noise_drop = prepared.clean_auroc - auroc(prepared.labels, scores)
    return {
        "eps": eps.value,
        "eps_text": str(eps),
        "fgsm_auroc_drop": results[eps].auroc_drop,
        "noise_auroc_drop": noise_drop,
    }


def rescore_sample(detector: Detector, prepared: PreparedCase) -> np.ndarray:
    """Score up to four clean test images without gradients, for the scoring self-check."""
    assert prepared.images is not None
    sample = np.arange(min(len(prepared.test), RESCORE_COUNT))
    rescored = np.empty(len(sample), dtype=np.float64)

    def score(batch: np.ndarray) -> None:
        with torch.no_grad():
            rescored[batch] = detector.score(prepared.images[batch].to(detector.device)).cpu().double().numpy()

    split_on_oom(sample, score)
    prepared.passes["forward"] += len(sample)
    return rescored


def precision_check(detector: Detector, prepared: PreparedCase, rescored: np.ndarray) -> list[str]:
    """Compare bf16 scores of the self-check sample with a full fp32 pass; return a warning if too far.

    The fp32 pass refits the memory bank, so this costs 2R + 4 forward passes, and the bf16 bank
    is restored afterwards. The largest difference is stored in ``prepared.bf16_max_difference``.
    """
    assert prepared.images is not None
    references = load_images(prepared.references, detector.resolution, detector.patch_size)
    sample = np.arange(len(rescored))
    detector.precision = "fp32"  # type: ignore[attr-defined]
    try:
        detector.fit(references)
        with torch.no_grad():
            exact = detector.score(prepared.images[sample].to(detector.device)).cpu().double().numpy()
    finally:
        detector.precision = "bf16"  # type: ignore[attr-defined]
        detector.fit(references)
    prepared.passes["reference_forward"] += 2 * len(references)
    prepared.passes["forward"] += len(sample)
    prepared.bf16_max_difference = float(np.max(np.abs(exact - rescored)))
    if prepared.bf16_max_difference > BF16_SCORE_ATOL:
        return [
            f"{prepared.dataset_name} {prepared.key.shots}-shot: bf16 scores differ from fp32 by up to "
            f"{prepared.bf16_max_difference:.2e}, more than {BF16_SCORE_ATOL:g}; use --adrobust-precision fp32"
        ]
    return []


def case_cache_key(
    detector: Detector,
    key: CaseKey,
    references: Sequence[ImageRecord],
    test: Sequence[ImageRecord],
    batch_size: int,
    files_fingerprint: str,
) -> str:
    """Return the cache key of a case: everything its scores and gradient signs depend on.

    ``files_fingerprint`` is :func:`records_fingerprint` of the references and test images.
    """
    return cache_key(
        {
            "detector": detector.fingerprint(),
            "resolution": detector.resolution,
            "patch_size": detector.patch_size,
            "device": str(detector.device),
            "attack": key.attack,
            "seed": key.seed,
            "selection": key.selection,
            "masking": key.masking,
            "rotation": key.rotation,
            "batch_size": batch_size,
            "references": [record.image_id for record in references],
            "test": [(record.image_id, record.label) for record in test],
            "files": files_fingerprint,
            "versions": _versions(),
        }
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("pytest-adrobust", "torch", "timm", "faiss-cpu"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def _entry_name(eps: Budget) -> str:
    return f"attacked_{eps.value!r}"


def evaluate_case(
    detector: Detector,
    split: DatasetSplit,
    key: CaseKey,
    budgets: Sequence[Budget],
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
    cache: ScoreCache | None = None,
    n_resamples: int = 0,
    confidence: float = 0.95,
) -> CaseEvaluation:
    """Run the whole protocol for one case and every budget in ``budgets``, with the self-checks.

    With a ``cache``, a case whose scores are all stored under the same key is rebuilt from them
    without any model pass. Metrics and self-checks are then recomputed from the stored scores.
    ``n_resamples`` bootstrap resamples (0 for none), seeded with the case's seed, give every
    metric a percentile interval of coverage ``confidence``.
    """
    validate_detector(detector)
    progress = progress or SilentProgress()
    budgets = sorted(set(budgets))
    nonzero = [eps for eps in budgets if eps.value > 0]
    largest = max(nonzero) if nonzero else None
    draw = _draw(split, key)

    # Reading every image file once serves the cache key, the restored case and the report.
    files = records_fingerprint([*draw[0], *draw[1]])
    entry_key = case_cache_key(detector, key, *draw, batch_size, files) if cache is not None else None
    entry = cache.load(entry_key) if cache is not None and entry_key is not None else None
    needed = [_entry_name(eps) for eps in nonzero] + (["noise_scores", f"noise_eps_{largest.value!r}"] if largest else [])
    if entry is not None and all(name in entry for name in needed):
        prepared = _restore_case(split, key, draw, entry, files)
        plan = BootstrapPlan.for_case(prepared, n_resamples, confidence)
        results = {
            eps: budget_metrics(prepared, eps, entry.get(_entry_name(eps), prepared.clean_scores), plan)
            for eps in budgets
        }
        noise = noise_control(prepared, results, largest, entry["noise_scores"]) if largest else None
        warnings = self_check(prepared, results, noise, entry["rescored"])
        return CaseEvaluation(prepared, results, noise, warnings, plan)

    prepared = prepare_case(detector, split, key, batch_size, progress, draw, files)
    plan = BootstrapPlan.for_case(prepared, n_resamples, confidence)
    results = {}
    started = time.perf_counter()
    for eps in budgets:
        scores = attacked_scores(detector, prepared, eps, batch_size, progress)
        results[eps] = budget_metrics(prepared, eps, scores, plan)
    prepared.seconds["attacks"] = time.perf_counter() - started

    noise = None
    noisy = None
    if largest is not None:
        started = time.perf_counter()
        noisy = noise_scores(detector, prepared, largest, batch_size, progress)
        noise = noise_control(prepared, results, largest, noisy)
        prepared.seconds["noise_control"] = time.perf_counter() - started
    rescored = rescore_sample(detector, prepared)
    warnings = self_check(prepared, results, noise, rescored)
    if getattr(detector, "precision", "fp32") == "bf16":
        warnings.extend(precision_check(detector, prepared, rescored))

    if cache is not None and entry_key is not None:
        arrays = {
            "clean_scores": prepared.clean_scores,
            "gradient_sign": pack_signs(prepared.gradient_sign.numpy()),
            "gradient_shape": np.array(prepared.gradient_sign.shape),
            "zero_gradient": np.array(prepared.zero_gradient, dtype=str),
            "rescored": rescored,
            **{_entry_name(eps): results[eps].attacked_scores for eps in nonzero},
        }
        if largest is not None and noisy is not None:
            arrays["noise_scores"] = noisy
            arrays[f"noise_eps_{largest.value!r}"] = np.array(largest.value)
        cache.save(entry_key, arrays)
        prepared.cache = "stored"
    return CaseEvaluation(prepared, results, noise, warnings, plan)


def _restore_case(
    split: DatasetSplit,
    key: CaseKey,
    draw: tuple[list[ImageRecord], list[ImageRecord]],
    entry: dict[str, np.ndarray],
    files_fingerprint: str,
) -> PreparedCase:
    """Rebuild a case's clean pass from a cache entry, leaving its images unloaded."""
    references, test = draw
    labels = np.array([record.label for record in test], dtype=np.int64)
    folds = stratified_folds(labels, key.seed)
    clean_scores = entry["clean_scores"]
    platt, thresholds, clean_probabilities = _cross_fit(labels, folds, clean_scores)
    shape = tuple(int(size) for size in entry["gradient_shape"])
    return PreparedCase(
        key=key,
        dataset_name=split.name,
        references=list(references),
        test=list(test),
        labels=labels,
        folds=folds,
        images=None,
        gradient_sign=torch.from_numpy(unpack_signs(entry["gradient_sign"], shape)),
        clean_scores=clean_scores,
        zero_gradient=[str(image_id) for image_id in entry["zero_gradient"]],
        platt=platt,
        fold_thresholds=thresholds,
        clean_probabilities=clean_probabilities,
        clean_auroc=auroc(labels, clean_scores),
        files_fingerprint=files_fingerprint,
        passes={"reference_forward": 0, "forward_backward": 0, "forward": 0},
        seconds={},
        cache="hit",
        dataset_layout=split.layout,
    )


def self_check(
    prepared: PreparedCase,
    results: dict[Budget, BudgetMetrics],
    noise: dict[str, float] | None,
    rescored: np.ndarray,
) -> list[str]:
    """Return a message for every self-check that fails; an empty list means all passed.

    The checks: the no-gradient scoring path reproduces the clean scores, so eps 0 reproduces the
    clean metrics. Every image has a nonzero input gradient. The AUROC drop does not shrink as the
    budget grows. FGSM hurts more than random signs of the same budget. With masking on, no clean
    image scores exactly 0.
    """
    name = f"{prepared.dataset_name} {prepared.key.shots}-shot"
    messages: list[str] = []

    gap = float(np.max(np.abs(rescored - prepared.clean_scores[: len(rescored)])))
    if gap > SCORE_AGREEMENT_ATOL:
        messages.append(
            f"{name}: scoring without gradients differs from the gradient pass by {gap:.2e} on clean images, so eps 0 "
            "does not reproduce the clean metrics; make the detector deterministic (eval mode, no dropout)"
        )

    empty = int(np.sum(prepared.clean_scores == 0.0))
    if prepared.key.masking and empty:
        messages.append(
            f"{name}: {empty} of {len(prepared.clean_scores)} clean images score exactly 0, which is what zero-shot "
            "masking gives when it keeps no patch; the mask threshold suits pretrained DINOv2 tokens, so pass "
            "--adrobust-masking=off for other backbones or weights"
        )

    if prepared.zero_gradient:
        examples = ", ".join(prepared.zero_gradient[:5]) + (", ..." if len(prepared.zero_gradient) > 5 else "")
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

    if noise is not None and noise["fgsm_auroc_drop"] == 0 and noise["noise_auroc_drop"] == 0:
        messages.append(
            f"{name}: neither FGSM nor random signs at eps {noise['eps_text']} change AUROC "
            f"(clean AUROC {prepared.clean_auroc:.3f}); the budget may be too small to measure robustness on this data"
        )
    elif noise is not None and noise["fgsm_auroc_drop"] <= noise["noise_auroc_drop"]:
        messages.append(
            f"{name}: FGSM at eps {noise['eps_text']} lowers AUROC by {noise['fgsm_auroc_drop']:.4f}, no more than "
            f"random signs of the same budget ({noise['noise_auroc_drop']:.4f}); the gradient may be masked"
        )
    return messages
