"""The protocol: folds, cross-fitting, pass counts, budget metrics, self-checks, checks and the report file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from pytest_adrobust.case import CaseResult, ThresholdError
from pytest_adrobust.data import load_dataset
from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.evaluation import CaseKey, budget_metrics, evaluate_case, self_check, split_on_oom, stratified_folds
from pytest_adrobust.metrics import PlattScaler, binary_entropy
from pytest_adrobust.report import write_json_atomic
from pytest_adrobust.settings import Thresholds, parse_eps
from tests.helpers import tiny_detector
from tests.synthetic import write_parts_dataset

BUDGETS = [parse_eps("0"), parse_eps("4/255"), parse_eps("8/255")]


@pytest.fixture(scope="module")
def parts_split(tmp_path_factory: pytest.TempPathFactory):
    root = write_parts_dataset(tmp_path_factory.mktemp("data") / "parts")
    return load_dataset(f"folder:{root}")


@pytest.fixture(scope="module")
def evaluation(parts_split):
    detector = tiny_detector()
    key = CaseKey(parts_split.spec, 2, 0, 6, "score", detector.fingerprint())
    return evaluate_case(detector, parts_split, key, BUDGETS, batch_size=4)


def test_folds_stratified_and_seeded() -> None:
    labels = np.array([0] * 10 + [1] * 6)
    folds = stratified_folds(labels, seed=3)
    for label in (0, 1):
        assert np.sum((labels == label) & (folds == 0)) == np.sum((labels == label) & (folds == 1))
    assert np.array_equal(folds, stratified_folds(labels, seed=3))
    assert not np.array_equal(folds, stratified_folds(labels, seed=4))


def test_pass_counts_match_floor(evaluation) -> None:
    prepared = evaluation.prepared
    count = len(prepared.test)
    nonzero = sum(1 for eps in BUDGETS if eps.value > 0)
    assert prepared.passes["reference_forward"] == 2
    assert prepared.passes["forward_backward"] == count
    # Each nonzero budget, the noise control and the 4-image scoring self-check.
    assert prepared.passes["forward"] == count * nonzero + count + 4


def test_eps_zero_reproduces_clean_metrics(evaluation) -> None:
    prepared = evaluation.prepared
    clean = evaluation.budgets[BUDGETS[0]]
    assert clean.auroc == roc_auc_score(prepared.labels, prepared.clean_scores)
    assert clean.auroc_drop == 0.0
    assert clean.entropy_gap == 0.0
    assert np.array_equal(clean.attacked_scores, prepared.clean_scores)


def test_platt_fitted_on_other_fold(evaluation) -> None:
    prepared = evaluation.prepared
    for fold in (0, 1):
        other = prepared.folds == 1 - fold
        independent = PlattScaler().fit(prepared.clean_scores[other], prepared.labels[other])
        assert prepared.platt[fold].slope == pytest.approx(independent.slope, rel=1e-9)
        assert prepared.platt[fold].intercept == pytest.approx(independent.intercept, rel=1e-9, abs=1e-12)
        mine = prepared.folds == fold
        assert np.allclose(prepared.clean_probabilities[mine], independent.predict_proba(prepared.clean_scores[mine]))


def test_f1_uses_other_fold_threshold(evaluation) -> None:
    prepared = evaluation.prepared
    for eps in BUDGETS:
        metrics = evaluation.budgets[eps]
        thresholds = np.array([prepared.fold_thresholds[fold] for fold in prepared.folds])
        predictions = (metrics.attacked_scores >= thresholds).astype(int)
        assert metrics.f1 == pytest.approx(f1_score(prepared.labels, predictions, zero_division=0.0))


def test_entropy_gap_matches_probabilities(evaluation) -> None:
    prepared = evaluation.prepared
    metrics = evaluation.budgets[BUDGETS[-1]]
    gap = binary_entropy(metrics.attacked_probabilities).mean() - binary_entropy(prepared.clean_probabilities).mean()
    assert metrics.entropy_gap == pytest.approx(gap, abs=1e-12)


def test_attack_lowers_auroc(evaluation) -> None:
    # The tiny model separates the generated defects; a gradient attack at 8/255 must cost AUROC.
    assert evaluation.prepared.clean_auroc > 0.7
    assert evaluation.budgets[BUDGETS[-1]].auroc_drop > 0.0
    assert evaluation.noise_control is not None
    assert evaluation.noise_control["fgsm_auroc_drop"] > evaluation.noise_control["noise_auroc_drop"]


def test_budget_metrics_recomputed_from_scores(evaluation) -> None:
    prepared = evaluation.prepared
    eps = BUDGETS[1]
    again = budget_metrics(prepared, eps, evaluation.budgets[eps].attacked_scores)
    assert again.scalars() == evaluation.budgets[eps].scalars()


class NoisyScores(torch.nn.Module):
    """A detector whose no-gradient score differs from its gradient pass, as dropout would cause."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_detector()
        self.resolution, self.patch_size, self.device = self.inner.resolution, self.inner.patch_size, self.inner.device
        self.eval()

    def fit(self, references: torch.Tensor) -> None:
        self.inner.fit(references)

    def score_and_embed(self, images: torch.Tensor):
        return self.inner.score_and_embed(images)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.score(images) + 0.01

    def fingerprint(self) -> str:
        return "noisy"

    def describe(self) -> dict[str, str]:
        return {"backbone": "noisy", "weights": "test"}


