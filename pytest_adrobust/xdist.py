"""pytest-xdist support: one worker per case, and the worker reports the controller merges.

pytest-xdist's ``loadgroup`` mode sends the items of one ``xdist_group`` to one worker by a
``@group`` suffix that it appends to node ids. With pytest 9 that suffix no longer reaches the
node ids, because pytest-xdist 3.8 assigns ``item._nodeid``, which pytest 9 no longer reads. The
scheduler below therefore also groups ``adrobust_case`` items by the case in their test id, such as
``elpv-mono-4shot`` in ``test_x[elpv-mono-4shot-eps4/255]``.
"""

from __future__ import annotations

import re
from typing import Any, Final

# The case part of a test id made by the plugin: everything up to "<N>shot" before "-eps".
CASE_IN_NODEID: Final = re.compile(r"\[(?P<case>[^\[\]]*?-\d+shot)-eps[^\[\]]*\]$")


def case_scope(nodeid: str) -> str | None:
    """Return the scheduling scope of an ``adrobust_case`` item from its node id, else ``None``."""
    match = CASE_IN_NODEID.search(nodeid)
    return f"adrobust:{match.group('case')}" if match is not None else None


def make_group_scheduler(config: Any, log: Any) -> Any:
    """Return pytest-xdist's loadgroup scheduler, extended to keep each case on one worker."""
    from xdist.scheduler import LoadGroupScheduling

    class CaseGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            # A working "@group" suffix takes precedence, as in pytest-xdist itself.
            if nodeid.rfind("@") > nodeid.rfind("]"):
                return str(super()._split_scope(nodeid))
            return case_scope(nodeid) or str(super()._split_scope(nodeid))

    return CaseGroupScheduling(config, log)
