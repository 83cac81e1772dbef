"""Baselines: tolerance parsing, regression checks, fingerprint refusals, building and loading files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from pytest_adrobust.baseline import (
    BASELINE_SCHEMA,
    BASELINE_SCHEMA_VERSION,
    METRIC_NAMES,
    SHOWN_WITHOUT_TOLERANCES,
    Tolerance,
    build_baseline,
    compare_item,
    load_baseline,
    parse_tolerances,
)
from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.report import write_json_atomic

WEIGHTS_SHA256 = "a" * 64
FILES_SHA256 = "f" * 64
DETECTOR = "detector-0123"


def make_fingerprint(**changes: Any) -> dict[str, Any]:
    """Return the fingerprint of one hand-made item, with ``changes`` applied.

    Parameters
    ----------
    **changes
        Fingerprint fields to override, by name.

    Returns
    -------
    dict
        Every field that :func:`~pytest_adrobust.baseline.item_fingerprint` writes.
    """
    fingerprint = {
        "backbone": "dinov2_vits14",
        "weights": WEIGHTS_SHA256,
        "resolution": 224,
        "precision": "fp32",
        "detector": DETECTOR,
        "dataset": "folder:parts",
        "files_sha256": FILES_SHA256,
        "shots": 4,
        "seed": 0,
        "max_images": None,
        "n_images": 40,
        "attack": "fgsm",
        "selection": "random",
        "masking": False,
        "rotation": False,
        "eps": "8/255",
    }
    fingerprint.update(changes)
    return fingerprint


def make_entry(**metrics: float) -> dict[str, Any]:
    """Return a baseline entry with the default fingerprint and ``metrics``.

    Parameters
    ----------
    **metrics
        Metric values of the entry, by metric name.

    Returns
    -------
    dict
        An entry as :func:`~pytest_adrobust.baseline.build_baseline` stores it per item.
    """
    return {"fingerprint": make_fingerprint(), "metrics": dict(metrics), "intervals": {}, "outcome": "passed"}


def make_budget(eps_text: str, auroc: float) -> dict[str, Any]:
    """Return a report budget record whose metrics are derived from ``auroc``.

    Parameters
    ----------
    eps_text
        Budget as written in node ids, such as ``"8/255"``.
    auroc
        AUROC on the attacked scores, in [0, 1].

    Returns
    -------
    dict
        A budget record with every metric of ``METRIC_NAMES`` and one interval.
    """
    metrics = {name: auroc + index / 1000.0 for index, name in enumerate(METRIC_NAMES)}
    metrics["auroc"] = auroc
    return {"eps": 0.0, "eps_text": eps_text, **metrics, "intervals": {"auroc": [auroc - 0.05, auroc + 0.05]}}


def make_report() -> dict[str, Any]:
    """Return a small report with two cases, three budgets and items in unsorted order.

    Returns
    -------
    dict
        Report fields that :func:`~pytest_adrobust.baseline.build_baseline` reads. Case ``c1``
        has weights identified by a hash, case ``c2`` by a description only. Two items refer to
        no result: one to a case that is missing, one to a budget its case lacks.
    """
    case_fields = {
        "dataset": "folder:parts",
        "files_sha256": FILES_SHA256,
        "shots": 4,
        "seed": 0,
        "max_images": None,
        "n_images": 40,
        "attack": "fgsm",
        "selection": "random",
        "masking": False,
        "rotation": False,
    }
    cases = [
        {
            "case_id": "c1",
            "detector": "det-hashed",
            **case_fields,
            "budgets": [make_budget("0", 0.95), make_budget("8/255", 0.80)],
        },
        {
            "case_id": "c2",
            "detector": "det-random",
            **case_fields,
            "shots": 8,
            "budgets": [make_budget("0", 0.60)],
        },
    ]
    detectors = {
        "det-hashed": {
            "backbone": "dinov2_vits14",
            "weights": "/models/vits14.pth",
            "weights_sha256": WEIGHTS_SHA256,
            "resolution": 224,
            "precision": "bf16",
        },
        "det-random": {
            "backbone": "dinov2_vits14",
            "weights": "random-init (seed 0)",
            "weights_sha256": None,
            "resolution": 112,
        },
    }
    items = [
        {"nodeid": "tests/test_z.py::test_parts[8/255]", "case_id": "c1", "eps_text": "8/255", "outcome": "failed"},
        {"nodeid": "tests/test_a.py::test_parts[0]", "case_id": "c1", "eps_text": "0", "outcome": "passed"},
        {"nodeid": "tests/test_m.py::test_random[0]", "case_id": "c2", "eps_text": "0", "outcome": "passed"},
        {"nodeid": "tests/test_b.py::test_gone[0]", "case_id": "c9", "eps_text": "0", "outcome": "error"},
        {"nodeid": "tests/test_c.py::test_nobudget[4/255]", "case_id": "c1", "eps_text": "4/255", "outcome": "error"},
    ]
    return {
        "schema": "pytest-adrobust-report",
        "schema_version": 2,
        "created": "2024-05-01T12:00:00+00:00",
        "versions": {"pytest-adrobust": "0.1.0"},
        "settings": {"bootstrap": 200, "confidence": 0.95},
        "detectors": detectors,
        "cases": cases,
        "items": items,
    }


def beyond(boundary: float, toward: float) -> float:
    """Return a value 1e-9 past ``boundary`` in the direction of ``toward``.

    ``Tolerance.regressed`` allows float rounding of about 1e-12 at the boundary, so the first
    value that must count as a regression lies clearly beyond it.
    """
    return boundary + math.copysign(1e-9, toward - boundary)


def names_remedy(message: str) -> bool:
    """Check whether an error message about a baseline file names a fix.

    Parameters
    ----------
    message
        Text of the error.

    Returns
    -------
    bool
        Whether the message names an option or action that produces a valid baseline.
    """
    return any(remedy in message for remedy in ("--adrobust-save", "--adrobust-baseline-dir", "version control"))


# parse_tolerances


def test_tolerances_space_separated() -> None:
    tolerances = parse_tolerances("auroc_drop:+0.02 ece:+0.01 entropy_gap:-0.05")

    assert tolerances == (
        Tolerance("auroc_drop", 1, 0.02, False, "auroc_drop:+0.02"),
        Tolerance("ece", 1, 0.01, False, "ece:+0.01"),
        Tolerance("entropy_gap", -1, 0.05, False, "entropy_gap:-0.05"),
    )


def test_tolerances_comma_separated() -> None:
    tolerances = parse_tolerances(" ece:+0.01,auroc:-0.1 , nll:+1e-2")

    assert [item.metric for item in tolerances] == ["ece", "auroc", "nll"]
    assert [item.direction for item in tolerances] == [1, -1, 1]
    assert [item.amount for item in tolerances] == [0.01, 0.1, 0.01]


def test_tolerance_relative_percent() -> None:
    (tolerance,) = parse_tolerances("auroc:-2%")

    assert tolerance.metric == "auroc"
    assert tolerance.direction == -1
    assert tolerance.amount == 2.0
    assert tolerance.relative
    assert tolerance.text == "auroc:-2%"


def test_tolerance_absolute_not_relative() -> None:
    (tolerance,) = parse_tolerances("ece:+0.01")

    assert not tolerance.relative


def test_tolerances_empty_text() -> None:
    assert parse_tolerances("  ") == ()


@pytest.mark.parametrize(
    ("text", "token"),
    [
        pytest.param("auroc:0.02", "auroc:0.02", id="missing-sign"),
        pytest.param("ece:+0.01 roc:+0.02", "roc:+0.02", id="unknown-metric"),
        pytest.param("auroc:-0.0.2", "auroc:-0.0.2", id="two-points"),
        pytest.param("auroc:-abc", "auroc:-abc", id="letters"),
        pytest.param("auroc:-", "auroc:-", id="no-number"),
        pytest.param("auroc-0.02", "auroc-0.02", id="missing-colon"),
        pytest.param("ece:+0.01,ece:+0.02", "ece:+0.02", id="same-direction-twice"),
    ],
)
def test_tolerance_error_names_token(text: str, token: str) -> None:
    with pytest.raises(AdrobustError) as raised:
        parse_tolerances(text)

    assert repr(token) in str(raised.value)


def test_unknown_metric_lists_metrics() -> None:
    with pytest.raises(AdrobustError) as raised:
        parse_tolerances("roc:+0.02")

    assert "auroc_drop" in str(raised.value)


def test_missing_sign_shows_syntax() -> None:
    with pytest.raises(AdrobustError) as raised:
        parse_tolerances("auroc:0.02")

    assert "METRIC:+X" in str(raised.value)


def test_same_metric_both_directions() -> None:
    tolerances = parse_tolerances("auroc:+0.01 auroc:-0.02")

    parsed = [(item.metric, item.direction, item.amount) for item in tolerances]

    assert parsed == [("auroc", 1, 0.01), ("auroc", -1, 0.02)]


# Tolerance.regressed. Boundary values are binary fractions, so their differences are exact.


def test_rise_equal_to_tolerance_ok() -> None:
    (tolerance,) = parse_tolerances("ece:+0.25")

    assert not tolerance.regressed(0.5, 0.75)


def test_rise_beyond_tolerance_regressed() -> None:
    (tolerance,) = parse_tolerances("ece:+0.25")

    assert tolerance.regressed(0.5, beyond(0.75, 1.0))


def test_rise_ignores_any_fall() -> None:
    (tolerance,) = parse_tolerances("ece:+0.25")

    assert not tolerance.regressed(0.5, 0.0)


def test_fall_equal_to_tolerance_ok() -> None:
    (tolerance,) = parse_tolerances("auroc:-0.25")

    assert not tolerance.regressed(0.75, 0.5)


def test_fall_beyond_tolerance_regressed() -> None:
    (tolerance,) = parse_tolerances("auroc:-0.25")

    assert tolerance.regressed(0.75, beyond(0.5, 0.0))


def test_fall_ignores_any_rise() -> None:
    (tolerance,) = parse_tolerances("auroc:-0.25")

    assert not tolerance.regressed(0.5, 1.0)


def test_relative_fall_at_boundary() -> None:
    (tolerance,) = parse_tolerances("auroc:-25%")

    assert not tolerance.regressed(0.5, 0.375)
    assert tolerance.regressed(0.5, beyond(0.375, 0.0))


def test_relative_negative_baseline_fall() -> None:
    # 25 % of |-2| allows a fall of 0.5, down to -2.5.
    (tolerance,) = parse_tolerances("entropy_gap:-25%")

    assert tolerance.allowed(-2.0) == 0.5
    assert not tolerance.regressed(-2.0, -2.5)
    assert tolerance.regressed(-2.0, beyond(-2.5, -3.0))


def test_relative_negative_baseline_rise() -> None:
    (tolerance,) = parse_tolerances("entropy_gap:+25%")

    assert not tolerance.regressed(-2.0, -1.5)
    assert tolerance.regressed(-2.0, beyond(-1.5, 0.0))


@pytest.mark.parametrize(
    ("baseline", "current"),
    [(math.nan, 0.5), (0.5, math.nan), (math.nan, math.nan), (0.5, math.inf), (-math.inf, 0.5)],
)
@pytest.mark.parametrize("text", ["ece:+0.25", "auroc:-0.25", "auroc:-10%"])
def test_non_finite_counts_as_regressed(text: str, baseline: float, current: float) -> None:
    (tolerance,) = parse_tolerances(text)

    assert tolerance.regressed(baseline, current)


def test_decimal_fall_equal_to_tolerance() -> None:
    (tolerance,) = parse_tolerances("auroc:-0.02")

    assert not tolerance.regressed(0.90, 0.88)


# compare_item


def test_compare_without_entry_new() -> None:
    comparison = compare_item(None, make_fingerprint(), {"auroc": 0.9}, parse_tolerances("auroc:-0.1"), "main")

    assert comparison["status"] == "new"
    assert comparison["checks"] == []
    assert "'main'" in comparison["message"]


@pytest.mark.parametrize(
    ("field", "current", "words"),
    [
        pytest.param("weights", "b" * 64, "weights", id="weights"),
        pytest.param("files_sha256", "e" * 64, "selected image files", id="selected-files"),
        pytest.param("shots", 8, "shots", id="shots"),
        pytest.param("eps", "4/255", "eps", id="eps"),
        pytest.param("detector", "detector-4567", "detector fingerprint", id="detector"),
    ],
)
def test_fingerprint_change_refused(field: str, current: Any, words: str) -> None:
    entry = make_entry(auroc=0.9)
    before = entry["fingerprint"][field]

    fingerprint = make_fingerprint(**{field: current})

    comparison = compare_item(entry, fingerprint, {"auroc": 0.1}, parse_tolerances("auroc:-0.01"), "main")

    assert comparison["status"] == "refused"
    assert comparison["checks"] == []
    assert words in comparison["message"]
    assert f"baseline {before!r}" in comparison["message"]
    assert f"this run {current!r}" in comparison["message"]


def test_refusal_names_only_changed_field() -> None:
    comparison = compare_item(make_entry(auroc=0.9), make_fingerprint(shots=8), {"auroc": 0.9}, (), "main")

    assert "shots" in comparison["message"]
    assert "weights:" not in comparison["message"]
    assert "eps:" not in comparison["message"]


def test_refusal_lists_every_changed_field() -> None:
    comparison = compare_item(make_entry(auroc=0.9), make_fingerprint(shots=8, seed=3), {"auroc": 0.9}, (), "main")

    assert "shots: baseline 4, this run 8" in comparison["message"]
    assert "seed: baseline 0, this run 3" in comparison["message"]


def test_refusal_advises_saving_again() -> None:
    comparison = compare_item(make_entry(auroc=0.9), make_fingerprint(seed=3), {"auroc": 0.9}, (), "main")

    assert "--adrobust-save main --adrobust-overwrite" in comparison["message"]


def test_compare_within_tolerance_ok() -> None:
    tolerances = parse_tolerances("auroc:-0.25")

    comparison = compare_item(make_entry(auroc=0.75), make_fingerprint(), {"auroc": 0.5}, tolerances, "main")

    assert comparison["status"] == "ok"
    assert comparison["message"] == ""
    assert comparison["checks"] == [
        {
            "metric": "auroc",
            "baseline": 0.75,
            "current": 0.5,
            "delta": -0.25,
            "tolerance": "auroc:-0.25",
            "regressed": False,
        }
    ]


def test_compare_beyond_tolerance_regressed() -> None:
    tolerances = parse_tolerances("auroc:-0.02 ece:+0.5")

    entry = make_entry(auroc=0.9, ece=0.1)

    comparison = compare_item(entry, make_fingerprint(), {"auroc": 0.85, "ece": 0.1}, tolerances, "main")

    assert comparison["status"] == "regressed"
    assert [check["regressed"] for check in comparison["checks"]] == [True, False]


def test_regression_message_shows_numbers() -> None:
    tolerances = parse_tolerances("auroc:-0.02")

    comparison = compare_item(make_entry(auroc=0.9), make_fingerprint(), {"auroc": 0.85}, tolerances, "main")

    assert "auroc regressed against baseline 'main'" in comparison["message"]
    assert "baseline 0.9000" in comparison["message"]
    assert "current 0.8500" in comparison["message"]
    assert "delta -0.0500" in comparison["message"]
    assert "tolerance -0.02" in comparison["message"]


def test_regression_message_omits_passing_metrics() -> None:
    tolerances = parse_tolerances("auroc:-0.02 ece:+0.5")

    entry = make_entry(auroc=0.9, ece=0.1)

    comparison = compare_item(entry, make_fingerprint(), {"auroc": 0.85, "ece": 0.1}, tolerances, "main")

    assert "ece" not in comparison["message"]


def test_missing_current_metric_regressed() -> None:
    comparison = compare_item(make_entry(auroc=0.9), make_fingerprint(), {}, parse_tolerances("auroc:-0.5"), "main")

    assert comparison["status"] == "regressed"
    assert comparison["checks"][0]["current"] is None
    assert comparison["checks"][0]["delta"] is None
    assert "current nan" in comparison["message"]


def test_without_tolerances_lists_defaults() -> None:
    entry = make_entry(auroc=0.9, auroc_drop=0.05, ece=0.1, entropy_gap=0.2)
    metrics = {"auroc": 0.1, "auroc_drop": 0.85, "ece": 0.9, "entropy_gap": -0.5}

    comparison = compare_item(entry, make_fingerprint(), metrics, (), "main")

    assert [check["metric"] for check in comparison["checks"]] == list(SHOWN_WITHOUT_TOLERANCES)
    assert comparison["status"] == "ok"
    assert not any(check["regressed"] for check in comparison["checks"])
    assert all(check["tolerance"] is None for check in comparison["checks"])


def test_without_tolerances_nan_not_regressed() -> None:
    comparison = compare_item(make_entry(), make_fingerprint(), {"auroc": math.nan}, (), "main")

    assert comparison["status"] == "ok"


# build_baseline


def test_build_one_entry_per_item() -> None:
    baseline = build_baseline(make_report(), "main")

    assert set(baseline["items"]) == {
        "tests/test_a.py::test_parts[0]",
        "tests/test_m.py::test_random[0]",
        "tests/test_z.py::test_parts[8/255]",
    }


def test_build_items_sorted() -> None:
    baseline = build_baseline(make_report(), "main")

    assert list(baseline["items"]) == sorted(baseline["items"])


def test_build_takes_budget_metrics() -> None:
    items = build_baseline(make_report(), "main")["items"]

    assert items["tests/test_z.py::test_parts[8/255]"]["metrics"] == {
        name: value for name, value in make_budget("8/255", 0.80).items() if name in METRIC_NAMES
    }
    assert items["tests/test_a.py::test_parts[0]"]["metrics"]["auroc"] == 0.95
    assert items["tests/test_m.py::test_random[0]"]["metrics"]["auroc"] == 0.60


def test_build_keeps_intervals_outcome() -> None:
    entry = build_baseline(make_report(), "main")["items"]["tests/test_z.py::test_parts[8/255]"]

    assert entry["intervals"] == make_budget("8/255", 0.80)["intervals"]
    assert entry["outcome"] == "failed"


def test_build_fingerprint_fields() -> None:
    items = build_baseline(make_report(), "main")["items"]

    hashed = items["tests/test_z.py::test_parts[8/255]"]["fingerprint"]

    assert hashed == make_fingerprint(detector="det-hashed", precision="bf16")


def test_build_weights_fallback_description() -> None:
    fingerprint = build_baseline(make_report(), "main")["items"]["tests/test_m.py::test_random[0]"]["fingerprint"]

    assert fingerprint["weights"] == "random-init (seed 0)"
    assert fingerprint["precision"] == "fp32"
    assert fingerprint["shots"] == 8
    assert fingerprint["eps"] == "0"


def test_build_header_fields() -> None:
    baseline = build_baseline(make_report(), "nightly")

    assert baseline["schema"] == BASELINE_SCHEMA
    assert baseline["schema_version"] == BASELINE_SCHEMA_VERSION
    assert baseline["name"] == "nightly"
    assert baseline["run_created"] == "2024-05-01T12:00:00+00:00"
    assert baseline["bootstrap"] == {"resamples": 200, "confidence": 0.95}


def test_built_entry_compares_ok() -> None:
    entry = build_baseline(make_report(), "main")["items"]["tests/test_z.py::test_parts[8/255]"]
    fingerprint = make_fingerprint(detector="det-hashed", precision="bf16")
    metrics = make_budget("8/255", 0.80)

    comparison = compare_item(entry, fingerprint, metrics, parse_tolerances("auroc:-0.01"), "main")

    assert comparison["status"] == "ok"


# load_baseline


def test_load_round_trip(tmp_path: Path) -> None:
    baseline = build_baseline(make_report(), "main")
    path = tmp_path / "main.json"
    write_json_atomic(path, baseline)

    assert load_baseline(path) == baseline


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` as UTF-8 and return ``path``.

    Parameters
    ----------
    path
        File to create or replace.
    text
        Whole content of the file.

    Returns
    -------
    Path
        ``path``, for use in one expression.
    """
    path.write_text(text, encoding="utf-8")
    return path


