"""Detectors: the interface the protocol needs, the AnomalyDINO reference implementation and adapters."""

from pytest_adrobust.detectors.adapters import PatchTokenBackbone, from_token_module
from pytest_adrobust.detectors.anomalydino import DEFAULT_BACKBONE, AnomalyDINO
from pytest_adrobust.detectors.base import Detector, validate_detector
from pytest_adrobust.detectors.weights import WeightsInfo, resolve_weights

__all__ = [
    "DEFAULT_BACKBONE",
    "AnomalyDINO",
    "Detector",
    "PatchTokenBackbone",
    "WeightsInfo",
    "from_token_module",
    "resolve_weights",
    "validate_detector",
]
