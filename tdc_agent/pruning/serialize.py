"""Pickle-free save/load of pruned models.

A pruned model directory is an ordinary model directory (see :mod:`tdc_agent.core.io`) whose
``config.json`` is the *dense base* architecture, plus ``pruning.json``: torch-pruning's pruning
history (root module, out/in, channel indices) and the fix-up version. Loading rebuilds the dense
base, replays the history with ``DependencyGraph.load_pruning_history``, applies the same fix-ups,
and loads the safetensors weights strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.io import PRUNING_ATTR, PRUNING_FILE, read_json, save_model
from ..core.errors import CheckpointError
from .apply import FIXUP_VERSION, PruneResult, fix_up
from .units import build_graph


MAX_HISTORY = 2000


def save_pruned(directory: str | Path, result: PruneResult, meta: dict[str, Any] | None = None) -> Path:
    """Save a :class:`PruneResult`'s model with its pruning record."""
    record = {
        "fixup_version": FIXUP_VERSION,
        "history": result.history,
        "levels": result.scheme.levels,
        "kept_channels": result.kept_channels,
    }
    meta = dict(meta or {})
    meta["pruning"] = {k: v for k, v in result.summary().items() if k not in ("kept_channels",)}
    setattr(result.model, PRUNING_ATTR, record)
    return save_model(directory, result.model, meta)


def restore_structure(model: torch.nn.Module, directory: Path) -> dict[str, Any]:
    """Replay a saved pruning record on a freshly built dense model (in place); returns the record."""
    record = read_json(directory / PRUNING_FILE, "pruning record")
    if not isinstance(record, dict):
        raise CheckpointError(f"{directory / PRUNING_FILE} must hold a JSON object (a pruning record), not "
                              f"{type(record).__name__}. Re-export the model with tdc-agent.")
    if record.get("fixup_version") != FIXUP_VERSION:
        raise CheckpointError(
            f"{directory / PRUNING_FILE} was written with fix-up version {record.get('fixup_version')}; "
            f"this tdc-agent applies version {FIXUP_VERSION}. Re-export the model with this version."
        )
    history = record.get("history")
    if not isinstance(history, list):
        raise CheckpointError(f"{directory / PRUNING_FILE} has no valid 'history' list.")
    if len(history) > MAX_HISTORY:
        # replaying costs ~4 ms an entry: a crafted 200,000-entry file would load for minutes
        raise CheckpointError(f"{directory / PRUNING_FILE} has {len(history):,} pruning steps; a real record has a "
                              f"few per prunable unit (at most {MAX_HISTORY:,} are accepted). The file is corrupt.")
    dg = build_graph(model)
    try:
        dg.load_pruning_history([[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"The pruning record in {directory / PRUNING_FILE} does not apply to the base architecture in "
            f"config.json ({type(e).__name__}: {e}). The files do not belong together."
        ) from None
    fix_up(model)
    return record
