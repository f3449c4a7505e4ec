"""Save a pruned model: an ordinary model directory plus its pruning record.

The record itself (what ``pruning.json`` holds, and how loading replays it) has one owner,
:mod:`tdc_agent.models.record`; :func:`tdc_agent.pruning.apply.prune_to_budget` attaches it to the
model it builds, and :func:`tdc_agent.models.store.load_model` replays it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.record import record_of
from ..models.store import save_model
from .apply import PruneResult


def save_pruned(directory: str | Path, result: PruneResult, meta: dict[str, Any] | None = None) -> Path:
    """Save a :class:`PruneResult`'s model with its pruning record and a summary in its metadata."""
    assert record_of(result.model) is not None, "a PruneResult's model carries its pruning record"
    meta = dict(meta or {})
    meta["pruning"] = {k: v for k, v in result.summary().items() if k not in ("kept_channels",)}
    return save_model(directory, result.model, meta)
