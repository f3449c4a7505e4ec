"""AdamW state to and from a flat dict of tensors, so it can live in safetensors (no pickles)."""

from __future__ import annotations

from typing import Any

import torch

from ..core.errors import CheckpointError


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Split an optimizer's state into tensors (``"<param index>.<name>"``) and JSON param groups."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            tensors[f"{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    for g in groups:
        g["betas"] = list(g.get("betas", ()))
    return tensors, groups


def load_optimizer_state(
    opt: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    source: str,
    groups: list[dict[str, Any]] | None = None,
) -> None:
    """Inverse of :func:`optimizer_tensors`; shape mismatches become a :class:`CheckpointError`."""
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    params = [p for g in opt.param_groups for p in g["params"]]
    for idx, st in state.items():
        if idx >= len(params) or ("exp_avg" in st and st["exp_avg"].shape != params[idx].shape):
            raise CheckpointError(
                f"Optimizer state in {source} does not match the model's parameters (entry {idx}). "
                "It belongs to another architecture: start from a fresh optimizer or the matching run."
            )
        for name, value in st.items():
            if name != "step":
                st[name] = value.to(params[idx].device)
    sd["state"] = state
    if groups is not None:
        for g_new, g_old in zip(sd["param_groups"], groups):
            g_old = dict(g_old)
            g_old["params"] = g_new["params"]
            g_old["betas"] = tuple(g_old.get("betas", g_new.get("betas")))
            g_new.update(g_old)
    opt.load_state_dict(sd)
