"""Exponential moving average of model weights (the weights we sample with)."""

from __future__ import annotations

import copy

import torch


class EMA:
    """Shadow copy of a model's floating-point state, updated after every optimizer step.

    The decay warms up as ``min(decay, (1 + step) / (10 + step))`` so early, poor weights fade fast.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def to(self, device: torch.device | str) -> "EMA":
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        self.shadow = {k: state[k].clone() for k in self.shadow}

    def copy_into(self, model: torch.nn.Module) -> torch.nn.Module:
        """A deep copy of ``model`` carrying the EMA weights (the original is untouched)."""
        out = copy.deepcopy(model)
        out.load_state_dict({k: v.to(next(model.parameters()).device) for k, v in self.shadow.items()})
        return out.eval()