def valid_baseline_data() -> dict[str, Any]:
    """Return the baseline of :func:`make_report`, as JSON-ready data.

    Returns
    -------
    dict
        Data that :func:`~pytest_adrobust.baseline.load_baseline` accepts.
    """
    return build_baseline(make_report(), "main")


def damaged_files(directory: Path) -> dict[str, Path]:
    """Write one damaged or foreign file per way that a baseline can be invalid.

    Parameters
    ----------
    directory
        Empty directory to write the files to.

    Returns
    -------
    dict
        File per case name. The ``missing`` file is not created.
    """
    other_version = valid_baseline_data()
    other_version["schema_version"] = BASELINE_SCHEMA_VERSION + 1
    items_list = valid_baseline_data()
    items_list["items"] = list(items_list["items"].values())
    no_fingerprint = valid_baseline_data()
    del no_fingerprint["items"]["tests/test_a.py::test_parts[0]"]["fingerprint"]
    no_seed = valid_baseline_data()
    del no_seed["items"]["tests/test_a.py::test_parts[0]"]["fingerprint"]["seed"]
    text_metric = valid_baseline_data()
    text_metric["items"]["tests/test_a.py::test_parts[0]"]["metrics"]["auroc_drop"] = "abc"
    return {
        "missing": directory / "missing.json",
        "invalid-json": write_text(directory / "invalid-json.json", '{"schema": "pytest-adrobust-baseline",'),
        "report": write_text(directory / "report.json", json.dumps(make_report())),
        "empty-object": write_text(directory / "empty-object.json", "{}"),
        "json-list": write_text(directory / "json-list.json", "[]"),
        "other-version": write_text(directory / "other-version.json", json.dumps(other_version)),
        "items-list": write_text(directory / "items-list.json", json.dumps(items_list)),
        "no-fingerprint": write_text(directory / "no-fingerprint.json", json.dumps(no_fingerprint)),
        "no-seed": write_text(directory / "no-seed.json", json.dumps(no_seed)),
        "text-metric": write_text(directory / "text-metric.json", json.dumps(text_metric)),
    }


