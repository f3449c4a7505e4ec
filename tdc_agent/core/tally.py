"""A process-wide tally of the steps a run should take once each: the plan built, the data loaded
(per split), the LLM resolved, the memory bank opened, a latent autoencoder loaded.

The functions that do those steps count themselves here; ``tdc-agent run`` writes what one run took
into its log (``logs/run.log``: ``run built once: plan=1 data[train]=1 ...``), so a run that rebuilds
something shows it, and the tests check the same line.
"""

from __future__ import annotations

import threading
from collections import Counter

_COUNTS: Counter[str] = Counter()
_LOCK = threading.Lock()


def count_step(step: str) -> None:
    """Count one ``step`` (e.g. ``"plan"``, ``"data[val]"``, ``"llm"``, ``"memory"``)."""
    with _LOCK:
        _COUNTS[step] += 1


def step_counts() -> dict[str, int]:
    """A copy of the counts so far in this process."""
    with _LOCK:
        return dict(_COUNTS)


def steps_since(before: dict[str, int]) -> dict[str, int]:
    """The steps counted since ``before`` (an earlier :func:`step_counts`), sorted by name."""
    now = step_counts()
    return {k: now[k] - before.get(k, 0) for k in sorted(now) if now[k] - before.get(k, 0)}


__all__ = ["count_step", "step_counts", "steps_since"]
