"""Load one category of MVTec AD, or of any dataset that uses the MVTec AD folder layout.

Layout of one category::

    ROOT/CATEGORY/
        train/good/                          normal images, all of them in the reference pool
        test/good/                           normal test images
        test/<defect>/                       anomalous test images of one defect class
        ground_truth/<defect>/<stem>_mask.png    mask of test/<defect>/<stem>.<ext>

Only files directly inside these folders count. Images may have the extensions .png, .jpg,
.jpeg, .bmp, .tif or .tiff and masks the extension .png, both in any letter case. Hidden files
and folders (names that start with ".") and all other files are ignored.

The loader checks the masks before any image is decoded. Every anomalous test image needs its
mask, each mask needs its image, and both must have the same pixel size. Sizes come from the
file headers, so no pixel data is read. Normal test images have no mask, so a
``ground_truth/good`` folder that contains masks is an error.

The grayscale categories of MVTec AD (grid, screw and zipper) are single-channel PNG files, which
:func:`~pytest_adrobust.data.images.load_image` repeats to three channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from PIL import Image, UnidentifiedImageError

from pytest_adrobust.data.base import DatasetSplit, ImageRecord
from pytest_adrobust.data.folder import IMAGE_EXTENSIONS, list_images
from pytest_adrobust.errors import AdrobustError

MVTEC_MASK_SUFFIX = "_mask"
"""Suffix that MVTec AD adds to the image stem to name its mask, as in ``000_mask.png``."""

_NORMAL_FOLDER = "good"
_MASK_EXTENSION = ".png"


def load_mvtec(root: Path, category: str, spec: str | None = None) -> DatasetSplit:
    """List the images and masks of one MVTec AD category and split them into the two pools.

    Unlike the ELPV and folder loaders, the reference pool is all of ``train/good`` and the test
    pool is all of ``test``, as in the MVTec AD protocol. Image ids are the paths relative to the
    category folder with forward slashes, such as ``"test/crack/000.png"``.

    Parameters
    ----------
    root : pathlib.Path
        Folder that contains one folder per category. ``~`` is expanded.
    category : str
        Name of the category folder, such as ``"bottle"``. Letter case must match.
    spec : str or None
        Dataset spec string to store in the result. None stores ``"mvtec:<category>@<root>"``.

    Returns
    -------
    DatasetSplit
        Split named ``"mvtec-<category>"`` with the normal training images in ``train`` and the
        normal and anomalous test images in ``test``, each class sorted by image id. Anomalous
        records carry their mask path.

    Raises
    ------
    AdrobustError
        If ``root`` or the category folder is missing, or the category name has the wrong letter
        case. Also if ``train/good`` is missing or empty, or ``test/good``, the defect folders or
        ``ground_truth`` are missing. Also if an anomalous image has no mask, a mask has no
        image, or a mask and its image differ in pixel size.
    """
    root = Path(root).expanduser()
    spec_text = spec if spec is not None else f"mvtec:{category}@{root}"

    category_dir = find_category_dir(root, category, kind="mvtec")
    train, test = read_anomaly_tree(category_dir, MVTEC_MASK_SUFFIX, kind="mvtec")

    return DatasetSplit(
        name=f"mvtec-{category}",
        spec=spec_text,
        train=train,
        test=test,
        layout="mvtec tree",
    )


def list_mvtec_categories(root: Path) -> list[str]:
    """List the category folders of an MVTec AD root, which are those with a ``train/good`` folder.

    Parameters
    ----------
    root : pathlib.Path
        Folder that contains one folder per category. ``~`` is expanded.

    Returns
    -------
    list of str
        Category names in sorted order.

    Raises
    ------
    AdrobustError
        If ``root`` is missing or not a folder, or no folder in it has ``train/good``.
    """
    root = Path(root).expanduser()
    check_root(root, kind="mvtec")

    categories = list_tree_categories(root)
    if not categories:
        raise AdrobustError(
            f"MVTec root {str(root)!r} has no category folder with train/good; pass the folder "
            f"that contains the category folders, such as bottle/ and cable/."
        )
    return categories


def check_root(root: Path, kind: str) -> None:
    """Raise if a dataset root is missing or is not a folder.

    Parameters
    ----------
    root : pathlib.Path
        Dataset root to check.
    kind : str
        Spec kind (``"mvtec"`` or ``"visa"``) that the message shows in the spec form.

    Raises
    ------
    AdrobustError
        If ``root`` does not exist or is not a folder.
    """
    if not root.exists():
        raise AdrobustError(
            f"dataset root {str(root)!r} does not exist; pass the folder that contains the "
            f"category folders as {kind}:CATEGORY@ROOT."
        )
    if not root.is_dir():
        raise AdrobustError(
            f"dataset root {str(root)!r} is not a folder; pass the folder that contains the "
            f"category folders as {kind}:CATEGORY@ROOT."
        )


def list_tree_categories(root: Path) -> list[str]:
    """List the visible subfolders of ``root`` that contain ``train/good``, in sorted order."""
    return sorted(
        child.name
        for child in root.iterdir()
        if not child.name.startswith(".") and (child / "train" / _NORMAL_FOLDER).is_dir()
    )


def find_category_dir(root: Path, category: str, kind: str) -> Path:
    """Find the folder of one category, with the exact letter case of ``category``.

    The name is compared with the listing of ``root``, not checked with ``exists()``, so a
    name in the wrong letter case is rejected on case-insensitive file systems too.

    Parameters
    ----------
    root : pathlib.Path
        Folder that contains one folder per category.
    category : str
        Category name from the spec.
    kind : str
        Spec kind (``"mvtec"`` or ``"visa"``) that messages show in the spec form.

    Returns
    -------
    pathlib.Path
        ``root / category``.

    Raises
    ------
    AdrobustError
        If ``root`` is missing, or no folder of ``root`` is named ``category``. When a folder
        matches apart from letter case, the message names it.
    """
    check_root(root, kind)

    folders = sorted(
        child.name for child in root.iterdir() if child.is_dir() and not child.name.startswith(".")
    )
    if category in folders:
        return root / category

    raise_unknown_category(category, folders, list_tree_categories(root), root, kind)


def raise_unknown_category(
    category: str, names: Sequence[str], categories: Sequence[str], where: Path, kind: str
) -> NoReturn:
    """Raise the error for a category that is not among ``names``, suggesting a case fix.

    Parameters
    ----------
    category : str
        Category name from the spec.
    names : sequence of str
        Every name the category is compared with, such as the folders of the root.
    categories : sequence of str
        Valid categories to list in the message.
    where : pathlib.Path
        Root folder or split file that was searched.
    kind : str
        Spec kind (``"mvtec"`` or ``"visa"``) that the message shows in the spec form.

    Raises
    ------
    AdrobustError
        Always.
    """
    same_letters = [name for name in names if name.lower() == category.lower()]
    if same_letters:
        raise AdrobustError(
            f"{kind} category {category!r} not found in {str(where)!r}, but "
            f"{same_letters[0]!r} differs only in letter case; category names are case-sensitive, "
            f"so use {kind}:{same_letters[0]}@ROOT."
        )

    listed = ", ".join(categories) if categories else "none"
    raise AdrobustError(
        f"{kind} category {category!r} not found in {str(where)!r}; the categories found there "
        f"are: {listed}. Use one of them, or {kind}:all@ROOT for every category."
    )


def read_anomaly_tree(
    category_dir: Path, mask_suffix: str, kind: str
) -> tuple[tuple[ImageRecord, ...], tuple[ImageRecord, ...]]:
    """List the images and masks of one category folder in the MVTec AD layout.

    Parameters
    ----------
    category_dir : pathlib.Path
        Category folder with ``train/good``, ``test`` and ``ground_truth``.
    mask_suffix : str
        Text between the image stem and ``.png`` in a mask name: ``"_mask"`` for MVTec AD, ``""``
        for the converted VisA tree, whose masks are named like their images.
    kind : str
        Spec kind (``"mvtec"`` or ``"visa"``) used in messages.

    Returns
    -------
    tuple of (tuple of ImageRecord, tuple of ImageRecord)
        The reference pool (all of ``train/good``) and the test pool (``test/good`` and then the
        anomalous images), each class sorted by image id.

    Raises
    ------
    AdrobustError
        If a folder of the layout is missing, ``train/good`` or a defect folder has no images, an
        anomalous image has no mask, a mask has no image, or a mask and its image differ in
        pixel size.
    """
    train_dir = category_dir / "train" / _NORMAL_FOLDER
    if not train_dir.is_dir():
        raise AdrobustError(
            f"{kind} category folder {str(category_dir)!r} has no train/good folder; put the "
            f"normal training images in {str(train_dir)!r}."
        )

    train_files = list_images(train_dir)
    if not train_files:
        raise AdrobustError(
            f"{str(train_dir)!r} contains no images; add the normal training images, with the "
            f"extensions {', '.join(sorted(IMAGE_EXTENSIONS))}."
        )

    test_dir = category_dir / "test"
    normal_test_dir = test_dir / _NORMAL_FOLDER
    if not normal_test_dir.is_dir():
        raise AdrobustError(
            f"{kind} category folder {str(category_dir)!r} has no test/good folder; put the "
            f"normal test images in {str(normal_test_dir)!r}."
        )

    defect_dirs = _list_folders(test_dir, exclude=_NORMAL_FOLDER)
    if not defect_dirs:
        raise AdrobustError(
            f"{str(test_dir)!r} has no defect folder; add one folder of anomalous test images per "
            f"defect class next to good/, such as {str(test_dir / 'crack')!r}."
        )

    truth_dir = category_dir / "ground_truth"
    if not truth_dir.is_dir():
        raise AdrobustError(
            f"{kind} category folder {str(category_dir)!r} has no ground_truth folder; add "
            f"{str(truth_dir)!r} with one folder of masks per defect class."
        )
    _reject_masks_without_test_folder(truth_dir, {folder.name for folder in defect_dirs})

    anomalies: list[ImageRecord] = []
    for defect_dir in defect_dirs:
        anomalies.extend(
            _read_defect_folder(category_dir, defect_dir, truth_dir / defect_dir.name, mask_suffix)
        )

    train = tuple(_normal_record(category_dir, path) for path in train_files)
    test_files = list_images(normal_test_dir)
    test_normals = tuple(_normal_record(category_dir, path) for path in test_files)
    return train, test_normals + tuple(anomalies)


def check_mask_size(image: Path, mask: Path) -> None:
    """Raise if a mask and its image differ in pixel size.

    Pillow reads the size from the file header when it opens a file, so no pixel data is decoded.

    Parameters
    ----------
    image : pathlib.Path
        Anomalous image file.
    mask : pathlib.Path
        Its ground-truth mask file.

    Raises
    ------
    AdrobustError
        If either file is not a readable image, or the sizes differ.
    """
    image_size = _read_size(image)
    mask_size = _read_size(mask)
    if image_size != mask_size:
        raise AdrobustError(
            f"mask {str(mask)!r} is {mask_size[0]}x{mask_size[1]} pixels but its image "
            f"{str(image)!r} is {image_size[0]}x{image_size[1]} (width x height); replace the "
            f"mask with one of the image's size."
        )


def _read_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise AdrobustError(
            f"cannot read the image header of {str(path)!r}: {error}. Check that the file is an "
            f"image that Pillow can open."
        ) from error


def _reject_masks_without_test_folder(truth_dir: Path, defects: set[str]) -> None:
    for mask_dir in _list_folders(truth_dir):
        if mask_dir.name in defects or not _list_masks(mask_dir):
            continue

        if mask_dir.name == _NORMAL_FOLDER:
            raise AdrobustError(
                f"{str(mask_dir)!r} contains masks, but normal test images have no anomaly to "
                f"mark; remove that folder."
            )
        test_dir = truth_dir.parent / "test" / mask_dir.name
        raise AdrobustError(
            f"masks folder {str(mask_dir)!r} has no images, because the test folder "
            f"{str(test_dir)!r} is missing; add the anomalous images there or remove the masks "
            f"folder."
        )


def _read_defect_folder(
    category_dir: Path, defect_dir: Path, mask_dir: Path, mask_suffix: str
) -> list[ImageRecord]:
    images = list_images(defect_dir)
    if not images:
        raise AdrobustError(
            f"defect folder {str(defect_dir)!r} contains no images; add images with the "
            f"extensions {', '.join(sorted(IMAGE_EXTENSIONS))} or remove the folder."
        )

    if not mask_dir.is_dir():
        raise AdrobustError(
            f"defect folder {str(defect_dir)!r} has no masks folder; add {str(mask_dir)!r} with "
            f"one mask <stem>{mask_suffix}.png per image."
        )

    # Masks are matched by stem, and each match is removed, so the masks left at the end are
    # the ones without an image.
    masks = {path.stem: path for path in _list_masks(mask_dir)}
    records = []
    for image in images:
        mask = masks.pop(image.stem + mask_suffix, None)
        if mask is None:
            expected = mask_dir / f"{image.stem}{mask_suffix}{_MASK_EXTENSION}"
            raise AdrobustError(
                f"anomalous image {str(image)!r} has no mask; add {str(expected)!r} or remove "
                f"the image."
            )

        check_mask_size(image, mask)
        records.append(
            ImageRecord(
                image_id=image.relative_to(category_dir).as_posix(),
                path=image,
                label=1,
                defect=defect_dir.name,
                mask=mask,
            )
        )

    if masks:
        orphans = sorted(masks.values())
        stem = orphans[0].stem.removesuffix(mask_suffix) if mask_suffix else orphans[0].stem
        raise AdrobustError(
            f"mask {str(orphans[0])!r} has no image, because {str(defect_dir)!r} contains no "
            f"image with stem {stem!r} ({len(orphans)} mask(s) without an image in "
            f"{str(mask_dir)!r}); add the image or remove the mask."
        )

    return records


def _normal_record(category_dir: Path, path: Path) -> ImageRecord:
    return ImageRecord(
        image_id=path.relative_to(category_dir).as_posix(), path=path, label=0, defect="good"
    )


def _list_folders(directory: Path, exclude: str | None = None) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(
        child
        for child in directory.iterdir()
        if child.is_dir() and child.name != exclude and not child.name.startswith(".")
    )


def _list_masks(directory: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.iterdir()
        if path.suffix.lower() == _MASK_EXTENSION
        and not path.name.startswith(".")
        and path.is_file()
    )
