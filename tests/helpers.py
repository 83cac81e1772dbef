"""Small seeded models shared by the detector, weights and attack tests.

The tiny ViT keeps the structure of a DINOv2 backbone (14-pixel patches, a class token, optional
register tokens, a final norm) at a size that runs in milliseconds on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from pytest_adrobust.detectors import AnomalyDINO

TINY_NAME = "tiny-vit"
"""Backbone name the tiny detector reports in ``describe()`` and hashes into its fingerprint."""

_VIT_KEYWORDS = ("embed_dim", "depth", "num_reg_tokens")


def tiny_vit(seed: int = 0, embed_dim: int = 32, depth: int = 2, num_reg_tokens: int = 0) -> VisionTransformer:
    """Build a randomly initialised timm ViT with 14-pixel patches and 56-pixel default images.

    Parameters
    ----------
    seed : int
        Seed of the initialisation; the global torch generator is restored afterwards.
    embed_dim : int
        Token width ``D``; must be divisible by the two attention heads.
    depth : int
        Number of transformer blocks.
    num_reg_tokens : int
        Register tokens after the class token, so the model has ``1 + num_reg_tokens`` prefix
        tokens. With registers, the position embedding covers the patches only, as in timm's
        ``*_reg4_dinov2`` backbones.

    Returns
    -------
    VisionTransformer
        Model in eval mode whose ``forward_features`` returns ``(B, 1 + num_reg_tokens + P, D)``
        tokens after the final norm, with ``P = (H / 14) * (W / 14)`` for any image size divisible by 14.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(
            img_size=56,
            patch_size=14,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=2,
            num_classes=0,
            dynamic_img_size=True,
            final_norm=True,
            reg_tokens=num_reg_tokens,
            no_embed_class=num_reg_tokens > 0,
        )
    return model.eval()


def tiny_detector(seed: int = 0, resolution: int = 56, **kw: Any) -> AnomalyDINO:
    """Wrap :func:`tiny_vit` as an :class:`AnomalyDINO` detector without fitting it.

    Parameters
    ----------
    seed : int
        Seed of the tiny ViT's initialisation.
    resolution : int
        Smaller image edge in pixels that the detector reports.
    **kw : Any
        ``embed_dim``, ``depth`` and ``num_reg_tokens`` go to :func:`tiny_vit`; every other
        keyword (``device``, ``top_fraction``, ``weights``) goes to :meth:`AnomalyDINO.from_module`.

    Returns
    -------
    AnomalyDINO
        Detector on the CPU unless ``device`` names another device. Call ``fit`` before scoring.
    """
    vit_kwargs = {key: kw.pop(key) for key in _VIT_KEYWORDS if key in kw}
    model = tiny_vit(seed, **vit_kwargs)
    return AnomalyDINO.from_module(model, TINY_NAME, resolution=resolution, **kw)


def random_images(count: int, seed: int, size: int = 56) -> torch.Tensor:
    """Return ``(count, 3, size, size)`` float32 images with uniform pixel values in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=generator)


def random_unit_features(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Return float32 Gaussian vectors of ``shape``, L2-normalised along the last axis."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(*shape, generator=generator)
    return torch.nn.functional.normalize(features, dim=-1)
