"""Tests for the folder and ELPV loaders, the normal-image split and sample_case."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from pytest_adrobust.data import (
    DatasetSplit,
    ImageRecord,
    load_elpv,
    load_folder,
    load_images,
    sample_case,
    split_normal_pool,
)
from pytest_adrobust.errors import AdrobustError


def _write_image(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (16, 16), color=value).save(path)


def _make_tree(root: Path, normals: int = 6, defects: dict[str, int] | None = None) -> Path:
    """Write ``normals`` images to root/good and the given number of images per defect folder."""
    if defects is None:
        defects = {"crack": 2, "scratch": 3}

    for index in range(normals):
        _write_image(root / "good" / f"{index:03d}.png", value=index)
    for defect, count in defects.items():
        for index in range(count):
            _write_image(root / defect / f"{index:03d}.png", value=200 + index)
    return root


def _ids(records: tuple[ImageRecord, ...] | list[ImageRecord]) -> list[str]:
    return [record.image_id for record in records]


def _synthetic_split(normals: int, anomalies: int, name: str = "toy") -> DatasetSplit:
    """Build a split without files: sample_case only looks at ids and labels."""
    pool = [ImageRecord(f"n{i:03d}", Path(f"n{i:03d}.png"), 0, "good") for i in range(normals)]
    train, test_normals = split_normal_pool(pool)
    anomalous = tuple(
        ImageRecord(f"a{i:03d}", Path(f"a{i:03d}.png"), 1, "crack") for i in range(anomalies)
    )
    return DatasetSplit(
        name=name, spec="toy", train=train, test=test_normals + anomalous, layout="toy"
    )


# Folder loader.


def test_folder_counts_and_labels(tmp_path: Path) -> None:
    split = load_folder(_make_tree(tmp_path / "cables"))

    test_normals = [r for r in split.test if r.label == 0]
    test_anomalies = [r for r in split.test if r.label == 1]
    assert len(split.train) == 3
    assert len(test_normals) == 3
    assert len(test_anomalies) == 5
    assert all(r.label == 0 for r in split.train)


def test_folder_defect_names(tmp_path: Path) -> None:
    split = load_folder(_make_tree(tmp_path / "cables"))

    defects = sorted(r.defect for r in split.test if r.label == 1)
    assert defects == ["crack", "crack", "scratch", "scratch", "scratch"]
    assert {r.defect for r in split.train} == {"good"}


def test_folder_ids_are_relative_paths(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "cables")

    split = load_folder(root)

    all_ids = set(_ids(split.train)) | set(_ids(split.test))
    assert "crack/001.png" in all_ids
    assert "good/000.png" in all_ids
    for record in split.train + split.test:
        assert record.path == root / record.image_id


def test_folder_name_and_layout(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "cables")

    split = load_folder(root, spec="folder:cables-spec")

    assert split.name == "folder-cables"
    assert split.layout == "folder"
    assert split.spec == "folder:cables-spec"


def test_folder_split_disjoint_and_complete(tmp_path: Path) -> None:
    split = load_folder(_make_tree(tmp_path / "cables", normals=9))

    train_ids = set(_ids(split.train))
    test_normal_ids = {r.image_id for r in split.test if r.label == 0}
    assert len(split.train) == 4
    assert train_ids.isdisjoint(test_normal_ids)
    assert train_ids | test_normal_ids == {f"good/{i:03d}.png" for i in range(9)}


def test_folder_split_deterministic(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "cables", normals=10)

    first = load_folder(root)
    second = load_folder(root)

    assert _ids(first.train) == _ids(second.train)
    assert _ids(first.test) == _ids(second.test)


def test_folder_pools_sorted_by_id(tmp_path: Path) -> None:
    split = load_folder(_make_tree(tmp_path / "cables", normals=10))

    test_normals = [r.image_id for r in split.test if r.label == 0]
    test_anomalies = [r.image_id for r in split.test if r.label == 1]
    assert _ids(split.train) == sorted(_ids(split.train))
    assert test_normals == sorted(test_normals)
    assert test_anomalies == sorted(test_anomalies)


def test_folder_file_filter(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "cables", normals=2, defects={"crack": 1})
    _write_image(root / "good" / "upper.PNG")
    _write_image(root / "good" / "photo.JpEg")
    _write_image(root / "good" / ".hidden.png")
    (root / "good" / "notes.txt").write_text("not an image")
    (root / "good" / "nested").mkdir()
    _write_image(root / "good" / "nested" / "deep.png")
    _write_image(root / ".cache" / "x.png")
    _write_image(root / "stray.png")

    split = load_folder(root)

    all_ids = set(_ids(split.train)) | set(_ids(split.test))
    assert "good/upper.PNG" in all_ids
    assert "good/photo.JpEg" in all_ids
    assert len(all_ids) == 5


@pytest.mark.parametrize("extension", [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"])
def test_folder_accepts_extension(tmp_path: Path, extension: str) -> None:
    root = _make_tree(tmp_path / "cables", normals=2, defects={"crack": 1})
    _write_image(root / "crack" / f"extra{extension.upper()}")

    split = load_folder(root)

    assert f"crack/extra{extension.upper()}" in _ids(split.test)


def test_folder_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _make_tree(tmp_path / "cables")

    split = load_folder(Path("~/cables"))

    assert split.name == "folder-cables"


def test_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(AdrobustError, match=r"'.*nowhere' does not exist"):
        load_folder(tmp_path / "nowhere")


def test_folder_root_is_file(tmp_path: Path) -> None:
    path = tmp_path / "archive.zip"
    path.write_bytes(b"zip")

    with pytest.raises(AdrobustError, match=r"archive\.zip' is not a folder"):
        load_folder(path)


def test_folder_missing_good(tmp_path: Path) -> None:
    _write_image(tmp_path / "cables" / "crack" / "000.png")

    with pytest.raises(AdrobustError, match=r"cables' has no good/ subfolder"):
        load_folder(tmp_path / "cables")


def test_folder_one_normal_image(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "cables", normals=1)

    with pytest.raises(AdrobustError, match=r"good' contains 1 image\(s\); add at least 2"):
        load_folder(root)


def test_folder_no_defect_folder(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "cables", defects={})
    _write_image(root / ".hidden" / "000.png")

    with pytest.raises(AdrobustError, match=r"cables' has no defect subfolder"):
        load_folder(root)


def test_folder_empty_defect_folder(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "cables")
    (root / "dent").mkdir()
    (root / "dent" / "readme.txt").write_text("no images here")

    with pytest.raises(AdrobustError, match=r"defect folder '.*dent' contains no images"):
        load_folder(root)


# Normal-image split.


def test_split_normal_pool_ignores_input_order() -> None:
    pool = [ImageRecord(f"n{i:02d}", Path(f"n{i:02d}.png"), 0, "good") for i in range(11)]

    forward = split_normal_pool(pool)
    backward = split_normal_pool(list(reversed(pool)))

    assert forward == backward
    assert len(forward[0]) == 5
    assert len(forward[1]) == 6


def test_split_normal_pool_is_shuffled() -> None:
    pool = [ImageRecord(f"n{i:02d}", Path(f"n{i:02d}.png"), 0, "good") for i in range(40)]

    train, _ = split_normal_pool(pool)

    # A split without the permutation would give the first 20 ids to train.
    assert _ids(train) != [f"n{i:02d}" for i in range(20)]


# ELPV loader, on the real data of the installed elpv-dataset package.


def _elpv_labels() -> list[tuple[str, float, str]]:
    import elpv_dataset

    labels = Path(elpv_dataset.__file__).parent / "data" / "labels.csv"
    rows = []
    for line in labels.read_text().splitlines():
        if line.strip():
            path, probability, cell_type = line.split()
            rows.append((Path(path).stem, float(probability), cell_type))
    return rows


@pytest.mark.parametrize(
    ("category", "normals", "anomalies"), [("mono", 588, 313), ("poly", 920, 402)]
)
def test_elpv_counts(category: str, normals: int, anomalies: int) -> None:
    split = load_elpv(category)

    test_normals = [r for r in split.test if r.label == 0]
    test_anomalies = [r for r in split.test if r.label == 1]
    assert len(split.train) == normals // 2
    assert len(test_normals) == normals - normals // 2
    assert len(test_anomalies) == anomalies
    assert split.name == f"elpv-{category}"


@pytest.mark.parametrize("category", ["mono", "poly"])
def test_elpv_train_test_disjoint(category: str) -> None:
    split = load_elpv(category)

    assert set(_ids(split.train)).isdisjoint(_ids(split.test))


@pytest.mark.parametrize("category", ["mono", "poly"])
def test_elpv_records_match_labels(category: str) -> None:
    by_id = {row[0]: (row[1], row[2]) for row in _elpv_labels()}

    split = load_elpv(category)

    for record in split.train + split.test:
        probability, cell_type = by_id[record.image_id]
        assert cell_type == category
        assert probability == float(record.label)
        assert record.defect == ("good" if record.label == 0 else "defective")


@pytest.mark.parametrize("category", ["mono", "poly"])
def test_elpv_excludes_uncertain_cells(category: str) -> None:
    uncertain = {
        image_id
        for image_id, probability, cell_type in _elpv_labels()
        if cell_type == category and 0.0 < probability < 1.0
    }

    split = load_elpv(category)

    assert len(uncertain) > 0
    assert uncertain.isdisjoint(_ids(split.train) + _ids(split.test))


def test_elpv_ids_and_paths() -> None:
    split = load_elpv("mono")

    record = split.train[0]
    assert re.fullmatch(r"cell\d{4}", record.image_id)
    assert record.path.name == f"{record.image_id}.png"
    assert record.path.is_file()


def test_elpv_loads_real_images() -> None:
    split = load_elpv("poly")

    batch = load_images(split.test[:2], 224, 14)

    assert batch.shape == (2, 3, 224, 224)
    assert batch[0].std() > 0.01
    assert (batch[:, 0] == batch[:, 1]).all()


def test_elpv_invalid_category() -> None:
    with pytest.raises(AdrobustError, match=r"got 'cigs'"):
        load_elpv("cigs")


def test_elpv_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)

    with pytest.raises(AdrobustError, match=r"pip install 'pytest-adrobust\[elpv\]'"):
        load_elpv("mono")


def test_elpv_missing_image_file(tmp_path: Path) -> None:
    _write_image(tmp_path / "images" / "cell0001.png")
    (tmp_path / "labels.csv").write_text(
        "images/cell0001.png  0.0  mono\nimages/cell0099.png  1.0  mono\n"
    )

    with pytest.raises(AdrobustError, match=r"cell0099\.png.*is missing"):
        load_elpv("mono", data_dir=tmp_path)


def test_elpv_malformed_labels_line(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("images/cell0001.png  maybe  mono\n")

    with pytest.raises(AdrobustError, match=r"line 1 .*defect probability 'maybe'"):
        load_elpv("mono", data_dir=tmp_path)


# sample_case.


def test_sample_case_sizes() -> None:
    split = load_elpv("mono")

    references, test_set = sample_case(split, shots=4, max_images=5, seed=0)

    assert len(references) == 4
    assert sum(r.label == 0 for r in test_set) == 5
    assert sum(r.label == 1 for r in test_set) == 5


def test_sample_case_draws_from_right_pools() -> None:
    split = load_elpv("mono")

    references, test_set = sample_case(split, shots=8, max_images=10, seed=3)

    assert set(_ids(references)) <= set(_ids(split.train))
    assert set(_ids(test_set)) <= set(_ids(split.test))
    assert len(set(_ids(references))) == 8


def test_sample_case_deterministic_per_seed() -> None:
    split = load_elpv("mono")

    first = sample_case(split, shots=4, max_images=6, seed=7)
    second = sample_case(split, shots=4, max_images=6, seed=7)

    assert _ids(first[0]) == _ids(second[0])
    assert _ids(first[1]) == _ids(second[1])


def test_sample_case_differs_across_seeds() -> None:
    split = load_elpv("mono")

    first = sample_case(split, shots=4, max_images=6, seed=0)
    second = sample_case(split, shots=4, max_images=6, seed=1)

    assert _ids(first[0]) != _ids(second[0])
    assert _ids(first[1]) != _ids(second[1])


def test_sample_case_test_set_order() -> None:
    split = load_elpv("poly")

    _, test_set = sample_case(split, shots=1, max_images=6, seed=2)

    labels = [r.label for r in test_set]
    assert labels == [0] * 6 + [1] * 6
    assert _ids(test_set[:6]) == sorted(_ids(test_set[:6]))
    assert _ids(test_set[6:]) == sorted(_ids(test_set[6:]))


def test_sample_case_all_images_when_none() -> None:
    split = _synthetic_split(normals=10, anomalies=3)

    _, test_set = sample_case(split, shots=2, max_images=None, seed=0)

    assert len(test_set) == 8


def test_sample_case_small_class_taken_whole() -> None:
    split = _synthetic_split(normals=40, anomalies=3)

    _, test_set = sample_case(split, shots=2, max_images=5, seed=0)

    assert sum(r.label == 0 for r in test_set) == 5
    assert sum(r.label == 1 for r in test_set) == 3


def test_sample_case_ignores_pool_order() -> None:
    split = _synthetic_split(normals=20, anomalies=8)
    reordered = DatasetSplit(
        name=split.name,
        spec=split.spec,
        train=tuple(reversed(split.train)),
        test=tuple(reversed(split.test)),
        layout=split.layout,
    )

    assert sample_case(split, 3, 4, seed=5) == sample_case(reordered, 3, 4, seed=5)


def test_sample_case_shots_too_large() -> None:
    split = load_elpv("mono")

    expected = r"elpv-mono has 294 normal training images; use shots <= 294"
    with pytest.raises(AdrobustError, match=expected):
        sample_case(split, shots=295, max_images=None, seed=0)


@pytest.mark.parametrize(
    ("shots", "max_images", "seed", "pattern"),
    [
        (0, None, 0, r"toy: shots must be an integer >= 1, got 0"),
        (True, None, 0, r"shots must be an integer >= 1, got True"),
        (1, 1, 0, r"toy: max_images must be None or an integer >= 2, got 1"),
        (1, 3.0, 0, r"max_images must be None or an integer >= 2, got 3\.0"),
        (1, None, -1, r"toy: seed must be an integer >= 0, got -1"),
    ],
)
def test_sample_case_invalid_arguments(
    shots: object, max_images: object, seed: object, pattern: str
) -> None:
    split = _synthetic_split(normals=10, anomalies=4)

    with pytest.raises(AdrobustError, match=pattern):
        sample_case(split, shots, max_images, seed)  # type: ignore[arg-type]


def test_sample_case_too_few_anomalies(tmp_path: Path) -> None:
    split = load_folder(_make_tree(tmp_path / "cables", normals=6, defects={"crack": 1}))

    with pytest.raises(AdrobustError, match=r"folder-cables has 1 anomalous test image"):
        sample_case(split, shots=1, max_images=None, seed=0)


def test_sample_case_too_few_normals(tmp_path: Path) -> None:
    # Two normal images leave one for the reference pool and one for the test pool.
    split = load_folder(_make_tree(tmp_path / "cables", normals=2))

    with pytest.raises(AdrobustError, match=r"folder-cables has 1 normal test image"):
        sample_case(split, shots=1, max_images=None, seed=0)


# DatasetSplit and ImageRecord checks.


def test_split_rejects_anomalous_reference() -> None:
    bad = ImageRecord("a000", Path("a000.png"), 1, "crack")

    with pytest.raises(AdrobustError, match=r"toy: the reference pool .*\['a000'\]"):
        DatasetSplit(name="toy", spec="toy", train=(bad,), test=(), layout="toy")


def test_split_rejects_shared_image() -> None:
    record = ImageRecord("n000", Path("n000.png"), 0, "good")

    with pytest.raises(AdrobustError, match=r"\['n000'\] are in both"):
        DatasetSplit(name="toy", spec="toy", train=(record,), test=(record,), layout="toy")


@pytest.mark.parametrize(
    ("label", "defect", "pattern"),
    [
        (2, "crack", r"label must be 0 .* got 2"),
        (0, "crack", r"must have defect 'good', got 'crack'"),
        (1, "good", r"needs a defect class other than 'good'"),
    ],
)
def test_record_rejects_inconsistent_label(label: int, defect: str, pattern: str) -> None:
    with pytest.raises(AdrobustError, match=pattern):
        ImageRecord("x", Path("x.png"), label, defect)
