"""Calibration of anomaly scores: Platt scaling, reliability bins, ECE, NLL and Brier score.

Labels use 1 for anomalous (the positive class) and 0 for normal, and every probability is the
probability that an image is anomalous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import final

import numpy as np
import numpy.typing as npt
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics.detection import (
    _as_float_array,
    _as_labels,
    _as_probabilities,
    _check_same_length,
    _require_both_classes,
)

__all__ = [
    "PlattScaler",
    "ReliabilityBins",
    "brier_score",
    "expected_calibration_error",
    "expected_calibration_error_floor",
    "minmax_scale",
    "negative_log_likelihood",
    "reliability_bins",
]

_NLL_CLIP = 1e-12
"""Probabilities are clipped to [_NLL_CLIP, 1 - _NLL_CLIP] so that a confident mistake costs
about 27.6 nats instead of infinity."""


@final
@dataclass
class PlattScaler:
    """Platt scaling of anomaly scores with Platt's smoothed targets.

    The model is ``p = sigmoid(slope * score + intercept)``. Instead of hard 0/1 targets it fits
    Platt's smoothed targets, which guard against overfitting: ``(N+ + 1) / (N+ + 2)`` for
    anomalous images and ``1 / (N- + 2)`` for normal ones, where N+ and N- count the anomalous
    and normal training images. These soft targets keep the slope finite even when the scores
    separate the classes perfectly.

    The fit is an unpenalised scikit-learn ``LogisticRegression`` (``C=numpy.inf``) on the
    standardised score. Each image enters twice, once with label 1 and weight ``t`` and once with
    label 0 and weight ``1 - t``, which makes the weighted log loss equal to the cross-entropy
    against the soft target ``t``.

    Parameters
    ----------
    max_iter : int, default 1000
        Maximum number of L-BFGS iterations.
    tol : float, default 1e-10
        Stopping tolerance of scikit-learn's L-BFGS solver.

    Attributes
    ----------
    slope : float
        Slope in inverse score units, available after :meth:`fit`.
    intercept : float
        Intercept in logits, available after :meth:`fit`.
    """

    max_iter: int = 1000
    tol: float = 1e-10
    _slope: float | None = field(default=None, init=False, repr=False)
    _intercept: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        """Validate the optimiser settings.

        Raises
        ------
        AdrobustError
            If ``max_iter`` is not a positive integer or ``tol`` is not a positive finite number.
        """
        max_iter_is_int = isinstance(self.max_iter, Integral) and not isinstance(
            self.max_iter, bool
        )
        if not max_iter_is_int or self.max_iter < 1:
            raise AdrobustError(
                f"max_iter must be a positive integer; received {self.max_iter!r}. Pass an "
                "integer such as 1000."
            )

        tol_is_real = isinstance(self.tol, Real) and not isinstance(self.tol, bool)
        if not tol_is_real or not math.isfinite(self.tol) or self.tol <= 0:
            raise AdrobustError(
                f"tol must be a positive finite number; received {self.tol!r}. Pass a float "
                "such as 1e-10."
            )

    def fit(self, scores: npt.ArrayLike, labels: npt.ArrayLike) -> PlattScaler:
        """Fit the slope and intercept to scores of labelled images.

        Parameters
        ----------
        scores : array-like of float, shape (n,)
            Anomaly scores, higher means more anomalous.
        labels : array-like of {0, 1}, shape (n,)
            Labels, 1 for anomalous and 0 for normal. Both classes must be present.

        Returns
        -------
        PlattScaler
            This scaler, fitted.

        Raises
        ------
        AdrobustError
            If an input is invalid, the lengths differ, or only one class is present.
        """
        score_array = _as_float_array("scores", scores)
        label_array = _as_labels("labels", labels)
        _check_same_length("scores", score_array, "labels", label_array)
        _require_both_classes("PlattScaler.fit", label_array)

        n_anomalous = int(np.sum(label_array == 1))
        n_normal = label_array.size - n_anomalous
        targets = np.where(
            label_array == 1,
            (n_anomalous + 1.0) / (n_anomalous + 2.0),
            1.0 / (n_normal + 2.0),
        )

        # Standardising keeps L-BFGS well conditioned for scores in any unit. Constant scores
        # carry no ranking information, so a unit scale leaves the slope at 0 and the intercept
        # fits the smoothed base rate.
        mean = float(np.mean(score_array))
        scale = float(np.std(score_array))
        if scale == 0.0:
            scale = 1.0
        standardised = (score_array - mean) / scale

        features = np.concatenate([standardised, standardised])[:, np.newaxis]
        duplicated_labels = np.concatenate(
            [np.ones(score_array.size, dtype=np.int64), np.zeros(score_array.size, dtype=np.int64)]
        )
        weights = np.concatenate([targets, 1.0 - targets])

        model = LogisticRegression(C=np.inf, solver="lbfgs", tol=self.tol, max_iter=self.max_iter)
        model.fit(features, duplicated_labels, sample_weight=weights)

        # Convert the coefficients from standardised units back to raw score units.
        standardised_slope = float(model.coef_[0, 0])
        standardised_intercept = float(model.intercept_[0])
        self._slope = standardised_slope / scale
        self._intercept = standardised_intercept - standardised_slope * mean / scale
        return self

    @property
    def slope(self) -> float:
        """Slope in inverse score units."""
        return self._fitted()[0]

    @property
    def intercept(self) -> float:
        """Intercept in logits."""
        return self._fitted()[1]

    def predict_proba(self, scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map anomaly scores to probabilities of being anomalous.

        Parameters
        ----------
        scores : array-like of float, shape (n,)
            Anomaly scores in the units used for :meth:`fit`.

        Returns
        -------
        numpy.ndarray of float64, shape (n,)
            ``sigmoid(slope * score + intercept)``, each in [0, 1].

        Raises
        ------
        AdrobustError
            If the scaler is not fitted or ``scores`` is invalid.
        """
        slope, intercept = self._fitted()
        score_array = _as_float_array("scores", scores)
        return np.asarray(expit(slope * score_array + intercept), dtype=np.float64)

    def _fitted(self) -> tuple[float, float]:
        """Return ``(slope, intercept)``, raising AdrobustError before :meth:`fit` has run."""
        if self._slope is None or self._intercept is None:
            raise AdrobustError(
                f"{self!r} is not fitted, so it has no slope or intercept yet. Call "
                "fit(scores, labels) before predict_proba, slope or intercept."
            )
        return self._slope, self._intercept


