"""Plots of a robustness report: reliability diagrams, AUROC against eps and entropy histograms.

Every plot is drawn from the report data alone (a dict as returned by ``json.load``), so a report
merged from several runs plots the same way as one written by a single run. matplotlib is an
optional dependency (``pip install 'pytest-adrobust[plots]'``). This module imports it only
inside the functions that draw, so importing the module works without it.

Non-finite values are stored as ``None`` in the report. The plots skip them one value at a time,
and each legend shows how many values it skipped.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, final

import numpy as np
import numpy.typing as npt

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics.calibration import minmax_scale, reliability_bins
from pytest_adrobust.metrics.uncertainty import binary_entropy

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "IMAGE_FORMATS",
    "ReliabilityCurve",
    "ReliabilityPoints",
    "reliability_curves",
    "reliability_points",
    "require_matplotlib",
    "write_plots",
]

IMAGE_FORMATS: Final = ("png", "svg")
"""Image formats that :func:`write_plots` accepts."""

RELIABILITY_BINS: Final = 15
"""Number of equal-width bins of the reliability diagrams, the same bins as the report's ECE."""

_ENTROPY_BIN_EDGES: Final = np.linspace(0.0, 1.0, 21)
_SLUG_MAX_CHARS: Final = 120
_UNSAFE_FILE_CHARS: Final = re.compile(r"[^A-Za-z0-9._-]+")
_SVG_HASH_SALT: Final = "pytest-adrobust"
_DPI: Final = 100
_PANELS_PER_ROW: Final = 3


@final
@dataclass(frozen=True)
class ReliabilityPoints:
    """Points of one reliability curve, one per non-empty bin, in increasing bin order.

    Attributes
    ----------
    mean_probability : numpy.ndarray of float64, shape (k,)
        Mean predicted probability of the images in each non-empty bin (the x coordinates).
    fraction_positive : numpy.ndarray of float64, shape (k,)
        Fraction of anomalous images in each non-empty bin (the y coordinates).
    counts : numpy.ndarray of int64, shape (k,)
        Number of images in each non-empty bin, each at least 1.
    ece : float
        Expected calibration error of the images, in [0, 1].
    """

    mean_probability: npt.NDArray[np.float64]
    fraction_positive: npt.NDArray[np.float64]
    counts: npt.NDArray[np.int64]
    ece: float


@final
@dataclass(frozen=True)
class ReliabilityCurve:
    """One curve of a reliability diagram panel: clean images or one attack budget.

    Attributes
    ----------
    name : str
        ``"clean"``, or the budget as the report writes it (``eps_text``, such as ``"4/255"``).
    eps : float
        Budget in [0, 1] pixel units, 0 for the clean curve.
    points : ReliabilityPoints or None
        Drawn points, or ``None`` when no image has a finite value to draw.
    n_skipped : int
        Number of images left out because their value is ``None`` in the report.
    """

    name: str
    eps: float
    points: ReliabilityPoints | None
    n_skipped: int


@final
@dataclass(frozen=True)
class _Budget:
    eps: float
    eps_text: str
    auroc: float | None


@final
@dataclass(frozen=True)
class _Image:
    label: int
    clean_score: float | None
    clean_probability: float | None
    attacked_scores: dict[str, float | None]
    attacked_probabilities: dict[str, float | None]


@final
@dataclass(frozen=True)
class _Case:
    dataset: str
    shots: int
    attack: str
    clean_auroc: float | None
    budgets: tuple[_Budget, ...]
    images: tuple[_Image, ...]

    @property
    def attacked_budgets(self) -> tuple[_Budget, ...]:
        """Budgets with a nonzero eps, whose curves and histograms differ from the clean ones."""
        return tuple(budget for budget in self.budgets if budget.eps > 0.0)


