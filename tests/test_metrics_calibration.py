"""Tests of Platt scaling and calibration metrics against independent computations."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics import (
    PlattScaler,
    brier_score,
    expected_calibration_error,
    minmax_scale,
    negative_log_likelihood,
    reliability_bins,
)

# For these bin counts, every edge k / n_bins computed in Python equals numpy.linspace(0, 1,
# n_bins + 1)[k], so the brute-force edges below and the implementation's edges agree exactly.
EXACT_EDGE_BIN_COUNTS = [1, 2, 3, 4, 8, 15, 16]


def _brute_force_bin(probability: float, n_bins: int) -> int:
    """Return the right-closed bin of ``probability``, with 0 in the first bin."""
    for k in range(n_bins):
        lower = k / n_bins
        upper = (k + 1) / n_bins
        if k == 0 and probability <= upper:
            return k
        if lower < probability <= upper:
            return k
    raise AssertionError(f"probability {probability!r} fell in no bin")


def _brute_force_bin_counts(probabilities: list[float], n_bins: int) -> list[int]:
    """Count probabilities per bin with :func:`_brute_force_bin`."""
    counts = [0] * n_bins
    for probability in probabilities:
        counts[_brute_force_bin(probability, n_bins)] += 1
    return counts


def _brute_force_ece(labels: list[int], probabilities: list[float], n_bins: int) -> float:
    """Compute the l1 positive-class ECE with explicit loops."""
    label_sums = [0.0] * n_bins
    probability_sums = [0.0] * n_bins
    counts = [0] * n_bins
    for label, probability in zip(labels, probabilities):
        k = _brute_force_bin(probability, n_bins)
        label_sums[k] += label
        probability_sums[k] += probability
        counts[k] += 1

    total = len(labels)
    ece = 0.0
    for k in range(n_bins):
        if counts[k] == 0:
            continue
        gap = abs(label_sums[k] / counts[k] - probability_sums[k] / counts[k])
        ece += counts[k] / total * gap
    return ece


def _random_probabilities(
    seed: int, size: int = 200
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Draw probabilities and labels sampled from a slightly miscalibrated model."""
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(0.0, 1.0, size=size)
    labels = (rng.uniform(0.0, 1.0, size=size) < probabilities**1.5).astype(np.int64)
    return labels, probabilities


def _scipy_platt(
    scores: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]
) -> tuple[float, float]:
    """Fit Platt's smoothed-target cross-entropy in raw score units with scipy.optimize."""
    n_anomalous = int(labels.sum())
    n_normal = labels.size - n_anomalous
    targets = np.where(labels == 1, (n_anomalous + 1) / (n_anomalous + 2), 1 / (n_normal + 2))

    def loss_and_gradient(
        parameters: npt.NDArray[np.float64],
    ) -> tuple[float, npt.NDArray[np.float64]]:
        slope, intercept = parameters
        logits = slope * scores + intercept
        # log(1 + exp(z)) - t * z is the cross-entropy against target t, written stably.
        loss = float(np.sum(np.logaddexp(0.0, logits) - targets * logits))
        residual = expit(logits) - targets
        gradient = np.array([np.sum(residual * scores), np.sum(residual)])
        return loss, gradient

    result = minimize(
        loss_and_gradient, x0=np.zeros(2), jac=True, method="BFGS", options={"gtol": 1e-10}
    )
    return float(result.x[0]), float(result.x[1])


