"""Generated image datasets for tests: textured normal parts and the same parts with a defect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Return a smooth grey texture in [0, 255] as ``uint8``: low-frequency noise, like a clean surface."""
    coarse = rng.normal(0.0, 1.0, (size // 8 + 1, size // 8 + 1))
    smooth = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    image = 128 + 20 * smooth + rng.normal(0.0, 3.0, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_parts_dataset(root: Path, normal: int = 12, per_defect: int = 6, size: int = 64, seed: int = 0) -> Path:
    """Write a ``folder:`` dataset: ``good/`` textures and ``scratch/`` and ``spot/`` defects.

    A scratch is a dark diagonal band and a spot a bright square, both large enough to change
    several 14-pixel patches.
    """
    rng = np.random.default_rng(seed)
    for name in ("good", "scratch", "spot"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for index in range(normal):
        Image.fromarray(texture(rng, size)).save(root / "good" / f"{index:03d}.png")
    for index in range(per_defect):
        image = texture(rng, size)
        for offset in range(-3, 4):
            diagonal = np.arange(size)
            columns = np.clip(diagonal + offset, 0, size - 1)
            image[diagonal, columns] = 20
        Image.fromarray(image).save(root / "scratch" / f"{index:03d}.png")
    for index in range(per_defect):
        image = texture(rng, size)
        top, left = rng.integers(4, size - 24, size=2)
        image[top : top + 20, left : left + 20] = 250
        Image.fromarray(image).save(root / "spot" / f"{index:03d}.png")
    return root


# conftest.py for pytester runs: the tiny seeded ViT replaces the default ViT-S/14 detector.
TINY_DETECTOR_CONFTEST = '''
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from pytest_adrobust.detectors import AnomalyDINO


@pytest.fixture(scope="session")
def adrobust_detector(adrobust_device):
    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, num_classes=0, dynamic_img_size=True
    )
    return AnomalyDINO.from_module(vit, "tiny-vit", resolution=56, device=adrobust_device, weights="random-init (seed 0)")
'''


def write_mvtec_tree(root: Path, categories: tuple[str, ...] = ("bottle", "capsule"), size: int = 56) -> Path:
    """Write an MVTec-AD tree: train/good, test/good and test/spot, and ground_truth/spot masks."""
    rng = np.random.default_rng(1)
    for category in categories:
        base = root / category
        for folder in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        for index in range(6):
            Image.fromarray(texture(rng, size)).convert("RGB").save(base / "train" / "good" / f"{index:03d}.png")
        for index in range(4):
            Image.fromarray(texture(rng, size)).convert("RGB").save(base / "test" / "good" / f"{index:03d}.png")
            image = texture(rng, size)
            mask = np.zeros((size, size), dtype=np.uint8)
            image[10:30, 20:40] = 250
            mask[10:30, 20:40] = 255
            Image.fromarray(image).convert("RGB").save(base / "test" / "spot" / f"{index:03d}.png")
            Image.fromarray(mask).save(base / "ground_truth" / "spot" / f"{index:03d}_mask.png")
    return root
