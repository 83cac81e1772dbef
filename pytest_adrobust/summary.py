"""The summaries of a run: rich terminal tables and Markdown for GitHub's step summary.

Both are rendered from the report data (:func:`pytest_adrobust.report.build_report`), so a serial
run, a pytest-xdist run and reports merged by ``python -m pytest_adrobust merge`` print the same.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from pytest_adrobust.outputs import OutputLog

COLUMNS: Final = (
    ("eps", "eps"),
    ("AUROC", "auroc"),
    ("drop", "auroc_drop"),
    ("AP", "ap"),
    ("F1", "f1"),
    ("G-mean", "gmean"),
    ("ECE raw", "ece_raw"),
    ("ECE cal", "ece"),
    ("ECE floor", "ece_floor"),
    ("H clean", "entropy_clean"),
    ("H att", "entropy_attacked"),
    ("gap", "entropy_gap"),
    ("flag", "flag_rate"),
    ("verdict", "verdict"),
)
SIGNED: Final = frozenset({"auroc_drop", "entropy_gap"})
VERDICT_LABELS: Final = {"passed": "pass", "failed": "FAIL", "xfailed": "xfail", "xpassed": "XPASS", "skipped": "skip"}
MAX_COMPARISON_ROWS: Final = 60


def _format(name: str, value: float | None, digits: int = 3) -> str:
    if value is None:
        return "nan"
    return f"{value:+.{digits}f}" if name in SIGNED else f"{value:.{digits}f}"


def _interval(name: str, bounds: list[float | None] | None) -> str:
    """Write an interval compactly, as ``0.58..0.83``, so a row of them fits under the values."""
    if not bounds:
        return ""
    return f"{_format(name, bounds[0], 2)}..{_format(name, bounds[1], 2)}"


def header_lines(report: Mapping[str, Any]) -> list[str]:
    """Return the header: backbone, weights source, device, resolution, shots, seed and time."""
    lines = []
    for info in report["detectors"].values():
        # Detectors that differ only in per-case options (masking, rotation) describe alike.
        line = f"backbone {info['backbone']} | weights {info['weights']} | device {info['device']} | resolution {info['resolution']}"
        if line not in lines:
            lines.append(line)
    cases = report["cases"]
    shots = sorted({case["shots"] for case in cases})
    seeds = sorted({case["seed"] for case in cases})
    attacks = sorted({case["attack"] for case in cases})
    lines.append(
        f"shots {', '.join(map(str, shots))} | seed {', '.join(map(str, seeds))} | attack {', '.join(attacks)} | "
        f"time {report['duration_seconds']:.1f} s | started {report['created']}"
    )
    if any(info.get("random_init") for info in report["detectors"].values()):
        lines.append("weights are a seeded random initialisation: figures test the protocol, not a pretrained model")
    return lines


def verdicts(report: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """Return the outcomes of the items of each case and budget, keyed by (case id, eps text)."""
    outcomes: dict[tuple[str, str], set[str]] = {}
    for item in report["items"]:
        label = VERDICT_LABELS.get(item["outcome"], item["outcome"])
        outcomes.setdefault((item["case_id"], item["eps_text"]), set()).add(label)
    return {key: " ".join(sorted(labels)) for key, labels in outcomes.items()}


def case_title(case: Mapping[str, Any]) -> str:
    """Return the one-line description of a case that heads its table."""
    options = [name for name in ("masking", "rotation") if case.get(name)]
    if case.get("selection", "random") != "random":
        options.append(f"{case['selection']} references")
    if case.get("cache") == "hit":
        options.append("from cache")
    anomalous = case["n_anomalous"]
    return (
        f"{case['dataset']} {case['shots']}-shot, attack {case['attack']}, {case['n_images']} images "
        f"({case['n_images'] - anomalous} normal, {anomalous} anomalous), clean AUROC {_format('auroc', case['clean_auroc'])}"
        + "".join(f", {option}" for option in options)
    )


def case_table(case: Mapping[str, Any], outcomes: Mapping[tuple[str, str], str], plain: bool) -> Table:
    """Return the table of one case: a row of values per budget, then a row of their intervals."""
    table = Table(title=case_title(case), box=box.ASCII if plain else box.SIMPLE_HEAVY, title_justify="left", pad_edge=False)
    for heading, _ in COLUMNS:
        table.add_column(heading, justify="left" if heading in ("eps", "verdict") else "right", no_wrap=True)

    for budget in case["budgets"]:
        cells: list[str | Text] = []
        interval_cells: list[str | Text] = []
        for _, name in COLUMNS:
            if name == "eps":
                cells.append(budget["eps_text"])
                interval_cells.append(Text("CI", style="" if plain else "dim"))
            elif name == "verdict":
                verdict = outcomes.get((case["case_id"], budget["eps_text"]), "-")
                style = "green"
                if "xfail" in verdict:
                    style = "yellow"
                if "FAIL" in verdict or "XPASS" in verdict:
                    style = "bold red"
                cells.append(Text(verdict, style="" if plain else style))
                interval_cells.append("")
            else:
                cells.append(_format(name, budget.get(name)))
                interval_cells.append(Text(_interval(name, budget.get("intervals", {}).get(name)), style="" if plain else "dim"))
        table.add_row(*cells)
        if budget.get("intervals"):
            table.add_row(*interval_cells)
    return table


def comparison_cells(item: Mapping[str, Any], check: Mapping[str, Any]) -> list[str]:
    """Return the cells of one comparison row: item, metric, baseline, current, delta, tolerance, status."""
    return [
        item["nodeid"].rpartition("::")[2],
        check["metric"],
        _format("", check["baseline"], 4),
        _format("", check["current"], 4),
        "nan" if check["delta"] is None else f"{check['delta']:+.4f}",
        check["tolerance"] or "-",
        "REGRESSED" if check["regressed"] else "ok",
    ]


def comparison_table(report: Mapping[str, Any], plain: bool) -> tuple[str, Table | None, list[str]]:
    """Return the comparison's count line, its table of checks, and the refusal messages."""
    compared = [item for item in report["items"] if item.get("comparison")]
    if not compared:
        return "", None, []
    name = compared[0]["comparison"]["baseline"]
    counts: dict[str, int] = {}
    for item in compared:
        status = item["comparison"]["status"]
        counts[status] = counts.get(status, 0) + 1
    line = f"baseline {name!r}: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))

    table = Table(box=box.ASCII if plain else box.SIMPLE_HEAVY, pad_edge=False)
    for heading in ("item", "metric", "baseline", "current", "delta", "tolerance", "status"):
        table.add_column(heading, justify="left" if heading in ("item", "metric", "tolerance", "status") else "right", no_wrap=True)
    rows = [(item, check) for item in compared for check in item["comparison"]["checks"]]
    for item, check in rows[:MAX_COMPARISON_ROWS]:
        *cells, status = comparison_cells(item, check)
        status_style = "bold red" if check["regressed"] else "green"
        table.add_row(*cells, Text(status, style="" if plain else status_style))
    if len(rows) > MAX_COMPARISON_ROWS:
        line += f" (the table shows {MAX_COMPARISON_ROWS} of {len(rows)} checks; the report has all)"
    refused = [f"{item['nodeid']}: {item['comparison']['message']}" for item in compared if item["comparison"]["status"] == "refused"]
    return line, table if rows else None, refused


