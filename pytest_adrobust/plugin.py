"""pytest hooks and fixtures of the adrobust plugin.

The hooks only wire pytest to :class:`~pytest_adrobust.session.AdrobustSession`, which owns the
run's state; option parsing lives in :mod:`pytest_adrobust.settings`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pytest_adrobust.baseline import baseline_path, compare_item, item_fingerprint, load_baseline
from pytest_adrobust.cache import ScoreCache
from pytest_adrobust.case import CaseResult
from pytest_adrobust.data import expand_dataset_spec
from pytest_adrobust.detectors import AnomalyDINO, Detector
from pytest_adrobust.detectors.base import validate_detector
from pytest_adrobust.errors import AdrobustError, AdrobustUsageError
from pytest_adrobust.progress import RichProgress, SilentProgress
from pytest_adrobust.outputs import OutputLog, write_outputs
from pytest_adrobust.report import build_report, case_header, detector_record, merge_reports
from pytest_adrobust.session import AdrobustSession, CaseParam, resolve_device
from pytest_adrobust.settings import (
    OPTIONS,
    anchor_dataset_specs,
    RunSettings,
    case_settings,
    check_marker_kwargs,
    resolve,
    run_settings,
)
from pytest_adrobust.summary import render_summary, summary_lines
from pytest_adrobust.xdist import make_group_scheduler

SESSION_PLUGIN_NAME = "adrobust-session"
WORKER_OUTPUT_KEY = "adrobust_report"
"""Key of a pytest-xdist worker's report (JSON text) in its ``workeroutput``."""
MARKER_HELP = (
    "adrobust(datasets=..., eps=..., shots=..., attack=..., seed=..., max_images=..., max_auroc_drop=..., "
    "max_ece=..., min_entropy_gap=...): settings and thresholds for the adrobust_case items of this test"
)


