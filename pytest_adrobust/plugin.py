"""pytest hooks and fixtures of the adrobust plugin.

The hooks only wire pytest to :class:`~pytest_adrobust.session.AdrobustSession`, which owns the
run's state; option parsing lives in :mod:`pytest_adrobust.settings`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from pytest_adrobust.cache import ScoreCache
from pytest_adrobust.case import CaseResult
from pytest_adrobust.data import expand_dataset_spec
from pytest_adrobust.detectors import AnomalyDINO, Detector
from pytest_adrobust.detectors.base import validate_detector
from pytest_adrobust.errors import AdrobustError, AdrobustUsageError
from pytest_adrobust.progress import RichProgress, SilentProgress
from pytest_adrobust.report import build_report, write_json_atomic
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

SESSION_PLUGIN_NAME = "adrobust-session"
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
        group.addoption(
            option.flag,
            dest=f"adrobust_{option.name}",
            default=None,
            metavar=option.metavar,
            help=f"{option.help} (default: {_default_text(option.default)})",
        )
        parser.addini(option.ini, f"{option.help} (default: {_default_text(option.default)})", default="")


def _configured_values(config: pytest.Config) -> dict[str, Any]:
    """Resolve every setting from the command line, then the ini file, then the defaults."""
    # Only options that were given enter the sources, so that a value such as "all" (parsed to
    # None) still takes precedence over the ini file and the default.
    cli = {option.name: config.getoption(f"adrobust_{option.name}") for option in OPTIONS}
    cli = {name: value for name, value in cli.items() if value is not None}
    ini = {option.name: config.getini(option.ini) for option in OPTIONS}
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    values = _configured_values(config)
    try:
        resolve_device(values["device"])
    except AdrobustError as error:
        raise AdrobustUsageError(f"--adrobust-device: {error}") from None
    session = AdrobustSession(run_settings(values), values)
    config.pluginmanager.register(AdrobustPlugin(config, session), SESSION_PLUGIN_NAME)


def _session(config: pytest.Config) -> AdrobustSession:
    plugin = config.pluginmanager.get_plugin(SESSION_PLUGIN_NAME)
    assert isinstance(plugin, AdrobustPlugin), "the adrobust plugin was not configured"
    return plugin.session


class AdrobustPlugin:
    """Hooks that need the run's state; registered on the config by ``pytest_configure``."""

    def __init__(self, config: pytest.Config, session: AdrobustSession) -> None:
        self.config = config
        self.session = session

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

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.session.record_outcome(report)

    def _xdist(self) -> str | None:
        """Return ``worker`` or ``controller`` under pytest-xdist, else ``None``."""
        if hasattr(self.config, "workerinput"):
            return "worker"
        if getattr(self.config.option, "numprocesses", None) or getattr(self.config.option, "dist", "no") != "no":
            return "controller"
        return None

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # NOTE: results are not yet sent from xdist workers to the controller, so a worker writes
        # no report rather than several workers overwriting one file with partial results.
        if self._xdist() == "worker":
            return
        path = self.session.run.report
        if path is None or not self.session.evaluations:
            return
        data = build_report(self.session, time.time() - self.session.started)
        self.session.report_replaced = write_json_atomic(path, data)
        self.session.report_written = path

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._xdist() == "controller":
            terminalreporter.write_sep("=", "adrobust summary")
            terminalreporter.write_line(
                "results stay on the pytest-xdist workers: run without -n for the adrobust summary and report"
            )
            return
        if not self.session.evaluations:
            return
        plain = not terminalreporter.isatty() or self.config.getoption("color", "auto") == "no"
        text = render_summary(self.session, terminalreporter._tw.fullwidth, plain)
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
        return _session(request.config).case_result(detector, param, request.node)
    except AdrobustError as error:
        failure = str(error)
    pytest.fail(failure, pytrace=False)


@pytest.fixture(scope="session")
def adrobust_report(request: pytest.FixtureRequest) -> Iterator[AdrobustSession]:
    """Return the run's state: every evaluation so far, the item outcomes and the report path."""
    yield _session(request.config)