def _overlapping_scores(
    seed: int, size: int = 80
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Draw anomaly scores whose two classes overlap."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=size)
    labels[0] = 0
    labels[1] = 1
    scores = rng.normal(size=size) + 1.5 * labels
    return scores, labels


# Reliability bins and ECE


def test_bins_edge_assignment_hand_case() -> None:
    probabilities = [0.0, 1 / 15, 2 / 15, 0.5, 14 / 15, 1.0]
    bins = reliability_bins([0, 0, 1, 1, 1, 1], probabilities, n_bins=15)
    # 0 and 1/15 share the first bin, 2/15 closes the second bin, 1 lands in the last bin.
    np.testing.assert_array_equal(bins.counts, [2, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1])


def test_bins_edges_span_unit_interval() -> None:
    bins = reliability_bins([0, 1], [0.2, 0.7], n_bins=4)
    np.testing.assert_array_equal(bins.edges, [0.0, 0.25, 0.5, 0.75, 1.0])


def test_bins_empty_bins_are_nan() -> None:
    bins = reliability_bins([0, 1], [0.1, 0.9], n_bins=2)
    assert bins.counts.tolist() == [1, 1]
    bins_with_gap = reliability_bins([0, 1], [0.1, 0.2], n_bins=2)
    assert np.isnan(bins_with_gap.mean_probability[1])
    assert np.isnan(bins_with_gap.fraction_positive[1])


def test_bins_statistics_hand_case() -> None:
    bins = reliability_bins([1, 0, 1, 1], [0.1, 0.3, 0.6, 0.8], n_bins=2)
    np.testing.assert_allclose(bins.mean_probability, [0.2, 0.7])
    np.testing.assert_allclose(bins.fraction_positive, [0.5, 1.0])


def test_ece_edges_match_brute_force() -> None:
    probabilities = [0.0, 1 / 15, 1 / 15, 2 / 15, 2 / 15, 7 / 15, 0.5, 14 / 15, 1.0, 1.0]
    labels = [0, 1, 0, 0, 1, 1, 0, 1, 1, 0]
    expected = _brute_force_ece(labels, probabilities, 15)
    assert expected_calibration_error(labels, probabilities) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n_bins", EXACT_EDGE_BIN_COUNTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_brute_force(seed: int, n_bins: int) -> None:
    labels, probabilities = _random_probabilities(seed)
    expected = _brute_force_ece(labels.tolist(), probabilities.tolist(), n_bins)
    actual = expected_calibration_error(labels, probabilities, n_bins=n_bins)
    assert actual == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n_bins", [5, 10, 15, 20])
@pytest.mark.parametrize("seed", [0, 1])
def test_ece_matches_calibration_curve(seed: int, n_bins: int) -> None:
    labels, probabilities = _random_probabilities(seed)

    # Include exact 0, exact 1 and values on the first interior edges.
    edge_values = np.linspace(0.0, 1.0, n_bins + 1)[:3]
    probabilities = np.concatenate([probabilities, edge_values, [1.0]])
    labels = np.concatenate([labels, [0, 1, 0, 1]])

    fraction_positive, mean_probability = calibration_curve(
        labels, probabilities, n_bins=n_bins, strategy="uniform"
    )

    # calibration_curve returns only non-empty bins, in order, without their counts.
    all_counts = np.array(_brute_force_bin_counts(probabilities.tolist(), n_bins))
    counts = all_counts[all_counts > 0]
    gaps = np.abs(fraction_positive - mean_probability)
    expected = float(np.sum(counts / probabilities.size * gaps))
    actual = expected_calibration_error(labels, probabilities, n_bins=n_bins)
    assert actual == pytest.approx(expected, abs=1e-12)


def test_bins_match_calibration_curve() -> None:
    labels, probabilities = _random_probabilities(5)
    fraction_positive, mean_probability = calibration_curve(
        labels, probabilities, n_bins=15, strategy="uniform"
    )
    bins = reliability_bins(labels, probabilities, n_bins=15)
    filled = bins.counts > 0
    np.testing.assert_allclose(bins.fraction_positive[filled], fraction_positive, atol=1e-12)
    np.testing.assert_allclose(bins.mean_probability[filled], mean_probability, atol=1e-12)


def test_ece_hand_case() -> None:
    # One bin contains both images: mean probability 0.9, fraction anomalous 0.5.
    assert expected_calibration_error([1, 0], [0.9, 0.9], n_bins=10) == pytest.approx(0.4)


def test_ece_returns_python_float() -> None:
    value = expected_calibration_error(np.array([1, 0]), np.array([0.9, 0.1]))
    assert type(value) is float


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True, "15", None])
def test_ece_invalid_n_bins_rejected(n_bins: object) -> None:
    with pytest.raises(AdrobustError, match="n_bins must be a positive integer"):
        expected_calibration_error([0, 1], [0.2, 0.8], n_bins=n_bins)  # type: ignore[arg-type]


def test_ece_numpy_integer_n_bins_accepted() -> None:
    value = expected_calibration_error([0, 1], [0.0, 1.0], n_bins=np.int64(10))
    assert value == 0.0


@pytest.mark.parametrize("probability", [-0.01, 1.01, float("nan")])
def test_ece_probability_out_of_range(probability: float) -> None:
    with pytest.raises(AdrobustError, match="probs must contain"):
        expected_calibration_error([0, 1], [0.5, probability])


def test_ece_length_mismatch_rejected() -> None:
    with pytest.raises(AdrobustError, match="labels and probs must have the same length"):
        expected_calibration_error([0, 1, 1], [0.5, 0.5])