class FlatScores(NoisyScores):
    """A detector whose score does not depend on the input, so every gradient is zero."""

    def score_and_embed(self, images: torch.Tensor):
        scores, embeddings = self.inner.score_and_embed(images)
        return scores.detach() + 0.0 * images.sum(dim=(1, 2, 3)), embeddings

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.score(images)


def test_self_check_flags_score_mismatch(parts_split) -> None:
    detector = NoisyScores()
    key = CaseKey(parts_split.spec, 2, 0, 4, "score", detector.fingerprint())
    result = evaluate_case(detector, parts_split, key, BUDGETS[:2], batch_size=4)
    assert any("differs from the gradient pass" in message for message in result.warnings)


def test_self_check_flags_zero_gradient(parts_split) -> None:
    detector = FlatScores()
    key = CaseKey(parts_split.spec, 2, 0, 4, "score", detector.fingerprint())
    result = evaluate_case(detector, parts_split, key, BUDGETS[:2], batch_size=4)
    assert any("input gradient is zero for 8 images" in message for message in result.warnings)


def test_self_check_flags_shrinking_drop_and_weak_attack(evaluation) -> None:
    budgets = dict(evaluation.budgets)
    small, large = BUDGETS[1], BUDGETS[2]
    budgets[large] = replace(budgets[large], auroc_drop=budgets[small].auroc_drop - 0.1)
    noise = {"eps": large.value, "eps_text": str(large), "fgsm_auroc_drop": 0.01, "noise_auroc_drop": 0.02}
    rescored = evaluation.prepared.clean_scores[:4]
    messages = self_check(evaluation.prepared, budgets, noise, rescored)
    assert any("AUROC drop shrinks" in message and "eps 8/255" in message for message in messages)
    assert any("no more than random signs" in message for message in messages)


def test_self_check_notes_saturated_budget(evaluation) -> None:
    eps = BUDGETS[-1]
    noise = {"eps": eps.value, "eps_text": str(eps), "fgsm_auroc_drop": 0.0, "noise_auroc_drop": 0.0}
    messages = self_check(evaluation.prepared, evaluation.budgets, noise, evaluation.prepared.clean_scores[:4])
    assert any("neither FGSM nor random signs at eps 8/255 change AUROC" in message for message in messages)
    assert not any("gradient may be masked" in message for message in messages)


def test_surrogate_attack_costs_half_fold_extra(parts_split) -> None:
    detector = tiny_detector()
    key = CaseKey(parts_split.spec, 2, 0, 6, "surrogate", detector.fingerprint())
    result = evaluate_case(detector, parts_split, key, BUDGETS[:2], batch_size=4)
    count = len(result.prepared.test)
    assert result.prepared.passes["forward_backward"] == count
    assert result.prepared.passes["forward"] == count // 2 + count + count + 4


def _case(evaluation, eps_index: int, thresholds: Thresholds) -> CaseResult:
    eps = BUDGETS[eps_index]
    return CaseResult(
        dataset="folder-parts",
        shots=2,
        eps=eps,
        attack="score",
        seed=0,
        clean_auroc=evaluation.prepared.clean_auroc,
        thresholds=thresholds,
        metrics=evaluation.budgets[eps],
        evaluation=evaluation,
    )


def test_check_lists_each_crossed_threshold(evaluation) -> None:
    case = _case(evaluation, 2, Thresholds(max_auroc_drop=-1.0, max_ece=0.0, min_entropy_gap=1.0))
    with pytest.raises(ThresholdError) as raised:
        case.check()
    lines = str(raised.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"AUROC drop {case.auroc_drop:.4f} exceeds max_auroc_drop -1")
    assert lines[1].startswith(f"calibrated ECE {case.ece:.4f} exceeds max_ece 0")
    assert lines[2].startswith(f"entropy gap {case.entropy_gap:.4f} bits is below min_entropy_gap 1")
    assert all(" on folder-parts, 2-shot, eps 8/255" in line for line in lines)


