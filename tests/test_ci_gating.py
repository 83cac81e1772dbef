"""CI gating through pytester: baselines, comparisons, interval gate, determinism, xdist and outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest

from pytest_adrobust.plugin import check_separated_values
from pytest_adrobust.report import SCHEMA_VERSION
from tests.synthetic import TINY_DETECTOR_CONFTEST, write_parts_dataset

pytest_plugins = ["pytester"]

SUITE_TEST = """
import pytest

@pytest.mark.adrobust(max_auroc_drop=0.9)
def test_robust(adrobust_case):
    adrobust_case.check()
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Return a pytester directory with two generated datasets, the tiny detector and a test."""
    write_parts_dataset(pytester.path / "parts")
    write_parts_dataset(pytester.path / "gears", seed=1)
    pytester.makeconftest(TINY_DETECTOR_CONFTEST)
    pytester.makeini(
        """
        [pytest]
        adrobust_datasets = folder:parts
        adrobust_eps = 0, 4/255, 8/255
        adrobust_shots = 2
        adrobust_max_images = 6
        adrobust_device = cpu
        adrobust_bootstrap = 200
        """
    )
    pytester.makepyfile(test_suite=SUITE_TEST)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A subprocess keeps each run's torch state and plugin registration apart.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """Return a report without what differs between equal runs: dates, timings and cache state."""
    data = json.loads(json.dumps(report))
    for name in ("created", "duration_seconds"):
        data.pop(name)
    for case in data["cases"]:
        case.pop("seconds")
        case.pop("cache")
    return data


def baseline_file(pytester: pytest.Pytester, name: str = "baseline") -> Path:
    return pytester.path / ".adrobust" / f"{name}.json"


# Baselines: save, refuse to overwrite, compare, fail on regressions.


def test_save_writes_baseline_per_item(suite: pytest.Pytester) -> None:
    result = run(suite, "--adrobust-save")

    assert result.ret == 0
    data = json.loads(baseline_file(suite).read_text())
    assert data["schema"] == "pytest-adrobust-baseline"
    assert sorted(data["items"]) == [
        "test_suite.py::test_robust[folder-parts-2shot-eps0]",
        "test_suite.py::test_robust[folder-parts-2shot-eps4/255]",
        "test_suite.py::test_robust[folder-parts-2shot-eps8/255]",
    ]
    entry = data["items"]["test_suite.py::test_robust[folder-parts-2shot-eps4/255]"]
    assert entry["fingerprint"]["eps"] == "4/255"
    assert entry["fingerprint"]["weights"] == "random-init (seed 0)"
    assert 0.0 <= entry["metrics"]["auroc"] <= 1.0
    assert len(entry["intervals"]["auroc"]) == 2
    result.stdout.fnmatch_lines(["baseline 'baseline' saved: *baseline.json (3 items)"])


def test_save_refuses_existing_baseline(suite: pytest.Pytester) -> None:
    assert run(suite, "--adrobust-save=main").ret == 0
    before = baseline_file(suite, "main").read_bytes()

    result = run(suite, "--adrobust-save=main")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baseline 'main' exists at *main.json*--adrobust-overwrite*"])
    assert baseline_file(suite, "main").read_bytes() == before


def test_save_overwrite_replaces_baseline(suite: pytest.Pytester) -> None:
    assert run(suite, "--adrobust-save=main").ret == 0
    baseline = baseline_file(suite, "main")
    data = json.loads(baseline.read_text())
    data["created"] = "2000-01-01T00:00:00+00:00"
    baseline.write_text(json.dumps(data))

    result = run(suite, "--adrobust-save=main", "--adrobust-overwrite")

    assert result.ret == 0
    assert json.loads(baseline.read_text())["created"] != "2000-01-01T00:00:00+00:00"
    result.stdout.fnmatch_lines(["baseline 'main' replaced: *"])


def test_compare_same_run_passes(suite: pytest.Pytester) -> None:
    assert run(suite, "--adrobust-save").ret == 0

    result = run(suite, "--adrobust-compare", "--adrobust-compare-fail", "auroc_drop:+0.0 ece:+0.0 auroc:-0%")

    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["baseline 'baseline': 3 ok"])


def test_compare_fail_fails_regressed_items(suite: pytest.Pytester, tmp_path: Path) -> None:
    assert run(suite, "--adrobust-save").ret == 0
    # The baseline claims a 0.05 smaller drop at 8/255 than this detector has: a regression.
    baseline = baseline_file(suite)
    data = json.loads(baseline.read_text())
    regressed = "test_suite.py::test_robust[folder-parts-2shot-eps8/255]"
    measured = data["items"][regressed]["metrics"]["auroc_drop"]
    data["items"][regressed]["metrics"]["auroc_drop"] = measured - 0.05
    baseline.write_text(json.dumps(data))
    report_path = tmp_path / "report.json"

    result = run(suite, "--adrobust-compare", "--adrobust-compare-fail=auroc_drop:+0.02", f"--adrobust-report={report_path}")

    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*auroc_drop regressed against baseline 'baseline': baseline {measured - 0.05:.4f}, "
            f"current {measured:.4f}, delta +0.0500, tolerance +0.02",
        ]
    )
    items = {item["nodeid"]: item for item in json.loads(report_path.read_text())["items"]}
    assert items[regressed]["comparison"]["status"] == "regressed"
    assert items[regressed]["outcome"] == "failed"


def test_compare_fail_relative_tolerance(suite: pytest.Pytester) -> None:
    assert run(suite, "--adrobust-save").ret == 0
    baseline = baseline_file(suite)
    data = json.loads(baseline.read_text())
    item = "test_suite.py::test_robust[folder-parts-2shot-eps4/255]"
    data["items"][item]["metrics"]["auroc"] *= 1.10
    baseline.write_text(json.dumps(data))

    lenient = run(suite, "--adrobust-compare", "--adrobust-compare-fail=auroc:-15%")
    strict = run(suite, "--adrobust-compare", "--adrobust-compare-fail=auroc:-5%")

    lenient.assert_outcomes(passed=3)
    strict.assert_outcomes(passed=2, failed=1)


def test_compare_refuses_other_settings(suite: pytest.Pytester) -> None:
    assert run(suite, "--adrobust-save").ret == 0

    result = run(suite, "--adrobust-compare", "--adrobust-seed=1")

    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*baseline 'baseline' was made with other settings or weights*seed: baseline 0, this run 1*"])


def test_compare_refuses_changed_dataset(suite: pytest.Pytester) -> None:
    assert run(suite, "--adrobust-save").ret == 0
    image = sorted((suite.path / "parts" / "good").iterdir())[0]
    image.write_bytes(sorted((suite.path / "parts" / "good").iterdir())[1].read_bytes())

    result = run(suite, "--adrobust-compare")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*selected image files (the files changed*: baseline *"])


def test_compare_new_item_is_not_failed(suite: pytest.Pytester) -> None:
    assert run(suite, "--adrobust-save").ret == 0

    result = run(suite, "--adrobust-compare", "--adrobust-compare-fail=auroc_drop:+0.02", "--adrobust-eps=0,4/255,8/255,16/255")

    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["baseline 'baseline': 1 new, 3 ok"])


def test_compare_fail_fails_run_that_compared_nothing(suite: pytest.Pytester) -> None:
    assert run(suite, "--adrobust-save").ret == 0

    # Shots are part of each item id, so a changed shot count matches no baseline item.
    result = run(suite, "--adrobust-compare", "--adrobust-compare-fail=auroc_drop:+0.02", "--adrobust-shots=3")

    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert (
        "baseline 'baseline': 3 of its items did not run, such as 'test_suite.py::test_robust[folder-parts-2shot-eps0]'"
        in result.stdout.str()
    )
    result.stdout.fnmatch_lines(
        ["*--adrobust-compare-fail compared nothing: none of the 3 items of this run is in baseline 'baseline'*"]
    )


XFAIL_TEST = """
import pytest

