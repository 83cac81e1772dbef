"""Threshold-free and thresholded detection metrics for anomaly scores.

Labels use 1 for anomalous (the positive class) and 0 for normal. Scores follow the detector
convention that a higher score means more anomalous, and a thresholded decision calls an image
anomalous when ``score >= threshold``.

The private ``_as_*`` validators in this module are shared by the calibration and uncertainty
metrics, so every metric rejects bad input with the same messages.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from pytest_adrobust.errors import AdrobustError

__all__ = [
    "auroc",
    "average_precision",
    "f1_at_threshold",
    "f1_max",
    "fit_f1_threshold",
    "gmean_at_threshold",
]

def _as_float_array(name: str, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Convert ``values`` to a non-empty 1-D float64 array of finite numbers.

    Parameters
    ----------
    name : str
        Argument name used in error messages.
    values : array-like, shape (n,)
        Values to convert.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        A float64 copy or view of ``values``.

    Raises
    ------
    AdrobustError
        If ``values`` is not numeric, not 1-D, empty or contains NaN or infinity.
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise AdrobustError(
            f"{name} must be a 1-D array of numbers; received {values!r}, which numpy could not "
            f"convert to float ({error}). Pass a list or numpy array of numbers."
        ) from error

    if array.ndim != 1:
        raise AdrobustError(
            f"{name} must be a 1-D array with one value per image; received an array of shape "
            f"{array.shape!r}. Flatten it with numpy.ravel or pass one value per image."
        )
    if array.size == 0:
        raise AdrobustError(
            f"{name} must contain at least one value; received an empty array {values!r}. "
            "Pass the values of at least one image."
        )

    not_finite = np.flatnonzero(~np.isfinite(array))
    if not_finite.size > 0:
        index = int(not_finite[0])
        value = float(array[index])
        raise AdrobustError(
            f"{name} must contain only finite numbers; received {value!r} at index {index} "
            f"({not_finite.size} non-finite values in total). Remove or replace NaN and infinite "
            "values before computing the metric."
        )
    return array


def _as_labels(name: str, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Convert ``values`` to a 1-D int64 array of binary labels.

    Parameters
    ----------
    name : str
        Argument name used in error messages.
    values : array-like, shape (n,)
        Labels, 1 for anomalous and 0 for normal. Booleans are accepted.

    Returns
    -------
    numpy.ndarray of int64, shape (n,)
        The labels as 0 and 1.

    Raises
    ------
    AdrobustError
        If ``values`` fails :func:`_as_float_array` or contains a value other than 0 or 1.
    """
    array = _as_float_array(name, values)

    not_binary = np.flatnonzero((array != 0.0) & (array != 1.0))
    if not_binary.size > 0:
        index = int(not_binary[0])
        value = float(array[index])
        raise AdrobustError(
            f"{name} must contain only 0 (normal) and 1 (anomalous); received {value!r} at "
            f"index {index}. Encode anomalous images as 1 and normal images as 0."
        )
    return array.astype(np.int64)