@final
@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram with equal-width bins on [0, 1].

    Attributes
    ----------
    edges : numpy.ndarray of float64, shape (n_bins + 1,)
        Bin edges from 0 to 1. Bin 0 is ``[edges[0], edges[1]]`` and bin k > 0 is
        ``(edges[k], edges[k + 1]]``.
    counts : numpy.ndarray of int64, shape (n_bins,)
        Number of images in each bin.
    mean_probability : numpy.ndarray of float64, shape (n_bins,)
        Mean predicted probability of the images in each bin, NaN for an empty bin.
    fraction_positive : numpy.ndarray of float64, shape (n_bins,)
        Fraction of anomalous images in each bin, NaN for an empty bin.
    """

    edges: npt.NDArray[np.float64]
    counts: npt.NDArray[np.int64]
    mean_probability: npt.NDArray[np.float64]
    fraction_positive: npt.NDArray[np.float64]


def _as_n_bins(n_bins: int) -> int:
    """Validate the number of bins and return it as a Python int.

    Parameters
    ----------
    n_bins : int
        Requested number of bins.

    Returns
    -------
    int
        ``n_bins``.

    Raises
    ------
    AdrobustError
        If ``n_bins`` is a bool, not an integer, or smaller than 1.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, Integral) or n_bins < 1:
        raise AdrobustError(
            f"n_bins must be a positive integer; received {n_bins!r}. Pass an integer such as "
            "15, the usual number of bins for ECE."
        )
    return int(n_bins)