def require_matplotlib() -> None:
    """Check that matplotlib can be imported.

    Raises
    ------
    AdrobustError
        If ``import matplotlib`` fails, with the command that installs it.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise AdrobustError(
            f"Writing plots requires matplotlib, but importing it failed ({error}). Install it "
            "with pip install 'pytest-adrobust[plots]'."
        ) from error


def reliability_points(
    labels: npt.ArrayLike, probabilities: npt.ArrayLike, n_bins: int = RELIABILITY_BINS
) -> ReliabilityPoints:
    """Compute the points of a reliability curve and the ECE of the same bins.

    The bins are those of :func:`pytest_adrobust.metrics.calibration.reliability_bins`:
    ``n_bins`` equal-width, right-closed bins on [0, 1]. Empty bins get no point.

    Parameters
    ----------
    labels : array-like of {0, 1}, shape (n,)
        Labels, 1 for anomalous and 0 for normal.
    probabilities : array-like of float, shape (n,)
        Finite probabilities of being anomalous, in [0, 1].
    n_bins : int, default 15
        Number of equal-width bins.

    Returns
    -------
    ReliabilityPoints
        Mean probability, fraction anomalous and count of each non-empty bin, and the l1
        positive-class ECE ``sum(count / n * |fraction_positive - mean_probability|)``.

    Raises
    ------
    AdrobustError
        If an input is empty, not finite or out of range, the lengths differ, or ``n_bins`` is
        not a positive integer.
    """
    bins = reliability_bins(labels, probabilities, n_bins)

    filled = bins.counts > 0
    counts = bins.counts[filled]
    mean_probability = bins.mean_probability[filled]
    fraction_positive = bins.fraction_positive[filled]

    weights = counts / np.sum(counts)
    ece = float(np.sum(weights * np.abs(fraction_positive - mean_probability)))
    return ReliabilityPoints(
        mean_probability=mean_probability,
        fraction_positive=fraction_positive,
        counts=counts,
        ece=ece,
    )


def reliability_curves(
    case: Mapping[str, Any], scale: Literal["raw", "calibrated"]
) -> list[ReliabilityCurve]:
    """Compute the curves of one panel of a case's reliability diagram.

    The ``raw`` panel maps scores to [0, 1] with
    :func:`pytest_adrobust.metrics.calibration.minmax_scale`, using the case's finite clean
    scores as the reference, as the report does for ``ece_raw``. The ``calibrated`` panel uses
    the stored Platt-calibrated probabilities. Each curve skips the images whose value is
    ``None``, so its ECE equals the report's ``ece_raw`` or ``ece`` when it skips none.

    Parameters
    ----------
    case : Mapping
        One entry of ``report["cases"]``.
    scale : {"raw", "calibrated"}
        Panel to compute.

    Returns
    -------
    list of ReliabilityCurve
        The clean curve, then one curve per nonzero budget in report order.

    Raises
    ------
    AdrobustError
        If ``scale`` is not ``"raw"`` or ``"calibrated"`` or ``case`` lacks a field or has a
        field of the wrong type.
    """
    if scale not in ("raw", "calibrated"):
        raise AdrobustError(
            f"scale must be 'raw' or 'calibrated'; received {scale!r}. Pass 'raw' for min-max "
            "mapped scores or 'calibrated' for Platt-calibrated probabilities."
        )
    return _reliability_curves(_parse_case(case, "case"), scale)


def write_plots(
    report: Mapping[str, Any], directory: Path, image_format: str = "png"
) -> list[Path]:
    """Draw the plots of a report and write them to ``directory``.

    Writes, for each case, ``reliability-<slug>.<format>`` (raw and Platt-calibrated reliability
    diagrams) and, when the case has a nonzero budget, ``entropy-<slug>.<format>`` (histograms
    of clean and attacked entropy in bits). For each dataset display name it writes
    ``auroc-vs-eps-<dataset>.<format>`` with one line per case. ``<slug>`` is
    ``<dataset>-<shots>shot-<attack>`` with characters outside ``[A-Za-z0-9._-]`` replaced by
    ``_``. When two cases or datasets get the same name (ignoring case), the later one gets a
    suffix ``-2``, ``-3`` and so on. Each file is written to a temporary file in ``directory``
    and renamed, so an interrupted run never leaves a partial plot. SVG files contain no date and
    use a fixed hash salt for their ids, so the same report gives the same bytes.

    Parameters
    ----------
    report : Mapping
        Report data as loaded by ``json.load``. Only ``report["cases"]`` is read.
    directory : pathlib.Path
        Output directory, created with its parents when missing.
    image_format : {"png", "svg"}, default "png"
        Format of every file.

    Returns
    -------
    list of pathlib.Path
        Paths of the written files, case by case and then dataset by dataset.

    Raises
    ------
    AdrobustError
        If ``image_format`` is not supported, ``report`` lacks a field or has a field of the
        wrong type, matplotlib is missing, or ``directory`` exists and is not a directory or
        cannot be created.
    """
    if image_format not in IMAGE_FORMATS:
        raise AdrobustError(
            f"image_format must be one of {', '.join(IMAGE_FORMATS)}; received {image_format!r}. "
            "Pass 'png' for raster images or 'svg' for vector images."
        )
    if not isinstance(directory, (str, os.PathLike)):
        raise AdrobustError(
            f"directory must be a path; received {directory!r}. Pass a pathlib.Path of the "
            "folder to write the plots to."
        )
    cases = _parse_report(report)
    require_matplotlib()
    output = _prepare_directory(Path(directory))

    case_slugs = _unique_names(
        [f"{case.dataset}-{case.shots}shot-{case.attack}" for case in cases]
    )
    datasets = list(dict.fromkeys(case.dataset for case in cases))
    dataset_slugs = _unique_names(datasets)

    written: list[Path] = []
    with _plot_settings():
        for case, slug in zip(cases, case_slugs):
            path = output / f"reliability-{slug}.{image_format}"
            _save_atomic(_reliability_figure(case), path, image_format)
            written.append(path)

            if case.attacked_budgets:
                path = output / f"entropy-{slug}.{image_format}"
                _save_atomic(_entropy_figure(case), path, image_format)
                written.append(path)

        for dataset, slug in zip(datasets, dataset_slugs):
            dataset_cases = [case for case in cases if case.dataset == dataset]
            path = output / f"auroc-vs-eps-{slug}.{image_format}"
            _save_atomic(_auroc_figure(dataset, dataset_cases), path, image_format)
            written.append(path)
    return written


# Report parsing. Every field is checked before any file is written, so a bad case late in the
# report does not leave the plots of the earlier cases behind.


def _parse_report(report: Mapping[str, Any]) -> list[_Case]:
    if not isinstance(report, Mapping):
        raise AdrobustError(
            f"report must be a mapping as loaded by json.load; received {report!r}. Pass the "
            "parsed JSON report."
        )
    cases = _require(report, "cases", "report")
    if not _is_list(cases):
        raise AdrobustError(
            f"report['cases'] must be a list of case records; received {cases!r}. Pass a report "
            "written by pytest-adrobust."
        )
    return [_parse_case(case, f"report['cases'][{index}]") for index, case in enumerate(cases)]


def _parse_case(case: Any, where: str) -> _Case:
    if not isinstance(case, Mapping):
        raise AdrobustError(f"{where} must be a mapping; received {case!r}. Pass a case record of the report.")

    dataset = _require_text(case, "dataset", where)
    shots = _require(case, "shots", where)
    if isinstance(shots, bool) or not isinstance(shots, Integral):
        raise AdrobustError(
            f"{where}['shots'] must be an integer; received {shots!r}. Pass the number of "
            "reference images of the case."
        )
    attack = _require_text(case, "attack", where)
    clean_auroc = _optional_number(_require(case, "clean_auroc", where), f"{where}['clean_auroc']")

    budget_records = _require_list(case, "budgets", where)
    budgets = tuple(
        budget
        for index, record in enumerate(budget_records)
        if (budget := _parse_budget(record, f"{where}['budgets'][{index}]")) is not None
    )

    image_records = _require_list(case, "images", where)
    images = tuple(
        _parse_image(record, f"{where}['images'][{index}]") for index, record in enumerate(image_records)
    )
    return _Case(
        dataset=dataset,
        shots=int(shots),
        attack=attack,
        clean_auroc=clean_auroc,
        budgets=budgets,
        images=images,
    )


def _parse_budget(record: Any, where: str) -> _Budget | None:
    """Parse one budget, or return ``None`` when its eps is ``None`` and it has no place on a plot."""
    if not isinstance(record, Mapping):
        raise AdrobustError(f"{where} must be a mapping; received {record!r}. Pass a budget record of the report.")

    eps = _optional_number(_require(record, "eps", where), f"{where}['eps']")
    eps_text = _require_text(record, "eps_text", where)
    auroc = _optional_number(_require(record, "auroc", where), f"{where}['auroc']")
    if eps is None:
        return None
    if not 0.0 <= eps <= 1.0:
        raise AdrobustError(
            f"{where}['eps'] must lie in [0, 1] pixel units; received {eps!r}. Pass a report "
            "written by pytest-adrobust."
        )
    return _Budget(eps=eps, eps_text=eps_text, auroc=auroc)


def _parse_image(record: Any, where: str) -> _Image:
    if not isinstance(record, Mapping):
        raise AdrobustError(f"{where} must be a mapping; received {record!r}. Pass an image record of the report.")

    label = _require(record, "label", where)
    if isinstance(label, bool) or not isinstance(label, Integral) or label not in (0, 1):
        raise AdrobustError(
            f"{where}['label'] must be 0 (normal) or 1 (anomalous); received {label!r}. Pass a "
            "report written by pytest-adrobust."
        )
    clean_score = _optional_number(_require(record, "clean_score", where), f"{where}['clean_score']")
    clean_probability = _optional_probability(
        _require(record, "clean_probability", where), f"{where}['clean_probability']"
    )

    attacked = _require(record, "attacked", where)
    if not isinstance(attacked, Mapping):
        raise AdrobustError(
            f"{where}['attacked'] must map eps_text to a score and a probability; received "
            f"{attacked!r}. Pass a report written by pytest-adrobust."
        )
    attacked_scores: dict[str, float | None] = {}
    attacked_probabilities: dict[str, float | None] = {}
    for eps_text, values in attacked.items():
        inner = f"{where}['attacked'][{eps_text!r}]"
        if not isinstance(values, Mapping):
            raise AdrobustError(
                f"{inner} must be a mapping with 'score' and 'probability'; received {values!r}. "
                "Pass a report written by pytest-adrobust."
            )
        attacked_scores[str(eps_text)] = _optional_number(_require(values, "score", inner), f"{inner}['score']")
        attacked_probabilities[str(eps_text)] = _optional_probability(
            _require(values, "probability", inner), f"{inner}['probability']"
        )

    return _Image(
        label=int(label),
        clean_score=clean_score,
        clean_probability=clean_probability,
        attacked_scores=attacked_scores,
        attacked_probabilities=attacked_probabilities,
    )


def _require(record: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in record:
        raise AdrobustError(
            f"{where} is missing the field {key!r}. Its fields are {sorted(map(str, record))!r}. "
            "Pass a report written by pytest-adrobust."
        )
    return record[key]


def _require_text(record: Mapping[str, Any], key: str, where: str) -> str:
    value = _require(record, key, where)
    if not isinstance(value, str):
        raise AdrobustError(
            f"{where}[{key!r}] must be a string; received {value!r}. Pass a report written by "
            "pytest-adrobust."
        )
    return value


def _require_list(record: Mapping[str, Any], key: str, where: str) -> Sequence[Any]:
    value = _require(record, key, where)
    if not _is_list(value):
        raise AdrobustError(
            f"{where}[{key!r}] must be a list; received {value!r}. Pass a report written by "
            "pytest-adrobust."
        )
    return value


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _optional_number(value: Any, where: str) -> float | None:
    """Return ``value`` as a float, or ``None`` for ``None``, NaN and infinities."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise AdrobustError(
            f"{where} must be a number or null; received {value!r}. Pass a report written by "
            "pytest-adrobust."
        )
    number = float(value)
    return number if math.isfinite(number) else None


