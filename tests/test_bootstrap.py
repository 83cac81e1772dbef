"""Tests of the stratified bootstrap against the scalar metric functions and known populations."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, final

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics import (
    auroc,
    average_precision,
    binary_entropy,
    brier_score,
    entropy_auroc,
    expected_calibration_error,
    f1_at_threshold,
    f1_max,
    flag_rate,
    gmean_at_threshold,
    negative_log_likelihood,
)
from pytest_adrobust.metrics.bootstrap import (
    BOOTSTRAP_METRICS,
    bootstrap_replicates,
    metric_intervals,
    percentile_interval,
    stratified_resamples,
)

N_NORMAL: Final = 14
N_ANOMALOUS: Final = 10
N_ROWS: Final = 20
TOLERANCE: Final = 1e-12

# Probabilities of 0 and 1 exercise the clipping of the log-likelihood. The others lie on interior
# edges of 15 ECE bins, where right-closed and left-closed bins differ. For 15 bins, k / 15 equals
# numpy.linspace(0, 1, 16)[k], so both spellings name the same edge.
EDGE_PROBABILITIES: Final = (0.0, 1.0, 1 / 15, 2 / 15, float(np.linspace(0.0, 1.0, 16)[7]), 14 / 15)


@final
@dataclass(frozen=True)
class BudgetArrays:
    """Per-image inputs of :func:`bootstrap_replicates` for one synthetic budget, all of shape (n,)."""

    labels: npt.NDArray[np.int64]
    clean_scores: npt.NDArray[np.float64]
    attacked_scores: npt.NDArray[np.float64]
    threshold: float
    raw_probabilities: npt.NDArray[np.float64]
    probabilities: npt.NDArray[np.float64]
    clean_entropy: npt.NDArray[np.float64]
    attacked_entropy: npt.NDArray[np.float64]

    @property
    def predicted_anomalous(self) -> npt.NDArray[np.bool_]:
        """Decision ``attacked score >= threshold`` of each image."""
        return self.attacked_scores >= self.threshold


def make_budget(seed: int) -> BudgetArrays:
    """Draw a seeded budget with tied scores and probabilities on 0, 1 and ECE bin edges.

    Parameters
    ----------
    seed : int
        Seed of :func:`numpy.random.default_rng`.

    Returns
    -------
    BudgetArrays
        Arrays of ``N_NORMAL + N_ANOMALOUS`` images with the classes in shuffled order.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.concatenate([np.zeros(N_NORMAL, np.int64), np.ones(N_ANOMALOUS, np.int64)]))
    n = labels.size

    # Rounding to one decimal ties many scores, within a class and across the two classes.
    clean_scores = np.round(rng.normal(1.0 * labels, 1.0), 1)
    attacked_scores = np.round(rng.normal(0.4 * labels, 1.0), 1)

    # A threshold equal to an observed score makes the ">=" in the decision matter.
    threshold = float(np.sort(attacked_scores)[n // 2])

    edges = np.array(EDGE_PROBABILITIES)
    raw_probabilities = rng.uniform(0.0, 1.0, n)
    raw_probabilities[: edges.size] = edges
    probabilities = rng.uniform(0.0, 1.0, n)
    probabilities[-edges.size :] = edges

    # With 0, 1 and 0.5 among both the clean and the attacked probabilities, entropies of 0 bits
    # and of 1 bit tie across the two passes.
    probabilities[0] = 0.5
    clean_probabilities = rng.uniform(0.0, 1.0, n)
    clean_probabilities[:3] = (0.0, 1.0, 0.5)

    return BudgetArrays(
        labels=labels,
        clean_scores=clean_scores,
        attacked_scores=attacked_scores,
        threshold=threshold,
        raw_probabilities=raw_probabilities,
        probabilities=probabilities,
        clean_entropy=binary_entropy(clean_probabilities),
        attacked_entropy=binary_entropy(probabilities),
    )


def replicates_of(
    budget: BudgetArrays, indices: npt.NDArray[np.int64], n_bins: int = 15, flag_quantile: float = 0.95
) -> dict[str, npt.NDArray[np.float64]]:
    """Call :func:`bootstrap_replicates` with every array of ``budget``."""
    return bootstrap_replicates(
        indices,
        labels=budget.labels,
        clean_scores=budget.clean_scores,
        attacked_scores=budget.attacked_scores,
        predicted_anomalous=budget.predicted_anomalous,
        raw_probabilities=budget.raw_probabilities,
        probabilities=budget.probabilities,
        clean_entropy=budget.clean_entropy,
        attacked_entropy=budget.attacked_entropy,
        n_bins=n_bins,
        flag_quantile=flag_quantile,
    )


def _mean_entropy_gap(budget: BudgetArrays, draw: npt.NDArray[np.int64]) -> float:
    return float(np.mean(budget.attacked_entropy[draw]) - np.mean(budget.clean_entropy[draw]))


ReferenceMetric = Callable[[BudgetArrays, npt.NDArray[np.int64]], float]

REFERENCE_METRICS: Final[dict[str, ReferenceMetric]] = {
    "auroc": lambda b, d: auroc(b.labels[d], b.attacked_scores[d]),
    "auroc_drop": lambda b, d: auroc(b.labels[d], b.clean_scores[d]) - auroc(b.labels[d], b.attacked_scores[d]),
    "ap": lambda b, d: average_precision(b.labels[d], b.attacked_scores[d]),
    "f1_max": lambda b, d: f1_max(b.labels[d], b.attacked_scores[d])[0],
    "f1": lambda b, d: f1_at_threshold(b.labels[d], b.attacked_scores[d], b.threshold),
    "gmean": lambda b, d: gmean_at_threshold(b.labels[d], b.attacked_scores[d], b.threshold),
    "ece_raw": lambda b, d: expected_calibration_error(b.labels[d], b.raw_probabilities[d], n_bins=15),
    "ece": lambda b, d: expected_calibration_error(b.labels[d], b.probabilities[d], n_bins=15),
    "nll_raw": lambda b, d: negative_log_likelihood(b.labels[d], b.raw_probabilities[d]),
    "nll": lambda b, d: negative_log_likelihood(b.labels[d], b.probabilities[d]),
    "brier_raw": lambda b, d: brier_score(b.labels[d], b.raw_probabilities[d]),
    "brier": lambda b, d: brier_score(b.labels[d], b.probabilities[d]),
    "entropy_clean": lambda b, d: float(np.mean(b.clean_entropy[d])),
    "entropy_attacked": lambda b, d: float(np.mean(b.attacked_entropy[d])),
    "entropy_gap": _mean_entropy_gap,
    "entropy_auroc": lambda b, d: entropy_auroc(b.clean_entropy[d], b.attacked_entropy[d]),
    "flag_rate": lambda b, d: flag_rate(b.clean_entropy[d], b.attacked_entropy[d], 0.95)[0],
}
"""Scalar metric of one resample ``d`` of budget ``b``, from the public metric functions on the resampled arrays."""


@pytest.fixture(scope="module", params=[3, 11], ids=["seed3", "seed11"])
def resampled_budget(
    request: pytest.FixtureRequest,
) -> tuple[BudgetArrays, npt.NDArray[np.int64], dict[str, npt.NDArray[np.float64]]]:
    """Return a synthetic budget, its resamples and the replicates of every metric."""
    budget = make_budget(request.param)
    indices = stratified_resamples(budget.labels, N_ROWS, seed=request.param + 100)
    return budget, indices, replicates_of(budget, indices)


# --- stratified_resamples ---------------------------------------------------------------------


def test_resamples_have_expected_shape() -> None:
    labels = make_budget(0).labels

    indices = stratified_resamples(labels, 7, seed=0)

    assert indices.shape == (7, labels.size)
    assert indices.dtype == np.int64


def test_resamples_keep_class_order() -> None:
    labels = make_budget(1).labels

    indices = stratified_resamples(labels, 50, seed=5)

    assert np.all(labels[indices[:, :N_NORMAL]] == 0)
    assert np.all(labels[indices[:, N_NORMAL:]] == 1)


def test_resamples_keep_class_counts() -> None:
    labels = make_budget(2).labels

    indices = stratified_resamples(labels, 50, seed=6)

    normal_counts = np.sum(labels[indices] == 0, axis=1)
    anomalous_counts = np.sum(labels[indices] == 1, axis=1)
    assert np.all(normal_counts == N_NORMAL)
    assert np.all(anomalous_counts == N_ANOMALOUS)


def test_resamples_draw_with_replacement() -> None:
    labels = make_budget(3).labels

    indices = stratified_resamples(labels, 200, seed=7)

    # Every position must be reachable, so an off-by-one in the draw range shows up here.
    assert set(np.unique(indices).tolist()) == set(range(labels.size))
    rows_with_repeats = sum(np.unique(row).size < row.size for row in indices)
    assert rows_with_repeats > 0


def test_resamples_repeat_with_same_seed() -> None:
    labels = make_budget(4).labels

    first = stratified_resamples(labels, 30, seed=42)
    second = stratified_resamples(labels, 30, seed=42)

    np.testing.assert_array_equal(first, second)


def test_resamples_differ_with_other_seed() -> None:
    labels = make_budget(4).labels

    first = stratified_resamples(labels, 30, seed=42)
    other = stratified_resamples(labels, 30, seed=43)

    assert not np.array_equal(first, other)


def test_resamples_accept_numpy_integer_count() -> None:
    labels = make_budget(5).labels

    indices = stratified_resamples(labels, np.int64(4), seed=0)

    assert indices.shape == (4, labels.size)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1], []], ids=["only-normal", "only-anomalous", "empty"])
