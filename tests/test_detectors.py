"""Tests for the AnomalyDINO detector and its nearest-neighbour patch distances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pytest_adrobust.detectors import DEFAULT_BACKBONE, AnomalyDINO, Detector
from pytest_adrobust.detectors.knn import FaissBank, pool_image_scores, top_fraction_count, torch_patch_distances
from pytest_adrobust.errors import AdrobustError
from tests.helpers import TINY_NAME, random_images, random_unit_features, tiny_detector, tiny_vit

# Written out here rather than imported, so a wrong constant in the product fails the test.
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def fitted() -> AnomalyDINO:
    """Return a tiny detector fitted on two random reference images, shared read-only by the module."""
    detector = tiny_detector(seed=0)
    detector.fit(random_images(2, seed=100))
    return detector


def brute_force_distances(features: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Return ``1 - max dot product`` per patch of ``(B, P, D)`` features, by loops in float64."""
    batch, patches, _ = features.shape
    result = torch.empty(batch, patches, dtype=torch.float64)
    for image in range(batch):
        for patch in range(patches):
            query = features[image, patch].double()
            best = max(float(query @ row.double()) for row in bank)
            result[image, patch] = 1.0 - best
    return result


def sorted_top_mean(distances: torch.Tensor, fraction: float) -> torch.Tensor:
    """Return the mean of the ``max(1, floor(P * fraction))`` largest distances per row, via a full sort."""
    count = max(1, math.floor(distances.shape[1] * fraction))
    ordered = torch.sort(distances, dim=1, descending=True).values
    return ordered[:, :count].mean(dim=1)


# kNN distances and pooling


def test_torch_distances_match_brute_force() -> None:
    features = random_unit_features((2, 5, 8), seed=1)
    bank = random_unit_features((13, 8), seed=2)

    result = torch_patch_distances(features, bank)

    torch.testing.assert_close(result.double(), brute_force_distances(features, bank), atol=1e-6, rtol=0)


def test_torch_distances_chunked_bank() -> None:
    features = random_unit_features((2, 5, 8), seed=3)
    bank = random_unit_features((50, 8), seed=4)

    chunked = torch_patch_distances(features, bank, chunk=7)

    torch.testing.assert_close(chunked.double(), brute_force_distances(features, bank), atol=1e-6, rtol=0)


def test_faiss_matches_torch_distances() -> None:
    features = random_unit_features((3, 16, 24), seed=5)
    bank = random_unit_features((200, 24), seed=6)

    from_faiss = FaissBank(bank).patch_distances(features)
    from_torch = torch_patch_distances(features, bank, chunk=32)

    assert from_faiss.shape == (3, 16)
    torch.testing.assert_close(from_faiss, from_torch, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("patches", "fraction", "expected"),
    [(256, 0.01, 2), (50, 0.01, 1), (1024, 0.01, 10), (16, 0.01, 1), (100, 1.0, 100), (10, 0.5, 5)],
)
def test_top_fraction_count_table(patches: int, fraction: float, expected: int) -> None:
    assert top_fraction_count(patches, fraction) == expected


def test_top_fraction_count_float_rounding() -> None:
    assert top_fraction_count(100, 0.29) == 29


@pytest.mark.parametrize(("patches", "fraction"), [(256, 0.01), (50, 0.01), (1024, 0.01), (40, 0.25)])
def test_pool_scores_match_sorting(patches: int, fraction: float) -> None:
    generator = torch.Generator().manual_seed(patches)
    distances = torch.rand(4, patches, generator=generator) * 2.0

    pooled = pool_image_scores(distances, fraction)

    torch.testing.assert_close(pooled, sorted_top_mean(distances, fraction))


def test_pool_scores_single_patch_is_max() -> None:
    distances = torch.tensor([[0.1, 0.7, 0.3] + [0.0] * 47])

    pooled = pool_image_scores(distances, 0.01)

    assert pooled.tolist() == pytest.approx([0.7])


# Scoring paths and gradients


def test_detector_satisfies_protocol() -> None:
    assert isinstance(tiny_detector(), Detector)


def test_faiss_score_matches_torch_score(fitted: AnomalyDINO) -> None:
    images = random_images(3, seed=200)

    no_grad_scores = fitted.score(images)
    torch_scores, embeddings = fitted.score_and_embed(images)

    assert fitted._faiss is not None, "a CPU detector should score through faiss"
    assert no_grad_scores.shape == (3,)
    assert embeddings.shape == (3, 32)
    torch.testing.assert_close(no_grad_scores, torch_scores.detach(), atol=1e-5, rtol=0)


def test_reference_image_scores_zero(fitted: AnomalyDINO) -> None:
    references = random_images(2, seed=100)
    other = random_images(1, seed=300)

    reference_scores = fitted.score(references)
    other_score = fitted.score(other)

    torch.testing.assert_close(reference_scores, torch.zeros(2), atol=1e-5, rtol=0)
    assert float(other_score) > 1e-3


def test_score_gradient_reaches_input(fitted: AnomalyDINO) -> None:
    images = random_images(2, seed=400).requires_grad_(True)

    scores, _ = fitted.score_and_embed(images)
    scores.sum().backward()

    assert images.grad is not None
    assert torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0