def _optional_probability(value: Any, where: str) -> float | None:
    number = _optional_number(value, where)
    if number is not None and not 0.0 <= number <= 1.0:
        raise AdrobustError(
            f"{where} must be a probability in [0, 1] or null; received {value!r}. Pass a "
            "report written by pytest-adrobust."
        )
    return number


# Plot data.


def _reliability_curves(case: _Case, scale: Literal["raw", "calibrated"]) -> list[ReliabilityCurve]:
    labels = [image.label for image in case.images]
    if scale == "raw":
        clean_values = [image.clean_score for image in case.images]
    else:
        clean_values = [image.clean_probability for image in case.images]

    # min-max needs a reference range, so the raw panel has no points without a finite clean score.
    reference = [value for value in clean_values if value is not None] if scale == "raw" else None
    curves = [_curve("clean", 0.0, labels, clean_values, reference)]

    for budget in case.attacked_budgets:
        if scale == "raw":
            values = [image.attacked_scores.get(budget.eps_text) for image in case.images]
        else:
            values = [image.attacked_probabilities.get(budget.eps_text) for image in case.images]
        curves.append(_curve(budget.eps_text, budget.eps, labels, values, reference))
    return curves


def _curve(
    name: str,
    eps: float,
    labels: Sequence[int],
    values: Sequence[float | None],
    reference: Sequence[float] | None,
) -> ReliabilityCurve:
    """Build one curve from per-image values, mapping scores with ``reference`` when it is given."""
    finite_indices = [index for index, value in enumerate(values) if value is not None]
    n_skipped = len(values) - len(finite_indices)
    if not finite_indices or reference == []:
        return ReliabilityCurve(name=name, eps=eps, points=None, n_skipped=n_skipped)

    finite_labels = np.array([labels[index] for index in finite_indices], dtype=np.int64)
    finite_values = np.array([values[index] for index in finite_indices], dtype=np.float64)
    probabilities = finite_values if reference is None else minmax_scale(finite_values, reference)
    points = reliability_points(finite_labels, probabilities, RELIABILITY_BINS)
    return ReliabilityCurve(name=name, eps=eps, points=points, n_skipped=n_skipped)


