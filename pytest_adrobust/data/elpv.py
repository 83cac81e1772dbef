"""Load the ELPV solar cell dataset that the ``elpv-dataset`` package ships.

The package contains 2,624 electroluminescence images of solar cells (300x300 pixels, 8-bit
grayscale) in ``<package>/data/images/`` and a whitespace-separated ``<package>/data/labels.csv``
with one line per image: the image path, a defect probability and the cell type, for example
``images/cell0001.png  1.0  mono``.

The defect probability is 0, 1/3, 2/3 or 1. Cells with 0 become normal records (defect
``"good"``) and cells with 1 become anomalous records (defect ``"defective"``). Cells with 1/3 or
2/3 are left out: those values record that the annotators were unsure whether the cell is
defective, so the cells are neither clean normals nor confirmed anomalies.

Counts in labels.csv of elpv-dataset 1.0.0.post1, measured by reading the file:

========  ======  =========  =====  =====  ==========================
Category  Normal  Anomalous  p=1/3  p=2/3  Reference pool / test pool
========  ======  =========  =====  =====  ==========================
mono      588     313        117    56     294 / 294 normal
poly      920     402        178    50     460 / 460 normal
========  ======  =========  =====  =====  ==========================

All anomalous cells go to the test pool.
"""

from __future__ import annotations

import math
from importlib import metadata
from pathlib import Path

from pytest_adrobust.data.base import DatasetSplit, ImageRecord, split_normal_pool
from pytest_adrobust.errors import AdrobustError

ELPV_CATEGORIES = ("mono", "poly")

_INSTALL_HINT = "pip install 'pytest-adrobust[elpv]'"


def load_elpv(category: str, spec: str | None = None, data_dir: Path | None = None) -> DatasetSplit:
    """Read the ELPV labels of one cell type and split them into reference and test pools.

    Only ``labels.csv`` is read and the image files are checked for existence. No image is
    decoded, so this takes milliseconds. The normal cells are split by
    :func:`~pytest_adrobust.data.base.split_normal_pool`, whose fixed seed keeps the split the
    same for every run seed.

    Parameters
    ----------
    category : str
        Cell type, ``"mono"`` or ``"poly"``.
    spec : str or None
        Dataset spec string to store in the result. None stores ``"elpv:<category>"``.
    data_dir : pathlib.Path or None
        Directory that contains ``labels.csv`` and ``images/``. None uses the data of the
        installed ``elpv-dataset`` package.

    Returns
    -------
    DatasetSplit
        Split named ``"elpv-<category>"`` with normal cells in ``train`` and normal and defective
        cells in ``test``, each sorted by image id.

    Raises
    ------
    AdrobustError
        If ``category`` is invalid, ``elpv-dataset`` is not installed, ``labels.csv`` is missing
        or malformed, or an image file that it lists is missing.
    """
    if category not in ELPV_CATEGORIES:
        raise AdrobustError(
            f"ELPV category must be one of {', '.join(ELPV_CATEGORIES)}, got {category!r}; "
            f"use 'elpv:mono' or 'elpv:poly'."
        )

    if data_dir is None:
        data_dir = _package_data_dir()
        layout = f"elpv-dataset {_package_version()}"
    else:
        data_dir = Path(data_dir)
        layout = f"elpv labels.csv in {data_dir}"

    normals, anomalies = _read_labels(data_dir, category)
    train, test_normals = split_normal_pool(normals)
    test = test_normals + tuple(sorted(anomalies, key=lambda record: record.image_id))

    return DatasetSplit(
        name=f"elpv-{category}",
        spec=spec if spec is not None else f"elpv:{category}",
        train=train,
        test=test,
        layout=layout,
    )


def _package_data_dir() -> Path:
    try:
        import elpv_dataset
    except ImportError as error:
        raise AdrobustError(
            f"the ELPV dataset needs the elpv-dataset package, which is not installed; "
            f"run {_INSTALL_HINT}."
        ) from error

    return Path(elpv_dataset.__file__).resolve().parent / "data"


def _package_version() -> str:
    try:
        return metadata.version("elpv-dataset")
    except metadata.PackageNotFoundError:  # Importable from a source tree that was never installed.
        return "unknown version"


def _read_labels(data_dir: Path, category: str) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Parse labels.csv and return the normal and the anomalous records of ``category``."""
    labels_path = data_dir / "labels.csv"
    try:
        lines = labels_path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise AdrobustError(
            f"cannot read the ELPV labels file {str(labels_path)!r} ({error.strerror or error}); "
            f"reinstall the data with {_INSTALL_HINT}."
        ) from error

    normals: list[ImageRecord] = []
    anomalies: list[ImageRecord] = []
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue

        relative_path, probability, cell_type = _parse_line(fields, labels_path, line_number)
        if cell_type != category:
            continue

        if probability == 0.0:
            label, defect = 0, "good"
        elif probability == 1.0:
            label, defect = 1, "defective"
        else:
            continue  # 1/3 or 2/3: the annotators were unsure.

        image_path = data_dir / relative_path
        if not image_path.is_file():
            raise AdrobustError(
                f"ELPV image {str(image_path)!r} listed on line {line_number} of "
                f"{str(labels_path)!r} is missing; reinstall the data with {_INSTALL_HINT}."
            )

        record = ImageRecord(
            image_id=Path(relative_path).stem, path=image_path, label=label, defect=defect
        )
        (normals if label == 0 else anomalies).append(record)

    return normals, anomalies


def _parse_line(fields: list[str], labels_path: Path, line_number: int) -> tuple[str, float, str]:
    where = f"line {line_number} of {str(labels_path)!r}"
    if len(fields) != 3:
        raise AdrobustError(
            f"{where} has {len(fields)} fields {fields!r}; expected 'images/<name>.png "
            f"<probability> <mono|poly>'. Reinstall the data with {_INSTALL_HINT}."
        )

    relative_path, probability_text, cell_type = fields
    try:
        probability = float(probability_text)
    except ValueError:
        probability = math.nan

    if not 0.0 <= probability <= 1.0:
        raise AdrobustError(
            f"{where} has defect probability {probability_text!r}; expected a number in [0, 1]. "
            f"Reinstall the data with {_INSTALL_HINT}."
        )

    if cell_type not in ELPV_CATEGORIES:
        raise AdrobustError(
            f"{where} has cell type {cell_type!r}; expected 'mono' or 'poly'. "
            f"Reinstall the data with {_INSTALL_HINT}."
        )

    return relative_path, probability, cell_type
