"""Datasets of normal and anomalous images, their few-shot splits and image loading."""

from __future__ import annotations

from pytest_adrobust.data.base import (
    SELECTIONS,
    DatasetSplit,
    ImageRecord,
    sample_case,
    split_normal_pool,
)
from pytest_adrobust.data.elpv import load_elpv
from pytest_adrobust.data.folder import load_folder
from pytest_adrobust.data.images import load_image, load_images, records_fingerprint
from pytest_adrobust.data.mvtec import list_mvtec_categories, load_mvtec
from pytest_adrobust.data.specs import (
    DatasetSpec,
    expand_dataset_spec,
    load_dataset,
    parse_dataset_spec,
)
from pytest_adrobust.data.visa import (
    VisaLayout,
    detect_visa_layout,
    list_visa_categories,
    load_visa,
)

__all__ = [
    "SELECTIONS",
    "DatasetSpec",
    "DatasetSplit",
    "ImageRecord",
    "VisaLayout",
    "detect_visa_layout",
    "expand_dataset_spec",
    "list_mvtec_categories",
    "list_visa_categories",
    "load_dataset",
    "load_elpv",
    "load_folder",
    "load_image",
    "load_images",
    "load_mvtec",
    "load_visa",
    "parse_dataset_spec",
    "records_fingerprint",
    "sample_case",
    "split_normal_pool",
]
