"""Exponential moving average of model weights (the weights we sample with)."""

from __future__ import annotations

import copy

import torch


def ema_decay_at(step: int, decay: float, warmup: int, bias_correction: bool = False) -> float:
    """The decay used after optimizer step ``step`` (0-based).

    With ``bias_correction`` the average covers only the weights this run trained, weighted
    ``decay ** age`` as Adam corrects its moments: after step ``n`` the starting weights have no
    share at all, so a fine-tune shorter than the EMA window ships its own average rather than
    mostly the weights it started from (an EMA of 0.99 from the starting weights keeps 79 % of
    them after 23 steps). For runs much longer than the window it is the plain EMA.

    With ``warmup = 0`` the decay is ``decay`` from the first step, so the starting weights keep a
    share of ``decay ** steps``: that is EMA continuity for fine-tuning a trained model. With
    ``warmup = W`` the averaging window ``1 / (1 - d)`` grows linearly from 1 step to the full
    window ``1 / (1 - decay)`` over the first ``W`` steps, so early weights of a model trained from
    scratch fade fast, and ``decay`` binds from step ``W`` on (the diffusers warm-up
    ``(1 + s) / (10 + s)`` reaches 0.999 only after ~9000 steps).
    """
    if bias_correction:
        # weights decay**(n-i) over steps i = 1..n, normalised: Z_n = (1 - decay**n) / (1 - decay)
        return 1.0 - (1.0 - decay) / (1.0 - decay ** (step + 1)) if decay > 0 else 0.0
    if warmup <= 0 or step >= warmup:
        return decay
    full = 1.0 / (1.0 - decay)
    window = 1.0 + (full - 1.0) * (step + 1) / warmup
    return 1.0 - 1.0 / window


class EMA:
    """Shadow copy of a model's floating-point state, updated after every optimizer step.

    The shadow starts as a copy of the model's weights when the EMA is created.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: int = 0, bias_correction: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.bias_correction = bias_correction
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def to(self, device: torch.device | str) -> "EMA":
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = ema_decay_at(step, self.decay, self.warmup, self.bias_correction)
        state = model.state_dict()
        floats = [k for k, v in state.items() if v.dtype.is_floating_point]
        if floats:
            # one fused multi-tensor op instead of a Python loop of small kernels
            torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k].detach() for k in floats], 1.0 - d)
        for k, v in state.items():
            if not v.dtype.is_floating_point:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        self.shadow = {k: state[k].clone() for k in self.shadow}

    def averaged_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A deep copy of ``model`` carrying the EMA weights (the original is untouched)."""
        out = copy.deepcopy(model)
        out.load_state_dict({k: v.to(next(model.parameters()).device) for k, v in self.shadow.items()})
        return out.eval()