def _finite_entropy(values: Sequence[float | None]) -> tuple[npt.NDArray[np.float64], int]:
    """Return the entropy in bits of the non-``None`` probabilities and the number skipped."""
    probabilities = np.array([value for value in values if value is not None], dtype=np.float64)
    n_skipped = len(values) - probabilities.size
    if probabilities.size == 0:
        return probabilities, n_skipped
    return binary_entropy(probabilities), n_skipped


def _auroc_points(case: _Case) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]:
    """Return eps in units of 1/255, AUROC sorted by eps, and the number of ``None`` AUROCs skipped.

    The clean AUROC is used as the eps 0 point when the case has no budget of eps 0.
    """
    points = [(budget.eps * 255.0, budget.auroc) for budget in case.budgets if budget.auroc is not None]
    n_skipped = len(case.budgets) - len(points)
    has_zero_budget = any(budget.eps == 0.0 for budget in case.budgets)
    if not has_zero_budget and case.clean_auroc is not None:
        points.append((0.0, case.clean_auroc))
    points.sort(key=lambda point: point[0])

    eps_255 = np.array([point[0] for point in points], dtype=np.float64)
    aurocs = np.array([point[1] for point in points], dtype=np.float64)
    return eps_255, aurocs, n_skipped


# Drawing.


