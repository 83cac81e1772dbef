"""The terminal summary: a header naming model, weights and device, then one table per case."""

from __future__ import annotations

import io
import time
from collections.abc import Iterable

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pytest_adrobust.evaluation import ECE_BINS, CaseEvaluation
from pytest_adrobust.session import AdrobustSession

COLUMNS = (
    ("eps", "eps"),
    ("AUROC", "auroc"),
    ("drop", "auroc_drop"),
    ("AP", "ap"),
    ("F1", "f1"),
    ("G-mean", "gmean"),
    ("ECE raw", "ece_raw"),
    ("ECE cal", "ece"),
    ("H clean", "entropy_clean"),
    ("H att", "entropy_attacked"),
    ("gap", "entropy_gap"),
    ("flag", "flag_rate"),
    ("verdict", "verdict"),
)


def header_lines(session: AdrobustSession) -> list[str]:
    """Return the header: backbone, weights source, device, resolution, shots, seed and time."""
    lines = []
    for info in session.detectors.values():
        # Detectors that differ only in per-case options (masking, rotation) describe alike.
        line = f"backbone {info.backbone} | weights {info.weights} | device {info.device} | resolution {info.resolution}"
        if line not in lines:
            lines.append(line)
    keys = [evaluation.prepared.key for evaluation in session.evaluations.values()]
    shots = sorted({key.shots for key in keys})
    seeds = sorted({key.seed for key in keys})
    attacks = sorted({key.attack for key in keys})
    elapsed = time.time() - session.started
    lines.append(
        f"shots {', '.join(map(str, shots))} | seed {', '.join(map(str, seeds))} | attack {', '.join(attacks)} | "
        f"time {elapsed:.1f} s | started {session.started_at.isoformat(timespec='seconds')}"
    )
    if any(info.random_init for info in session.detectors.values()):
        lines.append("weights are a seeded random initialisation: figures test the protocol, not a pretrained model")
    return lines


def case_table(session: AdrobustSession, evaluation: CaseEvaluation, plain: bool) -> Table:
    """Return the table of one case, with a row per budget."""
    prepared = evaluation.prepared
    key = prepared.key
    anomalous = int(prepared.labels.sum())
    options = [name for name, on in (("masking", key.masking), ("rotation", key.rotation)) if on]
    if key.selection != "random":
        options.append(f"{key.selection} references")
    if prepared.cache == "hit":
        options.append("from cache")
    title = (
        f"{prepared.dataset_name} {key.shots}-shot, attack {key.attack}, {len(prepared.labels)} images "
        f"({len(prepared.labels) - anomalous} normal, {anomalous} anomalous), clean AUROC {prepared.clean_auroc:.3f}"
        + "".join(f", {option}" for option in options)
    )
    table = Table(title=title, box=box.ASCII if plain else box.SIMPLE_HEAVY, title_justify="left", pad_edge=False)

    for heading, _ in COLUMNS:
        table.add_column(heading, justify="left" if heading in ("eps", "verdict") else "right", no_wrap=True)

    for eps in sorted(evaluation.budgets):
        metrics = evaluation.budgets[eps].scalars()
        cells = []
        for _, name in COLUMNS:
            if name == "eps":
                cells.append(str(eps))
            elif name == "verdict":
                verdict = session.verdict(key, eps)
                style = "green"
                if "xfail" in verdict:
                    style = "yellow"
                if "FAIL" in verdict or "XPASS" in verdict:
                    style = "bold red"
                cells.append(Text(verdict, style="" if plain else style))
            else:
                cells.append(f"{metrics[name]:+.3f}" if name in ("auroc_drop", "entropy_gap") else f"{metrics[name]:.3f}")
        table.add_row(*cells)
    return table


def render_summary(session: AdrobustSession, width: int, plain: bool) -> str:
    """Render the whole summary to text; ``plain`` uses ASCII borders and no colour, for CI logs."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        # Wide enough for every column: a truncated number is worse than a long line in a CI log.
        width=max(width, 160),
        force_terminal=not plain,
        color_system=None if plain else "standard",
        highlight=False,
        emoji=False,
    )
    for line in header_lines(session):
        console.print(line)
    for evaluation in session.evaluations.values():
        console.print()
        console.print(case_table(session, evaluation, plain))
        for message in evaluation.warnings:
            console.print(Text(f"self-check: {message}", style="" if plain else "yellow"))
        if evaluation.noise_control is not None:
            noise = evaluation.noise_control
            console.print(
                f"noise control at eps {noise['eps_text']}: FGSM drop {noise['fgsm_auroc_drop']:+.3f}, "
                f"random-sign drop {noise['noise_auroc_drop']:+.3f}"
            )
    console.print()
    console.print(
        f"ECE: l1, positive-class reliability, {ECE_BINS} equal-width bins. raw: scores min-max mapped with clean "
        "scores; cal: Platt scaling cross-fitted on clean scores."
    )
    console.print(
        "H: predictive entropy in bits; gap = H att - H clean; flag: share of attacked inputs above the 95th "
        "percentile of clean entropy."
    )
    if session.report_written is not None:
        action = "replaced" if session.report_replaced else "written"
        console.print(f"report {action}: {session.report_written}")
    return buffer.getvalue()


def summary_lines(text: str) -> Iterable[str]:
    """Split rendered text into lines for the terminal writer."""
    return [line.rstrip() for line in text.rstrip("\n").split("\n")]
