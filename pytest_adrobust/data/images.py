"""Load image files as float tensors sized for a ViT, and fingerprint sets of image files."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pytest_adrobust.data.base import ImageRecord
from pytest_adrobust.errors import AdrobustError

# Pillow modes that contain 16-bit grayscale samples. Their values are divided by the maximum of
# the format, never by the maximum of one image, so that the same raw value always maps to the
# same intensity.
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_UINT16_MAX = 65535.0

_HASH_CHUNK_BYTES = 1 << 20


def load_image(path: Path, resolution: int, multiple: int) -> torch.Tensor:
    """Read an image file and resize and crop it for a ViT with the given patch size.

    The image is converted to RGB with values in [0, 1]. Grayscale is repeated to three channels
    and an alpha channel is dropped. Modes L, LA, P, RGB and RGBA are divided by 255, 1-bit images
    map to 0 and 1, and the 16-bit modes ``I;16`` and ``I`` are divided by 65535. Mode ``I`` is
    read as the 16-bit data that Pillow's PNG and TIFF decoders produce, so values outside
    [0, 65535] are clipped. Mode ``F`` is rejected because float data has no fixed range. Other
    modes, such as CMYK and YCbCr, go through Pillow's conversion to RGB.

    The image is resized once, with Pillow's antialiased bicubic filter, so that its smaller edge
    equals ``resolution`` and the aspect ratio is kept. Each side is then centre-cropped down to a
    multiple of ``multiple``.

    Parameters
    ----------
    path : pathlib.Path
        Image file in any format that Pillow reads.
    resolution : int
        Length in pixels of the smaller edge after resizing, at least ``multiple``.
    multiple : int
        Patch size in pixels that both output sides are a multiple of, at least 1.

    Returns
    -------
    torch.Tensor
        float32 tensor of shape ``(3, H, W)`` with values in [0, 1].

    Raises
    ------
    AdrobustError
        If an argument is invalid, or the file is missing or not a readable image.
    """
    path = Path(path)
    _validate_size_arguments(resolution, multiple)

    pixels = _read_pixels(path)
    pixels = _resize_smaller_edge(pixels, resolution)
    pixels = _crop_to_multiple(pixels, multiple)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)

    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def load_images(records: Sequence[ImageRecord], resolution: int, multiple: int) -> torch.Tensor:
    """Load the images of ``records`` into one batch.

    Each image goes through :func:`load_image`. Images whose aspect ratios differ come out with
    different sizes, so every image is then centre-cropped to the smallest height and the smallest
    width in the batch. Both stay multiples of ``multiple``.

    Parameters
    ----------
    records : sequence of ImageRecord
        Images to load, at least one.
    resolution : int
        Length in pixels of the smaller edge after resizing, at least ``multiple``.
    multiple : int
        Patch size in pixels that both output sides are a multiple of, at least 1.

    Returns
    -------
    torch.Tensor
        float32 tensor of shape ``(N, 3, H, W)`` with values in [0, 1], in the order of ``records``.

    Raises
    ------
    AdrobustError
        If ``records`` is empty, an argument is invalid, or an image cannot be read.
    """
    if len(records) == 0:
        raise AdrobustError("records is empty; pass at least one ImageRecord to load_images.")
    _validate_size_arguments(resolution, multiple)

    images = [load_image(record.path, resolution, multiple) for record in records]
    height = min(image.shape[1] for image in images)
    width = min(image.shape[2] for image in images)

    cropped = []
    for image in images:
        top = (image.shape[1] - height) // 2
        left = (image.shape[2] - width) // 2
        cropped.append(image[:, top : top + height, left : left + width])

    return torch.stack(cropped).contiguous()


def records_fingerprint(records: Sequence[ImageRecord]) -> str:
    """Hash the ids, labels and file contents of a set of image records.

    The records are sorted by ``image_id`` first, and paths are not hashed, so the fingerprint is
    the same on every machine that has the same files.

    Parameters
    ----------
    records : sequence of ImageRecord
        Records to hash. Their order does not matter.

    Returns
    -------
    str
        SHA-256 digest as 64 lowercase hexadecimal characters.

    Raises
    ------
    AdrobustError
        If a file cannot be read.
    """
    digest = hashlib.sha256()

    for record in sorted(records, key=lambda r: (r.image_id, r.label)):
        # Length prefixes make the serialization injective, so two different record sets never
        # feed the same bytes to the hash.
        id_bytes = record.image_id.encode("utf-8")
        digest.update(len(id_bytes).to_bytes(8, "big"))
        digest.update(id_bytes)
        digest.update(record.label.to_bytes(1, "big"))

        try:
            size = Path(record.path).stat().st_size
            digest.update(size.to_bytes(8, "big"))
            with open(record.path, "rb") as handle:
                while chunk := handle.read(_HASH_CHUNK_BYTES):
                    digest.update(chunk)
        except OSError as error:
            raise AdrobustError(
                f"cannot read image file {str(record.path)!r} of record {record.image_id!r} "
                f"({error.strerror or error}); check that the file exists and is readable."
            ) from error

    return digest.hexdigest()


def _validate_size_arguments(resolution: int, multiple: int) -> None:
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise AdrobustError(f"multiple must be an integer >= 1 (the patch size), got {multiple!r}.")

    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < multiple:
        raise AdrobustError(
            f"resolution must be an integer >= multiple ({multiple}), got {resolution!r}; "
            f"use a resolution such as {multiple * 16}."
        )


def _read_pixels(path: Path) -> np.ndarray:
    """Read an image file as float32 ``(H, W, C)`` with C 1 or 3 and values in [0, 1]."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_float_array(image, path)
    except (UnidentifiedImageError, OSError) as error:
        raise AdrobustError(
            f"cannot read image file {str(path)!r}: {error}. Check that the file exists and is an "
            f"image that Pillow can open."
        ) from error