def test_resamples_reject_missing_class(labels: list[int]) -> None:
    with pytest.raises(AdrobustError, match="normal and anomalous images"):
        stratified_resamples(labels, 10, seed=0)


@pytest.mark.parametrize("n_resamples", [0, -1, True, 2.5])
def test_resamples_reject_bad_count(n_resamples: object) -> None:
    with pytest.raises(AdrobustError, match=rf"n_resamples must be a positive integer; received {n_resamples!r}"):
        stratified_resamples([0, 1, 0, 1], n_resamples, seed=0)  # type: ignore[arg-type]


# --- bootstrap_replicates ---------------------------------------------------------------------


def test_replicate_keys_match_metric_list(
    resampled_budget: tuple[BudgetArrays, npt.NDArray[np.int64], dict[str, npt.NDArray[np.float64]]],
) -> None:
    _, _, replicates = resampled_budget

    assert list(replicates) == list(BOOTSTRAP_METRICS)


def test_every_metric_has_reference() -> None:
    # A metric added to BOOTSTRAP_METRICS without a reference here would go untested.
    assert set(REFERENCE_METRICS) == set(BOOTSTRAP_METRICS)


def test_replicates_are_float_per_row(
    resampled_budget: tuple[BudgetArrays, npt.NDArray[np.int64], dict[str, npt.NDArray[np.float64]]],
) -> None:
    _, _, replicates = resampled_budget

    for name, values in replicates.items():
        assert values.shape == (N_ROWS,), name
        assert values.dtype == np.float64, name


