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
