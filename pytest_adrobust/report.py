"""The JSON report: settings, fingerprints, every metric per item and every per-image score.

The report contains enough to recompute every metric without the model: per-image labels, folds,
clean and attacked scores and probabilities, and the per-fold Platt parameters and thresholds.
It is written to a temporary file in the same directory and renamed, so a crash never leaves a
half-written report.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import json
import math
import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.evaluation import ECE_BINS, ECE_VARIANT, BudgetMetrics, CaseEvaluation, CaseKey
from pytest_adrobust.session import AdrobustSession, DetectorInfo, ItemRecord
from pytest_adrobust.settings import Budget

SCHEMA: Final = "pytest-adrobust-report"
SCHEMA_VERSION: Final = 2
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


def case_id(key: CaseKey) -> str:
    """Return a short stable id of a case: a hash of the detector fingerprint and the case settings."""
    identity = json.dumps(dataclasses.asdict(key), sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def budget_record(eps: Budget, metrics: BudgetMetrics) -> dict[str, Any]:
    """Return the JSON record of one budget: every metric, and the interval of each that has one."""
    return {
        "eps": eps.value,
        "eps_text": str(eps),
        **{name: _finite(value) for name, value in metrics.scalars().items()},
        "intervals": {
            name: [_finite(low), _finite(high)] for name, (low, high) in sorted(metrics.intervals.items())
        },
    }


def case_record(evaluation: CaseEvaluation) -> dict[str, Any]:
    """Return the JSON record of one case: settings, calibration, metrics per budget and images."""
    record = case_header(evaluation)
    record["images"] = image_records(evaluation)
    return record


def image_records(evaluation: CaseEvaluation) -> list[dict[str, Any]]:
    """Return one record per test image: id, path, label, fold, clean and attacked scores."""
    prepared = evaluation.prepared
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
    return images


def case_header(evaluation: CaseEvaluation) -> dict[str, Any]:
    """Return the JSON record of one case without its per-image records."""
    prepared = evaluation.prepared
    key = prepared.key
    budgets = sorted(evaluation.budgets)
    return {
        "case_id": case_id(key),
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
        "bootstrap": (
            {"resamples": int(evaluation.bootstrap.resamples.shape[0]), "confidence": evaluation.bootstrap.confidence}
            if evaluation.bootstrap is not None
            else None
        ),
        "budgets": [budget_record(eps, evaluation.budgets[eps]) for eps in budgets],
        "noise_control": (
            {name: _finite(value) if isinstance(value, float) else value for name, value in evaluation.noise_control.items()}
            if evaluation.noise_control is not None
            else None
        ),
        "self_check_warnings": list(evaluation.warnings),
        "cache": prepared.cache,
        "bf16_max_score_difference": (
            _finite(prepared.bf16_max_difference) if prepared.bf16_max_difference is not None else None
        ),
        "passes": dict(prepared.passes),
        "seconds": {name: round(value, 3) for name, value in prepared.seconds.items()},
    }


def build_report(session: AdrobustSession, duration: float) -> dict[str, Any]:
    """Return the whole report of a session as JSON-ready data.

    Cases are sorted by dataset, shots, seed and attack, and items by node id, so that the same
    run gives the same report whatever the order of execution (serial or pytest-xdist).
    """
    run = session.run
    cases = sorted(
        (case_record(evaluation) for evaluation in session.evaluations.values()),
        key=_case_order,
    )
    items = sorted((item_record(item) for item in session.items.values()), key=lambda item: item["nodeid"])
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
            "bootstrap": run.bootstrap,
            "confidence": run.confidence,
        },
        "conventions": CONVENTIONS,
        "versions": package_versions(),
        "detectors": {
            fingerprint: detector_record(info, session.batch_sizes.get(fingerprint))
            for fingerprint, info in sorted(session.detectors.items())
        },
        "cases": cases,
        "items": items,
    }


def detector_record(info: DetectorInfo, batch_size: int | None) -> dict[str, Any]:
    """Return the JSON record of a detector as it ran."""
    return {
        "backbone": info.backbone,
        "weights": info.weights,
        "weights_sha256": info.weights_sha256,
        "weights_path": info.weights_path,
        "random_init": info.random_init,
        "device": info.device,
        "resolution": info.resolution,
        "precision": info.precision,
        "batch_size": batch_size,
    }


CONVENTIONS: Final = {
    "ece": ECE_VARIANT,
    "ece_bins": ECE_BINS,
    "ece_floor": "expected ECE of a perfectly calibrated model with the same probabilities (labels drawn as "
    "Bernoulli(p)), computed exactly",
    "raw_probability": "scores min-max mapped to [0, 1] with the clean scores of the test set, clipped",
    "calibrated_probability": "Platt scaling fitted on the other fold's clean scores",
    "entropy": "binary predictive entropy of the calibrated probability, in bits",
    "nll": "mean negative log-likelihood in nats",
    "threshold": "score >= threshold is anomalous; fitted for F1 on the other fold's clean scores",
    "intervals": "equal-tailed percentile intervals of a stratified bootstrap over test images, seeded with the "
    "case seed; calibration and thresholds stay fixed",
}


def _case_order(case: Mapping[str, Any]) -> tuple[Any, ...]:
    return (case["dataset"], case["shots"], case["seed"], case["attack"], case["case_id"])


def item_record(item: ItemRecord) -> dict[str, Any]:
    """Return the JSON record of one test item: its case, budget, limits, outcome and comparison."""
    return {
        "nodeid": item.nodeid,
        "case_id": case_id(item.key),
        "dataset_spec": item.key.dataset,
        "shots": item.key.shots,
        "eps": item.eps.value,
        "eps_text": str(item.eps),
        "thresholds": item.thresholds,
        "gate": item.gate,
        "outcome": item.outcome,
        "message": item.message,
        "comparison": item.comparison,
    }


def merge_reports(reports: Sequence[Mapping[str, Any]], sources: Sequence[str] | None = None) -> dict[str, Any]:
    """Merge the reports of shards of one run (pytest-xdist workers or separate CI jobs) into one.

    Cases with the same ``case_id`` are merged budget by budget, and items by node id. The
    reports must share the schema version, the settings and every detector they both describe.

    Parameters
    ----------
    reports : sequence of dict
        Reports as :func:`build_report` returns them or :func:`load_report` reads them.
    sources : sequence of str, optional
        A name per report for error messages, such as its path.

    Raises
    ------
    AdrobustError
        When there is no report, or two reports disagree on settings, a detector, a budget's
        metrics or an item's outcome.
    """
    if not reports:
        raise AdrobustError("no report to merge: give at least one report file")
    names = list(sources) if sources is not None else [f"report {index + 1}" for index in range(len(reports))]
    first = reports[0]
    merged: dict[str, Any] = {
        **{name: first[name] for name in ("schema", "schema_version", "settings", "conventions", "versions")},
        "created": min(report["created"] for report in reports),
        "duration_seconds": max(report["duration_seconds"] for report in reports),
        "detectors": {},
        "cases": [],
        "items": [],
    }
    cases: dict[str, dict[str, Any]] = {}
    items: dict[str, dict[str, Any]] = {}
    for report, name in zip(reports, names):
        if report["settings"] != first["settings"]:
            difference = _difference(first["settings"], report["settings"])
            raise AdrobustError(f"cannot merge {name} with {names[0]}: the settings differ ({difference})")
        for fingerprint, detector in report["detectors"].items():
            known = merged["detectors"].setdefault(fingerprint, detector)
            if _without(known, "batch_size") != _without(detector, "batch_size"):
                raise AdrobustError(
                    f"cannot merge {name}: detector {fingerprint[:12]} is described differently "
                    f"({_difference(known, detector)})"
                )
        for case in report["cases"]:
            _merge_case(cases, case, name)
        for item in report["items"]:
            known_item = items.setdefault(item["nodeid"], item)
            if known_item != item:
                raise AdrobustError(
                    f"cannot merge {name}: item {item['nodeid']} is also in another report with a different "
                    f"result ({_difference(known_item, item)})"
                )
    merged["cases"] = sorted(cases.values(), key=_case_order)
    merged["items"] = sorted(items.values(), key=lambda item: item["nodeid"])
    return merged


# Fields that describe how a case was computed in one process rather than its result.
_PROCESS_FIELDS: Final = ("cache", "seconds", "passes", "budgets", "images", "self_check_warnings", "noise_control")


def _merge_case(cases: dict[str, dict[str, Any]], case: Mapping[str, Any], name: str) -> None:
    known = cases.get(case["case_id"])
    if known is None:
        cases[case["case_id"]] = copy.deepcopy(dict(case))
        return
    if _without(known, *_PROCESS_FIELDS) != _without(case, *_PROCESS_FIELDS):
        raise AdrobustError(
            f"cannot merge {name}: case {case['dataset']} {case['shots']}-shot differs from another report's "
            f"({_difference(_without(known, *_PROCESS_FIELDS), _without(case, *_PROCESS_FIELDS))})"
        )
    budgets = {budget["eps_text"]: budget for budget in known["budgets"]}
    for budget in case["budgets"]:
        other = budgets.setdefault(budget["eps_text"], budget)
        if other != budget:
            raise AdrobustError(
                f"cannot merge {name}: {case['dataset']} {case['shots']}-shot eps {budget['eps_text']} has other "
                f"metrics in another report ({_difference(other, budget)})"
            )
    known["budgets"] = sorted(budgets.values(), key=lambda budget: budget["eps"])
    for image, other_image in zip(known["images"], case["images"]):
        if image["image_id"] != other_image["image_id"]:
            raise AdrobustError(f"cannot merge {name}: case {case['dataset']} lists other test images")
        image["attacked"] = {**image["attacked"], **other_image["attacked"]}
    known["self_check_warnings"] = list(dict.fromkeys([*known["self_check_warnings"], *case["self_check_warnings"]]))
    known["noise_control"] = known["noise_control"] or case["noise_control"]


def _without(record: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in names}


def _difference(first: Mapping[str, Any], second: Mapping[str, Any]) -> str:
    """Name the first few keys whose values differ, with both values."""
    keys = [key for key in sorted(set(first) | set(second)) if first.get(key) != second.get(key)]
    shown = [f"{key}: {_short(first.get(key))} vs {_short(second.get(key))}" for key in keys[:3]]
    return "; ".join(shown) + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_report(path: Path) -> dict[str, Any]:
    """Read a report file and check that it is a pytest-adrobust report of this schema version.

    Raises
    ------
    AdrobustError
        When the file is missing, not JSON, another kind of file, or of another schema version.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdrobustError(f"report {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdrobustError(f"report {str(path)!r} is not readable JSON ({error}): write it again with --adrobust-report") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise AdrobustError(f"{str(path)!r} is not a pytest-adrobust report: its 'schema' is not {SCHEMA!r}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise AdrobustError(
            f"report {str(path)!r} has schema version {data.get('schema_version')!r}, but this pytest-adrobust "
            f"reads version {SCHEMA_VERSION}: produce it again with this version"
        )
    missing = [name for name in ("settings", "detectors", "cases", "items", "created", "duration_seconds") if name not in data]
    if missing:
        raise AdrobustError(f"report {str(path)!r} lacks {', '.join(missing)}: the file is incomplete")
    return data


def write_json_atomic(path: Path, data: Mapping[str, Any], replace: bool = True) -> bool:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename.

    With ``replace=False`` the file is linked into place only if ``path`` does not exist yet, so
    a concurrent writer cannot be overwritten either.

    Returns
    -------
    bool
        Whether an existing file was replaced, so the caller can say so.

    Raises
    ------
    FileExistsError
        With ``replace=False``, when ``path`` exists.
    """
    existed = path.exists()
    if existed and not replace:
        raise FileExistsError(errno.EEXIST, "file exists", str(path))
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
        if replace:
            os.replace(temporary, path)
        else:
            # link() fails when the target exists, unlike rename(), which would replace it.
            os.link(temporary, path)
            Path(temporary).unlink()
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return existed
