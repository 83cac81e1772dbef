"""Test a detector of your own: override the ``adrobust_detector`` fixture.

Here the "model" is a small convolutional network whose stride-14 feature map serves as patch
tokens. In a model repository, build your trained network instead and describe its weights.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_adrobust.detectors import from_token_module


class PartNet(nn.Module):
    """Stand-in for a team's own backbone: two convolutions, one feature vector per 14-pixel patch."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=7, stride=7),
            nn.GELU(),
            nn.Conv2d(32, 64, kernel_size=2, stride=2),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


@pytest.fixture(scope="session")
def adrobust_detector(adrobust_config, adrobust_device):
    torch.manual_seed(0)
    return from_token_module(
        PartNet(),
        "partnet-v1",
        patch_size=14,
        resolution=adrobust_config.resolution,
        device=adrobust_device,
        weights="random-init (seed 0)",
    )