CASES = [
    "missing",
    "invalid-json",
    "report",
    "empty-object",
    "json-list",
    "other-version",
    "items-list",
    "no-fingerprint",
    "no-seed",
    "text-metric",
]

# Cases whose error message names a fix. The others name only the problem.
CASES_WITH_REMEDY = ["missing", "invalid-json", "other-version"]
CASES_WITHOUT_REMEDY = [case for case in CASES if case not in CASES_WITH_REMEDY]


@pytest.mark.parametrize("case", CASES)
def test_invalid_baseline_error_names_path(tmp_path: Path, case: str) -> None:
    path = damaged_files(tmp_path)[case]

    with pytest.raises(AdrobustError) as raised:
        load_baseline(path)

    assert repr(str(path)) in str(raised.value)


@pytest.mark.parametrize("case", CASES_WITH_REMEDY)
def test_invalid_baseline_error_gives_remedy(tmp_path: Path, case: str) -> None:
    path = damaged_files(tmp_path)[case]

    with pytest.raises(AdrobustError) as raised:
        load_baseline(path)

    assert names_remedy(str(raised.value))


@pytest.mark.parametrize("case", CASES_WITHOUT_REMEDY)
def test_foreign_baseline_error_gives_remedy(tmp_path: Path, case: str) -> None:
    path = damaged_files(tmp_path)[case]

    with pytest.raises(AdrobustError) as raised:
        load_baseline(path)

    assert names_remedy(str(raised.value))