@pytest.mark.xfail(strict=True, reason="ECE is never exactly 0 on a handful of images")
@pytest.mark.adrobust(max_ece=0.0)
def test_fragile(adrobust_case):
    adrobust_case.check()
"""


def test_compare_fail_fails_regressed_xfail_item(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_suite=XFAIL_TEST)
    assert run(suite, "--adrobust-save", "-k", "eps8").ret == 0
    unchanged = run(suite, "--adrobust-compare", "--adrobust-compare-fail=auroc_drop:+0.02", "-k", "eps8")
    baseline = baseline_file(suite)
    data = json.loads(baseline.read_text())
    data["items"]["test_suite.py::test_fragile[folder-parts-2shot-eps8/255]"]["metrics"]["auroc_drop"] -= 0.05
    baseline.write_text(json.dumps(data))

    result = run(suite, "--adrobust-compare", "--adrobust-compare-fail=auroc_drop:+0.02", "-k", "eps8")

    unchanged.assert_outcomes(xfailed=1)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*auroc_drop regressed against baseline*(xfail does not excuse a change against the baseline)*"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "*baseline *baseline.json* is not readable JSON*"),
        ('{"schema": "pytest-adrobust-report", "schema_version": 2}', "*is not a pytest-adrobust baseline*"),
        ('{"schema": "pytest-adrobust-baseline", "schema_version": 99, "items": {}}', "*has schema version 99*"),
    ],
)
def test_compare_rejects_bad_baseline(suite: pytest.Pytester, content: str, message: str) -> None:
    baseline_file(suite).parent.mkdir()
    baseline_file(suite).write_text(content)

    result = run(suite, "--adrobust-compare")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_compare_missing_baseline_is_usage_error(suite: pytest.Pytester) -> None:
    result = run(suite, "--adrobust-compare=main")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baseline *main.json* not found: create it with --adrobust-save main*"])


def test_compare_fail_needs_compare(suite: pytest.Pytester) -> None:
    result = run(suite, "--adrobust-compare-fail=auroc_drop:+0.02")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--adrobust-compare-fail needs a baseline to compare with*"])


def test_compare_fail_rejects_bad_expression(suite: pytest.Pytester) -> None:
    result = run(suite, "--adrobust-compare", "--adrobust-compare-fail=auroc_drop:0.02")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid tolerance 'auroc_drop:0.02'*"])


def test_separated_path_value_is_usage_error(suite: pytest.Pytester) -> None:
    (suite.path / "report.json").write_text("{}")

    result = run(suite, "--adrobust-report", "report.json")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--adrobust-report 'report.json': pytest picks its rootdir*Write --adrobust-report=report.json"])


def test_optional_name_before_test_path_is_usage_error(suite: pytest.Pytester) -> None:
    result = run(suite, "--adrobust-compare", "test_suite.py")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*Write --adrobust-compare=test_suite.py, or put the test path before --adrobust-compare"])


def test_overlong_value_is_not_a_path(tmp_path: Path) -> None:
    # A name longer than the file system allows makes stat raise OSError instead of reporting no file.
    check_separated_values(["--adrobust-compare-fail", "auroc:-2% " * 40], tmp_path)


def test_no_unknown_mark_warning_without_xdist(suite: pytest.Pytester) -> None:
    result = run(suite, "-p", "no:xdist", "-k", "eps0")

    result.assert_outcomes(passed=1)
    assert "xdist_group" not in result.stdout.str()


# Statistics: determinism and the interval gate.


def test_ten_runs_give_identical_metrics(suite: pytest.Pytester, tmp_path: Path) -> None:
    reports = []
    for index in range(10):
        path = tmp_path / f"report-{index}.json"
        assert run(suite, "--adrobust-cache=off", f"--adrobust-report={path}").ret == 0
        reports.append(comparable(json.loads(path.read_text())))

    for report in reports[1:]:
        assert report == reports[0]
    assert reports[0]["cases"][0]["budgets"][1]["intervals"]["auroc"][0] < reports[0]["cases"][0]["budgets"][1]["auroc"]


UNMARKED_TEST = """
def test_robust(adrobust_case):
    adrobust_case.check()
