"""The one training loop, used by stage 1 (all timesteps) and stage 2 (a group's timesteps).

Read it top to bottom: set up, maybe resume, then for each step draw a batch, noise and
timesteps, take an AdamW step, update the EMA, log, and checkpoint.

Exact resume. Every random draw of step ``s`` comes from a generator seeded by (seed, rank, s),
not from a stream that runs through the whole run. So a run resumed from the checkpoint of step
``s`` draws the same batches as one that never stopped, and, with the weights, EMA and AdamW state
restored bit for bit from safetensors, reproduces its loss curve exactly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..core.io import atomic_write_json, atomic_write_text, load_tensors, read_json, replace_dir, resolve_dir, save_tensors
from ..models.store import load_state_strict, save_model
from ..core.config import TrainConfig
from ..core.data import ImageDataset
from ..core.devices import barrier, init_distributed
from ..core.faults import failpoint
from ..diffusion.process import ForwardProcess
from ..core.errors import CheckpointError, TDCError
from ..models.unet import denoise
from ..core.progress import make_progress
from .ema import EMA
from .optim_state import load_optimizer_state, optimizer_tensors

CHECKPOINT = "checkpoint"
FINAL_MODEL = "model"
METRICS = "metrics.jsonl"


@dataclass
class TrainResult:
    """What a finished (or already finished) training run produced."""

    steps: int
    final_loss: float | None
    model_dir: Path
    metrics_path: Path
    seconds: float
    resumed_from: int
    ddp_param_max_diff: float | None = None


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator for all random draws of one step on one rank."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``cfg.lr``, then constant (the usual diffusion recipe)."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr


def train(
    model: torch.nn.Module,
    data: ImageDataset,
    process: ForwardProcess,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    timesteps: Sequence[int] | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str = "training",
    init_optimizer: dict[str, torch.Tensor] | None = None,
    teacher: torch.nn.Module | None = None,
    distill: float = 0.0,
) -> TrainResult:
    """Train ``model`` to predict ε at ``timesteps`` (default: all) and save the EMA model.

    ``out_dir`` receives ``checkpoint/`` (resumable state), ``metrics.jsonl`` and ``model/`` (the
    final EMA weights in our model format). If ``model/`` already exists, nothing is trained.
    ``init_optimizer`` optionally seeds AdamW with a saved state (stage 2's "carried" recipe).
    With ``teacher`` and ``distill`` > 0 the loss adds ``distill`` · MSE to the teacher's ε on the
    same noisy input (the teacher is frozen and in eval mode; its forwards cost no backward).
    """
    out_dir = Path(out_dir)
    device = torch.device(device)
    env = init_distributed(device)
    final_dir = out_dir / FINAL_MODEL
    metrics_path = out_dir / METRICS
    if (final_dir / "model.safetensors").is_file():
        return TrainResult(cfg.steps, _last_loss(metrics_path), final_dir, metrics_path, 0.0, cfg.steps)

    model.to(device).train()
    allowed = torch.as_tensor(
        list(timesteps) if timesteps is not None else range(process.timesteps), dtype=torch.long
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup, cfg.ema_bias_correction)
    if teacher is not None and distill > 0:
        teacher = teacher.to(device).eval().requires_grad_(False)
    else:
        teacher = None
    start = 0
    ckpt_dir = resolve_dir(out_dir / CHECKPOINT)
    if (ckpt_dir / "state.json").is_file():
        start = _load_checkpoint(ckpt_dir, model, ema, opt)
    elif init_optimizer is not None:
        load_optimizer_state(opt, init_optimizer, "initial optimizer state")
    # Lines past the step we start from belong to a killed attempt; with no checkpoint yet (a kill
    # before the first one) that is every line, or each rerun would log those steps once more.
    _truncate_metrics(metrics_path, start, env.is_main)
    ema.to(device)
    net: torch.nn.Module = DDP(model) if env.distributed else model
    per_rank_batch = max(1, cfg.batch_size // env.world_size)
    use_amp = cfg.amp and device.type == "cuda"
    n = len(data)
    images = data.images  # stays on CPU; a batch moves to the device each step

    t0 = time.time()
    last_loss: float | None = None
    window: list[float] = []
    kd_window: list[float] = []
    bar = make_progress(enabled=progress and env.is_main)
    with bar:
        task = bar.add_task(desc, total=cfg.steps, completed=start, loss=float("nan"))
        for step in range(start, cfg.steps):
            g = step_generator(seed, env.rank, step)
            idx = torch.randint(n, (per_rank_batch,), generator=g)
            t = allowed[torch.randint(len(allowed), (per_rank_batch,), generator=g)]
            x0 = images[idx]
            noise = torch.randn(x0.shape, generator=g)
            x0, noise, t = x0.to(device), noise.to(device), t.to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                if teacher is None:
                    loss = process.loss(lambda x, tt: denoise(net, x, tt), x0, t, noise)
                else:
                    loss, _, kd = process.distill_loss(lambda x, tt: denoise(net, x, tt),
                                                       lambda x, tt: denoise(teacher, x, tt), x0, t, noise, distill)
                    kd_window.append(float(kd.detach()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema.update(model, step)
            failpoint("train.step")
            last_loss = _global_mean(loss.detach(), env.distributed)
            if not math.isfinite(last_loss):
                raise TDCError(
                    f"{desc}: the loss became {last_loss} at step {step + 1}. The last good checkpoint "
                    f"(if any) is kept in {out_dir / CHECKPOINT}. Lower the learning rate "
                    "(e.g. stage1.lr) or enable grad_clip, then rerun to resume."
                )
            window.append(last_loss)
            done = step + 1
            if env.is_main and (done % cfg.log_every == 0 or done == cfg.steps):
                rec = {"step": done, "loss": last_loss, "loss_avg": sum(window) / len(window),
                       "lr": lr_at(step, cfg), "elapsed_s": round(time.time() - t0, 3)}
                if kd_window:
                    rec["distill_mse_avg"] = sum(kd_window) / len(kd_window)
                _append_metrics(metrics_path, rec)
                window.clear()
                kd_window.clear()
            bar.update(task, completed=done, loss=last_loss)
            if done % cfg.ckpt_every == 0 and done < cfg.steps:
                _save_checkpoint(out_dir / CHECKPOINT, model, ema, opt, done, env.is_main)

    sync_diff = _param_sync_diff(model) if env.distributed else None
    # The final checkpoint goes first: a kill between the two writes then resumes at the last step
    # and only re-exports the model.
    _save_checkpoint(out_dir / CHECKPOINT, model, ema, opt, cfg.steps, env.is_main)
    if env.is_main:
        if sync_diff is not None:
            _append_metrics(metrics_path, {"step": cfg.steps, "ddp_param_max_diff": sync_diff})
        save_model(final_dir, ema.averaged_copy(model), meta)
    barrier()
    return TrainResult(cfg.steps, last_loss, final_dir, metrics_path, time.time() - t0, start, sync_diff)


def _global_mean(x: torch.Tensor, distributed: bool) -> float:
    if distributed:
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return float(x)


def _param_sync_diff(model: torch.nn.Module) -> float:
    """Largest |θ_rank - θ_rank0| over all parameters and ranks: 0.0 when DDP kept ranks in sync."""
    flat = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def _save_checkpoint(path: Path, model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
                     step: int, is_main: bool) -> None:
    if is_main:
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_tensors(tmp / "model.safetensors", model.state_dict())
        save_tensors(tmp / "ema.safetensors", ema.state_dict())
        tensors, groups = optimizer_tensors(opt)
        save_tensors(tmp / "optimizer.safetensors", tensors)
        config = {k: v for k, v in dict(getattr(model, "config", {})).items() if not k.startswith("_")}
        atomic_write_json(tmp / "state.json", {
            "step": step, "optimizer_param_groups": groups, "model_config": json.loads(json.dumps(config)),
        })
        replace_dir(tmp, path)
    barrier()


def _load_checkpoint(path: Path, model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer) -> int:
    state = read_json(path / "state.json", "checkpoint state")
    saved_cfg = state.get("model_config") or {}
    own = {k: v for k, v in dict(getattr(model, "config", {})).items() if not k.startswith("_")}
    own = json.loads(json.dumps(own))
    diffs = sorted(k for k in set(saved_cfg) | set(own) if saved_cfg.get(k) != own.get(k))
    if saved_cfg and diffs:
        raise CheckpointError(
            f"The checkpoint in {path} was made for another architecture (differs in "
            f"{', '.join(diffs[:5])}). Use the config it was trained with, or a new run directory "
            "(run.name=...) to start fresh."
        )
    load_state_strict(model, load_tensors(path / "model.safetensors", "checkpoint weights"), path)
    ema.load_state_dict(load_tensors(path / "ema.safetensors", "checkpoint EMA"))
    load_optimizer_state(opt, load_tensors(path / "optimizer.safetensors", "checkpoint optimizer"),
                         str(path), state.get("optimizer_param_groups"))
    return int(state["step"])


def _append_metrics(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int, is_main: bool) -> None:
    """Drop log lines written after the checkpoint we resume from, so the curve has no duplicates."""
    if not is_main or not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if rec.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def _last_loss(path: Path) -> float | None:
    if not path.is_file():
        return None
    for line in reversed(path.read_text().splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in rec:
            return float(rec["loss"])
    return None
