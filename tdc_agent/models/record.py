"""The pruning record: the one place that builds, attaches, and replays it.

A pruned model directory (see :mod:`tdc_agent.models.store`) keeps ``config.json`` as the *dense
base* architecture, plus ``pruning.json``: torch-pruning's pruning history (root module, out/in,
channel indices), the fix-up version, the kept levels and channels. Loading rebuilds the dense base,
replays the history with ``DependencyGraph.load_pruning_history``, applies the same fix-ups, and
loads the safetensors weights strictly. A pruned model in memory carries its record as the plain
attribute :data:`PRUNING_ATTR`, so every later save of it (after fine-tuning, as an EMA copy...)
keeps its structure.

It lives beside the model store rather than in :mod:`tdc_agent.pruning` because loading any model
directory must replay it; :mod:`tdc_agent.pruning` builds records only through :func:`make_record`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp

from ..core.errors import CheckpointError
from ..core.io import read_json
from .backbone import backbone_of, eval_mode, example_inputs, output_tensor

PRUNING_FILE = "pruning.json"
PRUNING_ATTR = "tdc_pruning_record"
FIXUP_VERSION = 1
# replaying costs ~4 ms an entry: a crafted 200,000-entry file would load for minutes
MAX_HISTORY = 2000


def build_graph(model: torch.nn.Module) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of a denoiser (traced on its backbone's example input)."""
    with eval_mode(model):
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs(model), forward_fn=lambda m, inputs: output_tensor(m(*inputs)),
        )


def fix_up(model: torch.nn.Module) -> None:
    """Update the attributes torch-pruning does not know about after channels were removed
    (:meth:`tdc_agent.models.backbone.Backbone.fix_up`; for a UNet: resampler and attention sizes)."""
    backbone_of(model).fix_up(model)


def make_record(history: list[list[Any]], levels: dict[str, float], kept_channels: dict[str, int]) -> dict[str, Any]:
    """The record of one pruning (what ``pruning.json`` holds)."""
    return {"fixup_version": FIXUP_VERSION, "history": history, "levels": levels, "kept_channels": kept_channels}


def attach(model: torch.nn.Module, record: dict[str, Any]) -> None:
    """Make ``model`` carry ``record``, so that every save of it writes ``pruning.json``."""
    setattr(model, PRUNING_ATTR, record)


def record_of(model: torch.nn.Module) -> dict[str, Any] | None:
    """The pruning record ``model`` carries, or None for a dense model."""
    return getattr(model, PRUNING_ATTR, None)


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
