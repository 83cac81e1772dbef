"""Seeded, stratified bootstrap confidence intervals for the metrics of one budget.

A resample draws, with replacement, as many normal images from the normal test images and as many
anomalous images from the anomalous ones as the test set has, so every resample keeps both classes
and AUROC stays defined. One set of resamples serves every budget of a case, so the clean and
attacked values of a resample describe the same images.

The fitted parts of the protocol (per-fold Platt scaling, the per-fold decision threshold and the
min-max range of the raw probabilities) stay fixed: the intervals describe the sampling of test
images, not the variance of fitting on them. The Mann-Whitney p-value gets no interval, because a
p-value is not an estimate of a population quantity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.stats import mannwhitneyu

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics.detection import average_precision, f1_max

BOOTSTRAP_METRICS: Final = (
    "auroc",
    "auroc_drop",
    "ap",
    "f1_max",
    "f1",
    "gmean",
    "ece_raw",
    "ece",
    "nll_raw",
    "nll",
    "brier_raw",
    "brier",
    "entropy_clean",
    "entropy_attacked",
    "entropy_gap",
    "entropy_auroc",
    "flag_rate",
)
"""Metrics of :class:`~pytest_adrobust.evaluation.BudgetMetrics` that get an interval."""

_NLL_CLIP: Final = 1e-12


def stratified_resamples(labels: npt.ArrayLike, n_resamples: int, seed: int) -> npt.NDArray[np.int64]:
    """Draw stratified bootstrap resamples of test-image positions.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels of the test images; both classes must be present.
    n_resamples : int
        Number of resamples, at least 1.
    seed : int
        Seed of :func:`numpy.random.default_rng`; the same seed and labels give the same draws.

    Returns
    -------
    numpy.ndarray of int64, shape (n_resamples, n)
        Positions into ``labels``. Every row contains the normal positions' draws first, then the
        anomalous ones, with as many of each as ``labels`` has.

    Raises
    ------
    AdrobustError
        If a class is missing or ``n_resamples`` is not a positive integer.
    """
    label_array = np.asarray(labels)
    if not isinstance(n_resamples, Integral) or isinstance(n_resamples, bool) or n_resamples < 1:
        raise AdrobustError(f"n_resamples must be a positive integer; received {n_resamples!r}")
    normal = np.flatnonzero(label_array == 0)
    anomalous = np.flatnonzero(label_array == 1)
    if normal.size == 0 or anomalous.size == 0:
        raise AdrobustError(
            f"the bootstrap needs normal and anomalous images; received {normal.size} normal and "
            f"{anomalous.size} anomalous"
        )

    rng = np.random.default_rng(seed)
    normal_draws = normal[rng.integers(0, normal.size, size=(n_resamples, normal.size))]
    anomalous_draws = anomalous[rng.integers(0, anomalous.size, size=(n_resamples, anomalous.size))]
    return np.concatenate([normal_draws, anomalous_draws], axis=1).astype(np.int64)


def _multiplicities(indices: np.ndarray, n: int) -> np.ndarray:
    """Return how often each image occurs in each resample, shape (n_resamples, n)."""
    counts = np.zeros((indices.shape[0], n), dtype=np.float64)
    np.add.at(counts, (np.arange(indices.shape[0])[:, None], indices), 1.0)
    return counts


def _mann_whitney_auc(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Return the AUROC of each row: the Mann-Whitney U of ``positives`` over its maximum."""
    statistic = mannwhitneyu(positives, negatives, axis=1, method="asymptotic").statistic
    return statistic / (positives.shape[1] * negatives.shape[1])


def _ece(counts: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, n_bins: int) -> np.ndarray:
    # The bins depend on the probabilities alone, so each image keeps its bin in every resample,
    # and ECE = sum over bins of |sum of (label - probability)| / n, with the bins of
    # reliability_bins (right-closed, 0 in the first bin and 1 in the last).
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_index = np.searchsorted(edges[1:-1], probabilities)
    residuals = np.zeros((labels.size, n_bins))
    residuals[np.arange(labels.size), bin_index] = labels - probabilities
    return np.abs(counts @ residuals).sum(axis=1) / labels.size