@pytest.mark.parametrize("metric", list(REFERENCE_METRICS))
def test_replicate_equals_metric_function(
    metric: str,
    resampled_budget: tuple[BudgetArrays, npt.NDArray[np.int64], dict[str, npt.NDArray[np.float64]]],
) -> None:
    budget, indices, replicates = resampled_budget

    for row, draw in enumerate(indices):
        expected = REFERENCE_METRICS[metric](budget, draw)
        assert replicates[metric][row] == pytest.approx(expected, abs=TOLERANCE, rel=0.0), f"row {row}"


def test_replicates_vary_across_rows(
    resampled_budget: tuple[BudgetArrays, npt.NDArray[np.int64], dict[str, npt.NDArray[np.float64]]],
) -> None:
    _, _, replicates = resampled_budget

    # Constant replicates would make the comparison with the metric functions above vacuous.
    for name in ("auroc", "ap", "f1", "ece", "nll_raw", "flag_rate"):
        assert np.unique(replicates[name]).size > 1, name


def test_ece_replicates_follow_bin_count() -> None:
    budget = make_budget(8)
    ten_bin_edges = np.linspace(0.0, 1.0, 11)
    probabilities = budget.probabilities.copy()
    probabilities[:4] = ten_bin_edges[[1, 3, 7, 9]]
    budget = replace(budget, probabilities=probabilities)
    indices = stratified_resamples(budget.labels, 10, seed=9)

    replicates = replicates_of(budget, indices, n_bins=10)

    for row, draw in enumerate(indices):
        expected = expected_calibration_error(budget.labels[draw], probabilities[draw], n_bins=10)
        assert replicates["ece"][row] == pytest.approx(expected, abs=TOLERANCE, rel=0.0), f"row {row}"


