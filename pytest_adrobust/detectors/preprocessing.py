"""AnomalyDINO's zero-shot foreground masking of test patches and rotation of reference images.

Both follow the public reference implementation of Damm et al., "AnomalyDINO: Boosting Patch-based
Few-shot Anomaly Detection with DINOv2" (WACV 2025), repository ``dammsi/AnomalyDINO``, files
``src/backbones.py`` (``compute_background_mask``) and ``src/utils.py`` (``rotate_image``). The
docstrings below state where this module departs from that code and why.
"""

from __future__ import annotations

import math
from typing import Final

import torch
import torch.nn.functional as F

from pytest_adrobust.errors import AdrobustError

MASK_THRESHOLD: Final = 10.0
"""Projection on the first principal component above which a patch counts as foreground."""
CENTRE_BORDER: Final = 0.2
"""Share of the patch grid cut from each side to get the central region that the sign test inspects."""
CENTRE_MIN_KEPT: Final = 0.35
"""Share of the central region that must be kept, or else the mask takes the other sign."""
MORPHOLOGY_KERNEL: Final = 3
"""Edge in patches of the square structuring element of the dilation and the closing."""
REFERENCE_ANGLES: Final = (0, 45, 90, 135, 180, 225, 270, 315)
"""Rotation angles in degrees, counter-clockwise, that augment each reference image."""


def first_component_projection(tokens: torch.Tensor) -> torch.Tensor:
    """Project each image's patch tokens on the first principal component of those same tokens.

    One PCA is fitted per image, on its own centred tokens, in float64. The component's sign
    follows scikit-learn's PCA (read in version 1.9.1), whose ``svd_flip(u_based_decision=False)``
    makes the largest-magnitude entry of the component positive. The sign matters because the
    mask thresholds the projection before it tests the other sign.

    Parameters
    ----------
    tokens : torch.Tensor
        ``(B, P, D)`` patch tokens of ``B`` images, with ``P >= 1`` patches of width ``D``.

    Returns
    -------
    torch.Tensor
        ``(B, P)`` float64 projections in the units of the tokens, without gradients.

    Raises
    ------
    AdrobustError
        When ``tokens`` is not a three-dimensional tensor with at least one patch.
    """
    if tokens.ndim != 3 or tokens.shape[1] == 0:
        raise AdrobustError(f"expected patch tokens of shape (B, P, D) with P >= 1, got {tuple(tokens.shape)}")

    with torch.no_grad():
        centred = tokens.detach().double()
        centred = centred - centred.mean(dim=1, keepdim=True)

        # The top eigenvector of the D x D scatter matrix is the first right singular vector of
        # the centred tokens, so a batched eigh of that matrix replaces an SVD of the tokens.
        _, eigenvectors = torch.linalg.eigh(centred.transpose(1, 2) @ centred)
        component = eigenvectors[:, :, -1]

        largest = component.abs().argmax(dim=1, keepdim=True)
        signs = torch.sign(component.gather(1, largest))
        component = component * torch.where(signs == 0, torch.ones_like(signs), signs)
        return (centred @ component.unsqueeze(2)).squeeze(2)