def _footer(report: Mapping[str, Any]) -> list[str]:
    conventions = report.get("conventions", {})
    bins = conventions.get("ece_bins", 15)
    lines = [
        f"ECE: l1, positive-class reliability, {bins} equal-width bins. raw: scores min-max mapped with clean scores; "
        "cal: Platt scaling cross-fitted on clean scores; floor: expected ECE of a perfectly calibrated model with "
        "the same probabilities.",
        "H: predictive entropy in bits; gap = H att - H clean; flag: share of attacked inputs above the 95th "
        "percentile of clean entropy.",
    ]
    settings = report["settings"]
    if settings.get("bootstrap"):
        lines.append(
            f"CI: {settings['confidence']:.0%} percentile intervals from {settings['bootstrap']} stratified bootstrap "
            "resamples of the test images, seeded with the case seed."
        )
    return lines


def render_summary(report: Mapping[str, Any], width: int, plain: bool, outputs: OutputLog | None = None) -> str:
    """Render the whole summary to text; ``plain`` uses ASCII borders and no colour, for CI logs."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        # Wide enough for every column: a truncated number is worse than a long line in a CI log.
        width=max(width, 180),
        force_terminal=not plain,
        color_system=None if plain else "standard",
        highlight=False,
        emoji=False,
        # Node ids and dataset names contain brackets, which rich would read as style markup.
        markup=False,
    )
    # Free-text lines are not wrapped, so that a path or a message stays whole for copying.
    for line in header_lines(report):
        console.print(line, soft_wrap=True)
    for note in outputs.notes if outputs is not None else []:
        console.print(note, soft_wrap=True)

    outcomes = verdicts(report)
    for case in report["cases"]:
        console.print()
        console.print(case_table(case, outcomes, plain))
        for message in case["self_check_warnings"]:
            console.print(Text(f"self-check: {message}", style="" if plain else "yellow"), soft_wrap=True)
        noise = case.get("noise_control")
        if noise is not None:
            console.print(
                f"noise control at eps {noise['eps_text']}: FGSM drop {noise['fgsm_auroc_drop']:+.3f}, "
                f"random-sign drop {noise['noise_auroc_drop']:+.3f}",
                soft_wrap=True,
            )

    line, table, refused = comparison_table(report, plain)
    if line:
        console.print()
        console.print(line, soft_wrap=True)
        if table is not None:
            console.print(table)
        for message in refused:
            console.print(Text(f"not compared: {message}", style="" if plain else "bold red"), soft_wrap=True)

    console.print()
    for line in _footer(report):
        console.print(line, soft_wrap=True)
    if outputs is not None:
        for line in outputs.written:
            console.print(line, soft_wrap=True)
        for line in outputs.errors:
            console.print(Text(f"error: {line}", style="" if plain else "bold red"), soft_wrap=True)
    return buffer.getvalue()


def summary_lines(text: str) -> Iterable[str]:
    """Split rendered text into lines for the terminal writer."""
    return [line.rstrip() for line in text.rstrip("\n").split("\n")]


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(report: Mapping[str, Any]) -> str:
    """Render the summary as GitHub-flavoured Markdown, with each interval beside its value."""
    lines = ["## adrobust summary", ""]
    lines.extend(f"- {_markdown_cell(line)}" for line in header_lines(report))
    outcomes = verdicts(report)
    for case in report["cases"]:
        lines.extend(["", f"### {_markdown_cell(case_title(case))}", ""])
        lines.append("| " + " | ".join(heading for heading, _ in COLUMNS) + " |")
        lines.append("|" + "|".join(":--" if name in ("eps", "verdict") else "--:" for _, name in COLUMNS) + "|")
        for budget in case["budgets"]:
            cells = []
            for _, name in COLUMNS:
                if name == "eps":
                    cells.append(budget["eps_text"])
                elif name == "verdict":
                    cells.append(outcomes.get((case["case_id"], budget["eps_text"]), "-"))
                else:
                    interval = _interval(name, budget.get("intervals", {}).get(name))
                    cells.append(_format(name, budget.get(name)) + (f" {interval}" if interval else ""))
            lines.append("| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |")
        for message in case["self_check_warnings"]:
            lines.extend(["", f"> self-check: {_markdown_cell(message)}"])

    compared = [item for item in report["items"] if item.get("comparison")]
    if compared:
        line, _, refused = comparison_table(report, plain=True)
        lines.extend(["", f"### {_markdown_cell(line)}", ""])
        lines.append("| item | metric | baseline | current | delta | tolerance | status |")
        lines.append("|:--|:--|--:|--:|--:|:--|:--|")
        for item in compared:
            for check in item["comparison"]["checks"]:
                *cells, status = comparison_cells(item, check)
                cells.append(f"**{status}**" if check["regressed"] else status)
                lines.append("| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |")
        lines.extend(f"\n> not compared: {_markdown_cell(message)}" for message in refused)
    lines.extend(["", *(_markdown_cell(line) for line in _footer(report)), ""])
    return "\n".join(lines) + "\n"
