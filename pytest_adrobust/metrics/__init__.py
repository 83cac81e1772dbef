"""Detection, calibration and predictive-uncertainty metrics for anomaly scores.

Every metric takes 1-D array-likes, uses 1 for anomalous and 0 for normal labels, treats a
higher score as more anomalous, and raises :class:`pytest_adrobust.errors.AdrobustError` on
invalid input.
"""

from __future__ import annotations

from pytest_adrobust.metrics.calibration import (
    PlattScaler,
    ReliabilityBins,
    brier_score,
    expected_calibration_error,
    expected_calibration_error_floor,
    minmax_scale,
    negative_log_likelihood,
    reliability_bins,
)
from pytest_adrobust.metrics.detection import (
    auroc,
    average_precision,
    f1_at_threshold,
    f1_max,
    fit_f1_threshold,
    gmean_at_threshold,
)
from pytest_adrobust.metrics.uncertainty import (
    binary_entropy,
    entropy_auroc,
    flag_rate,
    mann_whitney_p,
)

__all__ = [
    "PlattScaler",
    "ReliabilityBins",
    "auroc",
    "average_precision",
    "binary_entropy",
    "brier_score",
    "entropy_auroc",
    "expected_calibration_error",
    "expected_calibration_error_floor",
    "f1_at_threshold",
    "f1_max",
    "fit_f1_threshold",
    "flag_rate",
    "gmean_at_threshold",
    "mann_whitney_p",
    "minmax_scale",
    "negative_log_likelihood",
    "reliability_bins",
]
