"""FGSM in pixel space and the attack objectives whose gradients it follows.

FGSM (Goodfellow et al., 2015) takes one step of size ``eps`` along the sign of the loss gradient
and clamps the result to the valid pixel range: ``clamp(x + eps * sign(grad), 0, 1)``. The budget
is an L-infinity radius in [0, 1] pixel units, the convention of torchattacks, Foolbox and
AutoAttack.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pytest_adrobust.errors import AdrobustError

ATTACKS: Final = ("score", "surrogate")


def check_eps(eps: float) -> float:
    """Return ``eps`` as a float after checking it is a finite budget in [0, 1]."""
    try:
        value = math.nan if isinstance(eps, bool) else float(eps)
    except (TypeError, ValueError):
        value = math.nan
    if not np.isfinite(value) or not 0.0 <= value <= 1.0:
        raise AdrobustError(f"invalid eps {eps!r}: an L-infinity budget must lie in [0, 1] pixel units, e.g. 4/255")
    return value


def fgsm(images: torch.Tensor, gradient_sign: torch.Tensor, eps: float) -> torch.Tensor:
    """Return ``clamp(images + eps * gradient_sign, 0, 1)``.

    Parameters
    ----------
    images : torch.Tensor
        Clean images in [0, 1], any shape.
    gradient_sign : torch.Tensor
        Sign of the loss gradient (values in {-1, 0, 1}), same shape as ``images``.
    eps : float
        L-infinity budget in [0, 1].

    Returns
    -------
    torch.Tensor
        Attacked images, inside the L-infinity ball of radius ``eps`` around ``images`` and in [0, 1].
    """
    eps = check_eps(eps)
    if gradient_sign.shape != images.shape:
        raise AdrobustError(
            f"gradient_sign has shape {tuple(gradient_sign.shape)} but images have {tuple(images.shape)}"
        )
    return (images + eps * gradient_sign.to(images.dtype)).clamp_(0.0, 1.0)


def random_sign(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Return uniformly random signs in {-1, 1} as ``int8``, the noise control for a gradient attack."""
    bits = torch.randint(0, 2, tuple(shape), generator=generator, dtype=torch.int8)
    return bits * 2 - 1


def score_attack_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the loss whose ascent raises the scores of normal images and lowers anomalous ones.

    ``labels`` is 1 for anomalous and 0 for normal images. Both directions push the two classes
    toward each other, which is what lowers AUROC.
    """
    direction = 1.0 - 2.0 * labels.to(scores.dtype)
    return (direction * scores).sum()


class SurrogateHead:
    """Logistic-regression head on frozen pooled features, the attack target of the surrogate attack.

    The head is fitted with scikit-learn on standardised features. Its loss, binary cross-entropy
    against the true label, is evaluated in torch, so that its gradient reaches the input pixels.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, seed: int = 0) -> None:
        if len(np.unique(labels)) != 2:
            raise AdrobustError("the surrogate head needs normal and anomalous images in its training fold")
        scaler = StandardScaler().fit(features)
        model = LogisticRegression(max_iter=1000, random_state=seed).fit(scaler.transform(features), labels)

        # Fold the standardisation into one linear map so the torch loss matches scikit-learn exactly.
        scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
        weight = model.coef_[0] / scale
        self.weight = torch.as_tensor(weight, dtype=torch.float32)
        self.bias = float(model.intercept_[0] - np.dot(weight, scaler.mean_))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Return the head's logits ``(B,)`` for pooled features ``(B, D)``."""
        return features @ self.weight.to(features.device) + self.bias

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the summed binary cross-entropy of the head against ``labels``."""
        return F.binary_cross_entropy_with_logits(
            self.logits(features), labels.to(features.dtype), reduction="sum"
        )