def test_ece_non_binary_labels_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"labels must contain only 0 .* received 0\.5"):
        expected_calibration_error([0, 0.5], [0.5, 0.5])


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 1), st.floats(0.0, 1.0, allow_nan=False)), min_size=1, max_size=50
    ),
    n_bins=st.integers(1, 40),
)
def test_ece_within_unit_interval(data: list[tuple[int, float]], n_bins: int) -> None:
    labels = [label for label, _ in data]
    probabilities = [probability for _, probability in data]
    ece = expected_calibration_error(labels, probabilities, n_bins=n_bins)
    assert 0.0 <= ece <= 1.0


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 1), st.floats(0.0, 1.0, allow_nan=False)), min_size=1, max_size=50
    ),
    n_bins=st.sampled_from(EXACT_EDGE_BIN_COUNTS),
)
def test_ece_property_matches_brute_force(data: list[tuple[int, float]], n_bins: int) -> None:
    labels = [label for label, _ in data]
    probabilities = [probability for _, probability in data]
    expected = _brute_force_ece(labels, probabilities, n_bins)
    actual = expected_calibration_error(labels, probabilities, n_bins=n_bins)
    assert actual == pytest.approx(expected, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 1), min_size=1, max_size=50),
    n_bins=st.integers(1, 40),
)
def test_ece_exact_predictions_zero(labels: list[int], n_bins: int) -> None:
    probabilities = [float(label) for label in labels]
    assert expected_calibration_error(labels, probabilities, n_bins=n_bins) == 0.0


# Platt scaling


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_platt_matches_scipy_fit(seed: int) -> None:
    scores, labels = _overlapping_scores(seed)
    expected_slope, expected_intercept = _scipy_platt(scores, labels)
    scaler = PlattScaler().fit(scores, labels)
    assert scaler.slope == pytest.approx(expected_slope, abs=1e-4)
    assert scaler.intercept == pytest.approx(expected_intercept, abs=1e-4)


def test_platt_probabilities_match_scipy() -> None:
    scores, labels = _overlapping_scores(3)
    slope, intercept = _scipy_platt(scores, labels)
    grid = np.linspace(-3.0, 5.0, 41)
    expected = expit(slope * grid + intercept)
    actual = PlattScaler().fit(scores, labels).predict_proba(grid)
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_platt_score_units_conversion() -> None:
    scores, labels = _overlapping_scores(4)
    base = PlattScaler().fit(scores, labels)
    rescaled = PlattScaler().fit(250.0 * scores + 1000.0, labels)
    assert rescaled.slope == pytest.approx(base.slope / 250.0, rel=1e-5)
    assert rescaled.intercept == pytest.approx(base.intercept - 4.0 * base.slope, abs=1e-4)


