"""Parse dataset spec strings such as ``elpv:mono`` and load the datasets they name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import final

from pytest_adrobust.data.base import DatasetSplit
from pytest_adrobust.data.elpv import ELPV_CATEGORIES, load_elpv
from pytest_adrobust.data.folder import load_folder
from pytest_adrobust.data.mvtec import list_mvtec_categories, load_mvtec
from pytest_adrobust.data.visa import list_visa_categories, load_visa
from pytest_adrobust.errors import AdrobustError

SUPPORTED_KINDS = ("elpv", "folder", "mvtec", "visa")
CATEGORY_KINDS = ("mvtec", "visa")
"""Kinds whose specs have the form ``KIND:CATEGORY@ROOT``."""

ALL_CATEGORIES = "all"
"""Category that :func:`expand_dataset_spec` expands to every category of the root."""

VALID_FORMS = "elpv:mono, elpv:poly, folder:PATH, mvtec:CATEGORY@ROOT, visa:CATEGORY@ROOT"


@final
@dataclass(frozen=True)
class DatasetSpec:
    """Parsed dataset spec.

    Attributes
    ----------
    kind : str
        Dataset kind: ``"elpv"``, ``"folder"``, ``"mvtec"`` or ``"visa"``.
    category : str or None
        Category within the kind, such as ``"mono"`` for ELPV, ``"bottle"`` for MVTec AD or
        ``"all"`` for every category of an MVTec AD or VisA root, or None for a folder.
    root : pathlib.Path or None
        Dataset folder with ``~`` expanded, or None for ELPV.
    text : str
        Spec string as the user wrote it.
    """

    kind: str
    category: str | None
    root: Path | None
    text: str


def parse_dataset_spec(text: str) -> DatasetSpec:
    """Parse a dataset spec string without touching the file system.

    Valid forms are ``elpv:mono``, ``elpv:poly``, ``folder:PATH``, ``mvtec:CATEGORY@ROOT`` and
    ``visa:CATEGORY@ROOT``. Everything after the first ``:`` of a folder spec, and after the first
    ``@`` of an MVTec or VisA spec, is the path, so the path may itself contain ``:`` and ``@``.
    The category ``all`` selects every category of the root, and :func:`expand_dataset_spec`
    replaces it by one spec per category.

    Parameters
    ----------
    text : str
        Spec string, for example ``"folder:~/data/cables"`` or ``"mvtec:bottle@~/data/mvtec"``.

    Returns
    -------
    DatasetSpec
        The parsed spec. ``text`` is stored unchanged.

    Raises
    ------
    AdrobustError
        If the spec is empty, has an unknown kind, an ELPV category other than mono or poly, or
        is a folder spec without a path. Also if an MVTec or VisA spec lacks ``@``, the category
        or the root, or its category contains a path separator.
    """
    if not isinstance(text, str):
        raise AdrobustError(
            f"dataset spec must be a string, got {type(text).__name__} {text!r}; "
            f"use one of {VALID_FORMS}."
        )

    if not text.strip():
        raise AdrobustError(f"dataset spec is empty ({text!r}); use one of {VALID_FORMS}.")

    kind, separator, rest = text.partition(":")

    if not separator or kind not in SUPPORTED_KINDS:
        raise AdrobustError(
            f"dataset spec {text!r} has unknown kind {kind!r}; use one of {VALID_FORMS}."
        )

    if kind == "elpv":
        if rest not in ELPV_CATEGORIES:
            raise AdrobustError(
                f"dataset spec {text!r} has ELPV category {rest!r}; use one of {VALID_FORMS}."
            )
        return DatasetSpec(kind="elpv", category=rest, root=None, text=text)

    if kind in CATEGORY_KINDS:
        category, root_text = _split_category_root(text, kind, rest)
        return DatasetSpec(
            kind=kind, category=category, root=Path(root_text).expanduser(), text=text
        )

    if not rest.strip():
        raise AdrobustError(
            f"dataset spec {text!r} has no path; write folder:PATH with the dataset folder, "
            f"such as folder:~/data/cables. Valid forms are {VALID_FORMS}."
        )
    return DatasetSpec(kind="folder", category=None, root=Path(rest).expanduser(), text=text)


def expand_dataset_spec(text: str) -> list[str]:
    """Expand an ``all`` spec into one spec per category, listing the root folder.

    Unlike :func:`parse_dataset_spec`, this reads the file system for ``mvtec:all@ROOT`` and
    ``visa:all@ROOT``. The expanded specs keep ROOT as written, so ``~`` stays unexpanded.

    Parameters
    ----------
    text : str
        Spec string, for example ``"mvtec:all@~/data/mvtec"``.

    Returns
    -------
    list of str
        ``[text]`` for every spec other than an ``all`` spec, otherwise
        ``"KIND:CATEGORY@ROOT"`` for each category in sorted order. MVTec AD categories are the
        folders of ROOT with ``train/good``. VisA categories are the ``object`` values of
        ``split_csv/1cls.csv`` or the category folders of a converted tree.

    Raises
    ------
    AdrobustError
        If the spec is invalid, or for an ``all`` spec, the root is missing or has no category.
    """
    spec = parse_dataset_spec(text)
    if spec.kind not in CATEGORY_KINDS or spec.category != ALL_CATEGORIES or spec.root is None:
        return [text]

    _, root_text = _split_category_root(text, spec.kind, text.partition(":")[2])
    if spec.kind == "mvtec":
        categories = list_mvtec_categories(spec.root)
    else:
        categories = list_visa_categories(spec.root)

    return [f"{spec.kind}:{category}@{root_text}" for category in categories]


def _split_category_root(text: str, kind: str, rest: str) -> tuple[str, str]:
    example = "bottle" if kind == "mvtec" else "candle"
    form = f"{kind}:CATEGORY@ROOT, such as {kind}:{example}@~/data/{kind}"
    category, at, root_text = rest.partition("@")

    if not at:
        raise AdrobustError(f"dataset spec {text!r} has no '@'; write {form}.")
    if not category.strip():
        raise AdrobustError(f"dataset spec {text!r} has no category before '@'; write {form}.")
    if not root_text.strip():
        raise AdrobustError(f"dataset spec {text!r} has no root after '@'; write {form}.")
    if "/" in category or "\\" in category or category in (".", ".."):
        raise AdrobustError(
            f"dataset spec {text!r} has category {category!r}, which is a path; the category "
            f"is one folder name, so write {form}."
        )

    return category, root_text


def load_dataset(spec: str | DatasetSpec) -> DatasetSplit:
    """Load the dataset that a spec names.

    Parameters
    ----------
    spec : str or DatasetSpec
        Spec string, parsed with :func:`parse_dataset_spec`, or an already parsed spec.

    Returns
    -------
    DatasetSplit
        Records of the dataset split into a reference pool and a test pool.

    Raises
    ------
    AdrobustError
        If the spec is invalid, is an ``all`` spec (expand it with :func:`expand_dataset_spec`
        first), or the dataset cannot be loaded. The message names the value and the fix.
    """
    if isinstance(spec, str):
        spec = parse_dataset_spec(spec)
    elif not isinstance(spec, DatasetSpec):
        raise AdrobustError(
            f"spec must be a string or a DatasetSpec, got {type(spec).__name__} {spec!r}; "
            f"use one of {VALID_FORMS}."
        )

    if spec.kind == "elpv":
        if spec.category is None:
            raise AdrobustError(
                f"DatasetSpec {spec.text!r} has kind 'elpv' but no category; "
                f"set category to mono or poly."
            )
        return load_elpv(spec.category, spec=spec.text)

    if spec.kind == "folder":
        if spec.root is None:
            raise AdrobustError(
                f"DatasetSpec {spec.text!r} has kind 'folder' but no root; set root to the "
                f"dataset folder."
            )
        return load_folder(spec.root, spec=spec.text)

    if spec.kind in CATEGORY_KINDS:
        if spec.category is None or spec.root is None:
            raise AdrobustError(
                f"DatasetSpec {spec.text!r} has kind {spec.kind!r} but no category or no root; "
                f"set both, as in {spec.kind}:CATEGORY@ROOT."
            )
        if spec.category == ALL_CATEGORIES:
            raise AdrobustError(
                f"dataset spec {spec.text!r} names every category of the root, not one dataset; "
                f"expand it with expand_dataset_spec() and load each spec it returns."
            )
        if spec.kind == "mvtec":
            return load_mvtec(spec.root, spec.category, spec=spec.text)
        return load_visa(spec.root, spec.category, spec=spec.text)

    raise AdrobustError(
        f"DatasetSpec {spec.text!r} has unsupported kind {spec.kind!r}; "
        f"supported kinds are {', '.join(SUPPORTED_KINDS)}."
    )