def test_flag_rate_follows_quantile() -> None:
    budget = make_budget(10)
    indices = stratified_resamples(budget.labels, 10, seed=10)

    replicates = replicates_of(budget, indices, flag_quantile=0.5)

    for row, draw in enumerate(indices):
        expected = flag_rate(budget.clean_entropy[draw], budget.attacked_entropy[draw], 0.5)[0]
        assert replicates["flag_rate"][row] == pytest.approx(expected, abs=TOLERANCE, rel=0.0), f"row {row}"


@pytest.mark.parametrize(
    "shape",
    [(N_NORMAL + N_ANOMALOUS,), (5, N_NORMAL + N_ANOMALOUS - 1), (2, 3, N_NORMAL + N_ANOMALOUS)],
    ids=["one-dimensional", "short-rows", "three-dimensional"],
)
def test_replicates_reject_bad_indices_shape(shape: tuple[int, ...]) -> None:
    budget = make_budget(12)
    indices = np.zeros(shape, dtype=np.int64)

    with pytest.raises(AdrobustError, match=r"indices must have shape \(n_resamples, 24\)"):
        replicates_of(budget, indices)


# --- percentile_interval and metric_intervals -------------------------------------------------


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_interval_equals_numpy_quantile(confidence: float) -> None:
    replicates = np.random.default_rng(13).normal(size=137)
    tail = (1.0 - confidence) / 2.0

    low, high = percentile_interval(replicates, confidence)

    assert low == float(np.quantile(replicates, tail))
    assert high == float(np.quantile(replicates, 1.0 - tail))


def test_interval_of_evenly_spaced_values() -> None:
    # For 0, 1, ..., 100 the linear-interpolation percentile p is exactly 100 p.
    low, high = percentile_interval(np.arange(101.0), 0.9)

    assert low == pytest.approx(5.0, abs=1e-12)
    assert high == pytest.approx(95.0, abs=1e-12)


def test_interval_returns_python_floats() -> None:
    low, high = percentile_interval([0.2, 0.4, 0.9], 0.9)

    assert type(low) is float
    assert type(high) is float


@pytest.mark.parametrize(
    "replicates", [[0.3, math.nan, 0.5], [0.3, math.inf, 0.5], []], ids=["nan", "infinity", "empty"]
)
def test_interval_is_nan_without_finite_replicates(replicates: list[float]) -> None:
    low, high = percentile_interval(replicates, 0.95)

    assert math.isnan(low)
    assert math.isnan(high)


