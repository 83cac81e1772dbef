"""The JSON report: settings, fingerprints, every metric per item and every per-image score.

The report contains enough to recompute every metric without the model: per-image labels, folds,
clean and attacked scores and probabilities, and the per-fold Platt parameters and thresholds.
It is written to a temporary file in the same directory and renamed, so a crash never leaves a
half-written report.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final

import numpy as np

from pytest_adrobust.evaluation import ECE_BINS, ECE_VARIANT, CaseEvaluation
from pytest_adrobust.session import AdrobustSession

SCHEMA: Final = "pytest-adrobust-report"
SCHEMA_VERSION: Final = 1
_PACKAGES: Final = ("pytest-adrobust", "pytest", "torch", "timm", "faiss-cpu", "scikit-learn", "numpy", "elpv-dataset")


def package_versions() -> dict[str, str | None]:
    """Return the installed version of each package the results depend on (``None`` if missing)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def _finite(value: float) -> float | None:
    """Return ``value`` as a float, or ``None`` for NaN and infinities, which JSON cannot hold."""
    number = float(value)
    return number if math.isfinite(number) else None


def case_record(evaluation: CaseEvaluation) -> dict[str, Any]:
    """Return the JSON record of one case: settings, calibration, metrics per budget and images."""
    prepared = evaluation.prepared
    key = prepared.key
    budgets = sorted(evaluation.budgets)
    images = []
    for index, record in enumerate(prepared.test):
        attacked = {
            str(eps): {
                "score": _finite(evaluation.budgets[eps].attacked_scores[index]),
                "probability": _finite(evaluation.budgets[eps].attacked_probabilities[index]),
            }
            for eps in budgets
        }
        images.append(
            {
                "image_id": record.image_id,
                "path": str(record.path),
                "label": int(prepared.labels[index]),
                "defect": record.defect,
                "fold": int(prepared.folds[index]),
                "clean_score": _finite(prepared.clean_scores[index]),
                "clean_probability": _finite(prepared.clean_probabilities[index]),
                "attacked": attacked,
            }
        )
    return {
        "dataset": prepared.dataset_name,
        "dataset_spec": key.dataset,
        "dataset_layout": prepared.dataset_layout,
        "shots": key.shots,
        "seed": key.seed,
        "max_images": key.max_images,
        "attack": key.attack,
        "selection": key.selection,
        "masking": key.masking,
        "rotation": key.rotation,
        "detector": key.detector,
        "files_sha256": prepared.files_fingerprint,
        "references": [record.image_id for record in prepared.references],
        "n_images": len(prepared.test),
        "n_anomalous": int(np.sum(prepared.labels)),
        "clean_auroc": _finite(prepared.clean_auroc),
        "calibration": [
            {
                "applies_to_fold": fold,
                "platt_slope": _finite(prepared.platt[fold].slope),
                "platt_intercept": _finite(prepared.platt[fold].intercept),
                "threshold": _finite(prepared.fold_thresholds[fold]),
            }
            for fold in (0, 1)
        ],
        "budgets": [
            {"eps": eps.value, "eps_text": str(eps), **{k: _finite(v) for k, v in evaluation.budgets[eps].scalars().items()}}
            for eps in budgets
        ],
        "noise_control": evaluation.noise_control,
        "self_check_warnings": list(evaluation.warnings),
        "cache": prepared.cache,
        "bf16_max_score_difference": prepared.bf16_max_difference,
        "passes": dict(prepared.passes),
        "seconds": {name: round(value, 3) for name, value in prepared.seconds.items()},
        "images": images,
    }


def build_report(session: AdrobustSession, duration: float) -> dict[str, Any]:
    """Return the whole report of a session as JSON-ready data."""
    run = session.run
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": session.started_at.isoformat(timespec="seconds"),
        "duration_seconds": round(duration, 3),
        "settings": {
            "device": run.device,
            "backbone": run.backbone,
            "weights": run.weights,
            "resolution": run.resolution,
            "batch_size": run.batch_size,
            "cache": run.cache,
            "precision": run.precision,
        },
        "conventions": {
            "ece": ECE_VARIANT,
            "ece_bins": ECE_BINS,
            "raw_probability": "scores min-max mapped to [0, 1] with the clean scores of the test set, clipped",
            "calibrated_probability": "Platt scaling fitted on the other fold's clean scores",
            "entropy": "binary predictive entropy of the calibrated probability, in bits",
            "nll": "mean negative log-likelihood in nats",
            "threshold": "score >= threshold is anomalous; fitted for F1 on the other fold's clean scores",
        },
        "versions": package_versions(),
        "detectors": {
            fingerprint: {
                "backbone": info.backbone,
                "weights": info.weights,
                "weights_sha256": info.weights_sha256,
                "weights_path": info.weights_path,
                "device": info.device,
                "resolution": info.resolution,
                "batch_size": session.batch_sizes.get(fingerprint),
            }
            for fingerprint, info in session.detectors.items()
        },
        "cases": [case_record(evaluation) for evaluation in session.evaluations.values()],
        "items": [
            {
                "nodeid": item.nodeid,
                "dataset_spec": item.key.dataset,
                "shots": item.key.shots,
                "eps": item.eps.value,
                "eps_text": str(item.eps),
                "thresholds": item.thresholds,
                "outcome": item.outcome,
                "message": item.message,
            }
            for item in session.items.values()
        ],
    }


def write_json_atomic(path: Path, data: dict[str, Any]) -> bool:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename.

    Returns
    -------
    bool
        Whether an existing file was replaced, so the caller can say so.
    """
    existed = path.exists()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file readable by its owner only. Give it the permissions of a file
        # created normally, so that CI artifact uploads can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return existed