def foreground_mask(tokens: torch.Tensor, grid: tuple[int, int], threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """Estimate which patches show the object, from each image's own patch tokens alone.

    The steps follow AnomalyDINO's ``compute_background_mask`` with ``masking_type=True``:

    1. keep the patches whose projection on the image's first principal component (see
       :func:`first_component_projection`) is greater than ``threshold``;
    2. when at most 35% of the central region is kept, keep instead the patches whose negated
       projection is greater than ``threshold``. The central region is rows
       ``int(h * 0.2):int(h * (1 - 0.2))`` and the same slice of columns, so an object is assumed
       to cover the image centre;
    3. dilate the mask with a 3 x 3 square, then close it (dilate, then erode) with the same square.

    Like OpenCV's ``dilate`` and ``morphologyEx`` with their default border, cells outside the
    grid never change a result. The reference fits the PCA on the backbone's last-layer tokens
    after the final layer norm and before any L2 normalisation, and so does the detector. The
    reference's randomised PCA solver is replaced by an exact eigendecomposition.

    Parameters
    ----------
    tokens : torch.Tensor
        ``(B, P, D)`` patch tokens in row-major grid order, with ``P = h * w``.
    grid : tuple of int
        ``(h, w)``, the patch grid's rows and columns.
    threshold : float
        Minimum projection, in token units, of a kept patch; AnomalyDINO uses 10 for DINOv2.

    Returns
    -------
    torch.Tensor
        ``(B, P)`` boolean mask, True for patches that count in the image score. It has no
        gradient and can be all False.

    Raises
    ------
    AdrobustError
        When ``grid`` is not two positive integers whose product is ``P``.
    """
    if (
        len(grid) != 2
        or not all(isinstance(size, int) and size > 0 for size in grid)
        or tokens.ndim != 3
        or grid[0] * grid[1] != tokens.shape[1]
    ):
        raise AdrobustError(
            f"invalid grid {grid!r} for patch tokens of shape {tuple(tokens.shape)}: "
            "pass (rows, columns) of the patch grid, whose product is the number of patches"
        )

    rows, columns = grid
    projection = first_component_projection(tokens).reshape(-1, rows, columns)
    keep = projection > threshold

    # Same float expressions as the reference, so the region's edges match it on every grid.
    top, bottom = int(rows * CENTRE_BORDER), int(rows * (1 - CENTRE_BORDER))
    left, right = int(columns * CENTRE_BORDER), int(columns * (1 - CENTRE_BORDER))
    centre = keep[:, top:bottom, left:right]
    # An empty centre (grids under five patches on a side) counts as 0 <= 0 and flips, as in the reference.
    kept_in_centre = centre.flatten(1).sum(dim=1).double()
    flip = kept_in_centre <= centre.shape[1] * centre.shape[2] * CENTRE_MIN_KEPT
    keep = torch.where(flip.view(-1, 1, 1), -projection > threshold, keep)

    closed = _close(_dilate(keep))
    return closed.flatten(1)


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    # max_pool2d pads with -inf, so cells outside the grid never switch a cell on.
    pooled = F.max_pool2d(mask.unsqueeze(1).float(), MORPHOLOGY_KERNEL, stride=1, padding=MORPHOLOGY_KERNEL // 2)
    return pooled.squeeze(1) > 0.5


def _erode(mask: torch.Tensor) -> torch.Tensor:
    # The minimum as a max-pool of the negation: the -inf padding then acts as +inf, so cells
    # outside the grid never switch a cell off (OpenCV's default border for erosion).
    pooled = -F.max_pool2d(-mask.unsqueeze(1).float(), MORPHOLOGY_KERNEL, stride=1, padding=MORPHOLOGY_KERNEL // 2)
    return pooled.squeeze(1) > 0.5


def _close(mask: torch.Tensor) -> torch.Tensor:
    return _erode(_dilate(mask))


def rotate_images(images: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate images counter-clockwise about their centre, keeping their size.

    Bilinear interpolation with a mirrored border that does not repeat the edge pixel follows
    the reference's ``cv2.warpAffine(..., INTER_LINEAR, BORDER_DEFAULT)``, whose default border is
    reflect-101, because ``grid_sample`` with ``align_corners=True`` and
    ``padding_mode="reflection"`` reflects about the centres of the edge pixels. OpenCV warps the
    reference's 8-bit images in fixed point, so its pixels can differ from these by rounding.
    The reference rotates about ``(W / 2, H / 2)`` in pixel-index
    coordinates, half a pixel off the image centre. This function rotates about the true centre
    ``((W - 1) / 2, (H - 1) / 2)`` instead, so multiples of 90 degrees permute pixels exactly,
    as ``torch.rot90`` does. The sampling runs in float64 and the result is cast back, so those
    exact cases carry no rounding error.

    Parameters
    ----------
    images : torch.Tensor
        ``(B, C, H, W)`` floating-point images with ``H, W >= 2`` pixels.
    angle : float
        Rotation in degrees; positive values turn the content counter-clockwise on screen.

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)`` rotated images, with the dtype and device of ``images``.

    Raises
    ------
    AdrobustError
        When ``images`` is not a batch of floating-point images of at least 2 x 2 pixels, or
        ``angle`` is not finite.
    """
    if images.ndim != 4 or not images.is_floating_point() or min(images.shape[2:]) < 2:
        raise AdrobustError(
            f"expected floating-point images (B, C, H, W) with H, W >= 2, got {tuple(images.shape)} "
            f"of dtype {images.dtype}"
        )
    if not math.isfinite(angle):
        raise AdrobustError(f"invalid angle {angle!r}: use a finite number of degrees")

    cosine, sine = _cos_sin(angle)
    height, width = images.shape[2:]
    batch = images.shape[0]

    # affine_grid maps each output pixel to the input pixel it samples. In normalised
    # coordinates the two axes have different pixel sizes, so the off-diagonal terms carry the
    # aspect ratio that makes the rotation rigid in pixels. The y axis points down, so this
    # inverse map turns the content counter-clockwise on screen.
    theta = torch.tensor(
        [[cosine, -sine * (height - 1) / (width - 1), 0.0], [sine * (width - 1) / (height - 1), cosine, 0.0]],
        dtype=torch.float64,
        device=images.device,
    ).expand(batch, 2, 3)
    grid = F.affine_grid(theta, [batch, images.shape[1], height, width], align_corners=True)
    rotated = F.grid_sample(images.double(), grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    return rotated.to(images.dtype)


def rotated_copies(images: torch.Tensor, angles: tuple[float, ...] = REFERENCE_ANGLES) -> torch.Tensor:
    """Stack each image's rotations by ``angles``, grouped by image in the order of ``angles``.

    Parameters
    ----------
    images : torch.Tensor
        ``(B, C, H, W)`` floating-point images.
    angles : tuple of float
        Rotation angles in degrees, counter-clockwise; the default is AnomalyDINO's eight
        multiples of 45 degrees, 0 included.

    Returns
    -------
    torch.Tensor
        ``(B * len(angles), C, H, W)`` images; row ``i * len(angles) + j`` is image ``i``
        rotated by ``angles[j]``.

    Raises
    ------
    AdrobustError
        When ``angles`` is empty, or on the conditions of :func:`rotate_images`.
    """
    if len(angles) == 0:
        raise AdrobustError(f"invalid angles {angles!r}: give at least one angle in degrees")

    rotations = [rotate_images(images, angle) for angle in angles]
    return torch.stack(rotations, dim=1).flatten(0, 1)


def _cos_sin(angle: float) -> tuple[float, float]:
    # Quarter turns get exact values: math.cos(math.pi / 2) is 6e-17, not 0, which would
    # blend a neighbouring pixel into an otherwise exact permutation.
    quarter, remainder = divmod(angle, 90.0)
    if remainder == 0.0:
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[int(quarter) % 4]
    radians = math.radians(angle)
    return math.cos(radians), math.sin(radians)
