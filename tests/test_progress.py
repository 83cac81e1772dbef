"""The rich progress reporter draws its bar while pytest's output capture is suspended."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pytest_adrobust.progress import RichProgress


def test_rich_progress_suspends_capture() -> None:
    events: list[str] = []

    @contextlib.contextmanager
    def suspend() -> Iterator[None]:
        events.append("suspend")
        yield
        events.append("resume")

    progress = RichProgress(suspend)
    with progress.task("scoring", total=3) as advance:
        assert events == ["suspend"]
        advance(2)
        advance(1)
    assert events == ["suspend", "resume"]

