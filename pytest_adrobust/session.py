"""The state of one robustness run: settings, shared evaluations, item outcomes and outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, final

import pytest
import torch

from pytest_adrobust.case import CaseResult
from pytest_adrobust.data import DatasetSplit, load_dataset, parse_dataset_spec, sample_case
from pytest_adrobust.detectors import Detector
from pytest_adrobust.errors import AdrobustError, AdrobustWarning
from pytest_adrobust.cache import ScoreCache
from pytest_adrobust.evaluation import (
    CaseEvaluation,
    CaseKey,
    attacked_scores,
    budget_metrics,
    ensure_inputs,
    evaluate_case,
)
from pytest_adrobust.progress import ProgressReporter, SilentProgress
from pytest_adrobust.settings import Budget, CaseSettings, RunSettings

logger = logging.getLogger("pytest_adrobust")


@final
@dataclass(frozen=True)
class CaseParam:
    """The parameter of one ``adrobust_case`` item: what to evaluate and which limits apply."""

    dataset: str
    shots: int
    eps: Budget
    settings: CaseSettings

    def plan_key(self) -> tuple[str, int, int, int | None, str]:
        return (self.dataset, self.shots, self.settings.seed, self.settings.max_images, self.settings.attack)


@final
@dataclass
class DetectorInfo:
    """Description of a detector as it ran: backbone, weights, device and resolution."""

    backbone: str
    weights: str
    device: str
    resolution: int
    random_init: bool
    weights_sha256: str | None = None
    weights_path: str | None = None
    precision: str = "fp32"


@final
@dataclass
class ItemRecord:
    """One test item that used ``adrobust_case`` and how it ended."""

    nodeid: str
    key: CaseKey
    eps: Budget
    thresholds: dict[str, float | None]
    gate: str = "point"
    outcome: str = "not run"
    message: str = ""
    comparison: dict[str, Any] | None = None
    """The comparison with the baseline, when one is compared (see :mod:`pytest_adrobust.baseline`)."""


def canonical_nodeid(item: pytest.Item) -> str:
    """Return the node id of ``item`` without the ``@group`` suffix that pytest-xdist's loadgroup adds.

    Reports and baselines key items by this id, so that serial and distributed runs agree.
    """
    groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                     for mark in item.iter_markers("xdist_group")})
    suffix = "@" + "_".join(groups)
    if groups and item.nodeid.endswith(suffix):
        return item.nodeid[: -len(suffix)]
    return item.nodeid


CPU_BATCH_SIZE = 8
MAX_BATCH_SIZE = 64


def batch_size_for_memory(free_bytes: int, per_image_bytes: int, share: float = 0.5) -> int:
    """Return how many images fit in ``share`` of ``free_bytes``, between 1 and ``MAX_BATCH_SIZE``."""
    if per_image_bytes <= 0:
        return MAX_BATCH_SIZE
    return max(1, min(MAX_BATCH_SIZE, int(share * free_bytes // per_image_bytes)))


def choose_batch_size(setting: int | str, detector: Detector) -> int:
    """Return the batch size for ``detector``: the setting, or one sized from free memory for ``auto``.

    On CUDA, ``auto`` measures the peak memory of a forward and backward pass on one image and
    fills half of the free memory. On the CPU it returns 8, because larger batches gain little
    speed there. Batches that still run out of memory are halved and retried during the run.
    """
    if isinstance(setting, int):
        return setting
    device = torch.device(detector.device)
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    # NOTE: this probe runs only on CUDA machines; the test suite covers batch_size_for_memory.
    side = detector.resolution - detector.resolution % detector.patch_size
    probe = torch.rand(1, 3, side, side, device=device, requires_grad=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    detector.fit(probe.detach())
    scores, _ = detector.score_and_embed(probe)
    scores.sum().backward()
    per_image = torch.cuda.max_memory_allocated(device) - baseline
    free, _ = torch.cuda.mem_get_info(device)
    return batch_size_for_memory(free, per_image)


def resolve_device(name: str) -> torch.device:
    """Return the torch device for a ``device`` setting; ``auto`` picks CUDA when available.

    Raises
    ------
    AdrobustError
        When CUDA is requested but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AdrobustError(f"device {name!r} requested but CUDA is not available here: use --adrobust-device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise AdrobustError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


# Categories where AnomalyDINO's category-agnostic setting masks the background: objects on a
# large uniform background. Rotation augmentation is on for every category of both benchmarks.
MVTEC_MASKED_CATEGORIES = frozenset({"capsule", "hazelnut", "pill", "screw", "toothbrush"})


def case_preprocessing(split: DatasetSplit, settings: CaseSettings, random_init: bool = False) -> tuple[bool, bool]:
    """Return whether masking and rotation apply to a dataset, resolving ``auto`` per category.

    ``auto`` never masks for a random-init backbone: the mask threshold is set for the token
    magnitudes of pretrained DINOv2, and random tokens fall below it, so every patch would be
    masked and every score would be 0.
    """
    # The spec, not the display name, because names of same-named folders get a suffix.
    spec = parse_dataset_spec(split.spec)
    kind, category = spec.kind, spec.category
    benchmark = kind in ("mvtec", "visa")
    masking_default = kind == "visa" or (kind == "mvtec" and category in MVTEC_MASKED_CATEGORIES)
    masking_default = masking_default and not random_init
    masking = settings.masking == "on" or (settings.masking == "auto" and masking_default)
    rotation = settings.rotation == "on" or (settings.rotation == "auto" and benchmark)
    return masking, rotation


def configure_detector(detector: Detector, masking: bool, rotation: bool) -> None:
    """Switch masking and rotation on the detector for the next case.

    Raises
    ------
    AdrobustError
        When an option is requested but the detector has no such attribute.
    """
    for name, requested in (("masking", masking), ("rotation", rotation)):
        if hasattr(detector, name):
            setattr(detector, name, requested)
        elif requested:
            raise AdrobustError(
                f"{name} is on for this case but detector {type(detector).__name__} has no {name!r} attribute: "
                f"pass --adrobust-{name}=off (or {name}=\"off\" in the marker), or add the attribute to the detector"
            )


@final
class AdrobustSession:
    """Owns a run's state, so that expensive work is done once per dataset, shot count and seed."""

    def __init__(self, run: RunSettings, defaults: dict[str, Any], progress: ProgressReporter | None = None) -> None:
        self.run = run
        self.defaults = defaults
        self.progress: ProgressReporter = progress or SilentProgress()
        self.started = time.time()
        self.started_at = datetime.now(timezone.utc)
        self.splits: dict[str, DatasetSplit] = {}
        self.planned: dict[tuple[str, int, int, int | None, str], set[Budget]] = defaultdict(set)
        self.evaluations: dict[CaseKey, CaseEvaluation] = {}
        self.failures: dict[CaseKey, str] = {}
        self.batch_sizes: dict[str, int] = {}
        self.detectors: dict[str, DetectorInfo] = {}
        self.items: dict[str, ItemRecord] = {}
        self.cache: ScoreCache | None = None
        self.report_written: Path | None = None
        self.report_replaced = False

    def split(self, spec: str) -> DatasetSplit:
        """Return the dataset for ``spec``, loading its index once per session."""
        if spec not in self.splits:
            split = load_dataset(spec)
            # Two folders with the same base name would share test ids and summary titles.
            if any(other.name == split.name for other in self.splits.values()):
                suffix = hashlib.sha256(spec.encode()).hexdigest()[:6]
                split = dataclasses.replace(split, name=f"{split.name}-{suffix}")
            self.splits[spec] = split
        return self.splits[spec]

    def validate_case(self, settings: CaseSettings) -> None:
        """Check that every dataset loads and supports the draws ``settings`` ask for.

        Raises :class:`AdrobustError` naming the dataset, before any model runs.
        """
        if settings.thresholds.gate == "interval" and self.run.bootstrap == 0:
            raise AdrobustError(
                "gate 'interval' needs bootstrap confidence intervals but bootstrap is 0: set --adrobust-bootstrap "
                "to a number of resamples such as 1000, or use gate 'point'"
            )
        for spec in settings.datasets:
            split = self.split(spec)
            for shots in settings.shots:
                sample_case(split, shots, settings.max_images, settings.seed, selection=settings.selection)
            case_preprocessing(split, settings)

    def plan(self, param: CaseParam) -> None:
        """Record that an item will ask for ``param``, so its case evaluates all budgets in one go."""
        self.planned[param.plan_key()].add(param.eps)

    def group_name(self, param: CaseParam) -> str:
        """Return the pytest-xdist group of an item: one per dataset, shot count, seed, size and attack."""
        digest = hashlib.sha256(repr(param.plan_key()).encode()).hexdigest()[:8]
        return f"adrobust-{self.split(param.dataset).name}-{param.shots}shot-{digest}"

    def case_id(self, param: CaseParam) -> str:
        """Return the readable test id, such as ``elpv-mono-4shot-eps4/255``."""
        return f"{self.split(param.dataset).name}-{param.shots}shot-eps{param.eps}"

    def case_result(self, detector: Detector, param: CaseParam, item: pytest.Item) -> CaseResult:
        """Return the result for ``param``, evaluating its case on first use.

        Self-check findings of a new evaluation are attached to ``item`` as :class:`AdrobustWarning`,
        so they appear once in pytest's warnings summary under the item that triggered the work.
        """
        nodeid = item.nodeid
        settings = param.settings
        random_init = bool(getattr(detector, "random_init", False))
        masking, rotation = case_preprocessing(self.split(param.dataset), settings, random_init)
        configure_detector(detector, masking, rotation)
        fingerprint = detector.fingerprint()
        key = CaseKey(
            param.dataset,
            param.shots,
            settings.seed,
            settings.max_images,
            settings.attack,
            fingerprint,
            settings.selection,
            masking,
            rotation,
        )
        if fingerprint not in self.detectors:
            described = detector.describe()
            self.detectors[fingerprint] = DetectorInfo(
                backbone=described.get("backbone", type(detector).__name__),
                weights=described.get("weights", "unknown"),
                device=str(detector.device),
                resolution=int(detector.resolution),
                random_init=bool(getattr(detector, "random_init", "random-init" in described.get("weights", ""))),
                precision=str(getattr(detector, "precision", "fp32")),
            )
            weights_info = getattr(detector, "weights_info", None)
            if weights_info is not None:
                self.detectors[fingerprint].weights_sha256 = weights_info.sha256
                self.detectors[fingerprint].weights_path = weights_info.path

        # A case that failed once fails the same way for every item, without recomputing it.
        if key in self.failures:
            raise AdrobustError(self.failures[key])
        evaluation = self.evaluations.get(key)
        if evaluation is None:
            budgets = self.planned.get(param.plan_key(), set()) | {param.eps}
            if fingerprint not in self.batch_sizes:
                self.batch_sizes[fingerprint] = choose_batch_size(self.run.batch_size, detector)
                logger.info("batch size %d for %s", self.batch_sizes[fingerprint], self.detectors[fingerprint].backbone)
            try:
                evaluation = evaluate_case(
                    detector,
                    self.split(param.dataset),
                    key,
                    sorted(budgets),
                    self.batch_sizes[fingerprint],
                    self.progress,
                    self.cache,
                    n_resamples=self.run.bootstrap,
                    confidence=self.run.confidence,
                )
            except AdrobustError as error:
                self.failures[key] = str(error)
                raise
            self.evaluations[key] = evaluation
            for message in evaluation.warnings:
                item.warn(AdrobustWarning(message))
        elif param.eps not in evaluation.budgets:
            ensure_inputs(detector, evaluation.prepared)
            scores = attacked_scores(detector, evaluation.prepared, param.eps, self.batch_sizes[fingerprint], self.progress)
            evaluation.budgets[param.eps] = budget_metrics(evaluation.prepared, param.eps, scores, evaluation.bootstrap)

        self.items[nodeid] = ItemRecord(
            nodeid=canonical_nodeid(item),
            key=key,
            eps=param.eps,
            thresholds={
                "max_auroc_drop": settings.thresholds.max_auroc_drop,
                "max_ece": settings.thresholds.max_ece,
                "min_entropy_gap": settings.thresholds.min_entropy_gap,
            },
            gate=settings.thresholds.gate,
        )
        return CaseResult(
            dataset=evaluation.prepared.dataset_name,
            shots=param.shots,
            eps=param.eps,
            attack=settings.attack,
            seed=settings.seed,
            clean_auroc=evaluation.prepared.clean_auroc,
            thresholds=settings.thresholds,
            metrics=evaluation.budgets[param.eps],
            evaluation=evaluation,
        )

    def record_outcome(self, report: pytest.TestReport) -> None:
        """Store how an item that used ``adrobust_case`` ended, for the verdict column and the report."""
        record = self.items.get(report.nodeid)
        if record is None:
            return
        if report.when == "call" or report.outcome != "passed":
            if hasattr(report, "wasxfail"):
                record.outcome = "xpassed" if report.passed else "xfailed"
            else:
                record.outcome = report.outcome
            if report.failed and report.longrepr is not None:
                crash = getattr(report.longrepr, "reprcrash", None)
                record.message = crash.message if crash is not None else str(report.longrepr)

    def verdict(self, key: CaseKey, eps: Budget) -> str:
        """Return the outcomes of the items that used one budget of one case, for the summary."""
        outcomes = [record.outcome for record in self.items.values() if record.key == key and record.eps == eps]
        if not outcomes:
            return "-"
        labels = {"passed": "pass", "failed": "FAIL", "xfailed": "xfail", "xpassed": "XPASS", "skipped": "skip"}
        return " ".join(sorted({labels.get(outcome, outcome) for outcome in outcomes}))
