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

from .backbone import eval_mode, example_inputs, param_count


@dataclass(frozen=True)
class MacsCount:
    """MACs of one forward pass on one image, counted two ways, and the parameter count."""

    thop: int
    op_level: int
    params: int

    def to_dict(self) -> dict[str, int]:
        return {"macs_thop": self.thop, "macs_op_level": self.op_level, "params": self.params}


def thop_layer_ops(model: torch.nn.Module) -> dict[str, float]:
    """thop's MACs of each module's own arithmetic (not its children's), by module name.

    Recent thop releases also count functional ops (attention matmuls) at the root. The paper's
    convention (and its 6.06 G for DDPM CIFAR-10) is module hooks only, which is what this returns.
    """
    import thop

    ops: dict[str, float] = {}

    def walk(prefix: str, d: dict) -> None:
        for n, (total, _, sub) in d.items():
            ops[f"{prefix}{n}"] = total - sum(v[0] for v in sub.values())
            walk(f"{prefix}{n}.", sub)

    with torch.no_grad(), eval_mode(model), contextlib.redirect_stdout(io.StringIO()):  # thop prints warnings
        _, _, layers = thop.profile(model, inputs=example_inputs(model), verbose=False, ret_layer_info=True)
    _strip_thop_buffers(model)
    walk("", layers)
    return ops


def thop_macs(model: torch.nn.Module) -> int:
    """MACs per image by thop's module hooks (conv, linear, norm layers)."""
    return int(sum(thop_layer_ops(model).values()))


@torch.no_grad()
def op_level_macs(model: torch.nn.Module) -> int:
    """MACs per image counted over aten ops (includes attention matmuls): FLOPs / 2."""
    with eval_mode(model), FlopCounterMode(display=False) as counter:
        model(*example_inputs(model))
    return int(counter.get_total_flops() // 2)


def count(model: torch.nn.Module) -> MacsCount:
    """Both MACs counts and the parameter count of a denoiser (on its backbone's example input)."""
    return MacsCount(thop=thop_macs(model), op_level=op_level_macs(model), params=param_count(model))


def _strip_thop_buffers(model: torch.nn.Module) -> None:
    # Older thop releases leave total_ops/total_params buffers behind; they would end up in
    # state_dicts and break strict loading.
    for m in model.modules():
        for name in ("total_ops", "total_params"):
            if name in m._buffers:
                del m._buffers[name]
