"""The one MACs counter: thop (module hooks, the paper's convention) and op-level counting.

"FLOPs" in the paper are multiply-accumulates as thop counts them. thop misses the attention
matmuls (they are functional ops, not modules); ``torch.utils.flop_counter.FlopCounterMode`` sees
every aten op, so we report both.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models import param_count


@dataclass(frozen=True)
class MacsCount:
    """MACs of one forward pass on one image, counted two ways, and the parameter count."""

    thop: int
    op_level: int
    params: int

    def to_dict(self) -> dict[str, int]:
        return {"macs_thop": self.thop, "macs_op_level": self.op_level, "params": self.params}


def _example_inputs(model: torch.nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    x = torch.zeros(1, cfg.in_channels, size, size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    return x, t


@torch.no_grad()
def thop_macs(model: torch.nn.Module) -> int:
    """MACs per image by thop's module hooks (conv, linear, norm layers)."""
    import thop

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x, t = _example_inputs(model, device)
    with contextlib.redirect_stdout(io.StringIO()):  # thop prints warnings for unknown modules
        _, _, layers = thop.profile(model, inputs=(x, t), verbose=False, ret_layer_info=True)
    _strip_thop_buffers(model)
    model.train(was_training)
    # Recent thop releases also count functional ops (attention matmuls) at the root. The paper's
    # convention (and its 6.06 G for DDPM CIFAR-10) is module hooks only: sum the modules' totals.
    return int(sum(ops for ops, _, _ in layers.values()))


@torch.no_grad()
def op_level_macs(model: torch.nn.Module) -> int:
    """MACs per image counted over aten ops (includes attention matmuls): FLOPs / 2."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x, t = _example_inputs(model, device)
    with FlopCounterMode(display=False) as counter:
        model(x, t)
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


def count(model: torch.nn.Module) -> MacsCount:
    """Both MACs counts and the parameter count of a UNet."""
    return MacsCount(thop=thop_macs(model), op_level=op_level_macs(model), params=param_count(model))


def _strip_thop_buffers(model: torch.nn.Module) -> None:
    # Older thop releases leave total_ops/total_params buffers behind; they would end up in
    # state_dicts and break strict loading.
    for m in model.modules():
        for name in ("total_ops", "total_params"):
            if name in m._buffers:
                del m._buffers[name]
