"""Progress reporting for feature extraction and attacks: rich bars on a terminal, silence elsewhere."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Protocol

logger = logging.getLogger("pytest_adrobust")


class ProgressReporter(Protocol):
    """Receives the steps of long computations."""

    def task(self, description: str, total: int) -> contextlib.AbstractContextManager[Callable[[int], None]]:
        """Open a task of ``total`` units; the context yields a function that advances it."""
        ...


class SilentProgress:
    """Progress reporter that only logs each task at DEBUG level, for CI logs and tests."""

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        logger.debug("%s (%d images)", description, total)
        yield lambda units: None


class RichProgress:
    """Progress reporter that draws a transient rich bar while pytest's output capture is suspended.

    ``suspend_capture`` is a context manager factory, such as the capture manager's
    ``global_and_fixture_disabled``, so that bars reach the terminal from inside fixtures.
    """

    def __init__(self, suspend_capture: Callable[[], contextlib.AbstractContextManager[object]]) -> None:
        self._suspend_capture = suspend_capture

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with self._suspend_capture():
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
                task_id = bar.add_task(description, total=total)
                yield lambda units: bar.advance(task_id, units)
