"""The files a run writes once it has finished: report, baseline, Markdown step summary and plots.

Every output is made from the report data alone, so the serial run, the pytest-xdist controller
(from its workers' merged reports) and ``python -m pytest_adrobust merge`` produce the same files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

from pytest_adrobust.baseline import baseline_path, build_baseline
from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.report import write_json_atomic
from pytest_adrobust.settings import RunSettings

logger = logging.getLogger("pytest_adrobust")

STEP_SUMMARY_VARIABLE: Final = "GITHUB_STEP_SUMMARY"


@final
@dataclass
class OutputLog:
    """Messages of the outputs step for the summary's last lines: files written, failures and notes."""

    written: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_outputs(report: dict[str, Any], run: RunSettings, log: OutputLog) -> None:
    """Write the report, the baseline, the Markdown step summary and the plots that ``run`` requests.

    A failure of one output is logged in ``log.errors`` and does not stop the others, so a plot
    that cannot be drawn never costs the report.
    """
    if run.report is not None:
        try:
            replaced = write_json_atomic(run.report, report)
            log.written.append(f"report {'replaced' if replaced else 'written'}: {run.report}")
        except OSError as error:
            log.errors.append(f"report {str(run.report)!r} could not be written: {error}")

    if run.save is not None:
        save_baseline(report, run, log)

    step_summary = os.environ.get(STEP_SUMMARY_VARIABLE)
    if step_summary:
        append_step_summary(report, Path(step_summary), log)

    if run.plots is not None:
        try:
            from pytest_adrobust.plots import write_plots

            paths = write_plots(report, run.plots, run.plots_format)
            log.written.append(f"plots written: {len(paths)} {run.plots_format.upper()} files in {run.plots}")
        except (AdrobustError, OSError) as error:
            log.errors.append(f"plots could not be written to {str(run.plots)!r}: {error}")


def save_baseline(report: dict[str, Any], run: RunSettings, log: OutputLog) -> None:
    """Store the run's metrics as baseline ``run.save``, never replacing one without ``run.overwrite``."""
    assert run.save is not None
    path = baseline_path(run.baseline_dir, run.save)
    data = build_baseline(report, run.save)
    if not data["items"]:
        log.errors.append(f"baseline {run.save!r} not saved: no test item produced metrics")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replaced = write_json_atomic(path, data, replace=run.overwrite)
    except FileExistsError:
        # The check at start-up passed, so another process created the file during the run.
        log.errors.append(
            f"baseline {run.save!r} not saved: {str(path)!r} appeared during the run; pass --adrobust-overwrite "
            "to replace it"
        )
        return
    except OSError as error:
        log.errors.append(f"baseline {run.save!r} could not be written to {str(path)!r}: {error}")
        return
    action = "replaced" if replaced else "saved"
    log.written.append(f"baseline {run.save!r} {action}: {path} ({len(data['items'])} items)")


def append_step_summary(report: dict[str, Any], path: Path, log: OutputLog) -> None:
    """Append the Markdown summary to the file GitHub Actions shows on the run's page."""
    from pytest_adrobust.summary import render_markdown

    try:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(render_markdown(report))
        log.written.append(f"Markdown summary appended to ${STEP_SUMMARY_VARIABLE} ({path})")
    except OSError as error:
        log.errors.append(f"${STEP_SUMMARY_VARIABLE} file {str(path)!r} could not be written: {error}")