def _new_figure(width: float, height: float) -> Figure:
    # A Figure with its own Agg canvas never registers with pyplot, so no global figure list
    # grows and no backend is switched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _case_title(case: _Case) -> str:
    return f"{case.dataset}, {case.shots}-shot, {case.attack} attack"


def _skipped_note(n_skipped: int) -> str:
    return f", skipped {n_skipped} null" if n_skipped else ""


def _reliability_figure(case: _Case) -> Figure:
    figure = _new_figure(11.0, 5.0)
    raw_axes, calibrated_axes = figure.subplots(1, 2, sharey=True)
    _draw_reliability_panel(raw_axes, _reliability_curves(case, "raw"), "Raw scores (min-max mapped)")
    _draw_reliability_panel(calibrated_axes, _reliability_curves(case, "calibrated"), "Platt-calibrated probabilities")
    raw_axes.set_ylabel("fraction anomalous")
    figure.suptitle(_case_title(case))
    return figure


def _draw_reliability_panel(axes: Axes, curves: Sequence[ReliabilityCurve], title: str) -> None:
    axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="0.5", linewidth=1.0, label="perfect calibration")

    for curve in curves:
        name = "clean" if curve.eps == 0.0 else f"eps {curve.name}"
        note = _skipped_note(curve.n_skipped)
        if curve.points is None:
            # An empty line still gets a legend entry, so the reader sees the budget had no data.
            axes.plot([], [], marker="o", label=f"{name} (no finite values{note})")
            continue
        axes.plot(
            curve.points.mean_probability,
            curve.points.fraction_positive,
            marker="o",
            markersize=4,
            label=f"{name} (ECE {curve.points.ece:.3f}{note})",
        )

    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_aspect("equal")
    axes.set_xlabel("mean predicted probability")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize="small")