@pytest.mark.parametrize("confidence", [0, 1, 1.5, True, -0.1, math.nan])
def test_interval_rejects_bad_confidence(confidence: object) -> None:
    with pytest.raises(AdrobustError, match=r"confidence must be a number in \(0, 1\)"):
        percentile_interval([0.1, 0.2, 0.3], confidence)  # type: ignore[arg-type]


def test_interval_message_shows_confidence() -> None:
    with pytest.raises(AdrobustError, match=r"received 1\.5"):
        percentile_interval([0.1, 0.2, 0.3], 1.5)


@settings(max_examples=200, deadline=None)
@given(
    replicates=st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=60),
    confidence=st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True),
)
def test_interval_lies_within_replicates(replicates: list[float], confidence: float) -> None:
    low, high = percentile_interval(replicates, confidence)

    assert low <= high
    assert min(replicates) <= low
    assert high <= max(replicates)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_interval_of_extreme_finite_replicates() -> None:
    low, high = percentile_interval([-1e308, 1e308], 0.5)

    assert low <= high


def test_metric_intervals_cover_every_key(
    resampled_budget: tuple[BudgetArrays, npt.NDArray[np.int64], dict[str, npt.NDArray[np.float64]]],
) -> None:
    _, _, replicates = resampled_budget

    intervals = metric_intervals(replicates, 0.9)

    assert list(intervals) == list(replicates)
    for name, values in replicates.items():
        assert intervals[name] == percentile_interval(values, 0.9), name


def test_metric_intervals_reject_bad_confidence() -> None:
    with pytest.raises(AdrobustError, match="confidence must be a number"):
        metric_intervals({"auroc": [0.7, 0.8]}, 1.0)


# --- coverage ---------------------------------------------------------------------------------


def _pairwise_auroc_rows(
    positives: npt.NDArray[np.float64], negatives: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Compute the share of correctly ordered (positive, negative) pairs per row, with ties as one half.

    Parameters
    ----------
    positives : numpy.ndarray of float, shape (rows, n_positive)
        Scores of the anomalous draws of each resample.
    negatives : numpy.ndarray of float, shape (rows, n_negative)
        Scores of the normal draws of each resample.

    Returns
    -------
    numpy.ndarray of float64, shape (rows,)
        AUROC of each row.
    """
    difference = positives[:, :, None] - negatives[:, None, :]
    wins = np.sum(difference > 0, axis=(1, 2)) + 0.5 * np.sum(difference == 0, axis=(1, 2))
    return wins / (positives.shape[1] * negatives.shape[1])


def test_interval_covers_population_auroc() -> None:
    # Scores of N(0, 1) normal and N(1, 1) anomalous images have AUROC
    # P(X_anomalous > X_normal) = Phi(1 / sqrt(2)), because the difference is N(1, 2).
    population_auroc = float(norm.cdf(1.0 / math.sqrt(2.0)))
    n_normal, n_anomalous, n_samples, n_resamples = 30, 20, 400, 200
    labels = np.concatenate([np.zeros(n_normal, np.int64), np.ones(n_anomalous, np.int64)])
    rng = np.random.default_rng(2024)

    covered = 0
    for sample in range(n_samples):
        scores = rng.normal(labels.astype(np.float64), 1.0)
        indices = stratified_resamples(labels, n_resamples, seed=sample)
        replicates = _pairwise_auroc_rows(scores[indices[:, n_normal:]], scores[indices[:, :n_normal]])
        low, high = percentile_interval(replicates, 0.9)
        covered += low <= population_auroc <= high

    # On samples this small the percentile bootstrap covers a little under its nominal 90%, and this
    # set-up measured 88% to 90% with rng seeds 2024, 1 and 7. The binomial standard error over 400
    # samples is about 1.5%. An 80% or a 98% interval measured about 79% and 96%, outside the band.
    assert covered >= 336
    assert covered <= 376
