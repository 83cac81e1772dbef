"""Tests for AnomalyDINO's zero-shot masking and rotated references, against computations written here.

The independent versions use numpy: a PCA through ``np.linalg.svd``, dilation and erosion by
explicit loops, and a bilinear rotation that mirrors indices the way OpenCV's ``BORDER_DEFAULT``
(reflect-101) does. Only the backbone's ``forward_features`` is shared with the product.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from pytest_adrobust.detectors import AnomalyDINO
from pytest_adrobust.detectors.preprocessing import (
    first_component_projection,
    foreground_mask,
    rotate_images,
    rotated_copies,
)
from pytest_adrobust.errors import AdrobustError
from tests.helpers import random_images, tiny_detector

# Written out here rather than imported, so a wrong constant in the product fails the tests.
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
ANGLES = (0, 45, 90, 135, 180, 225, 270, 315)
THRESHOLD = 10.0
TOKEN_GAIN = 4.0
HEIGHT, WIDTH = 140, 112
ROWS, COLUMNS = HEIGHT // 14, WIDTH // 14


def object_images(count: int, seed: int, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """Return ``(count, 3, height, width)`` images of a textured disc near the centre on a flat background.

    The disc's centre, radius and the background grey vary with ``seed``. Pixel values lie in [0, 1].
    """
    generator = torch.Generator().manual_seed(seed)
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1)
    images = []
    for _ in range(count):
        jitter = torch.rand(3, generator=generator)
        centre_y = height / 2 + (float(jitter[0]) - 0.5) * 20
        centre_x = width / 2 + (float(jitter[1]) - 0.5) * 20
        radius = min(height, width) * (0.15 + 0.1 * float(jitter[2]))
        inside = (((ys - centre_y) ** 2 + (xs - centre_x) ** 2) <= radius**2).float()

        background = 0.2 + 0.05 * torch.rand(3, 1, 1, generator=generator)
        texture = 0.5 + 0.5 * torch.rand(3, height, width, generator=generator)
        images.append(background * (1 - inside) + texture * inside)
    return torch.stack(images)


def masked_detector(seed: int, **kw: object) -> AnomalyDINO:
    """Return a tiny detector whose final layer norm is scaled by ``TOKEN_GAIN``.

    The tiny ViT's tokens have norm sqrt(32), about 5.7, so no projection reaches the fixed
    threshold of 10. Scaling the norm's weight and bias scales every token, which leaves cosine
    distances unchanged and lets the threshold split object from background.
    """
    detector = tiny_detector(seed=seed, **kw)
    with torch.no_grad():
        detector.model.norm.weight.mul_(TOKEN_GAIN)
        detector.model.norm.bias.mul_(TOKEN_GAIN)
    return detector


# Independent computations


def model_tokens(detector: AnomalyDINO, images: torch.Tensor) -> np.ndarray:
    """Return the backbone's raw ``(B, P, D)`` patch tokens as float64, through ``forward_features`` only."""
    with torch.no_grad():
        tokens = detector.model.forward_features((images - IMAGENET_MEAN) / IMAGENET_STD)
    return tokens[:, 1:].double().numpy()


def unit_rows(array: np.ndarray) -> np.ndarray:
    """Return ``array`` divided by the L2 norm of its last axis."""
    return array / np.linalg.norm(array, axis=-1, keepdims=True)


def svd_projection(tokens: np.ndarray) -> np.ndarray:
    """Project ``(P, D)`` tokens on their first principal component, signed as scikit-learn 1.9's PCA does."""
    centred = tokens - tokens.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    component = vt[0]
    component = component * np.sign(component[np.argmax(np.abs(component))])
    return centred @ component


def morphology(mask: np.ndarray, dilate: bool) -> np.ndarray:
    """Dilate or erode a 2-D boolean mask with a 3 x 3 square, ignoring cells outside the grid."""
    rows, columns = mask.shape
    result = np.zeros_like(mask)
    for row in range(rows):
        for column in range(columns):
            window = [
                mask[r, c]
                for r in range(row - 1, row + 2)
                for c in range(column - 1, column + 2)
                if 0 <= r < rows and 0 <= c < columns
            ]
            result[row, column] = any(window) if dilate else all(window)
    return result


