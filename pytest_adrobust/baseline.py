"""Baselines: a run's metrics per test item, stored to be committed, and comparisons against them.

A baseline is a JSON file ``BASELINE_DIR/NAME.json``. For every test item of a run it contains
the metrics of the item's budget, their confidence intervals and a fingerprint of what produced
them. The fingerprint covers the detector (backbone, weights, resolution, precision and the hash of
its tensors) and the case (dataset files, shots, seed, test-set size, attack, reference selection,
masking, rotation, budget). A comparison is made only between items whose fingerprints agree. Tolerances such as
``auroc_drop:+0.02`` then fail the items whose metric moved further than allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, final

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.evaluation import BudgetMetrics

BASELINE_SCHEMA: Final = "pytest-adrobust-baseline"
BASELINE_SCHEMA_VERSION: Final = 1

METRIC_NAMES: Final = tuple(
    item.name
    for item in fields(BudgetMetrics)
    if item.name not in {"eps", "attacked_scores", "attacked_probabilities", "intervals"}
)
"""Metrics a tolerance may name: every scalar of :class:`~pytest_adrobust.evaluation.BudgetMetrics`."""

SHOWN_WITHOUT_TOLERANCES: Final = ("auroc", "auroc_drop", "ece", "entropy_gap")
"""Metrics a comparison lists when no tolerance is given."""

# Fingerprint fields in the order they are checked, each with the words that name it in messages.
FINGERPRINT_FIELDS: Final = (
    ("backbone", "backbone"),
    ("weights", "weights"),
    ("resolution", "resolution"),
    ("precision", "precision"),
    ("dataset", "dataset"),
    # The hash covers the images this seed, shots and max_images select, not the whole folder.
    ("files_sha256", "selected image files (the files changed, or the seed, shots or max_images drew others)"),
    ("shots", "shots"),
    ("seed", "seed"),
    ("max_images", "max_images"),
    ("n_images", "number of test images"),
    ("attack", "attack"),
    ("selection", "reference selection"),
    ("masking", "masking"),
    ("rotation", "rotation"),
    ("eps", "eps"),
    ("detector", "detector fingerprint (the detector's tensors or scoring settings)"),
)

ROUNDING_SLACK: Final = 1e-12

_TOLERANCE: Final = re.compile(r"^([a-z_0-9]+):([+-])([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(%?)$")


@final
@dataclass(frozen=True)
class Tolerance:
    """How far one metric may move from its baseline value before an item counts as regressed.

    ``direction`` is ``+1`` when the metric may rise by at most ``amount`` (for metrics where
    higher is worse, such as ``auroc_drop`` and ``ece``) and ``-1`` when it may fall by at most
    ``amount`` (``auroc``, ``entropy_gap``). A ``relative`` amount is a percentage of the
    baseline's absolute value.
    """

    metric: str
    direction: int
    amount: float
    relative: bool
    text: str

    def allowed(self, baseline: float) -> float:
        """Return the allowed change in the metric's units for a baseline value."""
        return abs(baseline) * self.amount / 100.0 if self.relative else self.amount

    def regressed(self, baseline: float, current: float) -> bool:
        """Decide whether ``current`` moved beyond the tolerance; a non-finite value counts as regressed."""
        if not (math.isfinite(baseline) and math.isfinite(current)):
            return True
        delta = current - baseline
        # A change equal to the tolerance is allowed even when float rounding (0.88 - 0.90 is
        # -0.020000000000000018) puts it a few ulps beyond.
        allowed = self.allowed(baseline) + ROUNDING_SLACK * max(1.0, abs(baseline))
        return delta > allowed if self.direction > 0 else delta < -allowed


