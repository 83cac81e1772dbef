"""Tests for the MVTec AD loader, ``all`` spec expansion and AnomalyDINO reference selection."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_adrobust.data import (
    DatasetSplit,
    ImageRecord,
    expand_dataset_spec,
    list_mvtec_categories,
    load_dataset,
    load_images,
    load_mvtec,
    sample_case,
)
from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.evaluation import CaseKey, evaluate_case
from pytest_adrobust.settings import parse_eps
from tests.helpers import tiny_detector
from tests.synthetic import texture

DEFECTS = {"crack": 2, "scratch": 3}


def _image(mode: str, size: tuple[int, int], value: int) -> Image.Image:
    """Build a uniform image of ``mode`` whose pixel values grow with ``value``."""
    if mode == "I;16":
        return Image.fromarray(np.full((size[1], size[0]), value * 257, dtype=np.uint16))
    if mode == "L":
        return Image.new("L", size, value)
    if mode == "RGBA":
        return Image.new("RGBA", size, (value, value, value, 255))
    return Image.new("RGB", size, (value, 0, 255 - value))


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _make_category(
    root: Path,
    name: str = "bottle",
    train: int = 4,
    test_good: int = 3,
    defects: dict[str, int] | None = None,
    mode: str = "RGB",
    size: tuple[int, int] = (16, 16),
) -> Path:
    """Write one category in the MVTec AD layout and return its folder."""
    if defects is None:
        defects = DEFECTS
    category = root / name

    for index in range(train):
        _save(_image(mode, size, index), category / "train" / "good" / f"{index:03d}.png")
    for index in range(test_good):
        _save(_image(mode, size, 50 + index), category / "test" / "good" / f"{index:03d}.png")

    for defect, count in defects.items():
        for index in range(count):
            _save(_image(mode, size, 200 + index), category / "test" / defect / f"{index:03d}.png")
            mask = Image.new("L", size, 0)
            mask.paste(255, (0, 0, size[0] // 2, size[1] // 2))
            _save(mask, category / "ground_truth" / defect / f"{index:03d}_mask.png")

    return category


def _ids(records: tuple[ImageRecord, ...] | list[ImageRecord]) -> list[str]:
    return [record.image_id for record in records]


# Loading a category.


def test_mvtec_counts_and_labels(tmp_path: Path) -> None:
    _make_category(tmp_path, train=4, test_good=3)

    split = load_mvtec(tmp_path, "bottle")

    test_normals = [r for r in split.test if r.label == 0]
    test_anomalies = [r for r in split.test if r.label == 1]
    assert len(split.train) == 4
    assert len(test_normals) == 3
    assert len(test_anomalies) == 5
    assert all(r.label == 0 for r in split.train)


def test_mvtec_train_pool_is_whole_folder(tmp_path: Path) -> None:
    _make_category(tmp_path, train=7)

    split = load_mvtec(tmp_path, "bottle")

    assert _ids(split.train) == [f"train/good/{i:03d}.png" for i in range(7)]


def test_mvtec_defects_and_masks(tmp_path: Path) -> None:
    category = _make_category(tmp_path)

    split = load_mvtec(tmp_path, "bottle")

    anomalies = [r for r in split.test if r.label == 1]
    assert sorted(r.defect for r in anomalies) == ["crack"] * 2 + ["scratch"] * 3
    for record in anomalies:
        expected = category / "ground_truth" / record.defect / f"{record.path.stem}_mask.png"
        assert record.mask == expected
    for record in split.train + split.test:
        if record.label == 0:
            assert record.mask is None


def test_mvtec_ids_name_and_layout(tmp_path: Path) -> None:
    category = _make_category(tmp_path)

    split = load_mvtec(tmp_path, "bottle", spec="mvtec:bottle@somewhere")

    assert "test/crack/001.png" in _ids(split.test)
    assert "test/good/000.png" in _ids(split.test)
    for record in split.train + split.test:
        assert record.path == category / record.image_id
    assert split.name == "mvtec-bottle"
    assert split.layout == "mvtec tree"
    assert split.spec == "mvtec:bottle@somewhere"


def test_mvtec_test_pool_order(tmp_path: Path) -> None:
    _make_category(tmp_path)

    split = load_mvtec(tmp_path, "bottle")

    labels = [r.label for r in split.test]
    assert labels == sorted(labels)
    assert _ids(split.test[3:]) == sorted(_ids(split.test[3:]))


def test_mvtec_ignores_hidden_and_other_files(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    (category / "train" / "good" / "notes.txt").write_text("not an image")
    _save(_image("RGB", (16, 16), 9), category / "train" / "good" / ".hidden.png")
    (category / "ground_truth" / "crack" / "readme.txt").write_text("not a mask")
    _save(_image("RGB", (16, 16), 9), category / "test" / ".cache" / "000.png")

    split = load_mvtec(tmp_path, "bottle")

    assert len(split.train) == 4
    assert {r.defect for r in split.test} == {"good", "crack", "scratch"}


def test_mvtec_through_load_dataset(tmp_path: Path) -> None:
    _make_category(tmp_path)

    split = load_dataset(f"mvtec:bottle@{tmp_path}")

    assert isinstance(split, DatasetSplit)
    assert split.name == "mvtec-bottle"
    assert split.spec == f"mvtec:bottle@{tmp_path}"
    assert len(split.train) == 4


def test_mvtec_grayscale_loads_three_channels(tmp_path: Path) -> None:
    _make_category(tmp_path, name="grid", mode="L", size=(28, 28))
    split = load_mvtec(tmp_path, "grid")
    with Image.open(split.train[0].path) as image:
        assert image.mode == "L"

    batch = load_images(split.test, 28, 14)

    assert batch.shape == (len(split.test), 3, 28, 28)
    assert (batch[:, 0] == batch[:, 1]).all()
    assert (batch[:, 1] == batch[:, 2]).all()


@pytest.mark.parametrize("mode", ["RGBA", "I;16"])
def test_mvtec_unusual_modes_load(tmp_path: Path, mode: str) -> None:
    _make_category(tmp_path, name="screw", mode=mode, size=(28, 28))
    split = load_mvtec(tmp_path, "screw")
    with Image.open(split.train[1].path) as image:
        assert image.mode == mode

    batch = load_images(split.train, 28, 14)

    assert batch.shape == (4, 3, 28, 28)
    assert batch.min() >= 0.0
    assert batch.max() <= 1.0
    assert batch[1].mean() > batch[0].mean()


# Expanding mvtec:all@ROOT.


def test_expand_all_lists_categories(tmp_path: Path) -> None:
    _make_category(tmp_path, name="cable")
    _make_category(tmp_path, name="bottle")
    (tmp_path / "license").mkdir()
    _make_category(tmp_path / ".trash", name="old")
    _save(_image("RGB", (16, 16), 1), tmp_path / ".hidden" / "train" / "good" / "000.png")

    specs = expand_dataset_spec(f"mvtec:all@{tmp_path}")

    assert specs == [f"mvtec:bottle@{tmp_path}", f"mvtec:cable@{tmp_path}"]
    assert list_mvtec_categories(tmp_path) == ["bottle", "cable"]


def test_expand_all_keeps_root_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _make_category(tmp_path / "mv@tec", name="zipper")

    specs = expand_dataset_spec("mvtec:all@~/mv@tec")

    assert specs == ["mvtec:zipper@~/mv@tec"]
    assert load_dataset(specs[0]).name == "mvtec-zipper"


def test_expand_ordinary_spec_unchanged(tmp_path: Path) -> None:
    text = f"mvtec:bottle@{tmp_path / 'not-there'}"

    assert expand_dataset_spec(text) == [text]


def test_expand_all_without_categories(tmp_path: Path) -> None:
    (tmp_path / "bottle" / "test").mkdir(parents=True)

    with pytest.raises(AdrobustError, match=r"has no category folder with train/good"):
        expand_dataset_spec(f"mvtec:all@{tmp_path}")


def test_load_all_spec_rejected(tmp_path: Path) -> None:
    _make_category(tmp_path)

    with pytest.raises(AdrobustError, match=r"names every category.*expand_dataset_spec"):
        load_dataset(f"mvtec:all@{tmp_path}")


# Invalid trees.


def test_mvtec_missing_root(tmp_path: Path) -> None:
    with pytest.raises(AdrobustError, match=r"'.*nowhere' does not exist.*mvtec:CATEGORY@ROOT"):
        load_mvtec(tmp_path / "nowhere", "bottle")


def test_mvtec_root_is_file(tmp_path: Path) -> None:
    archive = tmp_path / "mvtec.tar.xz"
    archive.write_bytes(b"xz")

    with pytest.raises(AdrobustError, match=r"mvtec\.tar\.xz' is not a folder"):
        load_mvtec(archive, "bottle")


def test_mvtec_missing_category(tmp_path: Path) -> None:
    _make_category(tmp_path, name="bottle")
    _make_category(tmp_path, name="cable")

    with pytest.raises(AdrobustError, match=r"category 'bottel' not found") as info:
        load_mvtec(tmp_path, "bottel")

    assert "bottle, cable" in str(info.value)
    assert "mvtec:all@ROOT" in str(info.value)


def test_mvtec_wrong_case_category(tmp_path: Path) -> None:
    _make_category(tmp_path, name="bottle")

    with pytest.raises(AdrobustError, match=r"'bottle' differs only in letter case.*mvtec:bottle@"):
        load_dataset(f"mvtec:Bottle@{tmp_path}")


def test_mvtec_missing_train_good(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    for path in (category / "train" / "good").iterdir():
        path.unlink()
    (category / "train" / "good").rmdir()

    with pytest.raises(AdrobustError, match=r"bottle' has no train/good folder"):
        load_mvtec(tmp_path, "bottle")


def test_mvtec_empty_train_good(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    for path in (category / "train" / "good").iterdir():
        path.unlink()

    with pytest.raises(AdrobustError, match=r"train/good' contains no images"):
        load_mvtec(tmp_path, "bottle")


def test_mvtec_missing_test_good(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    (category / "test" / "good").rename(category / "test" / "normal")

    with pytest.raises(AdrobustError, match=r"has no test/good folder"):
        load_mvtec(tmp_path, "bottle")


def test_mvtec_no_defect_folder(tmp_path: Path) -> None:
    _make_category(tmp_path, defects={})
    (tmp_path / "bottle" / "ground_truth").mkdir()

    with pytest.raises(AdrobustError, match=r"test' has no defect folder"):
        load_mvtec(tmp_path, "bottle")


def test_mvtec_missing_ground_truth(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    (category / "ground_truth").rename(category / "masks")

    with pytest.raises(AdrobustError, match=r"bottle' has no ground_truth folder"):
        load_mvtec(tmp_path, "bottle")


def test_mvtec_missing_defect_masks_folder(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    (category / "ground_truth" / "scratch").rename(category / "ground_truth" / ".scratch")

    with pytest.raises(AdrobustError, match=r"scratch' has no masks folder"):
        load_mvtec(tmp_path, "bottle")


def test_mvtec_image_without_mask(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    (category / "ground_truth" / "crack" / "001_mask.png").unlink()

    with pytest.raises(AdrobustError, match=r"crack/001\.png' has no mask; add '.*001_mask\.png'"):
        load_mvtec(tmp_path, "bottle")


def test_mvtec_mask_without_image(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    (category / "test" / "scratch" / "002.png").unlink()

    with pytest.raises(AdrobustError, match=r"002_mask\.png' has no image.*stem '002'"):
        load_mvtec(tmp_path, "bottle")


def test_mvtec_masks_without_test_folder(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    _save(Image.new("L", (16, 16)), category / "ground_truth" / "dent" / "000_mask.png")

    expected = r"dent' has no images, because .*test.dent' is missing"
    with pytest.raises(AdrobustError, match=expected):
        load_mvtec(tmp_path, "bottle")


def test_mvtec_masks_for_normal_images(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    _save(Image.new("L", (16, 16)), category / "ground_truth" / "good" / "000_mask.png")

    with pytest.raises(AdrobustError, match=r"good' contains masks.*remove that folder"):
        load_mvtec(tmp_path, "bottle")


def test_mvtec_mask_size_mismatch(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    _save(Image.new("L", (16, 17)), category / "ground_truth" / "crack" / "000_mask.png")

    with pytest.raises(AdrobustError, match=r"000_mask\.png' is 16x17 pixels .* is 16x16"):
        load_mvtec(tmp_path, "bottle")


def test_mvtec_unreadable_mask(tmp_path: Path) -> None:
    category = _make_category(tmp_path)
    (category / "ground_truth" / "crack" / "000_mask.png").write_bytes(b"not a png")

    with pytest.raises(AdrobustError, match=r"cannot read the image header of '.*000_mask\.png'"):
        load_mvtec(tmp_path, "bottle")


# ImageRecord masks.


def test_record_mask_defaults_to_none() -> None:
    record = ImageRecord("a", Path("a.png"), 1, "crack")

    assert record.mask is None


def test_record_rejects_mask_on_normal() -> None:
    with pytest.raises(AdrobustError, match=r"normal image .* mask is 'm\.png'; set mask to None"):
        ImageRecord("n", Path("n.png"), 0, "good", mask=Path("m.png"))


# Reference selection.


def test_anomalydino_matches_sorted_listdir(tmp_path: Path) -> None:
    category = _make_category(tmp_path, train=0)
    # Unpadded names, so file-name order ("10.png" before "2.png") differs from numeric order.
    for index in range(12):
        _save(_image("RGB", (16, 16), index), category / "train" / "good" / f"{index}.png")
    split = load_mvtec(tmp_path, "bottle")
    listing = sorted(os.listdir(category / "train" / "good"))

    for seed in range(3):
        references, _ = sample_case(split, 4, None, seed, selection="anomalydino")

        assert [r.path.name for r in references] == listing[seed * 4 : (seed + 1) * 4]


def test_anomalydino_orders_by_file_name() -> None:
    # Ids and file names sort in opposite orders here, so the selection must use the names.
    train = tuple(
        ImageRecord(f"n{i}", Path(f"folder{i}") / f"{name}.png", 0, "good")
        for i, name in enumerate(["c", "b", "a"])
    )
    test = (
        ImageRecord("t0", Path("t0.png"), 0, "good"),
        ImageRecord("t1", Path("t1.png"), 0, "good"),
        ImageRecord("t2", Path("t2.png"), 1, "crack"),
        ImageRecord("t3", Path("t3.png"), 1, "crack"),
    )
    split = DatasetSplit(name="toy", spec="toy", train=train, test=test, layout="toy")

    references, _ = sample_case(split, 1, None, 0, selection="anomalydino")

    assert _ids(references) == ["n2"]


def test_anomalydino_keeps_random_test_draw(tmp_path: Path) -> None:
    _make_category(tmp_path, train=10, test_good=8, defects={"crack": 9})
    split = load_mvtec(tmp_path, "bottle")

    random_refs, random_test = sample_case(split, 3, 4, 2)
    dino_refs, dino_test = sample_case(split, 3, 4, 2, selection="anomalydino")

    assert _ids(dino_test) == _ids(random_test)
    assert _ids(dino_refs) == ["train/good/006.png", "train/good/007.png", "train/good/008.png"]
    assert _ids(random_refs) != _ids(dino_refs)


def test_random_selection_is_default(tmp_path: Path) -> None:
    _make_category(tmp_path, train=10)
    split = load_mvtec(tmp_path, "bottle")

    assert sample_case(split, 3, None, 2) == sample_case(split, 3, None, 2, selection="random")


def test_anomalydino_seed_past_pool(tmp_path: Path) -> None:
    _make_category(tmp_path, train=10)
    split = load_mvtec(tmp_path, "bottle")

    expected = r"takes references 8 to 11 .* pool has 10 images; use a seed <= 1 for 4 shots"
    with pytest.raises(AdrobustError, match=expected):
        sample_case(split, 4, None, 2, selection="anomalydino")


def test_anomalydino_last_valid_seed(tmp_path: Path) -> None:
    _make_category(tmp_path, train=10)
    split = load_mvtec(tmp_path, "bottle")

    references, _ = sample_case(split, 5, None, 1, selection="anomalydino")

    assert _ids(references) == [f"train/good/{i:03d}.png" for i in range(5, 10)]


def test_unknown_selection_rejected(tmp_path: Path) -> None:
    _make_category(tmp_path)
    split = load_mvtec(tmp_path, "bottle")

    expected = r"selection must be one of random, anomalydino, got 'first'"
    with pytest.raises(AdrobustError, match=expected):
        sample_case(split, 1, None, 0, selection="first")


# The protocol end to end.


def _write_textured_category(root: Path, name: str, size: int = 56) -> None:
    """Write textured normal images and images with a bright square, with its mask."""
    rng = np.random.default_rng(0)
    category = root / name
    for folder, count in (("train/good", 6), ("test/good", 4)):
        for index in range(count):
            image = Image.fromarray(texture(rng, size)).convert("RGB")
            _save(image, category / folder / f"{index:03d}.png")

    for index in range(4):
        pixels = texture(rng, size)
        mask = np.zeros((size, size), dtype=np.uint8)
        top, left = rng.integers(4, size - 24, size=2)
        pixels[top : top + 20, left : left + 20] = 250
        mask[top : top + 20, left : left + 20] = 255
        image = Image.fromarray(pixels).convert("RGB")
        _save(image, category / "test" / "spot" / f"{index:03d}.png")
        _save(Image.fromarray(mask), category / "ground_truth" / "spot" / f"{index:03d}_mask.png")


def test_mvtec_protocol_end_to_end(tmp_path: Path) -> None:
    _write_textured_category(tmp_path, "bottle")
    spec = f"mvtec:bottle@{tmp_path}"
    split = load_dataset(spec)
    detector = tiny_detector()
    key = CaseKey(spec, 2, 0, 4, "score", detector.fingerprint())
    budgets = [parse_eps("0"), parse_eps("4/255")]

    evaluation = evaluate_case(detector, split, key, budgets, batch_size=4)

    prepared = evaluation.prepared
    assert prepared.dataset_name == "mvtec-bottle"
    assert len(prepared.references) == 2
    assert list(prepared.labels) == [0] * 4 + [1] * 4
    assert set(evaluation.budgets) == set(budgets)
    assert evaluation.budgets[budgets[0]].auroc == prepared.clean_auroc
    assert math.isfinite(evaluation.budgets[budgets[1]].auroc)
