"""What the agent measures on one group: the base's quick loss, a candidate's, each unit's
sensitivity, and an optional short recovery fine-tune before a candidate is scored.

Everything is read on the same fixed held-out images, timesteps and noise (:func:`quick_loss`), so
two numbers of one group are always comparable; the time spent here is the agent's evaluation
time (``eval_seconds``), as opposed to its LLM overhead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..core.config import AgentConfig, TrainConfig
from ..core.data import ImageDataset
from ..core.io import atomic_write_json, read_json
from ..diffusion.process import ForwardProcess
from ..evaluation.quick import quick_loss
from ..planning.plan import GroupTask
from ..pruning.apply import OneUnitPruning
from ..pruning.pruner import Pruner


def sig6(x: float) -> float:
    """``x`` rounded to 6 significant digits (what the LLM and the records are shown)."""
    return float(f"{x:.6g}")


class GroupEvaluator:
    """The quick evaluations of one group's candidates (one per group, made by its session)."""

    def __init__(self, pruner: Pruner, task: GroupTask, eval_data: ImageDataset, process: ForwardProcess,
                 cfg: AgentConfig, out_dir: Path, seed: int = 0):
        self.pruner, self.task, self.eval_data, self.process = pruner, task, eval_data, process
        self.cfg, self.out_dir, self.seed = cfg, Path(out_dir), seed
        self.eval_seconds = 0.0
        self._base_loss: float | None = None
        self._sensitivity: dict[str, Any] | None = None

    def loss(self, model: torch.nn.Module, data: ImageDataset | None = None) -> float:
        """``model``'s quick loss on the group (on ``data``, default the held-out evaluation images)."""
        data = data or self.eval_data
        n = self.cfg.eval_batch_size if data is self.eval_data else len(data)
        return quick_loss(model, data, self.process, self.task.timesteps, self.cfg.eval_timesteps, n, self.seed)

    @property
    def base_loss(self) -> float:
        """The unpruned base model's quick loss on this group: the reference every candidate is read
        against (computed once per group)."""
        if self._base_loss is None:
            self._base_loss = self.loss(self.pruner.base)
        return self._base_loss

    def sensitivity(self, keep_level: float) -> dict[str, Any]:
        """How much the loss rises when one unit alone keeps ``keep_level`` of its channels, per unit,
        against the MACs that saves, cheapest first. Measured once per group and level (cached in
        memory and in ``sensitivity-<level>.json``, so a resumed group does not measure it again)."""
        if self._sensitivity is not None and self._sensitivity.get("keep_level") == keep_level:
            return self._sensitivity
        cache = self.out_dir / f"sensitivity-{keep_level:g}.json"
        if cache.is_file():
            self._sensitivity = read_json(cache, "unit sensitivity")
            return self._sensitivity
        t0 = time.time()
        g, base_macs = self.pruner.graph, float(self.pruner.base_count.thop)
        scores = self.pruner.scores(self.cfg.criterion, self.task.timesteps)
        n = max(1, self.cfg.sensitivity_images)
        sub = type(self.eval_data)(self.eval_data.images[:n], self.eval_data.name)
        ref = self.loss(self.pruner.base, sub)
        units = []
        one = OneUnitPruning(self.pruner.base, g, scores)  # one graph for all units: each is pruned alone
        for u in g.units:
            level = u.floor(keep_level)
            if level >= 1:
                continue
            model, _ = one.build(u.name, level)
            rise = self.loss(model, sub) - ref
            saved = (base_macs - g.predict_macs({u.name: level})) / base_macs
            units.append({"name": u.name, "keep_level": sig6(level), "loss_rise": sig6(rise),
                          "macs_saved": sig6(saved), "rise_per_macs": sig6(max(rise, 0.0) / max(saved, 1e-9))})
        units.sort(key=lambda x: x["rise_per_macs"])
        self.eval_seconds += time.time() - t0
        self._sensitivity = {"keep_level": keep_level, "reference_loss": sig6(ref), "images": n,
                             "cheapest_first": units}
        atomic_write_json(cache, self._sensitivity, scrub=False)  # a cache of our numbers and unit names
        return self._sensitivity

    def recover(self, model: torch.nn.Module, name: str) -> torch.nn.Module:
        """A few fine-tuning steps on the group's timesteps before evaluation (``recovery_steps``),
        checkpointed under ``recovery/<name>``."""
        from ..models.store import load_model
        from ..training import train

        tcfg = TrainConfig(steps=self.cfg.recovery_steps, batch_size=self.cfg.recovery_batch_size, lr=1e-4, warmup=0,
                           ckpt_every=10**9, log_every=max(1, self.cfg.recovery_steps), ema_decay=0.0, amp=False)
        data = self.pruner.data if self.pruner.data is not None else self.eval_data  # train on training images
        device = next(model.parameters()).device
        res = train(model, data, self.process, tcfg, self.out_dir / "recovery" / name, seed=self.seed, device=device,
                    timesteps=self.task.timesteps, progress=False, desc="recovery")
        return load_model(res.model_dir, device)[0]


__all__ = ["GroupEvaluator", "sig6"]
