"""What one run builds once and every step of it shares: :class:`RunContext`.

A ``tdc-agent run`` used to rebuild the plan in every step, load the data again in the pipeline and
in every group's agent, and resolve the LLM (with its network check), open the memory bank and
build the pruner per group. Here each is made once, on first use, and handed down: the plan (built
in the preflight, or read back from the run directory's ``plan.json`` on resume), the data per
split, the resolved LLM, a memory server's client, the agent (one for all groups) and a criterion's
pruner. ``core.tally`` counts the real builds, and ``run`` logs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.config import Config
from ..core.data import ImageDataset
from ..models.latent import held_out, training_data
from ..planning.build import load_plan, write_plan
from ..planning.plan import Plan
from ..pruning.pruner import Pruner
from .rundir import RunDir


@dataclass
class RunContext:
    """One run's shared pieces: its config, directory, device and plan, and what is built on first use.

    ``llm``: the chat model the preflight resolved and checked (an
    :class:`~tdc_agent.agent.llm.ResolvedLLM`; mode ``tdc`` only); ``memory_client``: the memory
    server's client the preflight opened (``agent.memory_url`` only)."""

    cfg: Config
    run: RunDir
    device: torch.device
    plan: Plan
    show: bool = True
    llm: Any = None
    memory_client: Any = None
    _data: dict[str, ImageDataset] = field(default_factory=dict, repr=False)
    _agents: dict[str, Any] = field(default_factory=dict, repr=False)
    _pruner: Pruner | None = field(default=None, repr=False)

    @classmethod
    def of(cls, cfg: Config, run: RunDir, device: torch.device, show: bool = True) -> "RunContext":
        """A context with the config's plan, for callers without a preflight (``tools/``, tests): the
        LLM is then resolved when the agent is first made."""
        from ..planning.build import build_plan

        return cls(cfg, run, device, build_plan(cfg), show)

    def training_data(self) -> ImageDataset:
        """What the denoisers train on (``data.split``; latents in latent mode), loaded once."""
        if "train" not in self._data:
            self._data["train"] = training_data(self.cfg, device=self.device)
        return self._data["train"]

    def held_out(self) -> ImageDataset:
        """The held-out ``val`` images (or latents): the agent's quick losses and stage 2's checks."""
        if "val" not in self._data:
            self._data["val"] = held_out(self.cfg)
        return self._data["val"]

    def keep_plan(self, base_macs: int) -> None:
        """The run directory holds the plan it runs: ``plan.json`` (and ``plan.png``) written once; on
        resume the stored plan is read back, checked against the config's, and used. It is written
        again only when it lacks this base's MACs (e.g. ``tdc-agent plan`` wrote it before stage 1)."""
        path = self.run.path / "plan.json"
        if path.is_file():
            from ..core.io import read_json

            self.plan = load_plan(path, self.cfg, fresh=self.plan)  # another config's plan is refused
            if read_json(path, "plan").get("base_macs") == base_macs:
                return
        write_plan(self.plan, self.run.path, base_macs)

    def agent(self, base: torch.nn.Module, meta: dict, out_dir: Path, memory_path: Path) -> Any:
        """The agent of this run's base (an :class:`~tdc_agent.agent.runner.AgentPruning`), made once
        (per memory bank: a run from before the shared memory keeps one bank per group)."""
        key = str(memory_path)
        if key not in self._agents:
            from ..agent.runner import AgentPruning  # here, so that pruning by a criterion never imports the agent

            self._agents[key] = AgentPruning(
                self.cfg, base, {k: v for k, v in meta.items() if k != "pruning"}, out_dir,
                self.llm if self.llm is not None else self.cfg.agent.llm, self.device, show=self.show,
                memory_path=memory_path, eval_data=self.held_out(), train_data=self.training_data(),
                memory_client=self.memory_client)
        return self._agents[key]

    def pruner(self, base: torch.nn.Module, criterion: str) -> Pruner:
        """The pruner of this run's base for ``criterion`` (stage2.mode), made once: its units,
        MACs and channel scores serve every group."""
        if self._pruner is None:
            from .prune import criterion_pruner

            self._pruner = criterion_pruner(self.cfg, base, criterion, self.device, data=self.training_data)
        return self._pruner


__all__ = ["RunContext"]