def test_missing_baseline_names_save_option(tmp_path: Path) -> None:
    with pytest.raises(AdrobustError) as raised:
        load_baseline(tmp_path / "nightly.json")

    assert "--adrobust-save nightly" in str(raised.value)


def test_other_version_shows_both_versions(tmp_path: Path) -> None:
    path = damaged_files(tmp_path)["other-version"]

    with pytest.raises(AdrobustError) as raised:
        load_baseline(path)

    assert f"schema version {BASELINE_SCHEMA_VERSION + 1}" in str(raised.value)
    assert f"reads version {BASELINE_SCHEMA_VERSION}" in str(raised.value)


def test_no_fingerprint_names_item(tmp_path: Path) -> None:
    path = damaged_files(tmp_path)["no-fingerprint"]

    with pytest.raises(AdrobustError) as raised:
        load_baseline(path)

    assert "'tests/test_a.py::test_parts[0]'" in str(raised.value)


def test_damaged_entry_names_field_and_value(tmp_path: Path) -> None:
    files = damaged_files(tmp_path)

    with pytest.raises(AdrobustError, match="lacks the fingerprint fields seed"):
        load_baseline(files["no-seed"])
    with pytest.raises(AdrobustError, match="has metric auroc_drop = 'abc', which is not a number"):
        load_baseline(files["text-metric"])


