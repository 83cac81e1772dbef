"""Detectors: the interface the protocol needs and the AnomalyDINO reference implementation."""

from pytest_adrobust.detectors.anomalydino import DEFAULT_BACKBONE, AnomalyDINO
from pytest_adrobust.detectors.base import Detector
from pytest_adrobust.detectors.weights import WeightsInfo, resolve_weights

__all__ = ["DEFAULT_BACKBONE", "AnomalyDINO", "Detector", "WeightsInfo", "resolve_weights"]
