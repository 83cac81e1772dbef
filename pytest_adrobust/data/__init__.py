"""Datasets of normal and anomalous images, their few-shot splits and image loading."""

from __future__ import annotations

from pytest_adrobust.data.base import DatasetSplit, ImageRecord, sample_case, split_normal_pool
from pytest_adrobust.data.elpv import load_elpv
from pytest_adrobust.data.folder import load_folder
from pytest_adrobust.data.images import load_image, load_images, records_fingerprint
from pytest_adrobust.data.specs import DatasetSpec, load_dataset, parse_dataset_spec

__all__ = [
    "DatasetSpec",
    "DatasetSplit",
    "ImageRecord",
    "load_dataset",
    "load_elpv",
    "load_folder",
    "load_image",
    "load_images",
    "parse_dataset_spec",
    "records_fingerprint",
    "sample_case",
    "split_normal_pool",
]
