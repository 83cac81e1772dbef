"""The interface the evaluation needs from a detector."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Detector(Protocol):
    """Few-shot anomaly detector that the robustness protocol can fit, score and attack.

    Images are float tensors ``(B, 3, H, W)`` in [0, 1] at the detector's resolution, so an
    L-infinity budget is measured in pixel units. Any normalisation belongs inside the detector.
    """

    resolution: int
    """Length in pixels of the smaller image edge that images are resized to on load."""
    patch_size: int
    """Images are cropped to a multiple of this many pixels on each side."""
    device: torch.device
    """Device the images must be moved to before calling the detector."""

    def fit(self, references: torch.Tensor) -> None:
        """Build the reference memory from normal images ``(R, 3, H, W)``."""
        ...

    def score_and_embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return anomaly scores ``(B,)`` and pooled features ``(B, D)``, both differentiable in ``images``."""
        ...

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Return anomaly scores ``(B,)`` without gradients; higher means more anomalous."""
        ...

    def fingerprint(self) -> str:
        """Return a string that changes whenever the weights or the scoring settings change."""
        ...

    def describe(self) -> dict[str, str]:
        """Return the ``backbone`` and ``weights`` descriptions for summaries and reports."""
        ...


_METHODS = ("fit", "score_and_embed", "score", "fingerprint", "describe")


def validate_detector(detector: object) -> None:
    """Check that ``detector`` offers the :class:`Detector` interface and is in eval mode.

    Raises
    ------
    AdrobustError
        When a method or attribute is missing, or the resolution or patch size is not a positive
        integer. Also when a torch module inside the detector is in train mode, because dropout
        and batch-norm updates would make clean and attacked passes see different networks.
    """
    from torch import nn

    from pytest_adrobust.errors import AdrobustError

    name = type(detector).__name__
    missing = [method for method in _METHODS if not callable(getattr(detector, method, None))]
    missing += [attribute for attribute in ("resolution", "patch_size", "device") if not hasattr(detector, attribute)]
    if missing:
        raise AdrobustError(
            f"detector {name} lacks {', '.join(missing)}; implement pytest_adrobust.detectors.Detector "
            "or wrap a backbone with pytest_adrobust.detectors.from_token_module"
        )
    for attribute in ("resolution", "patch_size"):
        value = getattr(detector, attribute)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AdrobustError(f"detector {name} has invalid {attribute} {value!r}: use a positive integer")
    if isinstance(detector, nn.Module):
        training = [module_name or name for module_name, module in detector.named_modules() if module.training]
        if training:
            raise AdrobustError(
                f"detector {name} is in train mode ({', '.join(training[:3])}); call .eval() on it, because "
                "dropout or batch-norm updates make clean and attacked passes see different networks"
            )
