"""The report's JSON Schema and its reference: a real report satisfies both, broken reports do not."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from pytest_adrobust.baseline import compare_item, parse_tolerances
from tests.synthetic import TINY_DETECTOR_CONFTEST, write_parts_dataset

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMA_PATH = DOCS / "report-schema.json"
REFERENCE_PATH = DOCS / "report.md"

# Two test functions on two budgets: one with a lenient limit under the interval gate, and one with
# min_entropy_gap at 1 bit, the maximum possible gap, which fails its attacked budget. The report
# then contains passed and failed items.
SUITE = """
import pytest

@pytest.mark.adrobust(max_auroc_drop=1.0, gate="interval")
def test_lenient(adrobust_case):
    adrobust_case.check()

@pytest.mark.adrobust(min_entropy_gap=1.0)
def test_strict(adrobust_case):
    adrobust_case.check()
"""


def _run_plugin(pytester: pytest.Pytester) -> dict[str, Any]:
    """Run the tiny detector on a generated dataset through the installed plugin and read the report."""
    write_parts_dataset(pytester.path / "parts")
    pytester.makeconftest(TINY_DETECTOR_CONFTEST)
    pytester.makeini(
        """
        [pytest]
        adrobust_datasets = folder:parts
        adrobust_eps = 0, 8/255
        adrobust_shots = 2
        adrobust_max_images = 6
        adrobust_device = cpu
        adrobust_bootstrap = 50
        """
    )
    pytester.makepyfile(test_suite=SUITE)
    report_path = pytester.path / "report.json"

    # A subprocess keeps the run's torch state and plugin registration apart from this process.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", f"--adrobust-report={report_path}")
    result.assert_outcomes(passed=3, failed=1)
    return json.loads(report_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def report_store() -> dict[str, dict[str, Any]]:
    """Return the module's store of the generated report, so that one plugin run serves every test."""
    return {}