def _default_text(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return "not set" if value is None else str(value)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("adrobust", "adversarial robustness and calibration of anomaly detectors")
    for option in OPTIONS:
        help_text = f"{option.help} (default: {_default_text(option.default)})"
        if option.form == "flag":
            group.addoption(option.flag, dest=f"adrobust_{option.name}", action="store_const", const="true", help=help_text)
        elif option.form == "optional":
            group.addoption(
                option.flag,
                dest=f"adrobust_{option.name}",
                nargs="?",
                const=option.const,
                default=None,
                metavar=option.metavar,
                help=help_text,
            )
        else:
            group.addoption(option.flag, dest=f"adrobust_{option.name}", default=None, metavar=option.metavar, help=help_text)
        if option.has_ini:
            parser.addini(option.ini, help_text, default="")


def _configured_values(config: pytest.Config) -> dict[str, Any]:
    """Resolve every setting from the command line, then the ini file, then the defaults."""
    # Only options that were given enter the sources, so that a value such as "all" (parsed to
    # None) still takes precedence over the ini file and the default.
    cli = {option.name: config.getoption(f"adrobust_{option.name}") for option in OPTIONS}
    cli = {name: value for name, value in cli.items() if value is not None}
    ini = {option.name: config.getini(option.ini) for option in OPTIONS if option.has_ini}
    ini = {name: value for name, value in ini.items() if value}
    if "datasets" in cli:
        cli["datasets"] = anchor_dataset_specs(cli["datasets"], config.invocation_params.dir)
    if "datasets" in ini:
        ini_dir = config.inipath.parent if config.inipath is not None else config.rootpath
        ini["datasets"] = anchor_dataset_specs(ini["datasets"], ini_dir)
    try:
        return resolve([cli, ini], ["{flag}", "ini key {ini}"])
    except AdrobustError as error:
        raise AdrobustUsageError(str(error)) from None


OPTIONAL_VALUE_FLAGS = frozenset(option.flag for option in OPTIONS if option.form == "optional")
"""Options whose value may be left out, so that a test path after them is taken for the value."""


def check_separated_values(args: list[str], invocation_dir: Path) -> None:
    """Reject ``--adrobust-OPTION VALUE`` where VALUE names an existing path.

    pytest chooses its rootdir and ini file before it loads plugins, so at that point it does not
    know this plugin's options and takes such a VALUE for a test path. A run would then silently
    use another configuration file, or an optional NAME would swallow a test path.

    Raises
    ------
    AdrobustError
        Naming the option, the value and the ``=`` form that avoids the problem.
    """
    value_flags = {option.flag for option in OPTIONS if option.form != "flag"}
    for flag, value in zip(args, args[1:]):
        if flag not in value_flags or value.startswith("-"):
            continue
        if value == "" or _is_existing_path(invocation_dir / value):
            raise AdrobustError(
                f"{flag} {value!r}: pytest picks its rootdir and ini file before plugins load and takes an "
                f"existing path after a space for a test path, so this run would read another configuration. "
                f"Write {flag}={value}" + (
                    f", or put the test path before {flag}" if flag in OPTIONAL_VALUE_FLAGS else ""
                )
            )


def _is_existing_path(path: Path) -> bool:
    # A value such as a long tolerance list is no path at all: stat rejects it with OSError or ValueError.
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    args = [str(arg) for arg in config.invocation_params.args]
    try:
        check_separated_values(shlex.split(os.environ.get("PYTEST_ADDOPTS", "")) + args, config.invocation_params.dir)
    except AdrobustError as error:
        raise AdrobustUsageError(str(error)) from None
    values = _configured_values(config)
    try:
        resolve_device(values["device"])
    except AdrobustError as error:
        raise AdrobustUsageError(f"--adrobust-device: {error}") from None
    run = run_settings(values)
    if not run.baseline_dir.is_absolute():
        run = dataclasses.replace(run, baseline_dir=config.rootpath / run.baseline_dir)
    session = AdrobustSession(run, values)
    plugin = AdrobustPlugin(config, session)
    try:
        plugin.check_outputs()
    except AdrobustError as error:
        raise AdrobustUsageError(str(error)) from None
    config.pluginmanager.register(plugin, SESSION_PLUGIN_NAME)


def _session(config: pytest.Config) -> AdrobustSession:
    plugin = config.pluginmanager.get_plugin(SESSION_PLUGIN_NAME)
    assert isinstance(plugin, AdrobustPlugin), "the adrobust plugin was not configured"
    return plugin.session


class AdrobustPlugin:
    """Hooks that need the run's state; registered on the config by ``pytest_configure``."""

    def __init__(self, config: pytest.Config, session: AdrobustSession) -> None:
        self.config = config
        self.session = session
        self.baseline: dict[str, Any] | None = None
        self.worker_reports: list[dict[str, Any]] = []
        self.outputs = OutputLog()
        self.report_data: dict[str, Any] | None = None

    def check_outputs(self) -> None:
        """Check the baseline, comparison and plot options before any test runs.

        Raises
        ------
        AdrobustError
            When a comparison has no baseline to compare with, the baseline is unreadable or
            foreign, a baseline would be overwritten without ``--adrobust-overwrite``, or plots
            are requested without matplotlib.
        """
        run = self.session.run
        if run.compare_fail and run.compare is None:
            raise AdrobustError(
                "--adrobust-compare-fail needs a baseline to compare with: add --adrobust-compare NAME"
            )
        if run.compare is not None:
            self.baseline = load_baseline(baseline_path(run.baseline_dir, run.compare))
        # Workers neither save baselines nor draw plots: the controller does, once.
        if self._xdist() == "worker":
            return
        if run.save is not None:
            path = baseline_path(run.baseline_dir, run.save)
            if path.exists() and not run.overwrite:
                raise AdrobustError(
                    f"baseline {run.save!r} exists at {str(path)!r}: pass --adrobust-overwrite to replace it, or "
                    "save under another name"
                )
            if run.baseline_dir.exists() and not run.baseline_dir.is_dir():
                raise AdrobustError(f"--adrobust-baseline-dir {str(run.baseline_dir)!r} is a file: give a directory")
        if run.plots is not None:
            from pytest_adrobust.plots import require_matplotlib

            if run.plots.exists() and not run.plots.is_dir():
                raise AdrobustError(f"--adrobust-plots {str(run.plots)!r} is a file: give a directory")
            require_matplotlib()

    def _progress(self) -> None:
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        interactive = sys.stderr.isatty() and self.config.get_verbosity() >= 0
        if interactive and capture is not None:
            self.session.progress = RichProgress(capture.global_and_fixture_disabled)
        else:
            self.session.progress = SilentProgress()

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._progress()
        self.session.cache = self._score_cache()

    def _score_cache(self) -> ScoreCache | None:
        """Return the score cache the ``cache`` setting names, or ``None`` when caching is off."""
        setting = self.session.run.cache
        if setting == "off":
            return None
        if setting == "auto":
            # Without pytest's cache provider (-p no:cacheprovider) there is no agreed place to write.
            pytest_cache = getattr(self.config, "cache", None)
            return ScoreCache(pytest_cache.mkdir("adrobust")) if pytest_cache is not None else None
        return ScoreCache(Path(setting))

    @pytest.hookimpl(tryfirst=True)
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "adrobust_case" not in metafunc.fixturenames:
            return
        # Markers closer to the test win: a method's marker beats its class's and module's.
        marker_values: dict[str, Any] = {}
        for marker in reversed(list(metafunc.definition.iter_markers("adrobust"))):
            if marker.args:
                pytest.fail(
                    f"{metafunc.definition.nodeid}: the adrobust marker takes keyword arguments only, got {marker.args!r}",
                    pytrace=False,
                )
            marker_values.update(marker.kwargs)
        failure = None
        try:
            check_marker_kwargs(marker_values)
            if "datasets" in marker_values:
                marker_values["datasets"] = anchor_dataset_specs(marker_values["datasets"], self.config.rootpath)
            values = resolve([marker_values, self.session.defaults], ["adrobust marker", "{flag}"])
            settings = case_settings(values)
            # mvtec:all@ROOT and visa:all@ROOT stand for every category found under ROOT.
            expanded = [spec for text in settings.datasets for spec in expand_dataset_spec(text)]
            settings = dataclasses.replace(settings, datasets=tuple(dict.fromkeys(expanded)))
            self.session.validate_case(settings)
        except AdrobustError as error:
            failure = f"{metafunc.definition.nodeid}: {error}"
        if failure is not None:
            pytest.fail(failure, pytrace=False)

        params = [
            CaseParam(dataset, shots, eps, settings)
            for dataset in settings.datasets
            for shots in settings.shots
            for eps in settings.eps
        ]
        for param in params:
            self.session.plan(param)
        metafunc.parametrize("adrobust_case", params, ids=[self.session.case_id(p) for p in params], indirect=True)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # One worker per case: pytest-xdist's loadgroup sends items of one group to one worker,
        # so the clean pass of a dataset and shot count is not computed on two workers.
        if not self.config.pluginmanager.hasplugin("xdist"):
            return
        for item in items:
            callspec = getattr(item, "callspec", None)
            param = callspec.params.get("adrobust_case") if callspec is not None else None
            if isinstance(param, CaseParam):
                item.add_marker(pytest.mark.xdist_group(self.session.group_name(param)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.session.record_outcome(report)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        try:
            result = yield
        except BaseException:
            # A failed test still gets its comparison in the summary, but no second failure.
            self._compare(item)
            raise
        failure = self._compare(item)
        if failure:
            pytest.fail(failure, pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
        report: pytest.TestReport = yield
        # xfail excuses an item's own limits, which it is expected to cross, but not a change
        # against the baseline: a regressed or refused comparison fails the item all the same.
        if report.when == "call" and hasattr(report, "wasxfail"):
            record = self.session.items.get(item.nodeid)
            comparison = record.comparison if record is not None else None
            if comparison is not None and comparison["status"] in ("regressed", "refused"):
                report.outcome = "failed"
                report.longrepr = f"{comparison['message']} (xfail does not excuse a change against the baseline)"
                del report.wasxfail
        return report

    def _compare(self, item: pytest.Item) -> str | None:
        """Compare an item with the baseline; return the failure message when it must fail."""
        record = self.session.items.get(item.nodeid)
        if record is None or self.baseline is None:
            return None
        evaluation = self.session.evaluations.get(record.key)
        if evaluation is None or record.eps not in evaluation.budgets:
            return None
        run = self.session.run
        detector = detector_record(self.session.detectors[record.key.detector], None)
        fingerprint = item_fingerprint(case_header(evaluation), detector, str(record.eps))
        metrics = evaluation.budgets[record.eps].scalars()
        entry = self.baseline["items"].get(record.nodeid)
        comparison = compare_item(entry, fingerprint, metrics, run.compare_fail, run.compare or "")
        record.comparison = comparison
        if comparison["status"] == "refused" or comparison["status"] == "regressed":
            return comparison["message"]
        return None

    def _xdist(self) -> str | None:
        """Return ``worker`` or ``controller`` under pytest-xdist, else ``None``."""
        if hasattr(self.config, "workerinput"):
            return "worker"
        if getattr(self.config.option, "numprocesses", None) or getattr(self.config.option, "dist", "no") != "no":
            return "controller"
        return None

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "loadgroup":
            return None
        return make_group_scheduler(config, log)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        # Each pytest-xdist worker sends its report when it finishes; the controller merges them.
        output = getattr(node, "workeroutput", None) or {}
        text = output.get(WORKER_OUTPUT_KEY)
        if text:
            self.worker_reports.append(json.loads(text))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        role = self._xdist()
        if role == "worker":
            if self.session.evaluations or self.session.items:
                data = build_report(self.session, time.time() - self.session.started)
                self.config.workeroutput[WORKER_OUTPUT_KEY] = json.dumps(data)  # type: ignore[attr-defined]
            return
        if role == "controller":
            if not self.worker_reports:
                return
            try:
                self.report_data = merge_reports(self.worker_reports, [f"worker {index}" for index in range(len(self.worker_reports))])
            except AdrobustError as error:
                self.outputs.errors.append(f"the pytest-xdist workers' results could not be merged: {error}")
                return
            self.report_data["duration_seconds"] = round(time.time() - self.session.started, 3)
            self.outputs.notes.append(f"pytest-xdist: results of {len(self.worker_reports)} workers merged")
            if self.config.getvalue("dist") != "loadgroup":
                self.outputs.notes.append(
                    "pytest-xdist: add --dist loadgroup so that each case runs on one worker; other modes may "
                    "compute a case's clean pass on several workers"
                )
        else:
            if not self.session.evaluations:
                return
            self.report_data = build_report(self.session, time.time() - self.session.started)
        self._check_baseline_coverage(self.report_data)
        write_outputs(self.report_data, self.session.run, self.outputs)
        if self.outputs.errors and session.exitstatus == 0:
            # An output that could not be written, or a gate that compared nothing, must fail CI.
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _check_baseline_coverage(self, report: dict[str, Any]) -> None:
        """Name the baseline items this run did not match, and fail a gate that compared nothing.

        Item ids name the dataset, shot count and budget, so changing those settings turns every
        comparison into a new item, which does not fail on its own.
        """
        if self.baseline is None:
            return
        name = self.session.run.compare
        run_ids = {item["nodeid"] for item in report["items"]}
        unmatched = sorted(set(self.baseline["items"]) - run_ids)
        if unmatched:
            self.outputs.notes.append(
                f"baseline {name!r}: {len(unmatched)} of its items did not run, such as {unmatched[0]!r}; item ids "
                "name the dataset, shots and eps, so a changed setting makes new items instead of comparisons"
            )
        statuses = [item["comparison"]["status"] for item in report["items"] if item.get("comparison")]
        if self.session.run.compare_fail and statuses and all(status == "new" for status in statuses):
            self.outputs.errors.append(
                f"--adrobust-compare-fail compared nothing: none of the {len(statuses)} items of this run is in "
                f"baseline {name!r}. Restore the settings the baseline was saved with, or save a new one with "
                f"--adrobust-save {name} --adrobust-overwrite"
            )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._xdist() == "worker" or self.report_data is None:
            if self.outputs.errors:
                terminalreporter.write_sep("=", "adrobust summary")
                for line in self.outputs.errors:
                    terminalreporter.write_line(f"error: {line}", red=True)
            return
        plain = not terminalreporter.isatty() or self.config.getoption("color", "auto") == "no"
        text = render_summary(self.report_data, terminalreporter._tw.fullwidth, plain, self.outputs)
        terminalreporter.write_sep("=", "adrobust summary")
        for line in summary_lines(text):
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def adrobust_config(request: pytest.FixtureRequest) -> RunSettings:
    """Return the session-wide settings: device, backbone, weights, resolution, batch size and report path."""
    return _session(request.config).run


@pytest.fixture(scope="session")
def adrobust_device(adrobust_config: RunSettings) -> torch.device:
    """Return the device the detector runs on: CUDA when ``auto`` finds it, else the CPU."""
    try:
        return resolve_device(adrobust_config.device)
    except AdrobustError as error:
        raise AdrobustUsageError(str(error)) from None


@pytest.fixture(scope="session")
def adrobust_detector(adrobust_config: RunSettings, adrobust_device: torch.device) -> Detector:
    """Build the detector under test: AnomalyDINO with the configured backbone and weights.

    Override this fixture in a ``conftest.py`` to test another detector that implements
    :class:`pytest_adrobust.detectors.Detector`.
    """
    detector = AnomalyDINO(
        adrobust_config.backbone,
        weights=adrobust_config.weights,
        resolution=adrobust_config.resolution,
        device=adrobust_device,
    )
    detector.precision = adrobust_config.precision
    return detector


@pytest.fixture
def adrobust_case(request: pytest.FixtureRequest) -> CaseResult:
    """Return the metrics of one dataset, shot count and budget, which the plugin parametrizes."""
    param = getattr(request, "param", None)
    if not isinstance(param, CaseParam):
        raise AdrobustError("adrobust_case is parametrized by the adrobust plugin and cannot be requested indirectly here")

    # Problems with the detector or the data are the user's to fix, so they fail the item with
    # the message alone, because a traceback into torch or PIL would bury it.
    failure = None
    try:
        detector = request.getfixturevalue("adrobust_detector")
        validate_detector(detector)
        session = _session(request.config)
        result = session.case_result(detector, param, request.node)
        if session.run.junit_properties:
            record_metrics(request.node, result)
        return result
    except AdrobustError as error:
        failure = str(error)
    pytest.fail(failure, pytrace=False)


def record_metrics(item: pytest.Item, result: CaseResult) -> None:
    """Attach an item's metrics and their intervals to its JUnit XML ``<properties>``.

    pytest writes these properties whatever ``junit_family`` is set, but the xunit2 schema has no
    per-testcase properties, so pytest warns about ``record_property`` under xunit2; set
    ``junit_family = xunit1`` where a consumer validates against that schema.
    """
    item.user_properties.append(("adrobust_case", result.label))
    for name, value in result.metrics.scalars().items():
        item.user_properties.append((f"adrobust_{name}", f"{value:.6g}"))
    for name, (low, high) in sorted(result.metrics.intervals.items()):
        item.user_properties.append((f"adrobust_{name}_ci", f"{low:.6g} {high:.6g}"))


@pytest.fixture(scope="session")
def adrobust_report(request: pytest.FixtureRequest) -> Iterator[AdrobustSession]:
    """Return the run's state: every evaluation so far, the item outcomes and the report path."""
    yield _session(request.config)