def test_platt_separated_scores_finite() -> None:
    scores = np.array([0.0, 0.2, 0.5, 0.9, 10.0, 10.3, 10.8, 11.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scaler = PlattScaler().fit(scores, labels)
    probabilities = scaler.predict_proba(scores)
    assert math.isfinite(scaler.slope)
    assert math.isfinite(scaler.intercept)
    assert scaler.slope > 0.0
    # The smoothed targets are 1/6 and 5/6, so the fitted probabilities stay near them
    # instead of saturating at 0 and 1 as a hard-target fit of separable data would.
    assert np.all(probabilities < 0.9)
    assert np.all(probabilities > 0.1)


def test_platt_separated_matches_scipy() -> None:
    scores = np.array([0.0, 0.2, 0.5, 0.9, 1.0, 1.3, 1.8, 2.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    expected_slope, expected_intercept = _scipy_platt(scores, labels)
    scaler = PlattScaler().fit(scores, labels)
    assert scaler.slope == pytest.approx(expected_slope, abs=1e-4)
    assert scaler.intercept == pytest.approx(expected_intercept, abs=1e-4)


def test_platt_constant_scores_base_rate() -> None:
    labels = np.array([1, 0, 0, 0, 1])
    scaler = PlattScaler().fit([2.0, 2.0, 2.0, 2.0, 2.0], labels)
    # Targets are 3/4 for the two anomalous images and 1/5 for the three normal ones.
    expected = (2 * 0.75 + 3 * 0.2) / 5
    assert scaler.slope == 0.0
    assert scaler.predict_proba([2.0])[0] == pytest.approx(expected, abs=1e-6)


def test_platt_predict_proba_dtype_and_shape() -> None:
    scores, labels = _overlapping_scores(0)
    probabilities = PlattScaler().fit(scores, labels).predict_proba([0.0, 1.0, 2.0])
    assert probabilities.dtype == np.float64
    assert probabilities.shape == (3,)


def test_platt_attributes_are_python_floats() -> None:
    scores, labels = _overlapping_scores(0)
    scaler = PlattScaler().fit(scores, labels)
    assert type(scaler.slope) is float
    assert type(scaler.intercept) is float


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_platt_one_class_rejected(labels: list[int]) -> None:
    with pytest.raises(AdrobustError, match="PlattScaler.fit needs both normal"):
        PlattScaler().fit([0.1, 0.2, 0.3], labels)


def test_platt_unfitted_predict_rejected() -> None:
    with pytest.raises(AdrobustError, match="is not fitted"):
        PlattScaler().predict_proba([0.1])


def test_platt_unfitted_slope_rejected() -> None:
    with pytest.raises(AdrobustError, match="is not fitted"):
        _ = PlattScaler().slope


def test_platt_unfitted_intercept_rejected() -> None:
    with pytest.raises(AdrobustError, match="is not fitted"):
        _ = PlattScaler().intercept


def test_platt_length_mismatch_rejected() -> None:
    with pytest.raises(AdrobustError, match="scores and labels must have the same length"):
        PlattScaler().fit([0.1, 0.2, 0.3], [0, 1])


def test_platt_nan_scores_rejected() -> None:
    scaler = PlattScaler().fit([0.0, 1.0], [0, 1])
    with pytest.raises(AdrobustError, match="scores must contain only finite"):
        scaler.predict_proba([0.5, float("nan")])


@pytest.mark.parametrize("max_iter", [0, 2.5, True])
def test_platt_invalid_max_iter_rejected(max_iter: object) -> None:
    with pytest.raises(AdrobustError, match="max_iter must be a positive integer"):
        PlattScaler(max_iter=max_iter)  # type: ignore[arg-type]


@pytest.mark.parametrize("tol", [0.0, -1e-6, float("nan"), "1e-6"])
def test_platt_invalid_tol_rejected(tol: object) -> None:
    with pytest.raises(AdrobustError, match="tol must be a positive finite number"):
        PlattScaler(tol=tol)  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.floats(-50.0, 50.0, allow_nan=False), st.integers(0, 1)),
        min_size=2,
        max_size=30,
    )
)
def test_platt_monotone_for_positive_slope(data: list[tuple[float, int]]) -> None:
    scores = [score for score, _ in data]
    labels = [label for _, label in data]
    assume(0 < sum(labels) < len(labels))

    scaler = PlattScaler().fit(scores, labels)
    assume(scaler.slope > 0.0)

    probabilities = scaler.predict_proba(sorted(scores))
    assert np.all(np.diff(probabilities) >= 0.0)


# Negative log-likelihood and Brier score


def test_nll_hand_case() -> None:
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert negative_log_likelihood([1, 0], [0.8, 0.4]) == pytest.approx(expected)


def test_nll_matches_sklearn_log_loss() -> None:
    labels, probabilities = _random_probabilities(6)
    probabilities = np.clip(probabilities, 0.01, 0.99)
    expected = log_loss(labels, probabilities, labels=[0, 1])
    assert negative_log_likelihood(labels, probabilities) == pytest.approx(expected, rel=1e-12)


def test_nll_clips_confident_mistake() -> None:
    # A probability of 0 for an anomalous image is clipped to 1e-12.
    assert negative_log_likelihood([1], [0.0]) == pytest.approx(-math.log(1e-12))


def test_nll_clips_certain_hit() -> None:
    assert negative_log_likelihood([1, 0], [1.0, 0.0]) == pytest.approx(1e-12, rel=1e-3)


def test_brier_hand_case() -> None:
    assert brier_score([1, 0], [0.8, 0.4]) == pytest.approx((0.04 + 0.16) / 2)


def test_brier_matches_sklearn() -> None:
    labels, probabilities = _random_probabilities(7)
    expected = brier_score_loss(labels, probabilities)
    assert brier_score(labels, probabilities) == pytest.approx(expected, rel=1e-12)


def test_brier_single_class_normal() -> None:
    # With only normal images the score is mean(p ** 2).
    assert brier_score([0, 0], [0.2, 0.4]) == pytest.approx((0.04 + 0.16) / 2)


def test_brier_probability_out_of_range() -> None:
    with pytest.raises(AdrobustError, match=r"probs must contain probabilities .* 1\.5"):
        brier_score([0, 1], [0.2, 1.5])


# Min-max scaling


def test_minmax_hand_case() -> None:
    scaled = minmax_scale([1.0, 2.0, 3.0], reference=[1.0, 5.0])
    np.testing.assert_allclose(scaled, [0.0, 0.25, 0.5])


def test_minmax_clips_outside_reference() -> None:
    scaled = minmax_scale([-10.0, 10.0], reference=[1.0, 5.0])
    np.testing.assert_array_equal(scaled, [0.0, 1.0])


def test_minmax_constant_reference_half() -> None:
    scaled = minmax_scale([-3.0, 2.0, 7.0], reference=[2.0, 2.0, 2.0])
    np.testing.assert_array_equal(scaled, [0.5, 0.5, 0.5])


def test_minmax_returns_float64() -> None:
    scaled = minmax_scale([1, 2], reference=[0, 4])
    assert scaled.dtype == np.float64


def test_minmax_empty_reference_rejected() -> None:
    with pytest.raises(AdrobustError, match="reference must contain at least one value"):
        minmax_scale([1.0], reference=[])


def test_minmax_nan_scores_rejected() -> None:
    with pytest.raises(AdrobustError, match="scores must contain only finite"):
        minmax_scale([float("nan")], reference=[0.0, 1.0])