def test_check_passes_within_limits(evaluation) -> None:
    case = _case(evaluation, 2, Thresholds(max_auroc_drop=1.0, max_ece=1.0, min_entropy_gap=-1.0))
    case.check()
    assert case.violations() == []


def test_entropy_gap_not_checked_at_eps_zero(evaluation) -> None:
    case = _case(evaluation, 0, Thresholds(min_entropy_gap=0.5))
    assert case.violations() == []


def test_check_without_thresholds_raises(evaluation) -> None:
    case = _case(evaluation, 1, Thresholds())
    with pytest.raises(AdrobustError, match="no threshold to assert"):
        case.check()


def test_case_exposes_metrics_as_attributes(evaluation) -> None:
    case = _case(evaluation, 1, Thresholds())
    assert case.auroc == evaluation.budgets[BUDGETS[1]].auroc
    with pytest.raises(AttributeError, match="no attribute 'aurocc'"):
        case.aurocc  # noqa: B018


def test_report_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    assert write_json_atomic(path, {"run": 1}) is False
    with pytest.raises(ValueError):
        write_json_atomic(path, {"run": float("nan")})
    assert json.loads(path.read_text()) == {"run": 1}
    assert [entry.name for entry in tmp_path.iterdir()] == ["report.json"]
    assert write_json_atomic(path, {"run": 2}) is True


class SmallMemory(NoisyScores):
    """A detector that runs out of memory on batches of more than two images."""

    def _check(self, images: torch.Tensor) -> None:
        if images.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated out of memory")

    def score_and_embed(self, images: torch.Tensor):
        self._check(images)
        return self.inner.score_and_embed(images)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        return self.inner.score(images)


def test_out_of_memory_halves_batch(parts_split) -> None:
    reference = tiny_detector()
    key = CaseKey(parts_split.spec, 2, 0, 4, "score", "same")
    expected = evaluate_case(reference, parts_split, key, BUDGETS, batch_size=8)
    result = evaluate_case(SmallMemory(), parts_split, key, BUDGETS, batch_size=8)
    for eps in BUDGETS:
        assert np.allclose(result.budgets[eps].attacked_scores, expected.budgets[eps].attacked_scores, atol=1e-6)
    assert torch.equal(result.prepared.gradient_sign, expected.prepared.gradient_sign)


def test_out_of_memory_single_image_raises() -> None:
    def run(batch: np.ndarray) -> None:
        raise torch.OutOfMemoryError("simulated out of memory")

    with pytest.raises(AdrobustError, match="out of memory on a single image"):
        split_on_oom(np.arange(4), run)


def test_report_file_readable_by_others(tmp_path: Path) -> None:
    import os
    import stat

    umask = os.umask(0o022)
    try:
        path = tmp_path / "report.json"
        write_json_atomic(path, {"run": 1})
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_bf16_scores_checked_against_fp32(parts_split) -> None:
    detector = tiny_detector()
    detector.precision = "bf16"
    key = CaseKey(parts_split.spec, 2, 0, 4, "score", detector.fingerprint())
    result = evaluate_case(detector, parts_split, key, BUDGETS[:2], batch_size=4)
    difference = result.prepared.bf16_max_difference
    assert difference is not None
    assert 0.0 < difference < 5e-3
    assert detector.precision == "bf16"
    assert not any("bf16" in message for message in result.warnings)


def test_bf16_changes_fingerprint() -> None:
    detector = tiny_detector()
    before = detector.fingerprint()
    detector.precision = "bf16"
    assert detector.fingerprint() != before


def test_bf16_difference_over_tolerance_warns(parts_split, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_adrobust.evaluation as evaluation_module

    monkeypatch.setattr(evaluation_module, "BF16_SCORE_ATOL", 0.0)
    detector = tiny_detector()
    detector.precision = "bf16"
    key = CaseKey(parts_split.spec, 2, 0, 4, "score", detector.fingerprint())
    result = evaluate_case(detector, parts_split, key, BUDGETS[:2], batch_size=4)
    assert any("bf16 scores differ from fp32 by up to" in message for message in result.warnings)


def test_self_check_flags_all_masked_images(evaluation) -> None:
    prepared = replace(evaluation.prepared, key=replace(evaluation.prepared.key, masking=True))
    prepared.clean_scores = prepared.clean_scores.copy()
    prepared.clean_scores[:3] = 0.0
    messages = self_check(prepared, evaluation.budgets, None, prepared.clean_scores[:4])
    assert any("3 of 12 clean images score exactly 0" in message for message in messages)