def parse_tolerances(text: str) -> tuple[Tolerance, ...]:
    """Parse tolerances such as ``auroc_drop:+0.02 ece:+0.01 auroc:-2%``.

    Tolerances are separated by spaces or commas. Each is ``METRIC:+X`` (may rise by at most X),
    ``METRIC:-X`` (may fall by at most X), with X in the metric's units or, with ``%``, relative
    to the baseline value.

    Raises
    ------
    AdrobustError
        On an unknown metric, a missing sign, a malformed number or a metric given twice in the
        same direction.
    """
    tolerances: list[Tolerance] = []
    for token in (part for part in re.split(r"[\s,]+", text.strip()) if part):
        match = _TOLERANCE.match(token)
        if match is None:
            raise AdrobustError(
                f"invalid tolerance {token!r}: write METRIC:+X (may rise by X), METRIC:-X (may fall by X) or "
                "METRIC:-X% (relative to the baseline), e.g. auroc_drop:+0.02 auroc:-2%"
            )
        metric, sign, amount, percent = match.groups()
        if metric not in METRIC_NAMES:
            raise AdrobustError(f"invalid tolerance {token!r}: unknown metric {metric!r}; use one of {', '.join(METRIC_NAMES)}")
        direction = 1 if sign == "+" else -1
        if any(item.metric == metric and item.direction == direction for item in tolerances):
            raise AdrobustError(f"invalid tolerance {token!r}: {metric} has a tolerance in this direction already")
        tolerances.append(Tolerance(metric, direction, float(amount), percent == "%", token))
    return tuple(tolerances)


def baseline_path(directory: Path, name: str) -> Path:
    """Return the file of baseline ``name`` in ``directory``."""
    return directory / f"{name}.json"


def item_fingerprint(case: Mapping[str, Any], detector: Mapping[str, Any], eps_text: str) -> dict[str, Any]:
    """Return what produced one item's metrics, from report records of its case and detector.

    Weights are identified by the hash of their file when there is one, so that the same file in
    another directory matches, and by their description (such as ``random-init (seed 0)``)
    otherwise. Dataset roots are left out for the same reason: the files' hash stands for them.
    """
    return {
        "backbone": detector["backbone"],
        "weights": detector["weights_sha256"] or detector["weights"],
        "resolution": detector["resolution"],
        "precision": detector.get("precision", "fp32"),
        "detector": case["detector"],
        "dataset": case["dataset"],
        "files_sha256": case["files_sha256"],
        "shots": case["shots"],
        "seed": case["seed"],
        "max_images": case["max_images"],
        "n_images": case["n_images"],
        "attack": case["attack"],
        "selection": case["selection"],
        "masking": case["masking"],
        "rotation": case["rotation"],
        "eps": eps_text,
    }


