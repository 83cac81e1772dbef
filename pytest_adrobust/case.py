"""The result one test item receives, and where its thresholds are asserted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import final

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.evaluation import BudgetMetrics, CaseEvaluation
from pytest_adrobust.settings import Budget, Thresholds


class ThresholdError(AssertionError):
    """One or more configured thresholds were crossed; the message lists each one."""


@final
@dataclass(frozen=True)
class CaseResult:
    """Metrics of one dataset, shot count and budget, as the ``adrobust_case`` fixture returns them.

    Every metric of :class:`~pytest_adrobust.evaluation.BudgetMetrics` is an attribute, so plain
    asserts work (``assert adrobust_case.auroc_drop < 0.1``). :meth:`check` asserts the configured
    thresholds.
    """

    dataset: str
    shots: int
    eps: Budget
    attack: str
    seed: int
    clean_auroc: float
    thresholds: Thresholds
    metrics: BudgetMetrics = field(repr=False)
    evaluation: CaseEvaluation = field(repr=False, compare=False)

    def __getattr__(self, name: str) -> float:
        # Only reached for names that are not fields: expose the metrics as attributes.
        metrics = self.__dict__.get("metrics")
        if metrics is not None and name in metrics.scalars():
            return getattr(metrics, name)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    @property
    def label(self) -> str:
        """Return ``dataset, N-shot, eps E``, the context every threshold message names."""
        return f"{self.dataset}, {self.shots}-shot, eps {self.eps}"

    @property
    def warnings(self) -> list[str]:
        """Return the self-check findings of this case's dataset and shot count."""
        return list(self.evaluation.warnings)

    def interval(self, metric: str) -> tuple[float, float] | None:
        """Return the bootstrap confidence interval of ``metric``, or ``None`` without a bootstrap."""
        return self.metrics.intervals.get(metric)

    def _interval_text(self, metric: str) -> str:
        bounds = self.interval(metric)
        plan = self.evaluation.bootstrap
        if bounds is None or plan is None:
            return ""
        return f", drop {plan.confidence:.0%} CI [{bounds[0]:.4f}, {bounds[1]:.4f}]" if metric == "auroc_drop" else (
            f", {plan.confidence:.0%} CI [{bounds[0]:.4f}, {bounds[1]:.4f}]"
        )

    def _crosses(self, metric: str, limit: float, upper: bool) -> bool:
        """Decide whether ``metric`` crosses ``limit`` under the gate: an upper or a lower limit."""
        value = getattr(self.metrics, metric)
        if self.thresholds.gate == "interval":
            bounds = self.interval(metric)
            if bounds is None:
                raise AdrobustError(
                    f"gate 'interval' on {self.label} has no confidence interval for {metric}: set "
                    "--adrobust-bootstrap to a number of resamples such as 1000, or use gate 'point'"
                )
            # The whole interval must lie beyond the limit, so a model sitting at its limit passes.
            return bounds[0] > limit if upper else bounds[1] < limit
        return value > limit if upper else value < limit

    def violations(self) -> list[str]:
        """Return one message per crossed threshold; empty when every configured limit holds.

        With the ``point`` gate a limit is crossed by the measured value. With the ``interval``
        gate it is crossed only when the whole bootstrap confidence interval lies beyond it: the
        lower bound above a maximum, or the upper bound below a minimum. ``min_entropy_gap``
        applies to nonzero budgets only, because at eps 0 the attacked inputs are the clean inputs
        and the gap is 0 by construction.
        """
        limits = self.thresholds
        gate = "; gate interval: the whole interval lies beyond the limit" if limits.gate == "interval" else ""
        messages = []
        if limits.max_auroc_drop is not None and self._crosses("auroc_drop", limits.max_auroc_drop, upper=True):
            messages.append(
                f"AUROC drop {self.metrics.auroc_drop:.4f} exceeds max_auroc_drop {limits.max_auroc_drop:g} on "
                f"{self.label} (clean AUROC {self.clean_auroc:.4f}, attacked {self.metrics.auroc:.4f}"
                f"{self._interval_text('auroc_drop')}{gate})"
            )
        if limits.max_ece is not None and self._crosses("ece", limits.max_ece, upper=True):
            messages.append(
                f"calibrated ECE {self.metrics.ece:.4f} exceeds max_ece {limits.max_ece:g} on {self.label} "
                f"(noise floor {self.metrics.ece_floor:.4f}{self._interval_text('ece')}{gate})"
            )
        if (
            limits.min_entropy_gap is not None
            and self.eps.value > 0
            and self._crosses("entropy_gap", limits.min_entropy_gap, upper=False)
        ):
            details = f"{self._interval_text('entropy_gap')}{gate}".lstrip(", ").lstrip("; ")
            messages.append(
                f"entropy gap {self.metrics.entropy_gap:.4f} bits is below min_entropy_gap {limits.min_entropy_gap:g} "
                f"on {self.label}" + (f" ({details})" if details else "")
            )
        return messages

    def check(self) -> None:
        """Assert every configured threshold, with one message line per crossed threshold.

        Raises
        ------
        ThresholdError
            When a threshold is crossed.
        pytest_adrobust.AdrobustError
            When no threshold is configured, because a check that cannot fail is not a check.
        """
        __tracebackhide__ = True  # The failure belongs to the test that called check().
        if not self.thresholds.configured():
            raise AdrobustError(
                f"check() on {self.label} has no threshold to assert: set max_auroc_drop, max_ece or "
                "min_entropy_gap in the adrobust marker, on the command line or in the ini file"
            )
        messages = self.violations()
        if messages:
            raise ThresholdError("\n".join(messages))
