"""Command line of pytest-adrobust: ``python -m pytest_adrobust merge REPORT [REPORT ...]``.

Sharded CI jobs each write a report with ``--adrobust-report``; ``merge`` combines them into one
report and prints the same summary table a single run prints. With ``--save NAME`` it stores the
merged metrics as a baseline, as ``--adrobust-save`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.outputs import OutputLog, write_outputs
from pytest_adrobust.report import load_report, merge_reports
from pytest_adrobust.settings import OPTIONS_BY_NAME, RunSettings
from pytest_adrobust.summary import render_summary, summary_lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_adrobust",
        description="Work with pytest-adrobust reports.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    merge = commands.add_parser(
        "merge",
        help="merge the reports of sharded runs and print the summary",
        description="Merge the JSON reports of sharded runs of one suite and print the summary table.",
    )
    merge.add_argument("reports", nargs="+", type=Path, metavar="REPORT", help="report files written with --adrobust-report")
    merge.add_argument("-o", "--output", type=Path, metavar="PATH", help="write the merged report to PATH")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing --output file or --save baseline")
    merge.add_argument("--save", metavar="NAME", help="store the merged metrics as baseline NAME in --baseline-dir")
    merge.add_argument(
        "--baseline-dir", type=Path, default=Path(".adrobust"), metavar="DIR", help="directory of baselines (default: .adrobust)"
    )
    merge.add_argument("--plots", type=Path, metavar="DIR", help="write the plots to DIR (needs matplotlib)")
    merge.add_argument("--plots-format", choices=("png", "svg"), default="png", help="image format of the plots (default: png)")
    merge.add_argument("--plain", action="store_true", help="print ASCII tables without colour, as in CI logs")
    return parser


def merge_command(arguments: argparse.Namespace) -> int:
    """Merge the reports named on the command line; return the exit status."""
    reports = [load_report(path) for path in arguments.reports]
    merged = merge_reports(reports, [str(path) for path in arguments.reports])

    if arguments.output is not None and arguments.output.exists() and not arguments.overwrite:
        raise AdrobustError(f"{str(arguments.output)!r} exists: pass --overwrite to replace it, or choose another path")
    if arguments.output is not None and not arguments.output.parent.is_dir():
        raise AdrobustError(f"the directory of --output {str(arguments.output)!r} does not exist")
    save = OPTIONS_BY_NAME["save"].parse(arguments.save) if arguments.save is not None else None
    if save is not None and (arguments.baseline_dir / f"{save}.json").exists() and not arguments.overwrite:
        raise AdrobustError(
            f"baseline {save!r} exists in {str(arguments.baseline_dir)!r}: pass --overwrite to replace it, or save "
            "under another name"
        )
    if arguments.plots is not None:
        from pytest_adrobust.plots import require_matplotlib

        require_matplotlib()

    # The outputs step takes run settings; only the output fields matter here.
    settings = merged["settings"]
    run = RunSettings(
        device=settings["device"],
        backbone=settings["backbone"],
        weights=settings["weights"],
        resolution=settings["resolution"],
        batch_size=settings["batch_size"],
        cache=settings["cache"],
        precision=settings["precision"],
        report=arguments.output,
    )
    run = dataclasses.replace(
        run,
        save=save,
        baseline_dir=arguments.baseline_dir,
        overwrite=arguments.overwrite,
        plots=arguments.plots,
        plots_format=arguments.plots_format,
    )
    log = OutputLog(notes=[f"merged {len(reports)} reports: {', '.join(str(path) for path in arguments.reports)}"])
    write_outputs(merged, run, log)

    plain = arguments.plain or not sys.stdout.isatty() or "NO_COLOR" in os.environ
    width = shutil.get_terminal_size().columns
    for line in summary_lines(render_summary(merged, width, plain, log)):
        print(line)
    return 1 if log.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (2 on invalid input)."""
    arguments = _parser().parse_args(argv)
    try:
        if arguments.command == "merge":
            return merge_command(arguments)
    except AdrobustError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {arguments.command!r}")


if __name__ == "__main__":
    sys.exit(main())
