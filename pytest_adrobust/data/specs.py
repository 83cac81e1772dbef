"""Parse dataset spec strings such as ``elpv:mono`` and load the datasets they name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import final

from pytest_adrobust.data.base import DatasetSplit
from pytest_adrobust.data.elpv import ELPV_CATEGORIES, load_elpv
from pytest_adrobust.data.folder import load_folder
from pytest_adrobust.errors import AdrobustError

SUPPORTED_KINDS = ("elpv", "folder")
PLANNED_KINDS = ("mvtec", "visa")

VALID_FORMS = "elpv:mono, elpv:poly, folder:PATH"


@final
@dataclass(frozen=True)
class DatasetSpec:
    """Parsed dataset spec.

    Attributes
    ----------
    kind : str
        Dataset kind, ``"elpv"`` or ``"folder"``.
    category : str or None
        Category within the kind, such as ``"mono"`` for ELPV, or None for a folder.
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

    Valid forms are ``elpv:mono``, ``elpv:poly`` and ``folder:PATH``. Everything after the first
    ``:`` of a folder spec is the path, so the path may itself contain ``:`` and ``@``.

    Parameters
    ----------
    text : str
        Spec string, for example ``"folder:~/data/cables"``.

    Returns
    -------
    DatasetSpec
        The parsed spec. ``text`` is stored unchanged.

    Raises
    ------
    AdrobustError
        If the spec is empty, has an unknown kind, an ELPV category other than mono or poly, or
        a folder spec without a path. ``mvtec`` and ``visa`` specs are also rejected because this
        version cannot load them yet.
    """
    if not isinstance(text, str):
        raise AdrobustError(
            f"dataset spec must be a string, got {type(text).__name__} {text!r}; "
            f"use one of {VALID_FORMS}."
        )

    if not text.strip():
        raise AdrobustError(f"dataset spec is empty ({text!r}); use one of {VALID_FORMS}.")

    kind, separator, rest = text.partition(":")

    if kind in PLANNED_KINDS:
        raise AdrobustError(
            f"dataset spec {text!r}: the kind {kind!r} ({kind}:CATEGORY@ROOT) is not supported "
            f"by this version yet; supported kinds are {', '.join(SUPPORTED_KINDS)} "
            f"({VALID_FORMS})."
        )

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

    if not rest.strip():
        raise AdrobustError(
            f"dataset spec {text!r} has no path; write folder:PATH with the dataset folder, "
            f"such as folder:~/data/cables. Valid forms are {VALID_FORMS}."
        )
    return DatasetSpec(kind="folder", category=None, root=Path(rest).expanduser(), text=text)


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
        If the spec is invalid or the dataset cannot be loaded. The message names the value and
        the fix.
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

    raise AdrobustError(
        f"DatasetSpec {spec.text!r} has unsupported kind {spec.kind!r}; "
        f"supported kinds are {', '.join(SUPPORTED_KINDS)}."
    )
