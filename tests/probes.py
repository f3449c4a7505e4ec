"""Hostile-input probes (issue 21), recorded for the fault suite's report.

A probe is one thing a hostile user tries, of one of the issue's nine classes. :func:`probe` wraps
it: the probe counts as *tried* when it starts and as *held* only when every assertion in its block
passed. Each probe records the CLI calls it saw (exit code, wall and CPU seconds each: the ``cli``
fixture and the subprocess helpers report them through :func:`seen`) and how many tracebacks reached
its output. With
``TDC_FAULT_SUMMARY`` set (``make test-faults``) the records are appended to that file, where
tools/reliability_report.py turns them into a per-class table; otherwise they are only kept in
:data:`RECORDS` (a default test run leaves no file behind).

Durations are recorded, not asserted: "a refusal takes seconds" is a figure of the sweep's report,
measured on whatever machine ran it, not a unit-test threshold. CPU seconds are recorded beside wall
seconds because the wall time of a loaded machine says little (an in-process call's CPU time is the
test process's; a subprocess's is its own, from ``getrusage``).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

CLASSES = {1: "secrets scrubbed at every sink", 2: "CLI usage errors", 3: "OS errors", 4: "bad data refused",
           5: "resource bombs", 6: "prompt templates", 7: "assemble repairs the manifest",
           8: "read-only / full memory bank", 9: "non-run dirs, markup, URLs"}
TRACEBACK = "Traceback (most recent call last)"
RECORDS: list[dict[str, Any]] = []  # this process's records, whether or not a summary file is set


@dataclass
class Probe:
    """One probe in progress: what it saw so far."""

    cls: int
    name: str
    calls: list[tuple[int, float, float]] = field(default_factory=list)  # (exit code, wall s, CPU s) per call
    tracebacks: int = 0
    refusal: bool = False  # it expects a refusal (exit 2, one paragraph)


_active: list[Probe] = []


def seen(*texts: str, code: int | None = None, seconds: float = -1.0, cpu_s: float = -1.0) -> None:
    """Tell the innermost running probe about output it saw (and a CLI call's exit code, wall and CPU
    seconds; -1 when unknown). Outside a probe this does nothing."""
    if not _active:
        return
    p = _active[-1]
    p.tracebacks += sum(t.count(TRACEBACK) for t in texts if t)
    if code is not None:
        p.calls.append((code, round(seconds, 3), round(cpu_s, 3)))


def children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def record(rec: dict[str, Any]) -> None:
    """Keep ``rec`` and, under ``make test-faults``, append it to ``$TDC_FAULT_SUMMARY``."""
    RECORDS.append(rec)
    summary = os.environ.get("TDC_FAULT_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(json.dumps(rec) + "\n")


@contextmanager
def probe(cls: int, name: str) -> Iterator[Probe]:
    """Run one probe of class ``cls``: tried now, held when the block's assertions pass.

    An exception other than a failed assertion escaping the block is a traceback the user would
    have seen (the in-process CLI re-raises what it does not handle), so it counts as one.
    """
    assert cls in CLASSES, cls
    p = Probe(cls, name)
    _active.append(p)
    held = False
    t0 = time.monotonic()
    try:
        yield p
        held = True
    except AssertionError:
        raise
    except BaseException:
        p.tracebacks += 1
        raise
    finally:
        _active.remove(p)
        record({"hostile_class": cls, "class_name": CLASSES[cls], "probe": name, "held": held,
                "tracebacks": p.tracebacks, "refusal": p.refusal, "calls": p.calls,
                "seconds": round(time.monotonic() - t0, 3)})


def refused(code: int, err: str, *needles: str) -> None:
    """Exit 2, one paragraph (no traceback) that mentions every needle."""
    if _active:
        _active[-1].refusal = True
    assert code == 2, err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def files_of(root: Path) -> dict[Path, bytes]:
    """Every file under ``root`` with its bytes (empty when ``root`` does not exist)."""
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (directories as None): what "wrote nothing" compares."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}