"""


def _measured_drop(suite: pytest.Pytester, tmp_path: Path) -> tuple[float, list[float]]:
    # Without a marker, thresholds come from the command line.
    suite.makepyfile(test_suite=UNMARKED_TEST)
    path = tmp_path / "measured.json"
    assert run(suite, "--adrobust-max-auroc-drop=1", f"--adrobust-report={path}").ret == 0
    budget = json.loads(path.read_text())["cases"][0]["budgets"][2]
    assert budget["eps_text"] == "8/255"
    return budget["auroc_drop"], budget["intervals"]["auroc_drop"]


def test_interval_gate_passes_model_at_limit(suite: pytest.Pytester, tmp_path: Path) -> None:
    drop, interval = _measured_drop(suite, tmp_path)
    # A model whose true drop equals the limit measures just above it about half of the time.
    limit = f"--adrobust-max-auroc-drop={drop - 1e-6:.6f}"

    point = run(suite, limit, "-k", "eps8")
    gated = run(suite, limit, "--adrobust-gate=interval", "-k", "eps8")

    assert interval[0] < drop - 1e-6
    point.assert_outcomes(failed=1)
    gated.assert_outcomes(passed=1)


def test_interval_gate_fails_interval_beyond_limit(suite: pytest.Pytester, tmp_path: Path) -> None:
    suite.makepyfile(test_suite=UNMARKED_TEST)
    path = tmp_path / "measured.json"
    assert run(suite, "--adrobust-max-auroc-drop=1", f"--adrobust-report={path}").ret == 0
    low, _ = json.loads(path.read_text())["cases"][0]["budgets"][1]["intervals"]["ece"]
    assert low > 0.0

    result = run(suite, f"--adrobust-max-ece={low / 2:.6f}", "--adrobust-gate=interval", "-k", "eps4")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*calibrated ECE * exceeds max_ece * (noise floor *, 95% CI [[]*]; gate interval*"])


def test_interval_gate_needs_bootstrap(suite: pytest.Pytester) -> None:
    result = run(suite, "--adrobust-gate=interval", "--adrobust-bootstrap=0", "--adrobust-max-auroc-drop=0.5")

    assert result.ret != 0
    result.stdout.fnmatch_lines(["*gate 'interval' needs bootstrap confidence intervals but bootstrap is 0*"])


def test_summary_shows_intervals_and_floor(suite: pytest.Pytester) -> None:
    result = run(suite)

    result.stdout.fnmatch_lines(
        [
            "*ECE cal | ECE floor |*",
            "|CI *|*..*|",
            "CI: 95% percentile intervals from 200 stratified bootstrap resamples*",
        ]
    )


# pytest-xdist: the same report as a serial run, one summary.


def test_xdist_report_equals_serial(suite: pytest.Pytester, tmp_path: Path) -> None:
    suite.makeini(
        """
        [pytest]
        adrobust_datasets = folder:parts, folder:gears
        adrobust_eps = 0, 4/255, 8/255
        adrobust_shots = 2
        adrobust_max_images = 6
        adrobust_device = cpu
        adrobust_bootstrap = 200
        """
    )
    serial_path = tmp_path / "serial.json"
    xdist_path = tmp_path / "xdist.json"

    serial = run(suite, f"--adrobust-report={serial_path}")
    distributed = run(suite, "-n", "2", "--dist", "loadgroup", "-v", f"--adrobust-report={xdist_path}")

    assert serial.ret == 0
    assert distributed.ret == 0
    assert comparable(json.loads(xdist_path.read_text())) == comparable(json.loads(serial_path.read_text()))
    output = distributed.stdout.str()
    assert output.count("adrobust summary") == 1
    assert "pytest-xdist: results of 2 workers merged" in output
    # Each case ran on one worker, so its clean pass was computed once.
    workers: dict[str, set[str]] = {}
    for line in distributed.stdout.lines:
        if "PASSED" in line and line.startswith("[gw"):
            worker = line.split("]")[0].strip("[")
            workers.setdefault("gears" if "gears" in line else "parts", set()).add(worker)
    assert {name: len(found) for name, found in workers.items()} == {"gears": 1, "parts": 1}


def test_xdist_compare_fails_regression(suite: pytest.Pytester) -> None:
    assert run(suite, "--adrobust-save").ret == 0
    baseline = baseline_file(suite)
    data = json.loads(baseline.read_text())
    for entry in data["items"].values():
        entry["metrics"]["auroc"] += 0.2
    baseline.write_text(json.dumps(data))

    result = run(suite, "-n", "2", "--dist", "loadgroup", "--adrobust-compare", "--adrobust-compare-fail=auroc:-0.1")

    result.assert_outcomes(failed=3)
    assert result.stdout.str().count("adrobust summary") == 1


def test_xdist_saves_baseline_once(suite: pytest.Pytester) -> None:
    result = run(suite, "-n", "2", "--dist", "loadgroup", "--adrobust-save")

    assert result.ret == 0
    assert len(json.loads(baseline_file(suite).read_text())["items"]) == 3
    result.stdout.fnmatch_lines(["baseline 'baseline' saved: *(3 items)"])


# Reports: Markdown step summary, JUnit properties, merge command, plots.


def test_step_summary_appends_markdown(suite: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))

    assert run(suite).ret == 0

    text = summary.read_text()
    assert text.startswith("earlier step\n## adrobust summary")
    assert "| eps | AUROC | drop |" in text
    assert "| 4/255 | " in text
    assert "### folder-parts 2-shot, attack score" in text


def test_junit_properties_hold_metrics(suite: pytest.Pytester, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    report_path = tmp_path / "report.json"

    assert run(suite, f"--junitxml={junit}", "--adrobust-junit-properties", f"--adrobust-report={report_path}").ret == 0

    budgets = {budget["eps_text"]: budget for budget in json.loads(report_path.read_text())["cases"][0]["budgets"]}
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    properties = {
        case.get("name"): {prop.get("name"): prop.get("value") for prop in case.iter("property")} for case in cases
    }
    recorded = properties["test_robust[folder-parts-2shot-eps4/255]"]
    assert float(recorded["adrobust_auroc"]) == pytest.approx(budgets["4/255"]["auroc"], rel=1e-5)
    assert float(recorded["adrobust_ece_floor"]) == pytest.approx(budgets["4/255"]["ece_floor"], rel=1e-5)
    assert len(recorded["adrobust_auroc_ci"].split()) == 2


def test_junit_properties_off_by_default(suite: pytest.Pytester, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"

    assert run(suite, f"--junitxml={junit}").ret == 0

    assert not list(ElementTree.parse(junit).getroot().iter("property"))


def _merge(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_adrobust", "merge", *map(str, args)], capture_output=True, text=True, check=False
    )


def test_merge_shards_equals_single_run(suite: pytest.Pytester, tmp_path: Path) -> None:
    suite.makeini(
        """
        [pytest]
        adrobust_datasets = folder:parts, folder:gears
        adrobust_eps = 0, 4/255, 8/255
        adrobust_shots = 2
        adrobust_max_images = 6
        adrobust_device = cpu
        adrobust_bootstrap = 200
        """
    )
    whole, first, second, merged = (tmp_path / f"{name}.json" for name in ("whole", "first", "second", "merged"))
    assert run(suite, f"--adrobust-report={whole}").ret == 0
    assert run(suite, "-k", "parts", f"--adrobust-report={first}").ret == 0
    assert run(suite, "-k", "gears", f"--adrobust-report={second}").ret == 0

    result = _merge(first, second, "-o", merged, "--plain")

    assert result.returncode == 0, result.stderr
    assert comparable(json.loads(merged.read_text())) == comparable(json.loads(whole.read_text()))
    assert "folder-parts 2-shot, attack score" in result.stdout
    assert "folder-gears 2-shot, attack score" in result.stdout
    assert f"merged 2 reports: {first}, {second}" in result.stdout


def test_merge_rejects_other_settings(suite: pytest.Pytester, tmp_path: Path) -> None:
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    assert run(suite, f"--adrobust-report={first}").ret == 0
    assert run(suite, "--adrobust-bootstrap=100", f"--adrobust-report={second}").ret == 0

    result = _merge(first, second)

    assert result.returncode == 2
    assert "cannot merge" in result.stderr
    assert "bootstrap: 200 vs 100" in result.stderr


def test_merge_rejects_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"schema": "something-else"}))

    result = _merge(path)

    assert result.returncode == 2
    assert "is not a pytest-adrobust report" in result.stderr


def test_merge_rejects_other_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"schema": "pytest-adrobust-report", "schema_version": SCHEMA_VERSION - 1}))

    result = _merge(path)

    assert result.returncode == 2
    assert f"reads version {SCHEMA_VERSION}" in result.stderr


def test_plots_written_next_to_report(suite: pytest.Pytester, tmp_path: Path) -> None:
    plots = tmp_path / "plots"

    result = run(suite, f"--adrobust-plots={plots}", "--adrobust-plots-format=svg")

    assert result.ret == 0
    names = sorted(path.name for path in plots.iterdir())
    assert names == [
        "auroc-vs-eps-folder-parts.svg",
        "entropy-folder-parts-2shot-score.svg",
        "reliability-folder-parts-2shot-score.svg",
    ]
    result.stdout.fnmatch_lines([f"plots written: 3 SVG files in {plots}"])


def test_plots_path_is_file_is_usage_error(suite: pytest.Pytester, tmp_path: Path) -> None:
    path = tmp_path / "plots"
    path.write_text("")

    result = run(suite, f"--adrobust-plots={path}")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--adrobust-plots * is a file: give a directory*"])
