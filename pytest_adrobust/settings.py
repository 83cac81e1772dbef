"""Settings of a robustness run: parsing, validation and precedence.

Every setting has one entry in :data:`OPTIONS`, which gives it a command-line option
(``--adrobust-NAME``), an ini key (``adrobust_NAME``) and, for per-test settings, a keyword of
the ``adrobust`` marker. Precedence: marker, then command line, then ini, then the default.
Budgets (``eps``) are parsed by :func:`parse_eps`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

from pytest_adrobust.attacks import ATTACKS, check_eps
from pytest_adrobust.detectors import DEFAULT_BACKBONE
from pytest_adrobust.detectors.weights import validate_weights
from pytest_adrobust.errors import AdrobustError

DEVICES_HELP: Final = "auto, cpu, cuda or cuda:N"


@final
@dataclass(frozen=True, order=True)
class Budget:
    """An L-infinity FGSM budget: its value in [0, 1] pixel units and the text it was written as."""

    value: float
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text


_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+))?\s*$")


def parse_eps(value: object) -> Budget:
    """Parse one budget: a number in [0, 1] (``0.0157``) or a fraction (``4/255``).

    Raises
    ------
    AdrobustError
        When ``value`` is malformed, not finite, or outside [0, 1].
    """
    if isinstance(value, Budget):
        return value
    if isinstance(value, bool):
        raise AdrobustError(f"invalid eps {value!r}: use a number in [0, 1] or a fraction such as 4/255")
    if isinstance(value, (int, float)):
        number = float(value)
        if not math.isfinite(number) or not 0.0 <= number <= 1.0:
            raise AdrobustError(f"invalid eps {value!r}: an L-infinity budget must lie in [0, 1] pixel units, e.g. 4/255")
        return Budget(check_eps(number), _format_number(number))
    if not isinstance(value, str):
        raise AdrobustError(f"invalid eps {value!r}: use a number in [0, 1] or a fraction such as 4/255")

    match = _FRACTION.match(value)
    if match is None:
        raise AdrobustError(f"invalid eps {value!r}: use a number in [0, 1] or a fraction such as 4/255")
    numerator, denominator = match.groups()
    if denominator is not None and float(denominator) == 0:
        raise AdrobustError(f"invalid eps {value!r}: the denominator is zero")
    number = float(numerator) / float(denominator) if denominator is not None else float(numerator)
    if not 0.0 <= number <= 1.0:
        raise AdrobustError(f"invalid eps {value!r}: an L-infinity budget must lie in [0, 1] pixel units, e.g. 4/255")
    text = f"{numerator}/{denominator}" if denominator is not None else _format_number(number)
    return Budget(number, text)


def _format_number(number: float) -> str:
    """Write a budget compactly, as a fraction of 255 when it is one (8/255), else as a decimal."""
    if number in (0.0, 1.0):
        return f"{number:g}"
    steps = round(number * 255)
    if math.isclose(steps / 255, number, rel_tol=0, abs_tol=1e-12):
        return f"{steps}/255"
    return f"{number:g}"


def _split(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


def _as_list(value: object) -> list[object]:
    if isinstance(value, str):
        return list(_split(value))
    if isinstance(value, Iterable):
        return list(value)
    return [value]


def _parse_budgets(value: object) -> tuple[Budget, ...]:
    budgets = sorted({parse_eps(item) for item in _as_list(value)})
    if not budgets:
        raise AdrobustError("eps is empty: give at least one budget, e.g. 0,4/255")
    return tuple(budgets)


def _parse_int(name: str, minimum: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        try:
            number = int(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise AdrobustError(f"invalid {name} {value!r}: use an integer of at least {minimum}")
        return number

    return parse


def _parse_shots(value: object) -> tuple[int, ...]:
    parse = _parse_int("shots", 1)
    shots = sorted({parse(item) for item in _as_list(value)})
    if not shots:
        raise AdrobustError("shots is empty: give at least one reference count, e.g. 4")
    return tuple(shots)


def _parse_max_images(value: object) -> int | None:
    if value is None or str(value).strip().lower() in {"all", "none"}:
        return None
    number = _parse_int("max_images", 2)(value)
    return number


def _parse_datasets(value: object) -> tuple[str, ...]:
    from pytest_adrobust.data import parse_dataset_spec

    specs = [str(item).strip() for item in _as_list(value)]
    if not specs:
        raise AdrobustError("datasets is empty: give at least one dataset, e.g. elpv:mono")
    for spec in specs:
        parse_dataset_spec(spec)
    return tuple(dict.fromkeys(specs))


def anchor_dataset_specs(value: object, base: Path) -> object:
    """Make the relative roots in dataset specs absolute against ``base``.

    Paths in an ini file are relative to its directory, on the command line to the invocation
    directory, and in a marker to the rootdir. A spec that does not parse is returned unchanged,
    so that parsing reports it with the setting's name.
    """
    import os

    from pytest_adrobust.data import parse_dataset_spec

    anchored = []
    for text in (str(item).strip() for item in _as_list(value)):
        try:
            spec = parse_dataset_spec(text)
        except AdrobustError:
            anchored.append(text)
            continue
        if spec.root is None or spec.root.is_absolute():
            anchored.append(text)
            continue
        root = os.path.normpath(base / spec.root)
        anchored.append(f"folder:{root}" if spec.kind == "folder" else f"{spec.kind}:{spec.category}@{root}")
    return anchored


def _parse_choice(name: str, choices: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = str(value).strip()
        if text not in choices:
            raise AdrobustError(f"invalid {name} {value!r}: use one of {', '.join(choices)}")
        return text

    return parse


def _parse_threshold(name: str, low: float, high: float) -> Callable[[object], float | None]:
    def parse(value: object) -> float | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none"}):
            return None
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or not low <= number <= high:
            raise AdrobustError(f"invalid {name} {value!r}: use a number in [{low:g}, {high:g}]")
        return number

    return parse


def _parse_device(value: object) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", text):
        raise AdrobustError(f"invalid device {value!r}: use {DEVICES_HELP}")
    return text


def _parse_backbone(value: object) -> str:
    import timm

    text = str(value).strip()
    if not timm.is_model(text):
        known = ", ".join(timm.list_models("*dinov2*"))
        raise AdrobustError(f"unknown backbone {text!r}: use a timm model name such as {known}")
    return text


def _parse_weights(value: object) -> str:
    return validate_weights(str(value).strip())


def _parse_report(value: object) -> Path | None:
    if value is None or not str(value).strip():
        return None
    path = Path(str(value)).expanduser()
    if path.is_dir():
        raise AdrobustError(f"invalid report path {str(path)!r}: it is a directory; give a file name such as adrobust-report.json")
    if not path.parent.is_dir():
        raise AdrobustError(f"invalid report path {str(path)!r}: the directory {str(path.parent)!r} does not exist")
    return path


def _parse_confidence(value: object) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not 0.5 <= number < 1.0:
        raise AdrobustError(f"invalid confidence {value!r}: use a coverage in [0.5, 1), such as 0.95")
    return number


def _parse_flag(name: str) -> Callable[[object], bool]:
    def parse(value: object) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise AdrobustError(f"invalid {name} {value!r}: use true or false")

    return parse


BASELINE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DEFAULT_BASELINE: Final = "baseline"


def _parse_baseline_name(name: str) -> Callable[[object], str | None]:
    def parse(value: object) -> str | None:
        if value is None:
            return None
        text = str(value).strip()
        if text.endswith(".json") or not BASELINE_NAME.fullmatch(text):
            raise AdrobustError(
                f"invalid {name} name {value!r}: use letters, digits, '.', '_' or '-' without a .json suffix, "
                f"such as main; the file is BASELINE_DIR/NAME.json"
            )
        return text

    return parse


def _parse_compare_fail(value: object) -> tuple[Any, ...]:
    from pytest_adrobust.baseline import Tolerance, parse_tolerances

    # Resolved settings are parsed again for every test, so parsed tolerances pass through.
    if isinstance(value, tuple) and all(isinstance(item, Tolerance) for item in value):
        return value
    return parse_tolerances(str(value))


def _parse_optional_path(value: object) -> Path | None:
    if value is None or not str(value).strip():
        return None
    return Path(str(value).strip()).expanduser()


def _parse_batch_size(value: object) -> int | str:
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    return _parse_int("batch_size", 1)(value)


def _parse_cache(value: object) -> str:
    text = str(value).strip()
    if text in ("auto", "off"):
        return text
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise AdrobustError(f"invalid cache {text!r}: it is a file; give a directory, auto or off")
    return str(path)


@final
@dataclass(frozen=True)
class OptionSpec:
    """One setting: its name, parser, default, help text and whether the marker may set it."""

    name: str
    parse: Callable[[object], Any]
    default: Any
    help: str
    metavar: str
    per_test: bool
    form: str = "value"
    """``value`` (takes a value), ``optional`` (the value may be left out, giving ``const``) or
    ``flag`` (takes no value on the command line, ``true`` or ``false`` in the ini file)."""
    const: Any = None
    has_ini: bool = True

    @property
    def flag(self) -> str:
        return "--adrobust-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "adrobust_" + self.name


OPTIONS: Final[tuple[OptionSpec, ...]] = (
    OptionSpec("datasets", _parse_datasets, ("elpv:mono",),
               "comma-separated dataset specs: elpv:mono, elpv:poly, folder:PATH", "SPECS", True),
    OptionSpec("eps", _parse_budgets, _parse_budgets("0,2/255,4/255,8/255"),
               "comma-separated L-infinity FGSM budgets in [0, 1] pixel units, e.g. 0,4/255,0.03", "BUDGETS", True),
    OptionSpec("shots", _parse_shots, (4,), "comma-separated numbers of normal reference images", "N", True),
    OptionSpec("attack", _parse_choice("attack", ATTACKS), "score",
               "attack gradient: score (the detector's own kNN score) or surrogate (logistic head on pooled features)",
               "NAME", True),
    OptionSpec("seed", _parse_int("seed", 0), 0, "seed of the reference draw, test draw, folds and noise control", "N", True),
    OptionSpec("max_images", _parse_max_images, 32, "test images drawn per class, or 'all'", "N", True),
    OptionSpec("selection", _parse_choice("selection", ("random", "anomalydino")), "random",
               "reference draw: random (seeded) or anomalydino (sorted normal training files seed*shots to "
               "(seed+1)*shots-1, as AnomalyDINO's evaluation picks them)", "NAME", True),
    OptionSpec("masking", _parse_choice("masking", ("auto", "on", "off")), "auto",
               "zero-shot masking of background patches: auto (AnomalyDINO's per-category choice for MVTec AD "
               "and VisA, off elsewhere), on or off", "auto|on|off", True),
    OptionSpec("rotation", _parse_choice("rotation", ("auto", "on", "off")), "auto",
               "add the 8 rotations of each reference to the memory bank: auto (on for MVTec AD and VisA, off "
               "elsewhere), on or off", "auto|on|off", True),
    OptionSpec("max_auroc_drop", _parse_threshold("max_auroc_drop", 0.0, 1.0), None,
               "fail an item whose clean AUROC minus attacked AUROC exceeds this", "X", True),
    OptionSpec("max_ece", _parse_threshold("max_ece", 0.0, 1.0), None,
               "fail an item whose calibrated ECE on its inputs exceeds this", "X", True),
    OptionSpec("min_entropy_gap", _parse_threshold("min_entropy_gap", -1.0, 1.0), None,
               "fail an item (eps > 0) whose mean entropy rise under attack, in bits, is below this", "BITS", True),
    OptionSpec("device", _parse_device, "auto", f"device for the backbone: {DEVICES_HELP}", "DEVICE", False),
    OptionSpec("backbone", _parse_backbone, DEFAULT_BACKBONE, "timm model name of the DINOv2 backbone", "NAME", False),
    OptionSpec("weights", _parse_weights, "auto",
               "auto (cached pretrained weights, else seeded random), pretrained, random, or a "
               ".safetensors/.pth/.pt/.bin path",
               "MODE|PATH", False),
    OptionSpec("resolution", _parse_int("resolution", 14), 448, "smaller image edge in pixels after loading", "PX", False),
    OptionSpec("batch_size", _parse_batch_size, "auto",
               "images per forward and backward pass, or auto (8 on the CPU, sized from free memory on CUDA)",
               "N|auto", False),
    OptionSpec("precision", _parse_choice("precision", ("fp32", "bf16")), "fp32",
               "backbone precision of the default detector: fp32, or bf16 autocast (for CUDA); bf16 scores are "
               "checked against fp32 on a sample", "fp32|bf16", False),
    OptionSpec("cache", _parse_cache, "auto",
               "score cache: auto (inside pytest's cache directory), off, or a directory", "auto|off|DIR", False),
    OptionSpec("gate", _parse_choice("gate", ("point", "interval")), "point",
               "how thresholds fail an item: point (the measured value crosses the limit) or interval (the whole "
               "bootstrap confidence interval lies beyond the limit)", "point|interval", True),
    OptionSpec("bootstrap", _parse_int("bootstrap", 0), 1000,
               "stratified bootstrap resamples for the confidence intervals of every metric, 0 for none", "N", False),
    OptionSpec("confidence", _parse_confidence, 0.95, "coverage of the bootstrap confidence intervals", "LEVEL", False),
    OptionSpec("report", _parse_report, None, "write a JSON report with every metric and per-image score to PATH", "PATH", False),
    OptionSpec("save", _parse_baseline_name("save"), None,
               f"store this run's metrics per test item as baseline NAME (BASELINE_DIR/NAME.json; NAME defaults to "
               f"{DEFAULT_BASELINE})", "NAME", False, form="optional", const=DEFAULT_BASELINE, has_ini=False),
    OptionSpec("compare", _parse_baseline_name("compare"), None,
               f"compare every test item with baseline NAME (NAME defaults to {DEFAULT_BASELINE})", "NAME", False,
               form="optional", const=DEFAULT_BASELINE, has_ini=False),
    OptionSpec("compare_fail", _parse_compare_fail, (),
               "fail items that regressed against the baseline, e.g. 'auroc_drop:+0.02 ece:+0.01 auroc:-2%' "
               "(+X: may rise by at most X, -X: may fall by at most X, % relative to the baseline value)",
               "EXPR", False),
    OptionSpec("baseline_dir", _parse_optional_path, Path(".adrobust"),
               "directory of the baselines, relative to the rootdir; meant to be committed", "DIR", False),
    OptionSpec("overwrite", _parse_flag("overwrite"), False,
               "let --adrobust-save replace an existing baseline of the same name", "", False, form="flag",
               has_ini=False),
    OptionSpec("junit_properties", _parse_flag("junit_properties"), False,
               "attach each item's metrics to the JUnit XML report as properties (record_property)", "", False,
               form="flag"),
    OptionSpec("plots", _parse_optional_path, None,
               "write a reliability diagram, AUROC-versus-eps curves and entropy histograms to DIR (needs matplotlib)",
               "DIR", False),
    OptionSpec("plots_format", _parse_choice("plots_format", ("png", "svg")), "png", "image format of the plots",
               "png|svg", False),
)
OPTIONS_BY_NAME: Final = {option.name: option for option in OPTIONS}


@final
@dataclass(frozen=True)
class Thresholds:
    """Limits that :meth:`CaseResult.check` asserts; ``None`` means not checked."""

    max_auroc_drop: float | None = None
    max_ece: float | None = None
    min_entropy_gap: float | None = None
    gate: str = "point"
    """``point`` or ``interval``: see :meth:`CaseResult.violations`."""

    def configured(self) -> bool:
        return any(getattr(self, name) is not None for name in ("max_auroc_drop", "max_ece", "min_entropy_gap"))


@final
@dataclass(frozen=True)
class CaseSettings:
    """Per-test settings, after precedence: what the marker, command line or ini chose."""

    datasets: tuple[str, ...]
    eps: tuple[Budget, ...]
    shots: tuple[int, ...]
    attack: str
    seed: int
    max_images: int | None
    thresholds: Thresholds
    selection: str = "random"
    masking: str = "auto"
    rotation: str = "auto"


@final
@dataclass(frozen=True)
class RunSettings:
    """Session-wide settings: the detector, the device and the outputs."""

    device: str
    backbone: str
    weights: str
    resolution: int
    batch_size: int | str
    cache: str
    precision: str
    report: Path | None
    bootstrap: int = 0
    confidence: float = 0.95
    save: str | None = None
    compare: str | None = None
    compare_fail: tuple[Any, ...] = ()
    baseline_dir: Path = Path(".adrobust")
    overwrite: bool = False
    junit_properties: bool = False
    plots: Path | None = None
    plots_format: str = "png"


def resolve(sources: Iterable[Mapping[str, object]], where: Iterable[str]) -> dict[str, Any]:
    """Return every setting parsed from the first source that sets it, else its default.

    ``sources`` are ordered from highest precedence to lowest, and ``where`` names each one for
    error messages (``"--adrobust-eps"``, ``"ini"``). A source sets an option when it contains the
    key, whatever the value: ``max_images=None`` means all images, not "unset". Raises
    :class:`AdrobustError` naming the source.
    """
    sources = list(sources)
    names = list(where)
    if len(sources) != len(names):
        raise ValueError(f"{len(sources)} sources but {len(names)} labels")
    values: dict[str, Any] = {}
    for option in OPTIONS:
        for source, label in zip(sources, names):
            if option.name in source:
                try:
                    values[option.name] = option.parse(source[option.name])
                except AdrobustError as error:
                    raise AdrobustError(f"{label.format(flag=option.flag, ini=option.ini, name=option.name)}: {error}") from None
                break
        else:
            values[option.name] = option.default
    return values


def case_settings(values: Mapping[str, Any]) -> CaseSettings:
    """Build :class:`CaseSettings` from resolved values."""
    thresholds = Thresholds(values["max_auroc_drop"], values["max_ece"], values["min_entropy_gap"], values["gate"])
    return CaseSettings(
        datasets=values["datasets"],
        eps=values["eps"],
        shots=values["shots"],
        attack=values["attack"],
        seed=values["seed"],
        max_images=values["max_images"],
        thresholds=thresholds,
        selection=values["selection"],
        masking=values["masking"],
        rotation=values["rotation"],
    )


def run_settings(values: Mapping[str, Any]) -> RunSettings:
    """Build :class:`RunSettings` from resolved values."""
    return RunSettings(
        device=values["device"],
        backbone=values["backbone"],
        weights=values["weights"],
        resolution=values["resolution"],
        batch_size=values["batch_size"],
        cache=values["cache"],
        precision=values["precision"],
        report=values["report"],
        bootstrap=values["bootstrap"],
        confidence=values["confidence"],
        save=values["save"],
        compare=values["compare"],
        compare_fail=values["compare_fail"],
        baseline_dir=values["baseline_dir"],
        overwrite=values["overwrite"],
        junit_properties=values["junit_properties"],
        plots=values["plots"],
        plots_format=values["plots_format"],
    )


def check_marker_kwargs(kwargs: Mapping[str, object]) -> None:
    """Reject marker keywords that are unknown or session-wide, naming the keyword and the fix."""
    for name in kwargs:
        option = OPTIONS_BY_NAME.get(name)
        if option is None:
            valid = ", ".join(item.name for item in OPTIONS if item.per_test)
            raise AdrobustError(f"unknown adrobust marker keyword {name!r}: use {valid}")
        if not option.per_test:
            raise AdrobustError(
                f"{name!r} applies to the whole session and cannot be set by a marker: use {option.flag} or the "
                f"ini key {option.ini}"
            )


__all__ = [
    "OPTIONS",
    "Budget",
    "CaseSettings",
    "OptionSpec",
    "RunSettings",
    "Thresholds",
    "case_settings",
    "check_marker_kwargs",
    "parse_eps",
    "resolve",
    "run_settings",
]