# write_json_atomic


def test_no_replace_raises_file_exists(tmp_path: Path) -> None:
    path = write_text(tmp_path / "main.json", '{"kept": true}\n')
    before = path.read_bytes()

    with pytest.raises(FileExistsError):
        write_json_atomic(path, {"kept": False}, replace=False)

    assert path.read_bytes() == before
    assert sorted(item.name for item in tmp_path.iterdir()) == ["main.json"]


def test_no_replace_writes_new_file(tmp_path: Path) -> None:
    path = tmp_path / "main.json"

    replaced = write_json_atomic(path, {"auroc": 0.5}, replace=False)

    assert not replaced
    assert json.loads(path.read_text(encoding="utf-8")) == {"auroc": 0.5}
    assert sorted(item.name for item in tmp_path.iterdir()) == ["main.json"]


def test_replace_overwrites_existing_file(tmp_path: Path) -> None:
    path = write_text(tmp_path / "main.json", '{"kept": true}\n')

    replaced = write_json_atomic(path, {"kept": False})

    assert replaced
    assert json.loads(path.read_text(encoding="utf-8")) == {"kept": False}
    assert sorted(item.name for item in tmp_path.iterdir()) == ["main.json"]


def test_unserialisable_data_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "main.json"

    with pytest.raises(ValueError):
        write_json_atomic(path, {"auroc": math.nan})

    assert list(tmp_path.iterdir()) == []

