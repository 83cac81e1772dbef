"""Adapters that turn other backbones into the kNN detector: any module that returns patch tokens."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

from pytest_adrobust.detectors.anomalydino import AnomalyDINO
from pytest_adrobust.errors import AdrobustError


class PatchTokenBackbone(nn.Module):
    """Give a module that returns patch tokens or a feature map the backbone interface of AnomalyDINO.

    Parameters
    ----------
    module : nn.Module
        The user's network. It receives ImageNet-normalised images ``(B, 3, H, W)``.
    patch_size : int
        Pixels per patch side; images are cropped to a multiple of it.
    prefix_tokens : int
        Leading tokens that are not patches (class or register tokens), dropped before matching.
    forward : callable, optional
        Function ``forward(module, images)`` that returns the features, when calling ``module``
        itself does not. The output may be tokens ``(B, T, D)`` or a feature map ``(B, D, h, w)``.
    """

    def __init__(
        self,
        module: nn.Module,
        patch_size: int,
        prefix_tokens: int = 0,
        forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise AdrobustError(f"invalid patch_size {patch_size!r}: use the backbone's patch size in pixels")
        if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
            raise AdrobustError(f"invalid prefix_tokens {prefix_tokens!r}: use the number of non-patch tokens, >= 0")
        self.module = module
        self.num_prefix_tokens = prefix_tokens
        self.patch_embed = SimpleNamespace(patch_size=(patch_size, patch_size))
        self._forward = forward

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Return ``(B, T, D)`` tokens from the wrapped module, flattening a feature map if needed."""
        output = self._forward(self.module, images) if self._forward is not None else self.module(images)
        if not isinstance(output, torch.Tensor):
            raise AdrobustError(
                f"the backbone returned {type(output).__name__}, not a tensor; pass forward= to select the patch features"
            )
        if output.ndim == 4:
            return output.flatten(2).transpose(1, 2)
        if output.ndim == 3:
            return output
        raise AdrobustError(
            f"the backbone returned features of shape {tuple(output.shape)}; expected tokens (B, T, D) or a "
            "feature map (B, D, h, w)"
        )


def from_token_module(
    module: nn.Module,
    name: str,
    *,
    patch_size: int,
    resolution: int,
    prefix_tokens: int = 0,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    weights: str = "user module",
    top_fraction: float = 0.01,
) -> AnomalyDINO:
    """Build the kNN detector around any torch module that returns patch tokens or a feature map.

    The module is put in eval mode and frozen; gradients still reach the input images. ``weights``
    describes where the module's weights came from, for summaries and reports.
    """
    backbone = PatchTokenBackbone(module, patch_size, prefix_tokens, forward)
    return AnomalyDINO.from_module(
        backbone, name, resolution=resolution, device=device, top_fraction=top_fraction, weights=weights
    )
