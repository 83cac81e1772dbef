"""Image records, dataset splits and the seeded draw of one few-shot evaluation case."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import final

import numpy as np

from pytest_adrobust.errors import AdrobustError

# Seed of the one-time permutation that splits the normal images of a dataset into a reference
# pool and a test pool. It is fixed so that the split never depends on the seed of a run.
NORMAL_SPLIT_SEED = 0

_CLASS_NAMES = {0: "normal", 1: "anomalous"}

SELECTIONS = ("random", "anomalydino")
"""Ways of choosing the few-shot references that :func:`sample_case` accepts."""


@final
@dataclass(frozen=True)
class ImageRecord:
    """One image file of a dataset with its ground-truth label.

    Attributes
    ----------
    image_id : str
        Identifier that is unique within the dataset and the same on every machine, such as
        ``"cell0001"`` for ELPV or the path relative to the root (``"crack/000.png"``) for a folder.
    path : pathlib.Path
        Location of the image file.
    label : int
        0 for a normal image, 1 for an anomalous one.
    defect : str
        ``"good"`` for a normal image, otherwise the defect class.
    mask : pathlib.Path or None
        Ground-truth mask of an anomalous image, or None for normal images and for datasets
        without masks. The MVTec and VisA loaders check that a mask has its image's pixel size.

    Raises
    ------
    AdrobustError
        If ``label`` is not 0 or 1, ``defect`` does not match the label, or a normal image has a
        mask.
    """

    image_id: str
    path: Path
    label: int
    defect: str
    mask: Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.label, bool) or self.label not in (0, 1):
            raise AdrobustError(
                f"ImageRecord {self.image_id!r}: label must be 0 (normal) or 1 (anomalous), "
                f"got {self.label!r}."
            )

        if self.label == 0 and self.defect != "good":
            raise AdrobustError(
                f"ImageRecord {self.image_id!r}: a normal image (label 0) must have defect "
                f"'good', got {self.defect!r}."
            )

        if self.label == 1 and self.defect == "good":
            raise AdrobustError(
                f"ImageRecord {self.image_id!r}: an anomalous image (label 1) needs a defect class "
                f"other than 'good'; set defect to the name of the defect."
            )

        if self.label == 0 and self.mask is not None:
            raise AdrobustError(
                f"ImageRecord {self.image_id!r}: a normal image (label 0) has no anomaly to "
                f"mark, but mask is {str(self.mask)!r}; set mask to None."
            )


@final
@dataclass(frozen=True)
class DatasetSplit:
    """Images of one dataset, split into a reference pool and a test pool.

    Attributes
    ----------
    name : str
        Readable identifier used in test ids, such as ``"elpv-mono"`` or ``"folder-cables"``.
    spec : str
        Dataset spec string as the user wrote it.
    train : tuple of ImageRecord
        Normal images that few-shot references are drawn from.
    test : tuple of ImageRecord
        Normal and anomalous images that test sets are drawn from. No image id appears in both
        ``train`` and ``test``.
    layout : str
        Short description of the layout that was found, such as ``"elpv-dataset 1.0.0.post1"``.

    Raises
    ------
    AdrobustError
        If ``train`` contains an anomalous image or an image id appears in both pools.
    """

    name: str
    spec: str
    train: tuple[ImageRecord, ...]
    test: tuple[ImageRecord, ...]
    layout: str

    def __post_init__(self) -> None:
        anomalous_refs = [record.image_id for record in self.train if record.label != 0]
        if anomalous_refs:
            raise AdrobustError(
                f"{self.name}: the reference pool (train) must contain only normal images, but "
                f"{anomalous_refs[:3]!r} are anomalous; move them to the test pool."
            )

        shared_ids = sorted({r.image_id for r in self.train} & {r.image_id for r in self.test})
        if shared_ids:
            raise AdrobustError(
                f"{self.name}: image ids {shared_ids[:3]!r} are in both the reference pool and "
                f"the test pool; each image must be in only one of them."
            )


def split_normal_pool(
    normals: Sequence[ImageRecord],
) -> tuple[tuple[ImageRecord, ...], tuple[ImageRecord, ...]]:
    """Split normal images into a reference pool and a test pool with a fixed permutation.

    The images are sorted by ``image_id`` and permuted with
    ``numpy.random.default_rng(NORMAL_SPLIT_SEED)``. The reference pool gets the first
    ``len(normals) // 2`` images of the permutation and the test pool the rest. Both pools are
    returned sorted by ``image_id``. The split depends only on the set of image ids, never on the
    seed of a run, so references and test images stay disjoint for every run seed.

    Parameters
    ----------
    normals : sequence of ImageRecord
        Normal images (label 0) of one dataset.

    Returns
    -------
    tuple of (tuple of ImageRecord, tuple of ImageRecord)
        The reference pool and the test pool.
    """
    ordered = sorted(normals, key=lambda record: record.image_id)
    order = np.random.default_rng(NORMAL_SPLIT_SEED).permutation(len(ordered))
    reference_count = len(ordered) // 2

    train = [ordered[i] for i in order[:reference_count]]
    test = [ordered[i] for i in order[reference_count:]]

    return (
        tuple(sorted(train, key=lambda record: record.image_id)),
        tuple(sorted(test, key=lambda record: record.image_id)),
    )


def sample_case(
    split: DatasetSplit,
    shots: int,
    max_images: int | None,
    seed: int,
    *,
    selection: str = "random",
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Draw the few-shot references and the test set of one evaluation case.

    Both draws use one ``numpy.random.default_rng(seed)``. The references come first: ``shots``
    normal images without replacement from ``split.train``. Then, for the normal and then the
    anomalous class of ``split.test``, ``max_images`` images are drawn without replacement when the
    class has more, otherwise the class is taken whole. The pools are sorted by ``image_id`` before
    drawing, so the result depends only on the seed and the set of images, not on pool order.

    With ``selection="anomalydino"`` the references are instead images ``seed * shots`` to
    ``(seed + 1) * shots - 1`` of ``split.train`` sorted by file name, which is how the
    AnomalyDINO reference code (``src/detection.py`` of github.com/dammsi/AnomalyDINO) slices
    ``sorted(os.listdir("<category>/train/good"))``. The random reference draw still advances the
    generator, so the test set is the same for both selections.

    Parameters
    ----------
    split : DatasetSplit
        Dataset to draw from.
    shots : int
        Number of reference images, at least 1.
    max_images : int or None
        Maximum number of test images per class, at least 2, or None for all of them.
    seed : int
        Non-negative seed of the draw.
    selection : {"random", "anomalydino"}
        How the references are chosen: a seeded random draw, or the slice of the file-name order
        that the seed selects.

    Returns
    -------
    tuple of (list of ImageRecord, list of ImageRecord)
        The references in draw order (in file-name order for ``"anomalydino"``), and the test set
        with the normal images first and then the anomalous ones, each class sorted by
        ``image_id``.

    Raises
    ------
    AdrobustError
        If an argument is invalid, ``shots`` exceeds the number of normal training images, the
        ``"anomalydino"`` slice runs past the end of the training pool, or the test pool has fewer
        than two images of either class. The stratified 2-fold cross-fitting of the protocol needs
        at least two images per class.
    """
    if not isinstance(split, DatasetSplit):
        raise AdrobustError(f"split must be a DatasetSplit, got {type(split).__name__}.")

    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise AdrobustError(f"{split.name}: shots must be an integer >= 1, got {shots!r}.")

    if max_images is not None and (
        isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 2
    ):
        raise AdrobustError(
            f"{split.name}: max_images must be None or an integer >= 2, got {max_images!r}; "
            f"the stratified 2-fold cross-fitting needs at least two test images per class."
        )

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise AdrobustError(f"{split.name}: seed must be an integer >= 0, got {seed!r}.")

    if selection not in SELECTIONS:
        raise AdrobustError(
            f"{split.name}: selection must be one of {', '.join(SELECTIONS)}, got {selection!r}."
        )

    if shots > len(split.train):
        raise AdrobustError(
            f"{split.name} has {len(split.train)} normal training images; "
            f"use shots <= {len(split.train)} (got shots={shots})."
        )

    pools = {label: _sorted_class(split.test, label) for label in (0, 1)}
    for label, pool in pools.items():
        if len(pool) < 2:
            raise AdrobustError(
                f"{split.name} has {len(pool)} {_CLASS_NAMES[label]} test image(s); the stratified "
                f"2-fold cross-fitting needs at least 2 per class, so add "
                f"{_CLASS_NAMES[label]} images to the dataset."
            )

    rng = np.random.default_rng(seed)
    train = sorted(split.train, key=lambda record: record.image_id)
    reference_indices = rng.choice(len(train), size=shots, replace=False)
    if selection == "random":
        references = [train[i] for i in reference_indices]
    else:
        references = _anomalydino_references(split, shots, seed)

    test_set: list[ImageRecord] = []
    for label in (0, 1):
        pool = pools[label]
        if max_images is not None and len(pool) > max_images:
            chosen = rng.choice(len(pool), size=max_images, replace=False)
            pool = sorted((pool[i] for i in chosen), key=lambda record: record.image_id)
        test_set.extend(pool)

    return references, test_set


def _anomalydino_references(split: DatasetSplit, shots: int, seed: int) -> list[ImageRecord]:
    # Python sorts file names by code point, as sorted(os.listdir(...)) does, so "10.png" comes
    # before "2.png". The image id breaks ties between equal names from different folders.
    by_name = sorted(split.train, key=lambda record: (record.path.name, record.image_id))
    start = seed * shots
    stop = start + shots

    if stop > len(by_name):
        largest_seed = len(by_name) // shots - 1
        raise AdrobustError(
            f"{split.name}: selection 'anomalydino' with shots={shots} and seed={seed} takes "
            f"references {start} to {stop - 1} in file-name order, but the training pool has "
            f"{len(by_name)} images; use a seed <= {largest_seed} for {shots} shots."
        )

    return by_name[start:stop]


def _sorted_class(records: Sequence[ImageRecord], label: int) -> list[ImageRecord]:
    return sorted((r for r in records if r.label == label), key=lambda record: record.image_id)
