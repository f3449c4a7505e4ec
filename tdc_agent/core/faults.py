"""Failpoints: named places where a crash test can kill the process (SIGKILL), as databases do.

Inert unless ``TDC_AGENT_FAILPOINT=<name>:<n>`` is set: then the process kills itself, with no
chance to clean up, at the n-th time it passes the named point. ``TDC_AGENT_FAILPOINT_TRACE=<file>``
appends every point passed to a file, so a test can pick kill positions across a whole run. The
points sit where a crash does the most harm: between writing a temporary file and renaming it,
between the two renames of a directory swap, after an optimizer step, after a memory-bank write,
after an agent round, and between the members of a progressive model being assembled.
"""

from __future__ import annotations

import os
import signal

POINTS = ("write.file", "write.dir", "train.step", "memory.write", "agent.candidate", "agent.round",
          "assemble.member")
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Pass the point ``name`` (one of :data:`POINTS`)."""
    spec = os.environ.get("TDC_AGENT_FAILPOINT")
    trace = os.environ.get("TDC_AGENT_FAILPOINT_TRACE")
    if not spec and not trace:
        return
    n = _hits[name] = _hits.get(name, 0) + 1
    if trace:
        with open(trace, "a") as f:
            f.write(name + "\n")
    if spec:
        target, _, count = spec.partition(":")
        if name == target and n == int(count or 1):
            os.kill(os.getpid(), signal.SIGKILL)
