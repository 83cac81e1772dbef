"""Tests for FGSM, the random-sign control and the attack objectives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pytest_adrobust.attacks import SurrogateHead, check_eps, fgsm, random_sign, score_attack_loss
from pytest_adrobust.errors import AdrobustError
from tests.helpers import random_images, tiny_detector

# float32 rounding of x + eps * sign can overshoot the exact budget by a few float32 ulps near 1.0 (1.2e-7 each).
ROUNDING = 1e-6

IMAGE_SHAPE = (2, 3, 4, 5)
pixels = arrays(np.float32, IMAGE_SHAPE, elements=st.floats(0.0, 1.0, width=32))
signs = arrays(np.int8, IMAGE_SHAPE, elements=st.sampled_from([-1, 0, 1]))
budgets = st.floats(0.0, 1.0, allow_nan=False)


# fgsm and check_eps


@settings(max_examples=200, deadline=None)
@given(images=pixels, sign=signs, eps=budgets)
def test_fgsm_stays_in_pixel_range(images: np.ndarray, sign: np.ndarray, eps: float) -> None:
    attacked = fgsm(torch.from_numpy(images), torch.from_numpy(sign), eps)

    assert attacked.min() >= 0.0
    assert attacked.max() <= 1.0


@settings(max_examples=200, deadline=None)
@given(images=pixels, sign=signs, eps=budgets)
def test_fgsm_stays_in_budget(images: np.ndarray, sign: np.ndarray, eps: float) -> None:
    clean = torch.from_numpy(images)

    attacked = fgsm(clean, torch.from_numpy(sign), eps)

    assert (attacked - clean).abs().max() <= eps + ROUNDING


def test_fgsm_moves_along_sign() -> None:
    clean = torch.full((1, 3, 2, 2), 0.5)
    sign = torch.tensor([1, -1, 0, 1] * 3, dtype=torch.int8).view(1, 3, 2, 2)

    attacked = fgsm(clean, sign, 0.25)

    torch.testing.assert_close(attacked, 0.5 + 0.25 * sign.float())


def test_fgsm_zero_eps_is_identity() -> None:
    clean = random_images(2, seed=1)
    sign = random_sign(clean.shape, torch.Generator().manual_seed(2))

    attacked = fgsm(clean, sign, 0.0)

    assert torch.equal(attacked, clean)


def test_fgsm_leaves_input_untouched() -> None:
    clean = random_images(1, seed=3)
    copy = clean.clone()

    fgsm(clean, torch.ones_like(clean), 0.5)

    assert torch.equal(clean, copy)


def test_fgsm_shape_mismatch_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"gradient_sign has shape \(1, 3, 4, 4\)"):
        fgsm(torch.zeros(2, 3, 4, 4), torch.zeros(1, 3, 4, 4), 0.1)


@pytest.mark.parametrize("eps", [0, 0.0, 4 / 255, 1, 1.0])
def test_check_eps_accepts_budget(eps: float) -> None:
    assert check_eps(eps) == float(eps)


@pytest.mark.parametrize("eps", [-1e-9, -0.5, 1.0000001, 2.0, math.nan, math.inf, -math.inf])
def test_check_eps_rejects_value(eps: float) -> None:
    with pytest.raises(AdrobustError, match=f"invalid eps {eps!r}"):
        check_eps(eps)


@pytest.mark.parametrize("eps", [-0.1, 1.5, math.nan])
def test_fgsm_rejects_bad_eps(eps: float) -> None:
    images = torch.zeros(1, 3, 2, 2)

    with pytest.raises(AdrobustError, match="invalid eps"):
        fgsm(images, torch.ones_like(images), eps)


# random_sign


def test_random_sign_values() -> None:
    signs_drawn = random_sign((4, 3, 8, 8), torch.Generator().manual_seed(0))

    assert signs_drawn.shape == (4, 3, 8, 8)
    assert set(signs_drawn.unique().tolist()) == {-1, 1}


def test_random_sign_balanced() -> None:
    signs_drawn = random_sign((100, 100), torch.Generator().manual_seed(1))

    # The mean of 10 000 fair signs has a standard deviation of 0.01, so 0.05 is five sigma.
    assert abs(signs_drawn.float().mean().item()) < 0.05


def test_random_sign_seeded() -> None:
    first = random_sign((3, 16, 16), torch.Generator().manual_seed(5))
    again = random_sign((3, 16, 16), torch.Generator().manual_seed(5))
    other = random_sign((3, 16, 16), torch.Generator().manual_seed(6))

    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# score_attack_loss


def test_score_loss_gradient_direction() -> None:
    scores = torch.tensor([0.2, 0.7, 0.4, 0.9], requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])

    score_attack_loss(scores, labels).backward()

    assert scores.grad is not None
    assert scores.grad.tolist() == [1.0, -1.0, 1.0, -1.0]


def test_score_loss_step_narrows_gap() -> None:
    # A toy differentiable score: the squared distance of each image from mid-grey.
    images = torch.tensor([[0.3, 0.6], [0.8, 0.1]], requires_grad=True)
    labels = torch.tensor([0, 1])

    def toy_score(values: torch.Tensor) -> torch.Tensor:
        return ((values - 0.5) ** 2).sum(dim=1)

    score_attack_loss(toy_score(images), labels).backward()
    assert images.grad is not None
    attacked = fgsm(images.detach(), images.grad.sign(), 0.05)

    before = toy_score(images.detach())
    after = toy_score(attacked)
    assert after[0] > before[0]
    assert after[1] < before[1]


# SurrogateHead


def surrogate_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(40, 6)`` features with a constant column and labels whose class 1 is shifted."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], 20)
    features = rng.normal(size=(40, 6)) * np.array([1.0, 3.0, 0.2, 1.0, 5.0, 1.0])
    features[labels == 1, :2] += 1.0
    features[:, 5] = 0.25
    return features, labels


def test_surrogate_logits_match_sklearn() -> None:
    features, labels = surrogate_data(seed=0)
    scaler = StandardScaler().fit(features)
    reference = LogisticRegression(max_iter=1000, random_state=0).fit(scaler.transform(features), labels)

    head = SurrogateHead(features, labels, seed=0)

    logits = head.logits(torch.as_tensor(features, dtype=torch.float32))
    expected = reference.decision_function(scaler.transform(features))
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4, rtol=1e-5)


def test_surrogate_loss_matches_bce() -> None:
    features, labels = surrogate_data(seed=1)
    scaler = StandardScaler().fit(features)
    reference = LogisticRegression(max_iter=1000, random_state=0).fit(scaler.transform(features), labels)
    expected_logits = torch.as_tensor(reference.decision_function(scaler.transform(features)), dtype=torch.float32)
    target = torch.as_tensor(labels)

    loss = SurrogateHead(features, labels).loss(torch.as_tensor(features, dtype=torch.float32), target)

    expected = F.binary_cross_entropy_with_logits(expected_logits, target.float(), reduction="sum")
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-5)


def test_surrogate_loss_reaches_features() -> None:
    features, labels = surrogate_data(seed=2)
    head = SurrogateHead(features, labels)
    inputs = torch.as_tensor(features, dtype=torch.float32).requires_grad_(True)

    head.loss(inputs, torch.as_tensor(labels)).backward()

    assert inputs.grad is not None
    assert inputs.grad.abs().sum() > 0


def test_surrogate_one_class_rejected() -> None:
    features, _ = surrogate_data(seed=3)

    with pytest.raises(AdrobustError, match="needs normal and anomalous images"):
        SurrogateHead(features, np.zeros(40, dtype=int))


# The attack on the detector


def test_score_attack_raises_normal_score() -> None:
    detector = tiny_detector(seed=0)
    references = random_images(3, seed=10)
    detector.fit(references)

    # A reference with mild noise is a normal image that the detector already scores low.
    noise = 0.02 * torch.randn(references[:1].shape, generator=torch.Generator().manual_seed(11))
    normal = (references[:1] + noise).clamp(0.0, 1.0).requires_grad_(True)

    scores, _ = detector.score_and_embed(normal)
    score_attack_loss(scores, torch.zeros(1)).backward()
    assert normal.grad is not None
    attacked = fgsm(normal.detach(), normal.grad.sign(), 4 / 255)
    control = fgsm(normal.detach(), random_sign(normal.shape, torch.Generator().manual_seed(12)), 4 / 255)

    clean_score = detector.score(normal.detach()).item()
    attacked_score = detector.score(attacked).item()
    control_score = detector.score(control).item()
    assert attacked_score > clean_score
    assert attacked_score > control_score


def test_score_attack_follows_label() -> None:
    # Averaging every patch distance keeps the score smooth, so one small step moves it the way
    # its gradient predicts. With top-1% pooling, another patch can overtake the attacked maximum.
    detector = tiny_detector(seed=0, top_fraction=1.0)
    detector.fit(random_images(3, seed=10))
    image = random_images(1, seed=20)

    attacked: dict[float, float] = {}
    for label in (0.0, 1.0):
        pixels = image.clone().requires_grad_(True)
        scores, _ = detector.score_and_embed(pixels)
        score_attack_loss(scores, torch.tensor([label])).backward()
        assert pixels.grad is not None
        attacked[label] = detector.score(fgsm(image, pixels.grad.sign(), 2 / 255)).item()

    clean_score = detector.score(image).item()
    assert attacked[0.0] > clean_score
    assert attacked[1.0] < clean_score
