"""Tests for the VisA loader: split file, VisA_pytorch/1cls and converted-tree layouts."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_adrobust.data import (
    detect_visa_layout,
    expand_dataset_spec,
    list_visa_categories,
    load_dataset,
    load_visa,
    sample_case,
)
from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.evaluation import CaseKey, evaluate_case
from pytest_adrobust.settings import parse_eps
from tests.helpers import tiny_detector
from tests.synthetic import texture

HEADER = "object,split,label,image,mask"


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _normal(size: int, value: int) -> Image.Image:
    return Image.new("RGB", (size, size), (value, 100, 50))


def _anomaly(size: int, value: int) -> tuple[Image.Image, Image.Image]:
    image = Image.new("RGB", (size, size), (value, 100, 50))
    image.paste((255, 255, 255), (0, 0, size // 2, size // 2))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size // 2))
    return image, mask


def _write_release(
    root: Path,
    counts: dict[str, tuple[int, int, int]] | None = None,
    size: int = 16,
    bom: bool = False,
) -> Path:
    """Write the original VisA layout: images, masks and split_csv/1cls.csv.

    ``counts`` maps each object to its numbers of train normals, test normals and test anomalies.
    """
    if counts is None:
        counts = {"candle": (5, 3, 4), "pcb1": (2, 2, 2)}

    lines = [HEADER]
    for name, (train, test_good, test_bad) in counts.items():
        for index in range(train + test_good):
            relative = f"{name}/Data/Images/Normal/{index:04d}.JPG"
            _save(_normal(size, index * 10), root / relative)
            split = "train" if index < train else "test"
            lines.append(f"{name},{split},normal,{relative},")
        for index in range(test_bad):
            image, mask = _anomaly(size, index * 10)
            relative = f"{name}/Data/Images/Anomaly/{index:03d}.JPG"
            mask_relative = f"{name}/Data/Masks/Anomaly/{index:03d}.png"
            _save(image, root / relative)
            _save(mask, root / mask_relative)
            lines.append(f"{name},test,anomaly,{relative},{mask_relative}")

    split_file = root / "split_csv" / "1cls.csv"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("\n".join(lines) + "\n", encoding="utf-8-sig" if bom else "utf-8")
    return root


def _convert(release: Path, target: Path) -> Path:
    """Copy a release into the converted tree as the VisA preparation script lays it out."""
    lines = (release / "split_csv" / "1cls.csv").read_text(encoding="utf-8-sig").splitlines()
    for line in lines[1:]:
        name, split, label, image, mask = line.split(",")
        folder = "good" if label == "normal" else "bad"
        destination = target / name / split / folder / Path(image).name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(release / image, destination)
        if mask:
            mask_destination = target / name / "ground_truth" / folder / Path(mask).name
            mask_destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(release / mask, mask_destination)
    return target


def _rewrite_row(root: Path, old: str, new: str) -> None:
    split_file = root / "split_csv" / "1cls.csv"
    text = split_file.read_text()
    assert old in text
    split_file.write_text(text.replace(old, new, 1))


def _ids(records: tuple | list) -> list[str]:
    return [record.image_id for record in records]


# Original release with split_csv/1cls.csv.


def test_release_counts_and_labels(tmp_path: Path) -> None:
    split = load_visa(_write_release(tmp_path), "candle")

    test_normals = [r for r in split.test if r.label == 0]
    test_anomalies = [r for r in split.test if r.label == 1]
    assert len(split.train) == 5
    assert len(test_normals) == 3
    assert len(test_anomalies) == 4
    assert all(r.label == 0 for r in split.train)


def test_release_defects_and_masks(tmp_path: Path) -> None:
    root = _write_release(tmp_path)

    split = load_visa(root, "candle")

    anomalies = [r for r in split.test if r.label == 1]
    assert {r.defect for r in anomalies} == {"bad"}
    for record in anomalies:
        masks = root / "candle" / "Data" / "Masks" / "Anomaly"
        assert record.mask == masks / f"{record.path.stem}.png"
    for record in split.train + split.test:
        if record.label == 0:
            assert record.mask is None


def test_release_ids_name_and_layout(tmp_path: Path) -> None:
    root = _write_release(tmp_path)

    split = load_visa(root, "candle")

    assert _ids(split.train) == [f"train/good/{i:04d}.JPG" for i in range(5)]
    assert "test/good/0005.JPG" in _ids(split.test)
    assert "test/bad/003.JPG" in _ids(split.test)
    assert split.train[0].path == root / "candle" / "Data" / "Images" / "Normal" / "0000.JPG"
    assert split.name == "visa-candle"
    assert split.layout == "visa split_csv/1cls.csv"


def test_release_byte_order_mark_accepted(tmp_path: Path) -> None:
    root = _write_release(tmp_path, bom=True)
    assert (root / "split_csv" / "1cls.csv").read_bytes().startswith(b"\xef\xbb\xbf")

    split = load_visa(root, "pcb1")

    assert len(split.train) == 2
    assert list_visa_categories(root) == ["candle", "pcb1"]


def test_release_categories_from_csv(tmp_path: Path) -> None:
    root = _write_release(tmp_path, counts={"pcb2": (1, 2, 2), "cashew": (2, 2, 2)})
    # A folder that the split file does not name is not a category.
    (root / "LICENSE-DATASET").mkdir()

    specs = expand_dataset_spec(f"visa:all@{root}")

    assert specs == [f"visa:cashew@{root}", f"visa:pcb2@{root}"]


def test_release_through_load_dataset(tmp_path: Path) -> None:
    root = _write_release(tmp_path)

    split = load_dataset(f"visa:pcb1@{root}")

    assert split.name == "visa-pcb1"
    assert split.spec == f"visa:pcb1@{root}"
    assert len(split.test) == 4


def test_release_missing_image(tmp_path: Path) -> None:
    root = _write_release(tmp_path)
    (root / "candle" / "Data" / "Images" / "Normal" / "0002.JPG").unlink()

    expected = r"line 4 of '.*1cls\.csv' names image 'candle/Data/Images/Normal/0002\.JPG'.*missing"
    with pytest.raises(AdrobustError, match=expected):
        load_visa(root, "candle")


def test_release_missing_mask_file(tmp_path: Path) -> None:
    root = _write_release(tmp_path)
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()

    expected = r"line 11 of .* names mask 'candle/Data/Masks/Anomaly/001\.png'"
    with pytest.raises(AdrobustError, match=expected):
        load_visa(root, "candle")


def test_release_other_category_files_not_checked(tmp_path: Path) -> None:
    root = _write_release(tmp_path)
    shutil.rmtree(root / "pcb1")

    split = load_visa(root, "candle")

    assert len(split.train) == 5


def test_release_anomaly_without_mask(tmp_path: Path) -> None:
    root = _write_release(tmp_path)
    _rewrite_row(root, "Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png", "Anomaly/000.JPG,")

    with pytest.raises(AdrobustError, match=r"line 10 .* no mask for the anomalous image"):
        load_visa(root, "candle")


def test_release_normal_with_mask(tmp_path: Path) -> None:
    root = _write_release(tmp_path)
    _rewrite_row(root, "Normal/0000.JPG,", "Normal/0000.JPG,candle/Data/Masks/Anomaly/000.png")

    with pytest.raises(AdrobustError, match=r"line 2 .* normal image .*leave the mask cell empty"):
        load_visa(root, "candle")


def test_release_anomaly_in_train(tmp_path: Path) -> None:
    root = _write_release(tmp_path)
    _rewrite_row(root, "candle,test,anomaly", "candle,train,anomaly")

    with pytest.raises(AdrobustError, match=r"line 10 .* anomalous image .* in the train split"):
        load_visa(root, "candle")


@pytest.mark.parametrize(
    ("old", "new", "pattern"),
    [
        ("candle,train,normal", "candle,val,normal", r"line 2 .* split 'val'"),
        ("candle,test,anomaly", "candle,test,defect", r"line 10 .* label 'defect'"),
    ],
)
def test_release_invalid_cell(tmp_path: Path, old: str, new: str, pattern: str) -> None:
    root = _write_release(tmp_path)
    _rewrite_row(root, old, new)

    with pytest.raises(AdrobustError, match=pattern):
        load_visa(root, "candle")


def test_release_duplicate_row(tmp_path: Path) -> None:
    root = _write_release(tmp_path)
    split_file = root / "split_csv" / "1cls.csv"
    duplicate = "candle,train,normal,candle/Data/Images/Normal/0001.JPG,\n"
    split_file.write_text(split_file.read_text() + duplicate)

    with pytest.raises(AdrobustError, match=r"lines 3 and 20 .* 'train/good/0001\.JPG'"):
        load_visa(root, "candle")


def test_release_missing_header_column(tmp_path: Path) -> None:
    root = _write_release(tmp_path)
    split_file = root / "split_csv" / "1cls.csv"
    split_file.write_text(split_file.read_text().replace(HEADER, "object,split,label,image"))

    with pytest.raises(AdrobustError, match=r"lacks \['mask'\]"):
        load_visa(root, "candle")


def test_release_empty_split_file(tmp_path: Path) -> None:
    root = _write_release(tmp_path)
    (root / "split_csv" / "1cls.csv").write_text("")

    with pytest.raises(AdrobustError, match=r"1cls\.csv' is empty"):
        load_visa(root, "candle")


def test_release_no_train_rows(tmp_path: Path) -> None:
    root = _write_release(tmp_path, counts={"fryum": (0, 2, 2)})

    with pytest.raises(AdrobustError, match=r"lists no train images for category 'fryum'"):
        load_visa(root, "fryum")


def test_release_wrong_case_category(tmp_path: Path) -> None:
    root = _write_release(tmp_path)

    with pytest.raises(AdrobustError, match=r"'candle' differs only in letter case.*visa:candle@"):
        load_visa(root, "Candle")


def test_release_missing_category(tmp_path: Path) -> None:
    root = _write_release(tmp_path)

    expected = r"category 'capsules' not found in '.*1cls\.csv'"
    with pytest.raises(AdrobustError, match=expected) as info:
        load_visa(root, "capsules")

    assert "candle, pcb1" in str(info.value)


def test_release_mask_size_mismatch(tmp_path: Path) -> None:
    root = _write_release(tmp_path)
    _save(Image.new("L", (20, 16)), root / "candle" / "Data" / "Masks" / "Anomaly" / "002.png")

    with pytest.raises(AdrobustError, match=r"002\.png' is 20x16 pixels .* is 16x16"):
        load_visa(root, "candle")


# Converted trees.


def test_converted_tree_in_root(tmp_path: Path) -> None:
    root = _convert(_write_release(tmp_path / "release"), tmp_path / "converted")

    split = load_visa(root, "candle")

    assert split.layout == "visa converted tree"
    assert len(split.train) == 5
    assert sum(r.label == 0 for r in split.test) == 3
    assert sum(r.label == 1 for r in split.test) == 4
    for record in split.test:
        if record.label == 1:
            masks = root / "candle" / "ground_truth" / "bad"
            assert record.mask == masks / f"{record.path.stem}.png"


def test_converted_tree_below_root(tmp_path: Path) -> None:
    _convert(_write_release(tmp_path / "release"), tmp_path / "visa" / "VisA_pytorch" / "1cls")

    split = load_visa(tmp_path / "visa", "pcb1")

    assert split.layout == "visa VisA_pytorch/1cls"
    assert len(split.train) == 2
    assert split.name == "visa-pcb1"


def test_converted_tree_root_is_1cls(tmp_path: Path) -> None:
    converted = _convert(_write_release(tmp_path / "release"), tmp_path / "VisA_pytorch" / "1cls")

    layout = detect_visa_layout(converted)

    assert layout.description == "visa VisA_pytorch/1cls"
    assert layout.base == converted
    assert load_visa(converted, "candle").layout == "visa VisA_pytorch/1cls"


def test_split_file_preferred_over_tree(tmp_path: Path) -> None:
    root = _write_release(tmp_path)
    _convert(root, root / "VisA_pytorch" / "1cls")

    layout = detect_visa_layout(root)

    assert layout.description == "visa split_csv/1cls.csv"
    assert layout.split_file == root / "split_csv" / "1cls.csv"


def test_layouts_give_same_records(tmp_path: Path) -> None:
    release = _write_release(tmp_path / "release", counts={"candle": (9, 6, 6)})
    converted = _convert(release, tmp_path / "converted")

    from_release = load_visa(release, "candle")
    from_tree = load_visa(converted, "candle")

    assert _ids(from_release.train) == _ids(from_tree.train)
    assert _ids(from_release.test) == _ids(from_tree.test)
    release_draw = sample_case(from_release, 3, 4, 1)
    tree_draw = sample_case(from_tree, 3, 4, 1)
    assert _ids(release_draw[0]) == _ids(tree_draw[0])
    assert _ids(release_draw[1]) == _ids(tree_draw[1])


@pytest.mark.parametrize("extension", [".JPG", ".jpg", ".Jpeg"])
def test_converted_tree_image_extension(tmp_path: Path, extension: str) -> None:
    root = _convert(_write_release(tmp_path / "release"), tmp_path / "converted")
    image = root / "candle" / "test" / "bad" / "000.JPG"
    image.rename(image.with_suffix(extension))

    split = load_visa(root, "candle")

    assert f"test/bad/000{extension}" in _ids(split.test)


def test_converted_tree_categories(tmp_path: Path) -> None:
    converted = tmp_path / "visa" / "VisA_pytorch" / "1cls"
    root = _convert(_write_release(tmp_path / "release"), converted)

    specs = expand_dataset_spec(f"visa:all@{tmp_path / 'visa'}")

    assert specs == [f"visa:candle@{tmp_path / 'visa'}", f"visa:pcb1@{tmp_path / 'visa'}"]
    assert list_visa_categories(root) == ["candle", "pcb1"]


def test_converted_tree_image_without_mask(tmp_path: Path) -> None:
    root = _convert(_write_release(tmp_path / "release"), tmp_path / "converted")
    (root / "candle" / "ground_truth" / "bad" / "001.png").unlink()

    with pytest.raises(AdrobustError, match=r"bad/001\.JPG' has no mask; add '.*bad/001\.png'"):
        load_visa(root, "candle")


def test_converted_tree_mask_without_image(tmp_path: Path) -> None:
    root = _convert(_write_release(tmp_path / "release"), tmp_path / "converted")
    (root / "candle" / "test" / "bad" / "003.JPG").unlink()

    with pytest.raises(AdrobustError, match=r"bad/003\.png' has no image"):
        load_visa(root, "candle")


def test_converted_tree_missing_ground_truth(tmp_path: Path) -> None:
    root = _convert(_write_release(tmp_path / "release"), tmp_path / "converted")
    shutil.rmtree(root / "pcb1" / "ground_truth")

    with pytest.raises(AdrobustError, match=r"visa category folder '.*pcb1' has no ground_truth"):
        load_visa(root, "pcb1")


def test_converted_tree_empty_train(tmp_path: Path) -> None:
    root = _convert(_write_release(tmp_path / "release"), tmp_path / "converted")
    for path in (root / "candle" / "train" / "good").iterdir():
        path.unlink()

    with pytest.raises(AdrobustError, match=r"train/good' contains no images"):
        load_visa(root, "candle")


def test_converted_tree_wrong_case_category(tmp_path: Path) -> None:
    root = _convert(_write_release(tmp_path / "release"), tmp_path / "converted")

    with pytest.raises(AdrobustError, match=r"'pcb1' differs only in letter case.*visa:pcb1@"):
        load_dataset(f"visa:PCB1@{root}")


def test_visa_missing_root(tmp_path: Path) -> None:
    with pytest.raises(AdrobustError, match=r"'.*nowhere' does not exist.*visa:CATEGORY@ROOT"):
        load_visa(tmp_path / "nowhere", "candle")


def test_visa_no_known_layout(tmp_path: Path) -> None:
    (tmp_path / "candle" / "Data").mkdir(parents=True)

    expected = r"has no known layout, because it contains neither split_csv/1cls\.csv"
    with pytest.raises(AdrobustError, match=expected):
        load_visa(tmp_path, "candle")


# AnomalyDINO reference selection.


def test_anomalydino_selection_both_layouts(tmp_path: Path) -> None:
    release = _write_release(tmp_path / "release", counts={"candle": (9, 3, 3)})
    converted = _convert(release, tmp_path / "converted")
    listing = sorted(os.listdir(converted / "candle" / "train" / "good"))

    for root in (release, converted):
        references, _ = sample_case(load_visa(root, "candle"), 3, None, 2, selection="anomalydino")

        assert [r.path.name for r in references] == listing[6:9]


# The protocol end to end.


def _write_textured_release(root: Path, size: int = 56) -> Path:
    """Write a release whose anomalies are textures with a bright square, saved as JPEG."""
    rng = np.random.default_rng(1)
    lines = [HEADER]
    for index in range(10):
        relative = f"macaroni1/Data/Images/Normal/{index:04d}.JPG"
        _save(Image.fromarray(texture(rng, size)).convert("RGB"), root / relative)
        lines.append(f"macaroni1,{'train' if index < 6 else 'test'},normal,{relative},")

    for index in range(4):
        pixels = texture(rng, size)
        mask = np.zeros((size, size), dtype=np.uint8)
        pixels[10:30, 20:40] = 250
        mask[10:30, 20:40] = 255
        relative = f"macaroni1/Data/Images/Anomaly/{index:03d}.JPG"
        mask_relative = f"macaroni1/Data/Masks/Anomaly/{index:03d}.png"
        _save(Image.fromarray(pixels).convert("RGB"), root / relative)
        _save(Image.fromarray(mask), root / mask_relative)
        lines.append(f"macaroni1,test,anomaly,{relative},{mask_relative}")

    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    return root


def test_visa_protocol_end_to_end(tmp_path: Path) -> None:
    root = _write_textured_release(tmp_path)
    spec = f"visa:macaroni1@{root}"
    split = load_dataset(spec)
    detector = tiny_detector()
    key = CaseKey(spec, 2, 0, 4, "score", detector.fingerprint())
    budgets = [parse_eps("0"), parse_eps("4/255")]

    evaluation = evaluate_case(detector, split, key, budgets, batch_size=4)

    prepared = evaluation.prepared
    assert prepared.dataset_name == "visa-macaroni1"
    assert len(prepared.references) == 2
    assert list(prepared.labels) == [0] * 4 + [1] * 4
    assert set(evaluation.budgets) == set(budgets)
    assert evaluation.budgets[budgets[0]].auroc == prepared.clean_auroc
    assert math.isfinite(evaluation.budgets[budgets[1]].auroc)
