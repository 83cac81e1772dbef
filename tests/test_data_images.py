"""Tests for reading, resizing and cropping image files and for record fingerprints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_adrobust.data import ImageRecord, load_image, load_images, records_fingerprint
from pytest_adrobust.errors import AdrobustError

# With a 28x28 image, resolution 28 and patch size 14, the image needs neither resizing nor
# cropping, so output values can be compared exactly with the input.
SIDE = 28
PATCH = 14


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def _record(path: Path, image_id: str, label: int = 0) -> ImageRecord:
    return ImageRecord(
        image_id=image_id, path=path, label=label, defect="good" if label == 0 else "crack"
    )


def _mode_image(mode: str) -> Image.Image:
    """Build a SIDE x SIDE image of ``mode`` whose pixel (0, 0) has a known value."""
    if mode == "1":
        image = Image.new("1", (SIDE, SIDE), 0)
        image.putpixel((0, 0), 1)
    elif mode == "P":
        image = Image.new("P", (SIDE, SIDE), 0)
        image.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    elif mode == "I;16":
        image = Image.fromarray(np.full((SIDE, SIDE), 32768, dtype=np.uint16))
    elif mode == "I":
        image = Image.fromarray(np.full((SIDE, SIDE), 32768, dtype=np.int32))
    elif mode in ("L", "LA"):
        image = Image.new(mode, (SIDE, SIDE), (51,) if mode == "L" else (51, 0))
    else:
        image = Image.new(mode, (SIDE, SIDE), (10, 20, 30, 0)[: len(mode)])
    return image


# Expected RGB value of pixel (0, 0) for each mode built by _mode_image.
MODE_CASES = [
    ("1", "png", (1.0, 1.0, 1.0)),
    ("L", "png", (51 / 255,) * 3),
    ("LA", "png", (51 / 255,) * 3),
    ("P", "png", (10 / 255, 20 / 255, 30 / 255)),
    ("RGB", "png", (10 / 255, 20 / 255, 30 / 255)),
    ("RGBA", "png", (10 / 255, 20 / 255, 30 / 255)),
    ("I;16", "png", (32768 / 65535,) * 3),
    ("I", "tif", (32768 / 65535,) * 3),
]


@pytest.mark.parametrize(("mode", "extension", "expected"), MODE_CASES)
def test_load_image_mode_values(
    tmp_path: Path, mode: str, extension: str, expected: tuple[float, float, float]
) -> None:
    path = _save(_mode_image(mode), tmp_path / f"image.{extension}")
    with Image.open(path) as reopened:
        assert reopened.mode == mode

    image = load_image(path, SIDE, PATCH)

    assert image.shape == (3, SIDE, SIDE)
    assert image.dtype == torch.float32
    assert image.min() >= 0.0
    assert image.max() <= 1.0
    assert image[:, 0, 0].tolist() == pytest.approx(expected, abs=1e-6)


def test_load_image_16bit_max_is_one(tmp_path: Path) -> None:
    pixels = np.zeros((SIDE, SIDE), dtype=np.uint16)
    pixels[0, 0] = 65535
    path = _save(Image.fromarray(pixels), tmp_path / "deep.png")

    image = load_image(path, SIDE, PATCH)

    assert image[0, 0, 0].item() == 1.0
    assert image[0, 1, 1].item() == 0.0


def test_load_image_16bit_not_scaled_by_image_max(tmp_path: Path) -> None:
    pixels = np.full((SIDE, SIDE), 1000, dtype=np.uint16)
    path = _save(Image.fromarray(pixels), tmp_path / "dim.png")

    image = load_image(path, SIDE, PATCH)

    assert image.max().item() == pytest.approx(1000 / 65535, abs=1e-7)


def test_load_image_rgba_alpha_dropped(tmp_path: Path) -> None:
    path = _save(Image.new("RGBA", (SIDE, SIDE), (200, 100, 50, 0)), tmp_path / "clear.png")

    image = load_image(path, SIDE, PATCH)

    assert image.shape[0] == 3
    assert image[:, 5, 5].tolist() == pytest.approx([200 / 255, 100 / 255, 50 / 255], abs=1e-6)


def test_load_image_grayscale_repeated(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(40, 40), dtype=np.uint8)
    path = _save(Image.fromarray(pixels), tmp_path / "gray.png")

    image = load_image(path, SIDE, PATCH)

    assert torch.equal(image[0], image[1])
    assert torch.equal(image[0], image[2])
    assert image[0].std() > 0.01


def test_load_image_keeps_aspect_ratio(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (300, 200), (0, 0, 0)), tmp_path / "wide.png")

    image = load_image(path, 224, 14)

    assert image.shape == (3, 224, 336)


def test_load_image_tall_keeps_aspect_ratio(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (200, 300), (0, 0, 0)), tmp_path / "tall.png")

    image = load_image(path, 224, 14)

    assert image.shape == (3, 336, 224)


def test_load_image_crops_to_multiple(tmp_path: Path) -> None:
    # 100x130 resizes to 50x65, which crops to 42x56 for a patch size of 14.
    path = _save(Image.new("L", (100, 130), 0), tmp_path / "odd.png")

    image = load_image(path, 50, 14)

    assert image.shape == (3, 56, 42)


def test_load_image_crop_is_centred(tmp_path: Path) -> None:
    # Column x contains the value x, so the first kept column shows the left offset of the crop.
    width = SIDE + 5
    pixels = np.tile(np.arange(width, dtype=np.uint8), (SIDE, 1))
    path = _save(Image.fromarray(pixels), tmp_path / "ramp.png")

    image = load_image(path, SIDE, PATCH)

    assert image.shape == (3, SIDE, SIDE)
    assert image[0, 0, 0].item() == pytest.approx(2 / 255)
    assert image[0, 0, -1].item() == pytest.approx((2 + SIDE - 1) / 255)


def test_load_image_resize_matches_pillow_bicubic(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(90, 90), dtype=np.uint8)
    source = Image.fromarray(pixels)
    path = _save(source, tmp_path / "noise.png")
    expected = np.asarray(source.resize((42, 42), Image.Resampling.BICUBIC), dtype=np.float32) / 255

    image = load_image(path, 42, 14)

    # Pillow rounds its 8-bit result, while load_image resizes in float32.
    assert np.abs(image[0].numpy() - expected).max() <= 1 / 255 + 1e-6


def test_load_image_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "broken_scan.png"
    path.write_bytes(b"this is not an image")

    with pytest.raises(AdrobustError, match=r"broken_scan\.png") as info:
        load_image(path, SIDE, PATCH)

    assert info.value.__cause__ is not None


def test_load_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AdrobustError, match=r"absent_cell\.png"):
        load_image(tmp_path / "absent_cell.png", SIDE, PATCH)


def test_load_image_cmyk_converted(tmp_path: Path) -> None:
    path = _save(Image.new("CMYK", (SIDE, SIDE), (0, 0, 0, 0)), tmp_path / "print.tif")

    image = load_image(path, SIDE, PATCH)

    assert image.shape == (3, SIDE, SIDE)
    assert image.min().item() == 1.0


def test_load_image_float_mode_rejected(tmp_path: Path) -> None:
    pixels = np.full((SIDE, SIDE), 0.5, dtype=np.float32)
    path = _save(Image.fromarray(pixels), tmp_path / "depth.tif")

    with pytest.raises(AdrobustError, match=r"depth\.tif' has mode 'F'"):
        load_image(path, SIDE, PATCH)


@pytest.mark.parametrize(
    ("resolution", "multiple", "pattern"),
    [
        (28, 0, r"multiple must be an integer >= 1.*got 0"),
        (28, 2.5, r"multiple must be an integer >= 1.*got 2\.5"),
        (10, 14, r"resolution must be an integer >= multiple \(14\), got 10"),
        (True, 1, r"resolution must be an integer.*got True"),
    ],
)
def test_load_image_invalid_size_arguments(
    tmp_path: Path, resolution: object, multiple: object, pattern: str
) -> None:
    path = _save(Image.new("L", (SIDE, SIDE), 0), tmp_path / "ok.png")

    with pytest.raises(AdrobustError, match=pattern):
        load_image(path, resolution, multiple)  # type: ignore[arg-type]


def test_load_images_batch_shape(tmp_path: Path) -> None:
    records = [
        _record(_save(Image.new("L", (SIDE, SIDE), value), tmp_path / f"{value}.png"), str(value))
        for value in (0, 255)
    ]

    batch = load_images(records, SIDE, PATCH)

    assert batch.shape == (2, 3, SIDE, SIDE)
    assert batch.dtype == torch.float32
    assert batch[0].max().item() == 0.0
    assert batch[1].min().item() == 1.0


def test_load_images_crops_to_common_size(tmp_path: Path) -> None:
    square = _save(Image.new("L", (SIDE, SIDE), 0), tmp_path / "square.png")
    # The wide image is 42 wide and 28 high, and column x contains the value x.
    ramp = np.tile(np.arange(42, dtype=np.uint8), (SIDE, 1))
    wide = _save(Image.fromarray(ramp), tmp_path / "wide.png")

    batch = load_images([_record(square, "square"), _record(wide, "wide")], SIDE, PATCH)

    assert batch.shape == (2, 3, SIDE, SIDE)
    assert batch[1, 0, 0, 0].item() == pytest.approx(7 / 255)


def test_load_images_empty_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"records is empty"):
        load_images([], SIDE, PATCH)


def test_fingerprint_is_sha256_hex(tmp_path: Path) -> None:
    record = _record(_save(Image.new("L", (4, 4), 0), tmp_path / "a.png"), "a")

    fingerprint = records_fingerprint([record])

    assert len(fingerprint) == 64
    assert set(fingerprint) <= set("0123456789abcdef")


def test_fingerprint_ignores_record_order(tmp_path: Path) -> None:
    first = _record(_save(Image.new("L", (4, 4), 0), tmp_path / "a.png"), "a")
    second = _record(_save(Image.new("L", (4, 4), 9), tmp_path / "b.png"), "b", label=1)

    assert records_fingerprint([first, second]) == records_fingerprint([second, first])


def test_fingerprint_ignores_file_location(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    image = Image.new("L", (4, 4), 3)
    first_copy = _record(_save(image, tmp_path / "one" / "a.png"), "a")
    second_copy = _record(_save(image, tmp_path / "two" / "a.png"), "a")

    assert records_fingerprint([first_copy]) == records_fingerprint([second_copy])


def test_fingerprint_changes_with_one_byte(tmp_path: Path) -> None:
    path = tmp_path / "cell.png"
    path.write_bytes(bytes(range(64)))
    record = _record(path, "cell")
    before = records_fingerprint([record])

    content = bytearray(path.read_bytes())
    content[40] ^= 0x01
    path.write_bytes(bytes(content))

    assert records_fingerprint([record]) != before


def test_fingerprint_changes_with_label(tmp_path: Path) -> None:
    path = _save(Image.new("L", (4, 4), 0), tmp_path / "a.png")

    normal = records_fingerprint([_record(path, "a", label=0)])
    anomalous = records_fingerprint([_record(path, "a", label=1)])

    assert normal != anomalous


def test_fingerprint_changes_with_image_id(tmp_path: Path) -> None:
    path = _save(Image.new("L", (4, 4), 0), tmp_path / "a.png")

    assert records_fingerprint([_record(path, "a")]) != records_fingerprint([_record(path, "b")])


def test_fingerprint_missing_file(tmp_path: Path) -> None:
    record = _record(tmp_path / "gone.png", "gone")

    with pytest.raises(AdrobustError, match=r"gone\.png"):
        records_fingerprint([record])
