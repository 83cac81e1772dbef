"""Tests for parsing dataset spec strings and dispatching them to the loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pytest_adrobust.data import (
    DatasetSpec,
    DatasetSplit,
    expand_dataset_spec,
    load_dataset,
    parse_dataset_spec,
)
from pytest_adrobust.errors import AdrobustError


def _write_folder_dataset(root: Path) -> Path:
    for folder, count in (("good", 4), ("crack", 2)):
        (root / folder).mkdir(parents=True)
        for index in range(count):
            Image.new("L", (16, 16), color=index * 40).save(root / folder / f"{index:03d}.png")
    return root


@pytest.mark.parametrize("category", ["mono", "poly"])
def test_parse_elpv_category(category: str) -> None:
    spec = parse_dataset_spec(f"elpv:{category}")

    assert spec.kind == "elpv"
    assert spec.category == category
    assert spec.root is None
    assert spec.text == f"elpv:{category}"


def test_parse_folder_path() -> None:
    spec = parse_dataset_spec("folder:/data/cables")

    assert spec.kind == "folder"
    assert spec.category is None
    assert spec.root == Path("/data/cables")


def test_parse_folder_path_with_colon_and_at() -> None:
    spec = parse_dataset_spec("folder:/mnt/c:/runs@2024/cables")

    assert spec.root == Path("/mnt/c:/runs@2024/cables")
    assert spec.text == "folder:/mnt/c:/runs@2024/cables"


def test_parse_folder_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    spec = parse_dataset_spec("folder:~/cables")

    assert spec.root == tmp_path / "cables"
    assert spec.text == "folder:~/cables"


def test_parse_missing_folder_does_no_io(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"

    spec = parse_dataset_spec(f"folder:{missing}")

    assert spec.root == missing
    assert not missing.exists()


@pytest.mark.parametrize("kind", ["mvtec", "visa"])
def test_parse_category_and_root(kind: str) -> None:
    spec = parse_dataset_spec(f"{kind}:bottle@/data/{kind}")

    assert spec.kind == kind
    assert spec.category == "bottle"
    assert spec.root == Path(f"/data/{kind}")
    assert spec.text == f"{kind}:bottle@/data/{kind}"


def test_parse_root_with_at_and_colon() -> None:
    spec = parse_dataset_spec("mvtec:screw@/mnt/c:/runs@2024/mvtec")

    assert spec.category == "screw"
    assert spec.root == Path("/mnt/c:/runs@2024/mvtec")


def test_parse_category_root_expands_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    spec = parse_dataset_spec("visa:all@~/visa")

    assert spec.category == "all"
    assert spec.root == tmp_path / "visa"
    assert spec.text == "visa:all@~/visa"


def test_parse_category_root_does_no_io(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"

    spec = parse_dataset_spec(f"mvtec:Bottle@{missing}")

    assert spec.category == "Bottle"
    assert not missing.exists()


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("mvtec:bottle", r"'mvtec:bottle' has no '@'; write mvtec:CATEGORY@ROOT"),
        ("visa:candle", r"'visa:candle' has no '@'; write visa:CATEGORY@ROOT"),
        ("mvtec:@/data", r"has no category before '@'"),
        ("visa:candle@", r"has no root after '@'"),
        ("mvtec:bottle@  ", r"has no root after '@'"),
        ("mvtec:a/b@/data", r"category 'a/b', which is a path"),
        ("visa:..@/data", r"category '\.\.', which is a path"),
    ],
)
def test_parse_invalid_category_spec(text: str, pattern: str) -> None:
    with pytest.raises(AdrobustError, match=pattern):
        parse_dataset_spec(text)


@pytest.mark.parametrize("text", ["elpv:mono", "folder:/data/cables", "mvtec:bottle@/data"])
def test_expand_ordinary_spec(text: str) -> None:
    assert expand_dataset_spec(text) == [text]


def test_expand_invalid_spec_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"has no '@'"):
        expand_dataset_spec("visa:all")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", r"dataset spec is empty \(''\)"),
        ("   ", r"dataset spec is empty \('   '\)"),
        ("imagenet:val", r"unknown kind 'imagenet'"),
        ("elpv", r"unknown kind 'elpv'"),
        ("ELPV:mono", r"unknown kind 'ELPV'"),
        ("elpv:", r"ELPV category ''"),
        ("elpv:cigs", r"ELPV category 'cigs'"),
        ("MVTec:bottle@/data", r"unknown kind 'MVTec'"),
        ("folder:", r"'folder:' has no path"),
        ("folder:  ", r"'folder:  ' has no path"),
    ],
)
def test_parse_invalid_spec_rejected(text: str, pattern: str) -> None:
    with pytest.raises(AdrobustError, match=pattern) as info:
        parse_dataset_spec(text)

    assert "elpv:mono" in str(info.value)
    assert "mvtec:CATEGORY@ROOT" in str(info.value)


def test_parse_non_string_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"must be a string, got int 3"):
        parse_dataset_spec(3)  # type: ignore[arg-type]


def test_load_dataset_elpv_string() -> None:
    split = load_dataset("elpv:mono")

    assert isinstance(split, DatasetSplit)
    assert split.name == "elpv-mono"
    assert split.spec == "elpv:mono"
    assert split.layout.startswith("elpv-dataset ")


def test_load_dataset_folder_string(tmp_path: Path) -> None:
    root = _write_folder_dataset(tmp_path / "cables")

    split = load_dataset(f"folder:{root}")

    assert split.name == "folder-cables"
    assert split.spec == f"folder:{root}"
    assert split.layout == "folder"
    assert len(split.train) == 2


def test_load_dataset_parsed_spec(tmp_path: Path) -> None:
    root = _write_folder_dataset(tmp_path / "pins")
    spec = parse_dataset_spec(f"folder:{root}")

    split = load_dataset(spec)

    assert split.name == "folder-pins"
    assert split.spec == spec.text


def test_load_dataset_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(AdrobustError, match=r"does-not-exist.*does not exist"):
        load_dataset(f"folder:{tmp_path / 'does-not-exist'}")


def test_load_dataset_unknown_kind_rejected() -> None:
    spec = DatasetSpec(
        kind="imagenet", category="val", root=Path("/data"), text="imagenet:val@/data"
    )

    with pytest.raises(AdrobustError, match=r"unsupported kind 'imagenet'"):
        load_dataset(spec)


def test_load_dataset_mvtec_without_root() -> None:
    spec = DatasetSpec(kind="mvtec", category="bottle", root=None, text="mvtec:bottle")

    with pytest.raises(AdrobustError, match=r"no category or no root"):
        load_dataset(spec)


def test_load_dataset_missing_mvtec_root(tmp_path: Path) -> None:
    with pytest.raises(AdrobustError, match=r"does-not-exist' does not exist"):
        load_dataset(f"mvtec:bottle@{tmp_path / 'does-not-exist'}")


def test_load_dataset_elpv_without_category() -> None:
    spec = DatasetSpec(kind="elpv", category=None, root=None, text="elpv")

    with pytest.raises(AdrobustError, match=r"no category"):
        load_dataset(spec)


def test_load_dataset_wrong_type_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"string or a DatasetSpec, got (Posix|Windows)Path"):
        load_dataset(Path("/data"))  # type: ignore[arg-type]
