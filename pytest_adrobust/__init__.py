"""pytest plugin that tests DINOv2 kNN anomaly detectors for FGSM robustness and calibration."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pytest_adrobust.errors import AdrobustError, AdrobustUsageError, AdrobustWarning

try:
    __version__ = version("pytest-adrobust")
except PackageNotFoundError:  # Imported from a source tree that was never installed.
    __version__ = "0+unknown"

__all__ = ["AdrobustError", "AdrobustUsageError", "AdrobustWarning", "__version__"]