def build_baseline(report: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Return the baseline of a report: per item, its fingerprint, metrics, intervals and outcome.

    Items whose case has no result (the case failed to evaluate) are left out.
    """
    cases = {case["case_id"]: case for case in report["cases"]}
    items: dict[str, Any] = {}
    for item in report["items"]:
        case = cases.get(item["case_id"])
        if case is None:
            continue
        budget = next((entry for entry in case["budgets"] if entry["eps_text"] == item["eps_text"]), None)
        if budget is None:
            continue
        detector = report["detectors"][case["detector"]]
        items[item["nodeid"]] = {
            "fingerprint": item_fingerprint(case, detector, item["eps_text"]),
            "metrics": {metric: budget.get(metric) for metric in METRIC_NAMES},
            "intervals": budget.get("intervals", {}),
            "outcome": item["outcome"],
        }
    return {
        "schema": BASELINE_SCHEMA,
        "schema_version": BASELINE_SCHEMA_VERSION,
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_created": report["created"],
        "versions": report["versions"],
        "bootstrap": {"resamples": report["settings"].get("bootstrap"), "confidence": report["settings"].get("confidence")},
        "items": dict(sorted(items.items())),
    }


def load_baseline(path: Path) -> dict[str, Any]:
    """Read and check a baseline file.

    Raises
    ------
    AdrobustError
        When the file is missing, not JSON, not a pytest-adrobust baseline, of another schema
        version, or lacks the fields of an item.
    """
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdrobustError(
            f"baseline {str(path)!r} not found: create it with --adrobust-save {path.stem} on the reference "
            "branch, or check --adrobust-baseline-dir"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdrobustError(
            f"baseline {str(path)!r} is not readable JSON ({error}): restore it from version control or save it "
            f"again with --adrobust-save {path.stem} --adrobust-overwrite"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA:
        raise AdrobustError(
            f"{str(path)!r} is not a pytest-adrobust baseline: its 'schema' field is not {BASELINE_SCHEMA!r}. "
            f"Point --adrobust-baseline-dir at the baselines, or save one with --adrobust-save {path.stem} "
            "--adrobust-overwrite"
        )
    if data.get("schema_version") != BASELINE_SCHEMA_VERSION:
        raise AdrobustError(
            f"baseline {str(path)!r} has schema version {data.get('schema_version')!r}, but this pytest-adrobust "
            f"reads version {BASELINE_SCHEMA_VERSION}: save it again with --adrobust-save {path.stem} --adrobust-overwrite"
        )
    items = data.get("items")
    if not isinstance(items, dict):
        raise AdrobustError(
            f"baseline {str(path)!r} has no 'items' mapping, so the file is damaged: restore it from version control "
            f"or save it again with --adrobust-save {path.stem} --adrobust-overwrite"
        )
    for nodeid, entry in items.items():
        problem = _entry_problem(entry)
        if problem is not None:
            raise AdrobustError(
                f"baseline {str(path)!r}: item {nodeid!r} {problem}, so the file is damaged: restore it from "
                f"version control or save it again with --adrobust-save {path.stem} --adrobust-overwrite"
            )
    return data


def _entry_problem(entry: Any) -> str | None:
    """Say what makes one baseline entry unusable, or return ``None`` when it is whole."""
    if not (isinstance(entry, dict) and isinstance(entry.get("fingerprint"), dict) and isinstance(entry.get("metrics"), dict)):
        return "lacks its fingerprint or metrics"
    missing = [key for key, _ in FINGERPRINT_FIELDS if key not in entry["fingerprint"]]
    if missing:
        return f"lacks the fingerprint fields {', '.join(missing)}"
    for metric, value in entry["metrics"].items():
        # A saved metric is a number, or null where it is undefined, so anything else was edited in.
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"has metric {metric} = {value!r}, which is not a number"
    return None


def fingerprint_differences(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Name every fingerprint field that differs, with the baseline's and the current value."""
    differences = []
    for key, words in FINGERPRINT_FIELDS:
        if baseline.get(key) != current.get(key):
            differences.append(f"{words}: baseline {baseline.get(key)!r}, this run {current.get(key)!r}")
    return differences


def compare_item(
    entry: Mapping[str, Any] | None,
    fingerprint: Mapping[str, Any],
    metrics: Mapping[str, float],
    tolerances: Sequence[Tolerance],
    name: str,
) -> dict[str, Any]:
    """Compare one item's metrics with its baseline entry.

    Returns
    -------
    dict
        ``baseline`` (the name), ``status`` (``ok``, ``regressed``, ``refused`` when the
        fingerprints differ, or ``new`` when the baseline has no such item), ``checks`` (one per
        tolerance, or per shown metric without tolerances: metric, baseline, current, delta,
        tolerance text, regressed) and ``message``.
    """
    if entry is None:
        return {"baseline": name, "status": "new", "checks": [], "message": f"not in baseline {name!r}"}
    differences = fingerprint_differences(entry["fingerprint"], fingerprint)
    if differences:
        return {
            "baseline": name,
            "status": "refused",
            "checks": [],
            "message": (
                f"baseline {name!r} was made with other settings or weights, so it is not compared: "
                + "; ".join(differences)
                + f". Save a new baseline with --adrobust-save {name} --adrobust-overwrite if the change is intended"
            ),
        }

    checks = []
    listed = [(tolerance.metric, tolerance) for tolerance in tolerances] or [(metric, None) for metric in SHOWN_WITHOUT_TOLERANCES]
    for metric, tolerance in listed:
        before = entry["metrics"].get(metric)
        after = metrics.get(metric)
        before = math.nan if before is None else float(before)
        after = math.nan if after is None else float(after)
        checks.append(
            {
                "metric": metric,
                "baseline": before if math.isfinite(before) else None,
                "current": after if math.isfinite(after) else None,
                "delta": after - before if math.isfinite(after - before) else None,
                "tolerance": tolerance.text if tolerance is not None else None,
                "regressed": bool(tolerance is not None and tolerance.regressed(before, after)),
            }
        )
    failed = [check for check in checks if check["regressed"]]
    message = "; ".join(
        f"{check['metric']} regressed against baseline {name!r}: baseline {_number(check['baseline'])}, "
        f"current {_number(check['current'])}, delta {_number(check['delta'], signed=True)}, "
        f"tolerance {check['tolerance'].split(':', 1)[1]}"
        for check in failed
    )
    return {"baseline": name, "status": "regressed" if failed else "ok", "checks": checks, "message": message}


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "nan"
    return f"{value:+.4f}" if signed else f"{value:.4f}"
