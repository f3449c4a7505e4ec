"""Device selection and the torchrun environment (DDP over gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import DeviceError


@dataclass(frozen=True)
class DistEnv:
    """Rank facts as torchrun sets them; a plain process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistEnv:
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without CUDA is an error, not a silent CPU run.

    Under torchrun each process takes ``cuda:LOCAL_RANK``.
    """
    spec = (spec or "auto").lower()
    env = dist_env()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {spec} was requested but this machine has no usable CUDA device "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False). Use --device cpu, "
                "or install a CUDA build of torch on a machine with an NVIDIA GPU."
            )
        if spec == "cuda":
            spec = f"cuda:{env.local_rank}" if env.distributed else "cuda"
        return torch.device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps" and torch.backends.mps.is_available():
        return torch.device("mps")
    raise DeviceError(f"Unknown or unavailable device {spec!r}; use auto, cpu, cuda or cuda:N.")


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group when launched by torchrun (idempotent)."""
    env = dist_env()
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return env


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rank0_says(flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every rank (the flag itself when not distributed), so that a
    decision only rank 0 may take (e.g. "another job already did this step") is shared by all."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])
