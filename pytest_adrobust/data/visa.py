"""Load one category of the VisA dataset from the original release or from a converted tree.

Three layouts are detected, in this order:

1. The original release, with the split file ``ROOT/split_csv/1cls.csv``. Its header is
   ``object,split,label,image,mask``, ``split`` is ``train`` or ``test``, ``label`` is
   ``normal`` or ``anomaly``, and ``image`` and ``mask`` are paths relative to ROOT, such as
   ``candle/Data/Images/Anomaly/000.JPG`` and ``candle/Data/Masks/Anomaly/000.png``. Normal rows
   have an empty mask cell. A UTF-8 byte-order mark before the header is accepted.
2. ``ROOT/VisA_pytorch/1cls/<category>/``, the tree that ``utils/prepare_data.py`` of the VisA
   repository (github.com/amazon-science/spot-diff) writes from ``1cls.csv``. ROOT may also be
   that ``VisA_pytorch/1cls`` folder itself.
3. A converted tree directly in ROOT: ``ROOT/<category>/train/good``, ``test/good``,
   ``test/bad`` and ``ground_truth/bad``.

The converted trees have the MVTec AD layout, except that a mask has the same stem as its image
(``test/bad/000.JPG`` and ``ground_truth/bad/000.png``). They are read with the MVTec AD checks
of :mod:`pytest_adrobust.data.mvtec`. VisA images are JPEG files (``.JPG``) and masks PNG files.

Image ids follow the converted tree in every layout (``train/good/<file name>``,
``test/good/<file name>``, ``test/bad/<file name>``), so a case draws the same images from the
release and from its converted tree. The split file names no defect classes, so every anomalous
image has the defect ``"bad"``, as in the converted tree.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import final

from pytest_adrobust.data.base import DatasetSplit, ImageRecord
from pytest_adrobust.data.mvtec import (
    check_mask_size,
    check_root,
    find_category_dir,
    list_tree_categories,
    raise_unknown_category,
    read_anomaly_tree,
)
from pytest_adrobust.errors import AdrobustError

SPLIT_FILE = Path("split_csv") / "1cls.csv"
"""Split file of the original VisA release, relative to ROOT."""

CONVERTED_FOLDER = Path("VisA_pytorch") / "1cls"
"""Folder that the VisA preparation script writes the converted tree to, relative to ROOT."""

_SPLIT_COLUMNS = ("object", "split", "label", "image", "mask")
_SPLITS = ("train", "test")
_LABELS = {"normal": "good", "anomaly": "bad"}


@final
@dataclass(frozen=True)
class VisaLayout:
    """Layout of a VisA root that :func:`detect_visa_layout` found.

    Attributes
    ----------
    description : str
        Layout name stored in ``DatasetSplit.layout``: ``"visa split_csv/1cls.csv"``,
        ``"visa VisA_pytorch/1cls"`` or ``"visa converted tree"``.
    base : pathlib.Path
        ROOT for the split file and the converted tree in ROOT, otherwise the
        ``VisA_pytorch/1cls`` folder that contains the category folders.
    split_file : pathlib.Path or None
        Path of ``1cls.csv`` for the original release, None for a converted tree.
    """

    description: str
    base: Path
    split_file: Path | None


@final
@dataclass(frozen=True)
class _SplitRow:
    line: int
    object: str
    split: str
    label: str
    image: str
    mask: str


def detect_visa_layout(root: Path) -> VisaLayout:
    """Find which of the three VisA layouts a root folder has.

    Parameters
    ----------
    root : pathlib.Path
        VisA root folder. ``~`` is expanded.

    Returns
    -------
    VisaLayout
        The first layout found, checked in the order split file, ``VisA_pytorch/1cls`` below or
        at ROOT, converted tree in ROOT.

    Raises
    ------
    AdrobustError
        If ``root`` is missing or not a folder, or has none of the three layouts.
    """
    root = Path(root).expanduser()
    check_root(root, kind="visa")

    split_file = root / SPLIT_FILE
    if split_file.is_file():
        return VisaLayout("visa split_csv/1cls.csv", root, split_file)

    converted = root / CONVERTED_FOLDER
    if converted.is_dir():
        return VisaLayout("visa VisA_pytorch/1cls", converted, None)

    resolved = root.resolve()
    if Path(resolved.parent.name, resolved.name) == CONVERTED_FOLDER:
        return VisaLayout("visa VisA_pytorch/1cls", root, None)

    if list_tree_categories(root):
        return VisaLayout("visa converted tree", root, None)

    raise AdrobustError(
        f"VisA root {str(root)!r} has no known layout, because it contains neither "
        f"{SPLIT_FILE.as_posix()}, {CONVERTED_FOLDER.as_posix()}/ nor a category folder with "
        f"train/good. Pass the folder of the extracted VisA release or of the converted tree as "
        f"visa:CATEGORY@ROOT."
    )


def load_visa(root: Path, category: str, spec: str | None = None) -> DatasetSplit:
    """List the images and masks of one VisA category and split them into the two pools.

    The reference pool is every normal training image of the 1cls split, and the test pool every
    test image. Images are not decoded, but every mask's pixel size is compared with its image's
    from the file headers.

    Parameters
    ----------
    root : pathlib.Path
        VisA root folder in one of the three layouts. ``~`` is expanded.
    category : str
        Object name, such as ``"candle"``. Letter case must match.
    spec : str or None
        Dataset spec string to store in the result. None stores ``"visa:<category>@<root>"``.

    Returns
    -------
    DatasetSplit
        Split named ``"visa-<category>"`` whose ``layout`` names the layout found. Anomalous
        records carry their mask path.

    Raises
    ------
    AdrobustError
        If no layout is found, the category is missing or has the wrong letter case, the split
        file is malformed or names a missing file, or a check of
        :func:`~pytest_adrobust.data.mvtec.read_anomaly_tree` fails for a converted tree.
    """
    root = Path(root).expanduser()
    spec_text = spec if spec is not None else f"visa:{category}@{root}"

    layout = detect_visa_layout(root)
    if layout.split_file is not None:
        train, test = _read_release(root, layout.split_file, category)
    else:
        category_dir = find_category_dir(layout.base, category, kind="visa")
        train, test = read_anomaly_tree(category_dir, mask_suffix="", kind="visa")

    return DatasetSplit(
        name=f"visa-{category}",
        spec=spec_text,
        train=train,
        test=test,
        layout=layout.description,
    )


def list_visa_categories(root: Path) -> list[str]:
    """List the categories of a VisA root in any of the three layouts.

    Parameters
    ----------
    root : pathlib.Path
        VisA root folder. ``~`` is expanded.

    Returns
    -------
    list of str
        The distinct ``object`` values of ``1cls.csv``, or the category folders with
        ``train/good`` of a converted tree, in sorted order.

    Raises
    ------
    AdrobustError
        If no layout is found, the split file is malformed, or no category is found.
    """
    layout = detect_visa_layout(Path(root).expanduser())

    if layout.split_file is not None:
        categories = sorted({row.object for row in _read_split_rows(layout.split_file)})
    else:
        categories = list_tree_categories(layout.base)

    if not categories:
        raise AdrobustError(
            f"VisA root {str(layout.base)!r} ({layout.description}) lists no category; check "
            f"that the dataset was extracted completely."
        )
    return categories


def _read_release(
    root: Path, split_file: Path, category: str
) -> tuple[tuple[ImageRecord, ...], tuple[ImageRecord, ...]]:
    rows = _read_split_rows(split_file)
    objects = sorted({row.object for row in rows})
    if category not in objects:
        raise_unknown_category(category, objects, objects, split_file, kind="visa")

    train: list[ImageRecord] = []
    test_normals: list[ImageRecord] = []
    anomalies: list[ImageRecord] = []
    first_line: dict[str, int] = {}
    for row in rows:
        if row.object != category:
            continue

        record = _row_record(root, split_file, row)
        if record.image_id in first_line:
            raise AdrobustError(
                f"lines {first_line[record.image_id]} and {row.line} of {str(split_file)!r} both "
                f"give image id {record.image_id!r} (split, label and file name); remove the "
                f"duplicate row."
            )
        first_line[record.image_id] = row.line

        if row.split == "train":
            train.append(record)
        elif record.label == 0:
            test_normals.append(record)
        else:
            anomalies.append(record)

    if not train:
        raise AdrobustError(
            f"{str(split_file)!r} lists no train images for category {category!r}; the "
            f"reference pool needs the normal training images of the 1cls split."
        )

    def by_id(record: ImageRecord) -> str:
        return record.image_id

    return (
        tuple(sorted(train, key=by_id)),
        tuple(sorted(test_normals, key=by_id)) + tuple(sorted(anomalies, key=by_id)),
    )


def _row_record(root: Path, split_file: Path, row: _SplitRow) -> ImageRecord:
    where = f"line {row.line} of {str(split_file)!r}"

    if row.split not in _SPLITS:
        raise AdrobustError(
            f"{where} has split {row.split!r}; expected 'train' or 'test'. Use the 1cls.csv of "
            f"the VisA release."
        )
    if row.label not in _LABELS:
        raise AdrobustError(
            f"{where} has label {row.label!r}; expected 'normal' or 'anomaly'. Use the 1cls.csv "
            f"of the VisA release."
        )

    image = root / row.image
    if not image.is_file():
        raise AdrobustError(
            f"{where} names image {row.image!r}, but {str(image)!r} is missing; restore the file "
            f"from the VisA release or remove the row."
        )

    if row.label == "normal":
        if row.mask:
            raise AdrobustError(
                f"{where} gives the normal image {row.image!r} the mask {row.mask!r}; normal "
                f"images have no anomaly to mark, so leave the mask cell empty."
            )
        mask = None
    else:
        if row.split == "train":
            raise AdrobustError(
                f"{where} puts the anomalous image {row.image!r} in the train split; the "
                f"reference pool must contain only normal images, so move the row to 'test'."
            )
        mask = _row_mask(root, where, row)
        check_mask_size(image, mask)

    folder = _LABELS[row.label]
    return ImageRecord(
        image_id=f"{row.split}/{folder}/{image.name}",
        path=image,
        label=0 if row.label == "normal" else 1,
        defect=folder,
        mask=mask,
    )


def _row_mask(root: Path, where: str, row: _SplitRow) -> Path:
    if not row.mask:
        raise AdrobustError(
            f"{where} has no mask for the anomalous image {row.image!r}; fill the mask cell with "
            f"the path of its mask relative to the VisA root."
        )

    mask = root / row.mask
    if not mask.is_file():
        raise AdrobustError(
            f"{where} names mask {row.mask!r}, but {str(mask)!r} is missing; restore the file "
            f"from the VisA release or remove the row."
        )
    return mask


def _read_split_rows(split_file: Path) -> list[_SplitRow]:
    try:
        # "utf-8-sig" drops a byte-order mark, which spreadsheet programs write before the header.
        with split_file.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise AdrobustError(
                    f"split file {str(split_file)!r} is empty; expected the header "
                    f"{','.join(_SPLIT_COLUMNS)} and one row per image."
                )

            reader.fieldnames = [name.strip() for name in reader.fieldnames]
            missing = [column for column in _SPLIT_COLUMNS if column not in reader.fieldnames]
            if missing:
                raise AdrobustError(
                    f"split file {str(split_file)!r} has the header {reader.fieldnames!r}, which "
                    f"lacks {missing!r}; expected the header {','.join(_SPLIT_COLUMNS)}."
                )

            rows = []
            for row in reader:
                cells = {column: (row.get(column) or "").strip() for column in _SPLIT_COLUMNS}
                rows.append(_SplitRow(line=reader.line_num, **cells))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise AdrobustError(
            f"cannot read the split file {str(split_file)!r}: {error}. Check that it is the "
            f"UTF-8 1cls.csv of the VisA release."
        ) from error