def _as_probabilities(name: str, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Convert ``values`` to a 1-D float64 array of probabilities in [0, 1].

    Parameters
    ----------
    name : str
        Argument name used in error messages.
    values : array-like, shape (n,)
        Probabilities.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        The probabilities.

    Raises
    ------
    AdrobustError
        If ``values`` fails :func:`_as_float_array` or contains a value outside [0, 1].
    """
    array = _as_float_array(name, values)

    outside = np.flatnonzero((array < 0.0) | (array > 1.0))
    if outside.size > 0:
        index = int(outside[0])
        value = float(array[index])
        raise AdrobustError(
            f"{name} must contain probabilities in [0, 1]; received {value!r} at index "
            f"{index}. Map raw scores to probabilities first, for example with PlattScaler or "
            "minmax_scale."
        )
    return array


def _check_same_length(
    first_name: str,
    first: npt.NDArray[np.generic],
    second_name: str,
    second: npt.NDArray[np.generic],
) -> None:
    """Raise AdrobustError unless two validated 1-D arrays have the same length.

    Parameters
    ----------
    first_name, second_name : str
        Argument names used in the error message.
    first, second : numpy.ndarray, shape (n,) and (m,)
        Arrays to compare.

    Raises
    ------
    AdrobustError
        If ``n != m``.
    """
    if first.shape[0] != second.shape[0]:
        raise AdrobustError(
            f"{first_name} and {second_name} must have the same length; received "
            f"{first.shape[0]} values in {first_name} and {second.shape[0]} in {second_name}. "
            "Pass exactly one value of each per image."
        )


def _as_threshold(name: str, value: float) -> float:
    """Convert a decision threshold to a finite Python float.

    Parameters
    ----------
    name : str
        Argument name used in error messages.
    value : float
        Threshold in score units.

    Returns
    -------
    float
        The threshold.

    Raises
    ------
    AdrobustError
        If ``value`` is a bool, not a real number, or not finite.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise AdrobustError(
            f"{name} must be a finite real number in score units; received {value!r}. "
            "Pass a threshold such as the one returned by fit_f1_threshold."
        )
    return float(value)


def _labels_and_scores(
    labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Validate a pair of labels and scores of equal length.

    Parameters
    ----------
    labels : array-like, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    scores : array-like, shape (n,)
        Anomaly scores, higher means more anomalous.

    Returns
    -------
    tuple of numpy.ndarray
        The labels as int64 and the scores as float64, both of shape (n,).

    Raises
    ------
    AdrobustError
        If either input is invalid or the lengths differ.
    """
    label_array = _as_labels("labels", labels)
    score_array = _as_float_array("scores", scores)
    _check_same_length("labels", label_array, "scores", score_array)
    return label_array, score_array


def _require_both_classes(metric: str, labels: npt.NDArray[np.int64]) -> None:
    """Raise AdrobustError unless ``labels`` contains both 0 and 1.

    Parameters
    ----------
    metric : str
        Name of the metric, used in the error message.
    labels : numpy.ndarray of int64, shape (n,)
        Validated labels.

    Raises
    ------
    AdrobustError
        If only one class is present.
    """
    present = np.unique(labels)
    if present.size < 2:
        raise AdrobustError(
            f"{metric} needs both normal (0) and anomalous (1) images in labels; received only "
            f"label {int(present[0])!r} for all {labels.size} images. Add images of the "
            "missing class to the evaluation set."
        )


def _require_anomalous(metric: str, labels: npt.NDArray[np.int64]) -> None:
    """Raise AdrobustError unless ``labels`` contains at least one anomalous image.

    Parameters
    ----------
    metric : str
        Name of the metric, used in the error message.
    labels : numpy.ndarray of int64, shape (n,)
        Validated labels.

    Raises
    ------
    AdrobustError
        If no label is 1.
    """
    if not np.any(labels == 1):
        raise AdrobustError(
            f"{metric} needs at least one anomalous image (label 1) in labels; received only "
            f"label 0 for all {labels.size} images. Add anomalous images to the evaluation set."
        )


def auroc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Compute the area under the ROC curve of anomaly scores.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    scores : array-like of float, shape (n,)
        Anomaly scores, higher means more anomalous.

    Returns
    -------
    float
        AUROC in [0, 1] from :func:`sklearn.metrics.roc_auc_score`. Tied scores count one half,
        so constant scores give 0.5.

    Raises
    ------
    AdrobustError
        If an input is invalid, the lengths differ, or only one class is present.
    """
    label_array, score_array = _labels_and_scores(labels, scores)
    _require_both_classes("auroc", label_array)
    return float(roc_auc_score(label_array, score_array))


def average_precision(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Compute the average precision (area under the precision-recall curve) of anomaly scores.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    scores : array-like of float, shape (n,)
        Anomaly scores, higher means more anomalous.

    Returns
    -------
    float
        Average precision in [0, 1] from :func:`sklearn.metrics.average_precision_score`, the
        step-wise sum of precision weighted by recall increments, without interpolation.

    Raises
    ------
    AdrobustError
        If an input is invalid, the lengths differ, or no label is anomalous.
    """
    label_array, score_array = _labels_and_scores(labels, scores)
    _require_anomalous("average_precision", label_array)
    return float(average_precision_score(label_array, score_array, pos_label=1))


def f1_max(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[float, float]:
    """Find the best F1 score over all thresholds and the threshold that reaches it.

    This is the oracle F1-max. The threshold is chosen on the same labels it is scored on, so
    the value is an upper bound on the F1 of any fixed threshold on that data.
    Candidate thresholds are those of :func:`sklearn.metrics.precision_recall_curve`, and an
    image counts as anomalous when ``score >= threshold``.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    scores : array-like of float, shape (n,)
        Anomaly scores, higher means more anomalous.

    Returns
    -------
    f1 : float
        Best F1 in [0, 1].
    threshold : float
        Threshold in score units that reaches ``f1``. Among tied thresholds the lowest is
        returned.

    Raises
    ------
    AdrobustError
        If an input is invalid, the lengths differ, or no label is anomalous.
    """
    label_array, score_array = _labels_and_scores(labels, scores)
    _require_anomalous("f1_max", label_array)

    precision, recall, thresholds = precision_recall_curve(label_array, score_array, pos_label=1)

    # The final (precision=1, recall=0) point has no threshold, so it is left out.
    precision = precision[: thresholds.size]
    recall = recall[: thresholds.size]

    # A point with precision and recall both 0 has F1 0/0, which counts as 0.
    denominator = precision + recall
    f1 = np.zeros_like(denominator)
    defined = denominator > 0
    f1[defined] = 2.0 * precision[defined] * recall[defined] / denominator[defined]

    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def fit_f1_threshold(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Fit the decision threshold that maximises F1 on one labelled fold.

    Apply the result to another fold with :func:`f1_at_threshold` or
    :func:`gmean_at_threshold`, so the reported score does not come from the data that chose
    the threshold.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    scores : array-like of float, shape (n,)
        Anomaly scores, higher means more anomalous.

    Returns
    -------
    float
        The threshold of :func:`f1_max`, in score units.

    Raises
    ------
    AdrobustError
        If an input is invalid, the lengths differ, or no label is anomalous.
    """
    _, threshold = f1_max(labels, scores)
    return threshold


def _confusion_counts(
    labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], threshold: float
) -> tuple[int, int, int, int]:
    """Count true positives, false positives, false negatives and true negatives.

    Parameters
    ----------
    labels : numpy.ndarray of int64, shape (n,)
        Validated labels.
    scores : numpy.ndarray of float64, shape (n,)
        Validated scores.
    threshold : float
        An image is predicted anomalous when its score is at least this value.

    Returns
    -------
    tuple of int
        ``(tp, fp, fn, tn)``.
    """
    predicted = scores >= threshold
    actual = labels == 1
    true_positives = int(np.sum(predicted & actual))
    false_positives = int(np.sum(predicted & ~actual))
    false_negatives = int(np.sum(~predicted & actual))
    true_negatives = int(np.sum(~predicted & ~actual))
    return true_positives, false_positives, false_negatives, true_negatives


def f1_at_threshold(labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> float:
    """Compute F1 of the decision ``score >= threshold``.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    scores : array-like of float, shape (n,)
        Anomaly scores, higher means more anomalous.
    threshold : float
        Decision threshold in score units.

    Returns
    -------
    float
        F1 = 2 TP / (2 TP + FP + FN) in [0, 1]. With no true and no predicted anomalies the
        ratio is 0/0, and the function returns 0.

    Raises
    ------
    AdrobustError
        If an input is invalid or the lengths differ.
    """
    label_array, score_array = _labels_and_scores(labels, scores)
    threshold_value = _as_threshold("threshold", threshold)

    true_positives, false_positives, false_negatives, _ = _confusion_counts(
        label_array, score_array, threshold_value
    )

    denominator = 2 * true_positives + false_positives + false_negatives
    if denominator == 0:
        return 0.0
    return 2.0 * true_positives / denominator


def gmean_at_threshold(labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> float:
    """Compute the geometric mean of TPR and TNR for the decision ``score >= threshold``.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    scores : array-like of float, shape (n,)
        Anomaly scores, higher means more anomalous.
    threshold : float
        Decision threshold in score units.

    Returns
    -------
    float
        G-mean = sqrt(TPR * TNR) in [0, 1].

    Raises
    ------
    AdrobustError
        If an input is invalid, the lengths differ, or only one class is present (TPR or TNR
        would be undefined).
    """
    label_array, score_array = _labels_and_scores(labels, scores)
    threshold_value = _as_threshold("threshold", threshold)
    _require_both_classes("gmean_at_threshold", label_array)

    true_positives, false_positives, false_negatives, true_negatives = _confusion_counts(
        label_array, score_array, threshold_value
    )

    true_positive_rate = true_positives / (true_positives + false_negatives)
    true_negative_rate = true_negatives / (true_negatives + false_positives)
    return math.sqrt(true_positive_rate * true_negative_rate)