def _labels_and_probabilities(
    labels: npt.ArrayLike, probs: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Validate labels and probabilities of equal length.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    probs : array-like of float, shape (n,)
        Probabilities of being anomalous.

    Returns
    -------
    tuple of numpy.ndarray
        The labels as int64 and the probabilities as float64, both of shape (n,).

    Raises
    ------
    AdrobustError
        If either input is invalid or the lengths differ.
    """
    label_array = _as_labels("labels", labels)
    probability_array = _as_probabilities("probs", probs)
    _check_same_length("labels", label_array, "probs", probability_array)
    return label_array, probability_array


def reliability_bins(
    labels: npt.ArrayLike, probs: npt.ArrayLike, n_bins: int = 15
) -> ReliabilityBins:
    """Group probabilities into equal-width bins and summarise each bin.

    The binning follows ``sklearn.calibration.calibration_curve(strategy="uniform")``:
    edges are ``numpy.linspace(0, 1, n_bins + 1)`` and a probability goes to the bin found by
    ``numpy.searchsorted`` on the interior edges. Bins are therefore right-closed, a probability
    on an interior edge belongs to the lower bin, exactly 0 falls in the first bin and exactly 1
    in the last bin.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    probs : array-like of float, shape (n,)
        Probabilities of being anomalous, in [0, 1].
    n_bins : int, default 15
        Number of equal-width bins.

    Returns
    -------
    ReliabilityBins
        Edges, counts, mean probability and fraction of anomalous images per bin.

    Raises
    ------
    AdrobustError
        If an input is invalid, the lengths differ, or ``n_bins`` is not a positive integer.
    """
    label_array, probability_array = _labels_and_probabilities(labels, probs)
    bin_count = _as_n_bins(n_bins)

    edges = np.linspace(0.0, 1.0, bin_count + 1)
    bin_index = np.searchsorted(edges[1:-1], probability_array)

    counts = np.bincount(bin_index, minlength=bin_count).astype(np.int64)
    probability_sums = np.bincount(bin_index, weights=probability_array, minlength=bin_count)
    positive_sums = np.bincount(
        bin_index, weights=label_array.astype(np.float64), minlength=bin_count
    )

    mean_probability = np.full(bin_count, np.nan)
    fraction_positive = np.full(bin_count, np.nan)
    filled = counts > 0
    mean_probability[filled] = probability_sums[filled] / counts[filled]
    fraction_positive[filled] = positive_sums[filled] / counts[filled]

    return ReliabilityBins(
        edges=edges,
        counts=counts,
        mean_probability=mean_probability,
        fraction_positive=fraction_positive,
    )


def expected_calibration_error(
    labels: npt.ArrayLike, probs: npt.ArrayLike, n_bins: int = 15
) -> float:
    """Compute the expected calibration error (ECE) of probabilities of being anomalous.

    This is the l1, equal-width, positive-class ECE. With the bins of :func:`reliability_bins`,
    ``ECE = sum over non-empty bins of (count / N) * |fraction_positive - mean_probability|``.
    Other variants give different values on the same data. The top-label (confidence) ECE bins
    ``max(p, 1 - p)`` against accuracy, and left-closed bins move a probability that lies on an
    edge into the upper bin.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    probs : array-like of float, shape (n,)
        Probabilities of being anomalous, in [0, 1].
    n_bins : int, default 15
        Number of equal-width bins on [0, 1].

    Returns
    -------
    float
        ECE in [0, 1].

    Raises
    ------
    AdrobustError
        If an input is invalid, the lengths differ, or ``n_bins`` is not a positive integer.
    """
    bins = reliability_bins(labels, probs, n_bins)

    filled = bins.counts > 0
    weights = bins.counts[filled] / np.sum(bins.counts)
    gaps = np.abs(bins.fraction_positive[filled] - bins.mean_probability[filled])
    return float(np.sum(weights * gaps))


def _poisson_binomial_pmf(probabilities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Compute the distribution of the number of successes in independent Bernoulli trials.

    The dynamic programme adds one trial at a time, so after trial i, ``pmf[k]`` is the
    probability of k successes among the first i trials. It takes O(m^2) time and O(m) memory.
    Every update is a convex combination of non-negative numbers, so no cancellation occurs.

    Parameters
    ----------
    probabilities : numpy.ndarray of float64, shape (m,)
        Success probability of each trial, in [0, 1].

    Returns
    -------
    numpy.ndarray of float64, shape (m + 1,)
        ``pmf[k]`` is the probability of exactly k successes, for k = 0, ..., m.
    """
    pmf = np.zeros(probabilities.size + 1, dtype=np.float64)
    pmf[0] = 1.0

    for trial, probability in enumerate(probabilities):
        # Only pmf[: trial + 1] can be non-zero before this trial, so the slices grow by one.
        success = pmf[: trial + 1] * probability
        pmf[: trial + 1] *= 1.0 - probability
        pmf[1 : trial + 2] += success

    return pmf


def expected_calibration_error_floor(probs: npt.ArrayLike, n_bins: int = 15) -> float:
    """Compute the expected ECE of a perfectly calibrated model with the given probabilities.

    ECE measured on a finite test set is usually positive even when the model is perfectly
    calibrated, because the labels in each bin are random. This function returns that
    sampling-noise level, the mean of :func:`expected_calibration_error` over labels drawn as
    independent ``Bernoulli(p_i)``, with the same equal-width bins and the same l1
    positive-class ECE.
    A measured ECE close to this value is consistent with sampling noise alone. The value is an
    expectation, not a lower bound, so a single measured ECE can fall below it.

    The bins depend on the probabilities alone, so with ``S_b`` the number of anomalous images
    in bin b and ``P_b`` the sum of the probabilities in bin b,

    ``E[ECE] = (1 / N) * sum over bins b of E|S_b - P_b|``.

    ``S_b`` follows the Poisson-binomial distribution of the bin's probabilities, and
    ``E|S_b - P_b| = sum over k of Pr(S_b = k) * |k - P_b|`` is computed exactly from that
    distribution, without sampling. Time is O(sum of m_b^2) and memory O(max m_b) for bins of
    m_b images.

    Parameters
    ----------
    probs : array-like of float, shape (n,)
        Probabilities of being anomalous, in [0, 1].
    n_bins : int, default 15
        Number of equal-width bins on [0, 1], as in :func:`expected_calibration_error`.

    Returns
    -------
    float
        Expected ECE in [0, 1] under the assumption that the labels are independent given the
        probabilities and that each label is 1 with its image's probability.

    Raises
    ------
    AdrobustError
        If ``probs`` is not a non-empty 1-D array of finite numbers in [0, 1], or ``n_bins`` is
        not a positive integer.
    """
    probability_array = _as_probabilities("probs", probs)
    bin_count = _as_n_bins(n_bins)

    # These edges and this search must stay identical to reliability_bins, because the floor is
    # only the expectation of expected_calibration_error when both assign images to the same bins.
    edges = np.linspace(0.0, 1.0, bin_count + 1)
    bin_index = np.searchsorted(edges[1:-1], probability_array)

    total_absolute_gap = 0.0
    for bin_number in range(bin_count):
        bin_probabilities = probability_array[bin_index == bin_number]
        if bin_probabilities.size == 0:
            continue

        pmf = _poisson_binomial_pmf(bin_probabilities)
        successes = np.arange(bin_probabilities.size + 1, dtype=np.float64)
        expected_successes = float(np.sum(bin_probabilities))
        total_absolute_gap += float(np.sum(pmf * np.abs(successes - expected_successes)))

    return total_absolute_gap / probability_array.size


def negative_log_likelihood(labels: npt.ArrayLike, probs: npt.ArrayLike) -> float:
    """Compute the mean binary negative log-likelihood in nats.

    Probabilities are clipped to [1e-12, 1 - 1e-12] first, so a confident wrong prediction
    costs at most about 27.6 nats instead of infinity.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    probs : array-like of float, shape (n,)
        Probabilities of being anomalous, in [0, 1].

    Returns
    -------
    float
        ``-mean(y * log(p) + (1 - y) * log(1 - p))`` in nats, at least 0.

    Raises
    ------
    AdrobustError
        If an input is invalid or the lengths differ.
    """
    label_array, probability_array = _labels_and_probabilities(labels, probs)

    clipped = np.clip(probability_array, _NLL_CLIP, 1.0 - _NLL_CLIP)
    log_likelihood = np.where(label_array == 1, np.log(clipped), np.log1p(-clipped))
    return float(-np.mean(log_likelihood))


def brier_score(labels: npt.ArrayLike, probs: npt.ArrayLike) -> float:
    """Compute the Brier score, the mean squared error of probabilities of being anomalous.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    probs : array-like of float, shape (n,)
        Probabilities of being anomalous, in [0, 1].

    Returns
    -------
    float
        ``mean((p - y) ** 2)`` in [0, 1], from :func:`sklearn.metrics.brier_score_loss`.

    Raises
    ------
    AdrobustError
        If an input is invalid or the lengths differ.
    """
    label_array, probability_array = _labels_and_probabilities(labels, probs)

    # Fixing labels and pos_label keeps sklearn from guessing the positive class when only one
    # class is present.
    return float(brier_score_loss(label_array, probability_array, labels=[0, 1], pos_label=1))


def minmax_scale(scores: npt.ArrayLike, reference: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Map anomaly scores to [0, 1] with the minimum and maximum of reference scores.

    Scores outside the reference range are clipped to 0 or 1. A constant reference has no
    range to scale by, so every score maps to 0.5.

    Parameters
    ----------
    scores : array-like of float, shape (n,)
        Anomaly scores to map.
    reference : array-like of float, shape (m,)
        Scores that define the range, usually those of clean images.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        ``clip((score - min(reference)) / (max(reference) - min(reference)), 0, 1)``.

    Raises
    ------
    AdrobustError
        If ``scores`` or ``reference`` is invalid.
    """
    score_array = _as_float_array("scores", scores)
    reference_array = _as_float_array("reference", reference)

    low = float(np.min(reference_array))
    high = float(np.max(reference_array))
    if high == low:
        return np.full(score_array.shape, 0.5, dtype=np.float64)

    return np.clip((score_array - low) / (high - low), 0.0, 1.0)