def loop_mask(projection: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Return the flattened zero-shot mask of one image from its ``(P,)`` projections."""
    grid = projection.reshape(rows, columns)
    keep = grid > THRESHOLD
    centre = keep[int(rows * 0.2) : int(rows * 0.8), int(columns * 0.2) : int(columns * 0.8)]
    if centre.sum() <= centre.size * 0.35:
        keep = -grid > THRESHOLD

    dilated = morphology(keep, dilate=True)
    closed = morphology(morphology(dilated, dilate=True), dilate=False)
    return closed.reshape(-1)


def reflect_101(index: np.ndarray, size: int) -> np.ndarray:
    """Map integer indices into ``[0, size)`` by mirroring about the first and last sample."""
    period = 2 * (size - 1)
    folded = np.mod(index, period)
    return np.where(folded >= size, period - folded, folded)


def bilinear_rotation(image: np.ndarray, angle: float) -> np.ndarray:
    """Rotate a ``(C, H, W)`` image counter-clockwise about ``((W - 1) / 2, (H - 1) / 2)``."""
    _, height, width = image.shape
    radians = math.radians(angle)
    cosine, sine = math.cos(radians), math.sin(radians)
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")

    # Each output pixel samples the source point that the rotation carries onto it.
    source_x = cosine * (xs - centre_x) - sine * (ys - centre_y) + centre_x
    source_y = sine * (xs - centre_x) + cosine * (ys - centre_y) + centre_y
    left, top = np.floor(source_x), np.floor(source_y)
    weight_x, weight_y = source_x - left, source_y - top

    x0 = reflect_101(left.astype(int), width)
    x1 = reflect_101(left.astype(int) + 1, width)
    y0 = reflect_101(top.astype(int), height)
    y1 = reflect_101(top.astype(int) + 1, height)
    upper = image[:, y0, x0] * (1 - weight_x) + image[:, y0, x1] * weight_x
    lower = image[:, y1, x0] * (1 - weight_x) + image[:, y1, x1] * weight_x
    return upper * (1 - weight_y) + lower * weight_y


def loop_bank(detector: AnomalyDINO, references: torch.Tensor) -> np.ndarray:
    """Return the unit ``(M, D)`` patch features of every reference rotated by each of ``ANGLES``."""
    rotated = [
        bilinear_rotation(reference.double().numpy(), angle) for reference in references for angle in ANGLES
    ]
    tokens = model_tokens(detector, torch.from_numpy(np.stack(rotated)).float())
    return unit_rows(tokens).reshape(-1, tokens.shape[-1])


def loop_patch_distances(detector: AnomalyDINO, bank: np.ndarray, images: torch.Tensor) -> np.ndarray:
    """Return ``(B, P)`` cosine distances to ``bank``, with 0 for patches outside each image's own mask."""
    tokens = model_tokens(detector, images)
    rows, columns = images.shape[2] // 14, images.shape[3] // 14
    distances = 1.0 - (unit_rows(tokens) @ bank.T).max(axis=2)
    masks = np.stack([loop_mask(svd_projection(image_tokens), rows, columns) for image_tokens in tokens])
    return np.where(masks, distances, 0.0)


def top_mean(distances: np.ndarray, fraction: float) -> np.ndarray:
    """Average the ``max(1, floor(P * fraction))`` largest entries of each row."""
    count = max(1, math.floor(distances.shape[1] * fraction))
    return np.sort(distances, axis=1)[:, ::-1][:, :count].mean(axis=1)


# Shared case


@pytest.fixture(scope="module", params=[0, 2], ids=["mask-as-thresholded", "mask-after-sign-flip"])
def case(request: pytest.FixtureRequest) -> tuple[AnomalyDINO, np.ndarray, torch.Tensor]:
    """Return a fitted detector with both options on, its loop-built bank and three test images.

    With backbone seed 0 the object lies on the positive side of the first component, so one
    image keeps it and two keep nothing. With seed 2 it lies on the negative side, so every
    image needs the sign flip.
    """
    detector = masked_detector(request.param, masking=True, rotation=True, top_fraction=0.25)
    references = object_images(2, seed=1)
    detector.fit(references)
    return detector, loop_bank(detector, references), object_images(3, seed=2)


# Scores against the independent computation


def test_scores_match_loop_computation(case: tuple[AnomalyDINO, np.ndarray, torch.Tensor]) -> None:
    detector, bank, images = case

    scores = detector.score(images)

    expected = top_mean(loop_patch_distances(detector, bank, images), 0.25)
    np.testing.assert_allclose(scores.double().numpy(), expected, atol=1e-5, rtol=0)


def test_patch_distances_match_loops(case: tuple[AnomalyDINO, np.ndarray, torch.Tensor]) -> None:
    detector, bank, images = case

    distances = detector.patch_distances(images)

    expected = loop_patch_distances(detector, bank, images)
    np.testing.assert_allclose(distances.double().numpy(), expected, atol=1e-5, rtol=0)


def test_masks_match_loop_masks(case: tuple[AnomalyDINO, np.ndarray, torch.Tensor]) -> None:
    detector, _, images = case

    masks = detector.patch_mask(images)

    tokens = model_tokens(detector, images)
    expected = np.stack([loop_mask(svd_projection(image_tokens), ROWS, COLUMNS) for image_tokens in tokens])
    assert masks.shape == (3, ROWS * COLUMNS)
    np.testing.assert_array_equal(masks.numpy(), expected)


def test_case_masks_are_partial(case: tuple[AnomalyDINO, np.ndarray, torch.Tensor]) -> None:
    detector, _, images = case

    kept_counts = detector.patch_mask(images).sum(dim=1)

    # Guards the other tests of this case against masks that keep every patch or none, which
    # would not exercise the thresholding.
    assert int(kept_counts.min()) < ROWS * COLUMNS
    assert int(kept_counts.max()) > 0


def test_faiss_matches_torch_masked(case: tuple[AnomalyDINO, np.ndarray, torch.Tensor]) -> None:
    detector, _, images = case

    faiss_scores = detector.score(images)
    torch_scores, _ = detector.score_and_embed(images)

    assert detector._faiss is not None, "a CPU detector should score through faiss"
    torch.testing.assert_close(faiss_scores, torch_scores.detach(), atol=1e-5, rtol=0)


def test_bank_matches_loop_rotations(case: tuple[AnomalyDINO, np.ndarray, torch.Tensor]) -> None:
    detector, bank, _ = case

    assert detector.bank is not None
    np.testing.assert_allclose(detector.bank.double().numpy(), bank, atol=1e-5, rtol=0)


# Masking details


def test_projection_matches_sklearn_pca() -> None:
    detector = masked_detector(2)
    tokens = model_tokens(detector, object_images(2, seed=3))

    projection = first_component_projection(torch.from_numpy(tokens).float())

    for image in range(2):
        # The randomised solver is what AnomalyDINO calls, so its sign convention is the target.
        expected = PCA(n_components=1, svd_solver="randomized", random_state=0).fit_transform(
            tokens[image].astype(np.float32)
        )
        np.testing.assert_allclose(projection[image].numpy(), expected[:, 0], atol=1e-3, rtol=0)


def designed_tokens(values: np.ndarray) -> torch.Tensor:
    """Return ``(1, P, 8)`` tokens whose first principal component is the first axis, carrying ``values``.

    A small fixed pattern on the other axes keeps the covariance full rank without competing
    with the first axis.
    """
    flat = values.reshape(-1)
    generator = np.random.default_rng(0)
    tokens = np.zeros((flat.size, 8))
    tokens[:, 0] = flat
    tokens[:, 1:] = 1e-3 * generator.standard_normal((flat.size, 7))
    return torch.from_numpy(tokens).float().unsqueeze(0)


def test_closing_fills_one_column_gap() -> None:
    values = np.zeros((10, 10))
    values[:, :4] = 50.0
    values[:, 7:] = 50.0

    mask = foreground_mask(designed_tokens(values), (10, 10)).reshape(10, 10)

    # Dilation alone leaves column 5 empty, and only the closing fills it.
    assert bool(mask[:, 5].all())
    assert bool(mask.all())


def test_closing_keeps_grid_edges() -> None:
    values = np.zeros((10, 10))
    values[:, :5] = 50.0

    mask = foreground_mask(designed_tokens(values), (10, 10)).reshape(10, 10)

    # Columns 0 to 5 after the dilation. An erosion that treated cells outside the grid as
    # background would drop column 0 again.
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[:, :6] = True
    assert torch.equal(mask, expected)


def test_sparse_centre_flips_sign() -> None:
    values = np.zeros((10, 10))
    values[4:6, 4:6] = -50.0

    mask = foreground_mask(designed_tokens(values), (10, 10)).reshape(10, 10)

    # Nothing passes the threshold on the positive side, so the object on the negative side is kept.
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[3:7, 3:7] = True
    assert torch.equal(mask, expected)


def test_mask_recomputed_after_attack() -> None:
    detector = masked_detector(2, masking=True, top_fraction=0.25)
    detector.fit(object_images(2, seed=1))
    clean = object_images(3, seed=2).requires_grad_(True)
    scores, _ = detector.score_and_embed(clean)
    scores.sum().backward()
    assert clean.grad is not None
    attacked = (clean.detach() + 16 / 255 * clean.grad.sign()).clamp(0.0, 1.0)

    clean_mask = detector.patch_mask(clean.detach())
    attacked_mask = detector.patch_mask(attacked)

    tokens = model_tokens(detector, attacked)
    expected = np.stack([loop_mask(svd_projection(image_tokens), ROWS, COLUMNS) for image_tokens in tokens])
    np.testing.assert_array_equal(attacked_mask.numpy(), expected)
    assert not torch.equal(attacked_mask, clean_mask)


def test_gradient_matches_fixed_mask() -> None:
    detector = masked_detector(2, masking=True, top_fraction=0.25)
    references = object_images(2, seed=1)
    detector.fit(references)
    images = object_images(2, seed=4)

    product_input = images.clone().requires_grad_(True)
    product_scores, _ = detector.score_and_embed(product_input)
    product_scores.sum().backward()

    # The same score in plain torch, with the mask from the loop computation held constant.
    mask = torch.from_numpy(
        np.stack([loop_mask(svd_projection(tokens), ROWS, COLUMNS) for tokens in model_tokens(detector, images)])
    )
    bank = F.normalize(detector.model.forward_features((references - IMAGENET_MEAN) / IMAGENET_STD)[:, 1:], dim=-1)
    own_input = images.clone().requires_grad_(True)
    tokens = detector.model.forward_features((own_input - IMAGENET_MEAN) / IMAGENET_STD)[:, 1:]
    distances = 1.0 - (F.normalize(tokens, dim=-1) @ bank.flatten(0, 1).detach().T).max(dim=2).values
    distances = torch.where(mask, distances, torch.zeros_like(distances))
    count = math.floor(ROWS * COLUMNS * 0.25)
    distances.topk(count, dim=1).values.mean(dim=1).sum().backward()

    assert product_input.grad is not None
    assert own_input.grad is not None
    assert 0 < int(mask.sum()) < mask.numel()
    assert float(product_input.grad.abs().sum()) > 0
    torch.testing.assert_close(product_input.grad, own_input.grad, atol=1e-6, rtol=1e-4)


def test_masking_off_keeps_every_patch() -> None:
    detector = masked_detector(2)

    mask = detector.patch_mask(object_images(2, seed=2))

    assert bool(mask.all())


def test_masking_attribute_changes_scores() -> None:
    detector = masked_detector(0, top_fraction=0.25)
    detector.fit(object_images(2, seed=1))
    images = object_images(3, seed=2)
    unmasked = detector.score(images)

    detector.masking = True
    masked = detector.score(images)

    # With backbone seed 0, images 1 and 2 keep no patch, so their scores drop to 0.
    torch.testing.assert_close(masked[1:], torch.zeros(2))
    assert bool((unmasked[1:] > 0).all())


# Rotation


@pytest.mark.parametrize("quarter_turns", [0, 1, 2, 3])
def test_quarter_turns_equal_rot90(quarter_turns: int) -> None:
    images = random_images(2, seed=10)

    rotated = rotate_images(images, 90.0 * quarter_turns)

    assert torch.equal(rotated, torch.rot90(images, quarter_turns, dims=(2, 3)))


def test_half_turn_non_square() -> None:
    images = random_images(1, seed=11, size=56)[..., :42]

    rotated = rotate_images(images, 180.0)

    assert torch.equal(rotated, torch.rot90(images, 2, dims=(2, 3)))


@pytest.mark.parametrize("angle", [45.0, 135.0, 315.0, 30.0])
def test_rotation_matches_bilinear_loops(angle: float) -> None:
    images = random_images(1, seed=12, size=56)[..., :42]

    rotated = rotate_images(images, angle)

    expected = bilinear_rotation(images[0].double().numpy(), angle)
    np.testing.assert_allclose(rotated[0].double().numpy(), expected, atol=1e-6, rtol=0)


def test_rotated_copies_order() -> None:
    images = random_images(2, seed=13)

    copies = rotated_copies(images)

    assert copies.shape == (16, 3, 56, 56)
    assert torch.equal(copies[0], images[0])
    assert torch.equal(copies[8], images[1])
    assert torch.equal(copies[10], torch.rot90(images[1], 1, dims=(1, 2)))


def test_rotation_bank_eight_times() -> None:
    references = random_images(3, seed=14)
    plain = tiny_detector(seed=0)
    rotated = tiny_detector(seed=0, rotation=True)

    plain.fit(references)
    rotated.fit(references, batch_size=4)

    assert plain.bank is not None
    assert rotated.bank is not None
    assert rotated.bank.shape == (8 * plain.bank.shape[0], plain.bank.shape[1])
    torch.testing.assert_close(rotated.bank[:16], plain.bank[:16], atol=1e-6, rtol=0)


def test_rotation_change_drops_bank() -> None:
    detector = tiny_detector(seed=0)
    detector.fit(random_images(1, seed=15))

    detector.rotation = True

    assert detector.bank is None
    with pytest.raises(AdrobustError, match=r"call fit\(references\) first"):
        detector.score(random_images(1, seed=16))


# Settings, fingerprint and description


def test_fingerprint_tracks_both_options() -> None:
    base = tiny_detector(seed=3).fingerprint()
    masking = tiny_detector(seed=3, masking=True).fingerprint()
    rotation = tiny_detector(seed=3, rotation=True).fingerprint()

    assert masking != base
    assert rotation != base
    assert masking != rotation


def test_fingerprint_follows_attribute_changes() -> None:
    detector = tiny_detector(seed=3)
    before = detector.fingerprint()

    detector.masking = True
    masked = detector.fingerprint()
    detector.masking = False
    detector.rotation = True
    rotated = detector.fingerprint()
    detector.rotation = False

    assert masked != before
    assert rotated != before
    assert detector.fingerprint() == before


def test_describe_lists_preprocessing() -> None:
    detector = tiny_detector(masking=True, rotation=True, weights="weights from a test")

    described = detector.describe()

    assert described["preprocessing"] == "zero-shot masking, rotated references"
    assert "preprocessing" not in tiny_detector().describe()


@pytest.mark.parametrize("name", ["masking", "rotation"])
def test_non_bool_option_rejected(name: str) -> None:
    with pytest.raises(AdrobustError, match=f"invalid {name} 'yes': use True or False"):
        tiny_detector(**{name: "yes"})

    detector = tiny_detector()
    with pytest.raises(AdrobustError, match=f"invalid {name} 1"):
        setattr(detector, name, 1)


def test_bad_grid_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"invalid grid \(3, 3\)"):
        foreground_mask(torch.zeros(1, 8, 4), (3, 3))


def test_bad_rotation_input_rejected() -> None:
    with pytest.raises(AdrobustError, match="invalid angle nan"):
        rotate_images(random_images(1, seed=0), float("nan"))
    with pytest.raises(AdrobustError, match=r"got \(3, 56, 56\)"):
        rotate_images(torch.zeros(3, 56, 56), 45.0)
