"""Prunable units of a denoiser: coupled channel groups from torch-pruning's dependency graph.

Discovery is the same for every backbone (:mod:`tdc_agent.models.backbone`): groups rooted at a
``Conv2d`` or ``Linear``; the backbone names the layers that must keep their channels, the attention
head counts and each unit's role. A UNet's skip connections couple many layers into one dependency
group (removing a channel from a block output removes it from every conv that reads or adds to it),
so the thing a scheme controls is a coupled group, named after its root module (e.g.
``down_blocks.1.resnets.0.conv1``).

Each unit keeps a whole number of *steps* of ``quantum`` channels: the least common multiple of
the GroupNorm group counts and attention head counts in the group, because channels must be
removed equally from every norm group and head. A unit of 64 channels under GroupNorm(8) has
quantum 8 and keep levels 1/8, 2/8, ..., 8/8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from pydantic import BaseModel

from ..models.backbone import backbone_of
from ..models.macs import thop_layer_ops
from ..models.record import build_graph  # noqa: F401  (units and importance trace with it)


class Unit(BaseModel):
    """One prunable unit as the agent and the user see it."""

    name: str
    role: str  # the backbone's word for it (a UNet: time embedding, attention, resnet inner, block output)
    channels: int
    quantum: int
    macs_share: float  # fraction of the model's MACs that depend on this unit's channels
    params: int  # parameters touching this unit's channels
    members: int  # layers whose channels move with this unit

    @property
    def n_levels(self) -> int:
        """How many keep levels the unit has: one per quantum of channels (level m/n_levels keeps m quanta)."""
        return self.channels // self.quantum

    @property
    def levels(self) -> list[float]:
        return [m / self.n_levels for m in range(1, self.n_levels + 1)]

    def snap(self, level: float) -> float:
        """The nearest allowed keep level (at least one step)."""
        m = min(self.n_levels, max(1, round(level * self.n_levels)))
        return m / self.n_levels

    def floor(self, level: float) -> float:
        """The largest allowed keep level not above ``level`` (at least one step)."""
        m = min(self.n_levels, max(1, math.floor(level * self.n_levels + 1e-9)))
        return m / self.n_levels

    def compact(self) -> dict[str, Any]:
        """A compact dict for LLM prompts and ``--json``."""
        return {"name": self.name, "role": self.role, "channels": self.channels, "quantum": self.quantum,
                "macs_share": round(self.macs_share, 4), "params": self.params}


@dataclass
class LayerMacs:
    """thop MACs of one layer and how its input/output channels map to units."""

    name: str
    macs: float
    cin: int
    cout: int
    in_units: dict[str, int] = field(default_factory=dict)  # unit -> number of input channels it owns
    out_unit: str | None = None
    linear_in_channels: bool = False  # norm layers: MACs scale with channels, not their square


def attention_heads(model: torch.nn.Module) -> dict[torch.nn.Module, int]:
    """``num_heads`` for torch-pruning: each attention projection and its head count (from the backbone)."""
    return backbone_of(model).attention_heads(model)


def ignored_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Layers whose output channels stay (from the backbone: at least the one writing ε)."""
    return backbone_of(model).ignored_layers(model)


def _groups(dg: tp.DependencyGraph, model: torch.nn.Module):
    yield from dg.get_all_groups(ignored_layers=ignored_layers(model),
                                 root_module_types=[torch.nn.Conv2d, torch.nn.Linear])


def _quantum(group, heads: dict[torch.nn.Module, int]) -> int:
    q = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, torch.nn.GroupNorm):
            q = math.lcm(q, m.num_groups)
        if m in heads:
            q = math.lcm(q, heads[m])
    return q


@dataclass
class UnitGraph:
    """Units of one architecture plus what is needed to predict MACs of any scheme."""

    units: list[Unit]
    layers: list[LayerMacs]
    base_macs: int

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(name)

    def predict_macs(self, levels: dict[str, float]) -> float:
        """thop MACs of the model pruned to ``levels`` (unit -> keep fraction), from layer geometry.

        Conv/linear MACs are proportional to (kept inputs) x (kept outputs); norm layers to kept
        channels. Exact for whole steps; the built model is still measured before it is trusted.
        """
        total = 0.0
        for layer in self.layers:
            removed = sum(n * (1 - levels.get(u, 1.0)) for u, n in layer.in_units.items())
            cin = layer.cin - removed
            if layer.linear_in_channels:
                total += layer.macs * cin / layer.cin
                continue
            cout = layer.cout * (levels.get(layer.out_unit, 1.0) if layer.out_unit else 1.0)
            total += layer.macs * (cin / layer.cin) * (cout / layer.cout)
        return total


def analyse(model: torch.nn.Module) -> UnitGraph:
    """Find the units of ``model`` and the per-layer MACs geometry (the model is not modified)."""
    backbone = backbone_of(model)
    dg = build_graph(model)
    heads = backbone.attention_heads(model)
    name_of = {m: n for n, m in model.named_modules()}
    layer_ops = thop_layer_ops(model)

    layers: dict[str, LayerMacs] = {}
    for n, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and layer_ops.get(n, 0) > 0:
            cin = m.in_channels if isinstance(m, torch.nn.Conv2d) else m.in_features
            cout = m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features
            layers[n] = LayerMacs(n, layer_ops[n], cin, cout)
        elif isinstance(m, torch.nn.GroupNorm) and layer_ops.get(n, 0) > 0:
            layers[n] = LayerMacs(n, layer_ops[n], m.num_channels, m.num_channels, linear_in_channels=True)

    units: list[Unit] = []
    base = sum(layer_ops.get(n, 0) for n in layers) or 1.0
    for group in _groups(dg, model):
        root = group[0].dep.target.module
        uname = name_of[root]
        channels = len(group[0].idxs)
        quantum = _quantum(group, heads)
        if channels % quantum or channels // quantum < 2:
            continue  # nothing can be removed while keeping groups/heads equal
        params = 0
        members = 0
        for dep, idxs in group:
            m = dep.target.module
            mname = name_of.get(m)
            if mname is None or not isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm)):
                continue
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            w = getattr(m, "weight", None)
            if w is not None:
                per = w.numel() // (w.shape[0] if is_out or isinstance(m, torch.nn.GroupNorm) else w.shape[1])
                params += per * len(idxs)
            if mname in layers:
                layer = layers[mname]
                if is_out and not isinstance(m, torch.nn.GroupNorm):
                    members += 1
                    layer.out_unit = uname
                else:  # input channels, or a norm over (possibly concatenated) channels
                    layer.in_units[uname] = len(set(idxs))
        units.append(Unit(name=uname, role=backbone.unit_role(uname), channels=channels, quantum=quantum,
                          macs_share=0.0, params=int(params), members=members))
    graph = UnitGraph(units, list(layers.values()), int(base))
    full = graph.predict_macs({})
    for u in units:
        u.macs_share = float((full - graph.predict_macs({u.name: 0.0})) / full)
    return graph