def _to_float_array(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode

    if mode in _UINT16_MODES:
        gray = np.asarray(image, dtype=np.float32) / _UINT16_MAX
    elif mode == "I":
        gray = np.clip(np.asarray(image, dtype=np.float32), 0.0, _UINT16_MAX) / _UINT16_MAX
    elif mode in ("1", "L", "LA"):
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    elif mode == "RGB":
        return np.asarray(image, dtype=np.float32) / 255.0
    elif mode in ("RGBA", "P", "PA"):
        # Palette images can carry transparency, and Pillow converts those cleanly only to RGBA.
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        return rgba[:, :, :3] / 255.0
    elif mode == "F":
        raise AdrobustError(
            f"image file {str(path)!r} has mode 'F' (32-bit float), which has no fixed value "
            f"range to scale to [0, 1]; save the image as 8-bit or 16-bit integer data."
        )
    else:
        try:
            rgb = image.convert("RGB")
        except ValueError as error:
            raise AdrobustError(
                f"image file {str(path)!r} has mode {mode!r}, which is not supported; save the "
                f"image as 8-bit RGB or grayscale."
            ) from error
        return np.asarray(rgb, dtype=np.float32) / 255.0

    return gray[:, :, None]


def _resize_smaller_edge(pixels: np.ndarray, resolution: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    if width <= height:
        new_width = resolution
        new_height = max(1, round(height * resolution / width))
    else:
        new_height = resolution
        new_width = max(1, round(width * resolution / height))

    if (new_height, new_width) == (height, width):
        return pixels

    # Resizing each channel as a 32-bit float image keeps the precision of 16-bit inputs.
    channels = []
    for channel in range(pixels.shape[2]):
        # A 2-D float32 array becomes a Pillow image of mode "F".
        plane = Image.fromarray(np.ascontiguousarray(pixels[:, :, channel]))
        resized = plane.resize((new_width, new_height), resample=Image.Resampling.BICUBIC)
        channels.append(np.asarray(resized, dtype=np.float32))

    # Bicubic interpolation overshoots at sharp edges.
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0)


def _crop_to_multiple(pixels: np.ndarray, multiple: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    crop_height = height - height % multiple
    crop_width = width - width % multiple
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2

    return pixels[top : top + crop_height, left : left + crop_width]