def test_backbone_gets_no_gradient() -> None:
    detector = tiny_detector(seed=1)
    detector.fit(random_images(1, seed=500))
    images = random_images(1, seed=501).requires_grad_(True)

    scores, _ = detector.score_and_embed(images)
    scores.sum().backward()

    assert not any(parameter.requires_grad for parameter in detector.parameters())
    assert all(parameter.grad is None for parameter in detector.parameters())


def test_train_keeps_eval_mode() -> None:
    detector = tiny_detector()

    returned = detector.train()

    assert returned is detector
    assert not detector.training
    assert not any(module.training for module in detector.modules())


# Patch features


def test_register_tokens_are_dropped() -> None:
    detector = tiny_detector(num_reg_tokens=4)

    features = detector.patch_features(random_images(2, seed=600, size=56)[..., :42, :])

    assert detector.num_prefix_tokens == 5
    assert features.shape == (2, (42 // 14) * (56 // 14), 32)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2, 12))


def test_features_normalised_inside() -> None:
    model = tiny_vit(seed=2, num_reg_tokens=1)
    detector = AnomalyDINO.from_module(model, TINY_NAME, resolution=56)
    images = random_images(2, seed=700)

    features = detector.patch_features(images)

    with torch.no_grad():
        tokens = model.forward_features((images - IMAGENET_MEAN) / IMAGENET_STD)
    expected = F.normalize(tokens[:, 2:], dim=-1)
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)


# Input checks


def test_score_before_fit_rejected() -> None:
    detector = tiny_detector()

    with pytest.raises(AdrobustError, match=r"call fit\(references\) first"):
        detector.score(random_images(1, seed=0))
    with pytest.raises(AdrobustError, match=r"call fit\(references\) first"):
        detector.score_and_embed(random_images(1, seed=0))


@pytest.mark.parametrize("shape", [(3, 56, 56), (1, 1, 56, 56), (1, 4, 56, 56)])
def test_bad_image_shape_rejected(shape: tuple[int, ...]) -> None:
    detector = tiny_detector()

    with pytest.raises(AdrobustError, match=r"\(B, 3, H, W\)") as caught:
        detector.patch_features(torch.zeros(shape))

    assert str(shape) in str(caught.value)


@pytest.mark.parametrize("shape", [(0, 3, 56, 56), (3, 56, 56)])
def test_fit_bad_references_rejected(shape: tuple[int, ...]) -> None:
    detector = tiny_detector()

    with pytest.raises(AdrobustError, match="at least one reference image"):
        detector.fit(torch.zeros(shape))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_bad_top_fraction_rejected(fraction: float) -> None:
    with pytest.raises(AdrobustError, match=f"invalid top_fraction {fraction!r}"):
        tiny_detector(top_fraction=fraction)


def test_small_resolution_rejected() -> None:
    with pytest.raises(AdrobustError, match="invalid resolution 13"):
        AnomalyDINO(weights="random", resolution=13)


def test_unknown_backbone_rejected() -> None:
    with pytest.raises(AdrobustError, match="unknown backbone 'no_such_vit'") as caught:
        AnomalyDINO("no_such_vit", weights="random", resolution=56)

    assert "vit_small_patch14_dinov2" in str(caught.value)


# Fingerprint and description


def test_fingerprint_stable_for_same_weights() -> None:
    first = tiny_detector(seed=3)
    second = tiny_detector(seed=3)

    assert first.fingerprint() == first.fingerprint()
    assert first.fingerprint() == second.fingerprint()


def test_fingerprint_changes_with_weight() -> None:
    original = tiny_detector(seed=3)
    changed = tiny_detector(seed=3)
    with torch.no_grad():
        changed.model.blocks[0].mlp.fc1.weight[0, 0] += 1e-3

    assert original.fingerprint() != changed.fingerprint()


def test_fingerprint_changes_with_settings() -> None:
    base = tiny_detector(seed=3).fingerprint()

    assert tiny_detector(seed=3, top_fraction=0.5).fingerprint() != base
    assert tiny_detector(seed=3, resolution=70).fingerprint() != base
    assert tiny_detector(seed=4).fingerprint() != base


def test_fingerprint_tracks_later_weight_change() -> None:
    detector = tiny_detector(seed=3)
    before = detector.fingerprint()
    with torch.no_grad():
        detector.model.blocks[0].mlp.fc1.weight[0, 0] += 1e-3

    assert detector.fingerprint() != before


def test_describe_wrapped_module() -> None:
    detector = tiny_detector(weights="weights from a test")

    described = detector.describe()

    assert described == {"backbone": TINY_NAME, "weights": "weights from a test"}
    assert not detector.random_init


def test_real_vit_small_random_init() -> None:
    detector = AnomalyDINO(weights="random", resolution=56, seed=0)

    features = detector.patch_features(random_images(1, seed=800))

    assert features.shape == (1, 16, 384)
    assert detector.random_init
    assert detector.describe() == {"backbone": DEFAULT_BACKBONE, "weights": "random-init (seed 0)"}
