"""Tests of the detection metrics against scikit-learn and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics import (
    auroc,
    average_precision,
    f1_at_threshold,
    f1_max,
    fit_f1_threshold,
    gmean_at_threshold,
)


def _random_case(
    seed: int, size: int = 60, decimals: int | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Draw labels with both classes and scores that are higher on average for anomalies."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=size)
    labels[0] = 0
    labels[1] = 1
    scores = rng.normal(size=size) + 1.2 * labels
    if decimals is not None:
        # Rounding creates tied scores, which exercises tie handling.
        scores = np.round(scores, decimals)
    return labels, scores


def _brute_force_f1_max(labels: list[int], scores: list[float]) -> float:
    """Return the best F1 over every unique score used as threshold, with explicit loops."""
    best = 0.0
    for threshold in sorted(set(scores)):
        true_positives = 0
        false_positives = 0
        false_negatives = 0
        for label, score in zip(labels, scores):
            predicted = score >= threshold
            if predicted and label == 1:
                true_positives += 1
            elif predicted and label == 0:
                false_positives += 1
            elif not predicted and label == 1:
                false_negatives += 1
        denominator = 2 * true_positives + false_positives + false_negatives
        f1 = 2 * true_positives / denominator if denominator else 0.0
        best = max(best, f1)
    return best


CASES = [(seed, decimals) for seed in range(4) for decimals in (None, 1)]


@pytest.mark.parametrize(("seed", "decimals"), CASES)
def test_auroc_matches_sklearn(seed: int, decimals: int | None) -> None:
    labels, scores = _random_case(seed, decimals=decimals)
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_accepts_lists() -> None:
    value = auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert value == pytest.approx(0.75)


def test_auroc_returns_python_float() -> None:
    value = auroc(np.array([0, 1]), np.array([0.2, 0.9]))
    assert type(value) is float


def test_auroc_perfect_and_inverted() -> None:
    labels = [0, 0, 1, 1]
    assert auroc(labels, [0.0, 0.1, 0.8, 0.9]) == 1.0
    assert auroc(labels, [0.9, 0.8, 0.1, 0.0]) == 0.0


def test_auroc_constant_scores_half() -> None:
    assert auroc([0, 1, 0, 1, 1], [3.0, 3.0, 3.0, 3.0, 3.0]) == 0.5


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_auroc_one_class_rejected(labels: list[int]) -> None:
    with pytest.raises(AdrobustError, match="both normal .* and anomalous"):
        auroc(labels, [0.1, 0.2, 0.3])


@pytest.mark.parametrize(("seed", "decimals"), CASES)
def test_average_precision_matches_sklearn(seed: int, decimals: int | None) -> None:
    labels, scores = _random_case(seed, decimals=decimals)
    expected = average_precision_score(labels, scores)
    assert average_precision(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_average_precision_hand_case() -> None:
    # Ranked by score: anomalous (P=1, R=0.5), normal, anomalous (P=2/3, R=1).
    value = average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert value == pytest.approx(0.5 * 1.0 + 0.5 * 2.0 / 3.0)


def test_average_precision_no_anomalous_rejected() -> None:
    with pytest.raises(AdrobustError, match="at least one anomalous"):
        average_precision([0, 0, 0], [0.1, 0.2, 0.3])


@pytest.mark.parametrize(("seed", "decimals"), CASES)
def test_f1_max_matches_brute_force(seed: int, decimals: int | None) -> None:
    labels, scores = _random_case(seed, decimals=decimals)
    expected = _brute_force_f1_max(labels.tolist(), scores.tolist())
    best_f1, _ = f1_max(labels, scores)
    assert best_f1 == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("seed", "decimals"), CASES)
def test_f1_max_threshold_reaches_f1(seed: int, decimals: int | None) -> None:
    labels, scores = _random_case(seed, decimals=decimals)
    best_f1, threshold = f1_max(labels, scores)
    assert f1_at_threshold(labels, scores, threshold) == pytest.approx(best_f1, abs=1e-12)


def test_f1_max_hand_case() -> None:
    # Threshold 0.35 flags 0.35, 0.4 and 0.8: TP 2, FP 1, FN 0, so F1 = 4 / 5.
    best_f1, threshold = f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert best_f1 == pytest.approx(0.8)
    assert threshold == 0.35


def test_f1_max_all_anomalous() -> None:
    best_f1, threshold = f1_max([1, 1, 1], [0.5, 0.2, 0.9])
    assert best_f1 == 1.0
    assert threshold == 0.2


def test_f1_max_returns_python_floats() -> None:
    best_f1, threshold = f1_max(np.array([0, 1]), np.array([0.2, 0.9]))
    assert type(best_f1) is float
    assert type(threshold) is float


def test_f1_max_no_anomalous_rejected() -> None:
    with pytest.raises(AdrobustError, match="f1_max needs at least one anomalous"):
        f1_max([0, 0], [0.1, 0.2])


def test_fit_f1_threshold_equals_f1_max() -> None:
    labels, scores = _random_case(7, decimals=1)
    _, expected = f1_max(labels, scores)
    assert fit_f1_threshold(labels, scores) == expected


@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.5, 1.2, 3.0])
def test_f1_at_threshold_matches_sklearn(threshold: float) -> None:
    labels, scores = _random_case(3, decimals=1)
    expected = f1_score(labels, scores >= threshold, zero_division=0.0)
    assert f1_at_threshold(labels, scores, threshold) == pytest.approx(expected, abs=1e-12)


def test_f1_at_threshold_inclusive_rule() -> None:
    # The score equal to the threshold counts as anomalous: TP 1, FP 0, FN 0.
    assert f1_at_threshold([0, 1], [0.2, 0.5], 0.5) == 1.0


def test_f1_at_threshold_empty_is_zero() -> None:
    assert f1_at_threshold([0, 0, 0], [0.1, 0.2, 0.3], 0.9) == 0.0


def test_f1_at_threshold_no_hits_zero() -> None:
    assert f1_at_threshold([0, 1, 1], [0.1, 0.2, 0.3], 0.9) == 0.0


def test_gmean_hand_case() -> None:
    labels = [0, 0, 0, 0, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.9, 0.8, 0.4]
    # Threshold 0.35 flags 0.4, 0.8 and 0.9: TPR = 2 / 2, TNR = 3 / 4.
    assert gmean_at_threshold(labels, scores, 0.35) == pytest.approx(math.sqrt(0.75))
    # Threshold 0.6 flags 0.8 and 0.9: TPR = 1 / 2, TNR = 3 / 4.
    assert gmean_at_threshold(labels, scores, 0.6) == pytest.approx(math.sqrt(0.375))
    # Threshold 0.85 flags only the normal 0.9: TPR = 0.
    assert gmean_at_threshold(labels, scores, 0.85) == 0.0


def test_gmean_perfect_split_is_one() -> None:
    assert gmean_at_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.8], 0.7) == 1.0


def test_gmean_one_class_rejected() -> None:
    with pytest.raises(AdrobustError, match="gmean_at_threshold needs both normal"):
        gmean_at_threshold([1, 1], [0.1, 0.2], 0.15)


def test_labels_two_dimensional_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"labels must be a 1-D array .* shape \(2, 2\)"):
        auroc([[0, 1], [1, 0]], [0.1, 0.2, 0.3, 0.4])


def test_labels_non_binary_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"labels must contain only 0 .* received 2\.0"):
        auroc([0, 1, 2], [0.1, 0.2, 0.3])


def test_labels_non_numeric_rejected() -> None:
    with pytest.raises(AdrobustError, match="labels must be a 1-D array of numbers"):
        auroc(["normal", "anomalous"], [0.1, 0.2])


def test_scores_nan_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"scores must contain only finite .* index 1"):
        average_precision([0, 1], [0.1, float("nan")])


def test_scores_infinite_rejected() -> None:
    with pytest.raises(AdrobustError, match="scores must contain only finite"):
        f1_max([0, 1], [0.1, float("inf")])


def test_scores_empty_rejected() -> None:
    with pytest.raises(AdrobustError, match="scores must contain at least one value"):
        f1_at_threshold([0], [], 0.5)


def test_length_mismatch_rejected() -> None:
    with pytest.raises(AdrobustError, match="labels and scores must have the same length"):
        auroc([0, 1, 1], [0.1, 0.2])


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), True, "0.5", None])
def test_threshold_invalid_rejected(threshold: object) -> None:
    with pytest.raises(AdrobustError, match="threshold must be a finite real number"):
        f1_at_threshold([0, 1], [0.1, 0.2], threshold)  # type: ignore[arg-type]


def test_threshold_numpy_float_accepted() -> None:
    assert gmean_at_threshold([0, 1], [0.1, 0.2], np.float32(0.15)) == 1.0