def _nll(counts: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(probabilities, _NLL_CLIP, 1.0 - _NLL_CLIP)
    per_image = -np.where(labels == 1, np.log(clipped), np.log1p(-clipped))
    return counts @ per_image / labels.size


def bootstrap_replicates(
    indices: npt.NDArray[np.int64],
    *,
    labels: npt.ArrayLike,
    clean_scores: npt.ArrayLike,
    attacked_scores: npt.ArrayLike,
    predicted_anomalous: npt.ArrayLike,
    raw_probabilities: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    clean_entropy: npt.ArrayLike,
    attacked_entropy: npt.ArrayLike,
    n_bins: int = 15,
    flag_quantile: float = 0.95,
) -> dict[str, npt.NDArray[np.float64]]:
    """Compute every metric of :data:`BOOTSTRAP_METRICS` on each resample of one budget.

    Each replicate equals the metric function of :mod:`pytest_adrobust.metrics` applied to the
    resampled arrays. AUROC and entropy AUROC come from :func:`scipy.stats.mannwhitneyu` on all
    resamples at once (U divided by its maximum is the AUROC with ties counted as one half), and
    AP and F1-max from the scikit-learn based functions, one resample at a time.

    Parameters
    ----------
    indices : numpy.ndarray of int, shape (n_resamples, n)
        Resamples from :func:`stratified_resamples` on ``labels``.
    labels : array-like of {0, 1}, shape (n,)
        Test labels, 1 for anomalous.
    clean_scores, attacked_scores : array-like of float, shape (n,)
        Anomaly scores of the clean and the attacked images.
    predicted_anomalous : array-like of bool, shape (n,)
        Decision of the fitted per-fold threshold on each attacked image.
    raw_probabilities, probabilities : array-like of float, shape (n,)
        Min-max mapped scores and Platt-calibrated probabilities of the attacked images.
    clean_entropy, attacked_entropy : array-like of float, shape (n,)
        Predictive entropy in bits of the clean and the attacked images.
    n_bins : int, default 15
        ECE bins.
    flag_quantile : float, default 0.95
        Quantile of clean entropy above which an attacked input is flagged.

    Returns
    -------
    dict of str to numpy.ndarray of float64, shape (n_resamples,)
        One array of replicates per metric name.
    """
    label_array = np.asarray(labels).astype(np.int64)
    n = label_array.size
    if indices.ndim != 2 or indices.shape[1] != n:
        raise AdrobustError(f"indices must have shape (n_resamples, {n}); received shape {indices.shape!r}")
    counts = _multiplicities(indices, n)
    n_normal = int(np.sum(label_array == 0))

    clean = np.asarray(clean_scores, dtype=np.float64)
    attacked = np.asarray(attacked_scores, dtype=np.float64)
    predicted = np.asarray(predicted_anomalous, dtype=bool)
    raw = np.asarray(raw_probabilities, dtype=np.float64)
    calibrated = np.asarray(probabilities, dtype=np.float64)
    entropy_clean = np.asarray(clean_entropy, dtype=np.float64)
    entropy_attacked = np.asarray(attacked_entropy, dtype=np.float64)
    arrays = {
        "clean_scores": clean,
        "attacked_scores": attacked,
        "predicted_anomalous": predicted,
        "raw_probabilities": raw,
        "probabilities": calibrated,
        "clean_entropy": entropy_clean,
        "attacked_entropy": entropy_attacked,
    }
    for name, array in arrays.items():
        if array.shape != (n,):
            raise AdrobustError(f"{name} must have shape ({n},) like labels; received shape {array.shape!r}")

    # Rows hold the normal draws first, so the first n_normal columns are the negatives.
    normal_rows, anomalous_rows = indices[:, :n_normal], indices[:, n_normal:]
    clean_auroc = _mann_whitney_auc(clean[anomalous_rows], clean[normal_rows])
    attacked_auroc = _mann_whitney_auc(attacked[anomalous_rows], attacked[normal_rows])

    # Confusion counts of the fixed per-image decisions.
    positives = label_array == 1
    true_positives = counts @ (positives & predicted)
    false_positives = counts @ (~positives & predicted)
    false_negatives = counts @ (positives & ~predicted)
    true_negatives = counts @ (~positives & ~predicted)
    f1_denominator = 2 * true_positives + false_positives + false_negatives
    f1 = np.divide(2 * true_positives, f1_denominator, out=np.zeros(len(indices)), where=f1_denominator > 0)
    gmean = np.sqrt(
        true_positives / (true_positives + false_negatives) * true_negatives / (true_negatives + false_positives)
    )

    ap = np.empty(len(indices))
    best_f1 = np.empty(len(indices))
    for row, draw in enumerate(indices):
        ap[row] = average_precision(label_array[draw], attacked[draw])
        best_f1[row] = f1_max(label_array[draw], attacked[draw])[0]

    resampled_clean_entropy = entropy_clean[indices]
    resampled_attacked_entropy = entropy_attacked[indices]
    mean_clean_entropy = resampled_clean_entropy.mean(axis=1)
    mean_attacked_entropy = resampled_attacked_entropy.mean(axis=1)
    flag_threshold = np.quantile(resampled_clean_entropy, flag_quantile, axis=1)

    return {
        "auroc": attacked_auroc,
        "auroc_drop": clean_auroc - attacked_auroc,
        "ap": ap,
        "f1_max": best_f1,
        "f1": f1,
        "gmean": gmean,
        "ece_raw": _ece(counts, label_array, raw, n_bins),
        "ece": _ece(counts, label_array, calibrated, n_bins),
        "nll_raw": _nll(counts, label_array, raw),
        "nll": _nll(counts, label_array, calibrated),
        "brier_raw": counts @ (raw - label_array) ** 2 / n,
        "brier": counts @ (calibrated - label_array) ** 2 / n,
        "entropy_clean": mean_clean_entropy,
        "entropy_attacked": mean_attacked_entropy,
        "entropy_gap": mean_attacked_entropy - mean_clean_entropy,
        "entropy_auroc": _mann_whitney_auc(resampled_attacked_entropy, resampled_clean_entropy),
        "flag_rate": np.mean(resampled_attacked_entropy > flag_threshold[:, None], axis=1),
    }


def percentile_interval(replicates: npt.ArrayLike, confidence: float) -> tuple[float, float]:
    """Return the equal-tailed percentile interval of bootstrap replicates.

    Parameters
    ----------
    replicates : array-like of float, shape (n_resamples,)
        Bootstrap replicates of one metric.
    confidence : float
        Coverage in (0, 1), such as 0.95 for the 2.5th to 97.5th percentiles.

    Returns
    -------
    (low, high) : tuple of float
        The interval; ``(nan, nan)`` when a replicate is not finite.
    """
    if not isinstance(confidence, Real) or isinstance(confidence, bool) or not 0.0 < confidence < 1.0:
        raise AdrobustError(f"confidence must be a number in (0, 1), such as 0.95; received {confidence!r}")
    values = np.asarray(replicates, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return (math.nan, math.nan)
    tail = (1.0 - float(confidence)) / 2.0
    # Interpolating between values near the float maximum overflows, so such replicates are
    # scaled down by a power of two (exact) first.
    scale = 2.0 ** 512 if np.max(np.abs(values)) > 1e300 else 1.0
    low, high = np.quantile(values / scale, [tail, 1.0 - tail]) * scale
    return (float(low), float(high))


def metric_intervals(
    replicates: Mapping[str, npt.ArrayLike], confidence: float
) -> dict[str, tuple[float, float]]:
    """Return the percentile interval of every metric in ``replicates``."""
    return {name: percentile_interval(values, confidence) for name, values in replicates.items()}
