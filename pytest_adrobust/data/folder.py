"""Load a dataset from a folder with one subfolder of normal images and one per defect class.

Layout::

    PATH/
        good/        normal images
        crack/       anomalous images of the defect class "crack"
        scratch/     anomalous images of the defect class "scratch"

Only files directly inside these subfolders count, and only those with the extensions
.png, .jpg, .jpeg, .bmp, .tif or .tiff in any letter case. Hidden files and folders (names that
start with ".") and all other files are ignored. The normal images are split into a reference
pool and a test pool in the same way as for ELPV.
"""

from __future__ import annotations

from pathlib import Path

from pytest_adrobust.data.base import DatasetSplit, ImageRecord, split_normal_pool
from pytest_adrobust.errors import AdrobustError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

_NORMAL_FOLDER = "good"


def load_folder(root: Path, spec: str | None = None) -> DatasetSplit:
    """List the images of a folder dataset and split them into reference and test pools.

    No image is decoded. Image ids are the paths relative to ``root`` with forward slashes, such
    as ``"crack/000.png"``.

    Parameters
    ----------
    root : pathlib.Path
        Dataset folder that contains ``good/`` and at least one defect folder. ``~`` is expanded.
    spec : str or None
        Dataset spec string to store in the result. None stores ``"folder:<root>"``.

    Returns
    -------
    DatasetSplit
        Split named ``"folder-<basename of root>"`` with half of the normal images (rounded down)
        in ``train`` and the other normal images and all anomalous images in ``test``.

    Raises
    ------
    AdrobustError
        If ``root`` is missing or not a folder, ``good/`` is missing or has fewer than two images,
        there is no defect folder, or a defect folder has no images.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise AdrobustError(
            f"dataset folder {str(root)!r} does not exist; pass an existing folder as folder:PATH."
        )
    if not root.is_dir():
        raise AdrobustError(
            f"dataset path {str(root)!r} is not a folder; pass a folder that contains good/ and "
            f"one subfolder per defect class."
        )

    normal_dir = root / _NORMAL_FOLDER
    if not normal_dir.is_dir():
        raise AdrobustError(
            f"dataset folder {str(root)!r} has no good/ subfolder; put the normal images in "
            f"{str(normal_dir)!r}."
        )

    normal_files = list_images(normal_dir)
    if len(normal_files) < 2:
        raise AdrobustError(
            f"{str(normal_dir)!r} contains {len(normal_files)} image(s); add at least 2 normal "
            f"images with the extensions {', '.join(sorted(IMAGE_EXTENSIONS))}."
        )

    defect_dirs = sorted(
        child
        for child in root.iterdir()
        if child.is_dir() and child.name != _NORMAL_FOLDER and not child.name.startswith(".")
    )
    if not defect_dirs:
        raise AdrobustError(
            f"dataset folder {str(root)!r} has no defect subfolder; add one subfolder per defect "
            f"class next to good/, such as {str(root / 'crack')!r}."
        )

    anomalies: list[ImageRecord] = []
    for defect_dir in defect_dirs:
        defect_files = list_images(defect_dir)
        if not defect_files:
            raise AdrobustError(
                f"defect folder {str(defect_dir)!r} contains no images; add images with the "
                f"extensions {', '.join(sorted(IMAGE_EXTENSIONS))} or remove the folder."
            )
        anomalies.extend(
            _record(root, path, label=1, defect=defect_dir.name) for path in defect_files
        )

    normals = [_record(root, path, label=0, defect="good") for path in normal_files]
    train, test_normals = split_normal_pool(normals)
    test = test_normals + tuple(sorted(anomalies, key=lambda record: record.image_id))

    # Path(".").name is empty, so the name comes from the absolute path.
    basename = root.resolve().name or str(root)
    return DatasetSplit(
        name=f"folder-{basename}",
        spec=spec if spec is not None else f"folder:{root}",
        train=train,
        test=test,
        layout="folder",
    )


def list_images(directory: Path) -> list[Path]:
    """Return the image files directly inside ``directory``, sorted, skipping hidden files."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and not path.name.startswith(".")
        and path.is_file()
    )


def _record(root: Path, path: Path, label: int, defect: str) -> ImageRecord:
    return ImageRecord(
        image_id=path.relative_to(root).as_posix(), path=path, label=label, defect=defect
    )