def _entropy_figure(case: _Case) -> Figure:
    budgets = case.attacked_budgets
    n_columns = min(len(budgets), _PANELS_PER_ROW)
    n_rows = math.ceil(len(budgets) / _PANELS_PER_ROW)
    figure = _new_figure(4.0 * n_columns, 3.4 * n_rows + 0.5)
    axes_grid = figure.subplots(n_rows, n_columns, squeeze=False)

    clean, clean_skipped = _finite_entropy([image.clean_probability for image in case.images])
    for index, budget in enumerate(budgets):
        axes = axes_grid[index // _PANELS_PER_ROW][index % _PANELS_PER_ROW]
        attacked_values = [image.attacked_probabilities.get(budget.eps_text) for image in case.images]
        attacked, attacked_skipped = _finite_entropy(attacked_values)

        axes.hist(clean, bins=_ENTROPY_BIN_EDGES, alpha=0.6, label=f"clean (n={clean.size}{_skipped_note(clean_skipped)})")
        axes.hist(
            attacked,
            bins=_ENTROPY_BIN_EDGES,
            alpha=0.6,
            label=f"attacked (n={attacked.size}{_skipped_note(attacked_skipped)})",
        )
        axes.set_xlim(0.0, 1.0)
        axes.set_xlabel("entropy (bits)")
        axes.set_ylabel("images")
        axes.set_title(f"eps {budget.eps_text}")
        axes.legend(fontsize="small")

    # A partly filled last row leaves empty axes, which would draw as blank frames.
    for index in range(len(budgets), n_rows * n_columns):
        axes_grid[index // _PANELS_PER_ROW][index % _PANELS_PER_ROW].set_visible(False)

    figure.suptitle(f"Predictive entropy of calibrated probabilities: {_case_title(case)}")
    return figure


def _auroc_figure(dataset: str, cases: Sequence[_Case]) -> Figure:
    figure = _new_figure(6.5, 4.5)
    axes = figure.subplots()
    axes.axhline(0.5, linestyle="--", color="0.5", linewidth=1.0, label="chance")

    used_labels: set[str] = set()
    for case in cases:
        eps_255, aurocs, n_skipped = _auroc_points(case)
        label = _unique_label(f"{case.shots}-shot, {case.attack}", used_labels)
        axes.plot(eps_255, aurocs, marker="o", label=f"{label}{_skipped_note(n_skipped)}")

    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("eps (/255)")
    axes.set_ylabel("AUROC")
    axes.set_title(f"AUROC against FGSM budget: {dataset}")
    axes.legend(fontsize="small")
    return figure


def _unique_label(label: str, used: set[str]) -> str:
    """Return ``label``, numbered when taken, because cases may differ only in unplotted settings."""
    candidate = label
    number = 2
    while candidate in used:
        candidate = f"{label} ({number})"
        number += 1
    used.add(candidate)
    return candidate


# Files.


def _slug(text: str) -> str:
    return _UNSAFE_FILE_CHARS.sub("_", text)[:_SLUG_MAX_CHARS]


def _unique_names(texts: Sequence[str]) -> list[str]:
    """Turn each text into a file-safe slug and number repeats ``-2``, ``-3``, ...

    Repeats are found ignoring case because macOS and Windows file systems ignore case by default.
    """
    used_casefolded: set[str] = set()
    names = []
    for text in texts:
        base = _slug(text)
        candidate = base
        number = 2
        while candidate.casefold() in used_casefolded:
            candidate = f"{base}-{number}"
            number += 1
        used_casefolded.add(candidate.casefold())
        names.append(candidate)
    return names


def _prepare_directory(directory: Path) -> Path:
    if directory.exists() and not directory.is_dir():
        raise AdrobustError(
            f"The plot directory {str(directory)!r} exists and is not a directory. Pass the path "
            "of a directory, or remove the file."
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AdrobustError(
            f"Could not create the plot directory {str(directory)!r} ({error}). Pass a path "
            "inside a writable directory."
        ) from error
    return directory


@contextmanager
def _plot_settings() -> Iterator[None]:
    """Apply the rcParams that make SVG output reproducible, restoring the old values on exit."""
    import matplotlib

    # NOTE: rcParams are process-wide, so another thread drawing at the same time also uses this salt.
    with matplotlib.rc_context({"svg.hashsalt": _SVG_HASH_SALT}):
        yield


def _save_atomic(figure: Figure, path: Path, image_format: str) -> None:
    """Save ``figure`` to ``path`` through a temporary file in the same directory, then free it."""
    # SVG stores the date by default, which would make two runs differ.
    metadata = {"Date": None} if image_format == "svg" else None
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            figure.savefig(handle, format=image_format, dpi=_DPI, metadata=metadata)
            handle.flush()
            os.fsync(handle.fileno())

        # mkstemp creates the file readable by its owner only. Give it the permissions of a file
        # created normally, so that CI artifact uploads can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        figure.clear()