@pytest.fixture
def real_report(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, report_store: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Return a private copy of a report written by the plugin, running the plugin on first use."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "report" not in report_store:
        report_store["report"] = _run_plugin(pytester)
    return copy.deepcopy(report_store["report"])


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """Return the parsed schema file."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """Return a draft 2020-12 validator of the schema file."""
    return Draft202012Validator(schema)


def _errors(validator: Draft202012Validator, instance: object) -> list[str]:
    """List every validation error as ``path: message``, for assertion messages."""
    return [
        f"/{'/'.join(str(part) for part in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(instance)
    ]


def _delete(report: dict[str, Any], path: tuple[str | int, ...]) -> None:
    """Delete the field at ``path`` (keys and list positions) from ``report``."""
    parent: Any = report
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]


def _set(report: dict[str, Any], path: tuple[str | int, ...], value: object) -> None:
    """Replace the field at ``path`` in ``report`` with ``value``."""
    parent: Any = report
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value


def _closed(schema: object) -> object:
    """Return a copy of ``schema`` in which every object schema that lists properties rejects unlisted ones."""
    if isinstance(schema, list):
        return [_closed(entry) for entry in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if closed.get("type") == "object" and "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


def _property_names(schema: object) -> set[str]:
    """Collect the name of every property the schema lists, at any depth."""
    names: set[str] = set()
    if isinstance(schema, list):
        for entry in schema:
            names |= _property_names(entry)
    elif isinstance(schema, dict):
        names |= set(schema.get("properties", {}))
        for value in schema.values():
            names |= _property_names(value)
    return names


def _reference_code() -> dict[str, Any]:
    """Execute the Python blocks of the report reference and return the names they define."""
    blocks = re.findall(r"```python\n(.*?)```", REFERENCE_PATH.read_text(encoding="utf-8"), flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(blocks), str(REFERENCE_PATH), "exec"), namespace)
    return namespace


def test_schema_file_is_valid_draft(schema: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema_version"]["const"] == 2


def test_real_report_satisfies_schema(real_report: dict[str, Any], validator: Draft202012Validator) -> None:
    assert _errors(validator, real_report) == []
    assert len(real_report["cases"][0]["budgets"]) == 2
    assert {item["outcome"] for item in real_report["items"]} == {"passed", "failed"}


def test_report_fields_all_documented(real_report: dict[str, Any], schema: dict[str, Any]) -> None:
    # The schema lets later versions add fields; closing it shows fields the schema does not list yet.
    closed = Draft202012Validator(_closed(schema))
    assert _errors(closed, real_report) == []


REQUIRED_FIELDS = [
    ("schema",),
    ("schema_version",),
    ("created",),
    ("duration_seconds",),
    ("settings",),
    ("conventions",),
    ("versions",),
    ("detectors",),
    ("cases",),
    ("items",),
    ("settings", "bootstrap"),
    ("cases", 0, "case_id"),
    ("cases", 0, "calibration", 1, "threshold"),
    ("cases", 0, "budgets", 1, "auroc_drop"),
    ("cases", 0, "budgets", 1, "intervals"),
    ("cases", 0, "images", 0, "label"),
    ("cases", 0, "images", 0, "attacked", "8/255", "probability"),
    ("items", 0, "outcome"),
    ("items", 0, "comparison"),
]


@pytest.mark.parametrize("path", REQUIRED_FIELDS, ids=lambda path: "/".join(str(part) for part in path))
def test_missing_required_field_fails(
    real_report: dict[str, Any], validator: Draft202012Validator, path: tuple[str | int, ...]
) -> None:
    _delete(real_report, path)
    failures = list(validator.iter_errors(real_report))
    assert failures, f"the report without {path} passed validation"
    assert "required" in {error.validator for error in failures}


@pytest.mark.parametrize("version", [1, 3, "2", None, 2.5])
def test_other_schema_version_fails(
    real_report: dict[str, Any], validator: Draft202012Validator, version: object
) -> None:
    real_report["schema_version"] = version
    failures = list(validator.iter_errors(real_report))
    assert [list(error.absolute_path) for error in failures] == [["schema_version"]]


def test_other_schema_name_fails(real_report: dict[str, Any], validator: Draft202012Validator) -> None:
    real_report["schema"] = "pytest-adrobust-baseline"
    assert not validator.is_valid(real_report)


INVALID_VALUES = [
    (("items", 0, "outcome"), "error"),
    (("items", 0, "gate"), "band"),
    (("cases", 0, "cache"), "warm"),
    (("cases", 0, "attack"), "pgd"),
    (("cases", 0, "selection"), "best"),
    (("cases", 0, "images", 0, "label"), 2),
    (("cases", 0, "images", 0, "fold"), 2),
    (("cases", 0, "budgets", 1, "auroc"), "0.5"),
    (("cases", 0, "budgets", 1, "auroc"), 1.5),
    (("cases", 0, "budgets", 1, "intervals", "auroc"), [0.5]),
    (("cases", 0, "budgets", 1, "intervals", "auroc"), [0.1, 0.5, 0.9]),
    (("cases", 0, "budgets", 1, "intervals", "auroc"), ["low", "high"]),
    (("cases", 0, "calibration"), []),
    (("cases", 0, "calibration", 0, "applies_to_fold"), 1),
    (("settings", "batch_size"), "large"),
    (("settings", "confidence"), 1.0),
    (("items", 0, "comparison"), {"baseline": "main", "status": "skipped", "checks": [], "message": ""}),
]


@pytest.mark.parametrize(
    ("path", "value"),
    [pytest.param(path, value, id=f"{'/'.join(str(part) for part in path)}={value!r}") for path, value in INVALID_VALUES],
)
def test_invalid_value_fails(
    real_report: dict[str, Any], validator: Draft202012Validator, path: tuple[str | int, ...], value: object
) -> None:
    _set(real_report, path, value)
    assert not validator.is_valid(real_report)


def test_null_for_non_finite_passes(real_report: dict[str, Any], validator: Draft202012Validator) -> None:
    budget = real_report["cases"][0]["budgets"][1]
    budget["mannwhitney_p"] = None
    budget["intervals"]["auroc"] = [None, None]
    real_report["cases"][0]["images"][0]["attacked"]["8/255"]["score"] = None
    real_report["cases"][0]["calibration"][0]["platt_slope"] = None
    assert _errors(validator, real_report) == []


def test_unknown_fields_pass(real_report: dict[str, Any], validator: Draft202012Validator) -> None:
    # Later releases add fields without a new schema_version, so readers and the schema accept them.
    real_report["summary"] = {"failed": 1}
    real_report["cases"][0]["median_score"] = 0.3
    real_report["items"][0]["duration"] = 1.5
    assert _errors(validator, real_report) == []


def test_comparison_records_satisfy_schema(real_report: dict[str, Any], validator: Draft202012Validator) -> None:
    metrics = {name: value for name, value in real_report["cases"][0]["budgets"][1].items() if name != "intervals"}
    fingerprint = {"backbone": "tiny-vit", "eps": "8/255"}
    tolerances = parse_tolerances("auroc_drop:+0.5 auroc:-2%")
    comparisons = {
        "new": compare_item(None, fingerprint, metrics, tolerances, "main"),
        "refused": compare_item({"fingerprint": {**fingerprint, "eps": "4/255"}, "metrics": metrics}, fingerprint, metrics, tolerances, "main"),
        "ok": compare_item({"fingerprint": fingerprint, "metrics": metrics}, fingerprint, metrics, tolerances, "main"),
        "shown": compare_item({"fingerprint": fingerprint, "metrics": metrics}, fingerprint, metrics, (), "main"),
        "regressed": compare_item(
            {"fingerprint": fingerprint, "metrics": {**metrics, "auroc_drop": -1.0}}, fingerprint, metrics, tolerances, "main"
        ),
        "non-finite": compare_item(
            {"fingerprint": fingerprint, "metrics": {**metrics, "auroc": None}}, fingerprint, metrics, tolerances, "main"
        ),
    }

    for name, comparison in comparisons.items():
        real_report["items"][0]["comparison"] = comparison
        assert _errors(validator, real_report) == [], name
    assert [comparison["status"] for comparison in comparisons.values()] == ["new", "refused", "ok", "ok", "regressed", "regressed"]


def test_reference_names_every_field(schema: dict[str, Any]) -> None:
    reference = REFERENCE_PATH.read_text(encoding="utf-8")
    missing = sorted(name for name in _property_names(schema) if f"`{name}`" not in reference)
    assert missing == []


def test_reference_recipe_reproduces_metrics(real_report: dict[str, Any]) -> None:
    recompute_budget = _reference_code()["recompute_budget"]
    n_bins = real_report["conventions"]["ece_bins"]
    case = real_report["cases"][0]

    for budget in case["budgets"]:
        recomputed = recompute_budget(case, budget["eps_text"], n_bins)
        for name, value in recomputed.items():
            assert value == pytest.approx(budget[name], abs=1e-9), f"{name} at eps {budget['eps_text']}"


def test_reference_recipe_reproduces_intervals(real_report: dict[str, Any]) -> None:
    recompute_intervals = _reference_code()["recompute_intervals"]
    n_bins = real_report["conventions"]["ece_bins"]
    case = real_report["cases"][0]

    for budget in case["budgets"]:
        recomputed = recompute_intervals(case, budget["eps_text"], n_bins)
        assert sorted(recomputed) == sorted(budget["intervals"])
        for name, bounds in recomputed.items():
            assert bounds == pytest.approx(budget["intervals"][name], abs=1e-9), f"{name} at eps {budget['eps_text']}"
