"""Proxy-based pruning of one group (paper Eq. 7, 11): the agent's rounds, then the best scheme built.

This is what ``tdc-agent prune --method agent`` and stage 2 call. The output directory holds
``memory/`` (Chroma, unless ``--memory-dir``/``--memory-url``), ``transcript.jsonl``,
``group_<i>/rounds.json`` (resume state), ``model/`` (the chosen pruned model) and ``agent.json``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from langchain_core.language_models.chat_models import BaseChatModel

from ..core.io import atomic_write_json, atomic_write_text
from ..core.config import Config
from ..core.data import ImageDataset
from ..models.latent import held_out, training_data
from ..planning.plan import GroupTask
from ..diffusion.process import ForwardProcess
from ..pruning.pruner import Pruner
from ..pruning.scheme import PruningScheme
from ..pruning.serialize import save_pruned
from .llm import resolve_llm
from .loop import GroupOutcome, RoundLoop
from .memory import MemoryBank, architecture_hash, weights_hash
from .prompts import load_prompts
from .tools import PruningSession
from .transcript import Transcript


def group_state_dir(out_dir: Path, index: int) -> Path:
    """Where an agent output directory keeps group ``index``'s ``rounds.json`` and ``agent.json``."""
    return Path(out_dir) / f"group_{index}"


def run_id_for(out_dir: Path) -> str:
    """A stable id for this output directory (kept across resumes)."""
    f = out_dir / "run_id"
    if f.is_file():
        return f.read_text().strip()
    rid = uuid.uuid4().hex[:8]
    atomic_write_text(f, rid)
    return rid


def check_base_takes(base: torch.nn.Module, data: ImageDataset) -> None:
    """The base must take the images (or latents) it is evaluated on: a mismatch is one clear error
    before any LLM call, not a traceback from inside ``evaluate_scheme`` after several."""
    from ..core.errors import ConfigError

    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "in_channels"):
        return
    c, h, w = data.shape
    mc, ms = config.in_channels, config.sample_size
    size = tuple(ms) if isinstance(ms, (list, tuple)) else (ms, ms)
    if mc != c or (ms is not None and size != (h, w)):
        raise ConfigError(
            f"The base model takes {mc}-channel {size[0]}x{size[1]} inputs, but the agent would evaluate it on "
            f"{data.name} data of shape {c}x{h}x{w}: the model and the data disagree. Use data that match the model "
            f"(e.g. data.name=cifar10 for the CIFAR-10 presets), or size the model to the data "
            f"(data.image_size={h} data.channels={c} for a preset).")


@dataclass
class AgentPruning:
    """Everything the agent needs for one base model; prunes groups one after another.

    ``callbacks``: LangChain callback handlers of yours, given every LLM call and tool call of every
    round (e.g. a LangSmith tracer, a cost logger); each round's run carries ``run_name``, ``tags``
    and ``metadata`` with the run id, group, round and attempt.
    """

    cfg: Config
    base: torch.nn.Module
    meta: dict[str, Any]
    out_dir: Path
    llm: str | BaseChatModel
    device: torch.device
    show: bool = True
    # where the memory bank lives unless agent.memory_dir/memory_url say otherwise: a run passes its
    # own ``memory/`` so that all its groups share one bank (neighbour hints, paper Eq. 11-12)
    memory_path: Path | None = None
    callbacks: list[Any] | None = None  # LangChain callback handlers of the caller, for every round

    def __post_init__(self) -> None:
        a = self.cfg.agent
        self.out_dir = Path(self.out_dir)
        self.eval_data = held_out(self.cfg)
        check_base_takes(self.base, self.eval_data)  # before the LLM is resolved or called
        # the LLM is resolved (key present, server reachable) before any compute is spent
        self.chat, self.llm_spec = resolve_llm(self.llm, a, seed=self.cfg.run.seed)
        self.prompts = load_prompts(a.prompt_dir)
        self.process = ForwardProcess(self.cfg.schedule, self.device)
        train_data = training_data(self.cfg)
        self.pruner = Pruner(self.base, train_data, self.process, self.cfg.run.seed)
        config = {k: v for k, v in dict(self.base.config).items() if not k.startswith("_")}
        self.arch_hash = architecture_hash(self.pruner.graph.names, config)
        self.base_hash = weights_hash(self.base)
        # what a quick loss was measured on: records of another eval set are not compared with ours
        self.eval_key = (f"{self.eval_data.name}/t{a.eval_timesteps}/b{min(a.eval_batch_size, len(self.eval_data))}"
                         f"/s{self.cfg.run.seed}")
        # the memory bank first: a bad --memory-dir/--memory-url must fail before anything is written here
        self.memory = MemoryBank(self.pruner.graph.names, self.arch_hash,
                                 path=a.memory_dir or str(self.memory_path or self.out_dir / "memory"),
                                 url=a.memory_url)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # one id per memory owner: all groups of a pipeline run share it (their records are "this run")
        self.run_id = run_id_for(self.memory_path.parent if self.memory_path else self.out_dir)
        self.transcript = Transcript(self.out_dir / "transcript.jsonl",
                                     secret_env=[a.api_key_env] if a.api_key_env else [])
        self.loop = RoundLoop(self.chat, self.llm_spec, self.prompts, self.transcript, a, self.show,
                              callbacks=self.callbacks)

    def prune_group(self, task: GroupTask, model_dir: Path | None = None) -> tuple[GroupOutcome, Any]:
        """Run the rounds for ``task``, build the best scheme, save it; returns (outcome, PruneResult)."""
        if task.limit_macs >= self.pruner.base_count.thop:
            from ..core.errors import ConfigError

            raise ConfigError(f"The MACs limit of group {task.index} ({task.limit_macs:,.0f}) is not below the base "
                              f"model's {self.pruner.base_count.thop:,}: there is nothing to prune.")
        session = PruningSession(self.pruner, task, self.memory, self.eval_data, self.process, self.cfg.agent,
                                 self.run_id, self.llm_spec, self.out_dir / f"group_{task.index}", self.cfg.run.seed,
                                 base_hash=self.base_hash, eval_key=self.eval_key)
        t0 = time.time()
        outcome = self.loop.run_group(session, group_state_dir(self.out_dir, task.index) / "rounds.json")
        best = outcome.best
        t_build = time.time()
        result = self.pruner.prune(PruningScheme(levels=best.levels, source=self.llm_spec, rationale=best.rationale),
                                   task.limit_macs, self.cfg.agent.criterion, task.timesteps)
        build_s = time.time() - t_build
        model_dir = model_dir or self.out_dir / "model"
        meta = {k: v for k, v in self.meta.items() if k != "pruning"}
        save_pruned(model_dir, result, {**meta, "schedule": self.cfg.schedule.model_dump(mode="json"),
                                        "group": task.index, "t_range": [task.t_start, task.t_end]})
        total = time.time() - t0
        # every quick evaluation is a forward pass over the eval images at each eval timestep; counted
        # at the group's limit (an upper bound of the candidates' MACs) for the training-compute table
        from ..evaluation.quick import eval_timesteps

        n_evals = sum(len(s.losses) for s in outcome.rounds)
        per_eval = (len(eval_timesteps(task.timesteps, self.cfg.agent.eval_timesteps))
                    * min(self.cfg.agent.eval_batch_size, len(self.eval_data)))
        proxy_images = n_evals * (per_eval + self.cfg.agent.recovery_steps * 32 * 3)
        summary = {
            "group": task.index, "llm": self.llm_spec, "run_id": self.run_id, "best_id": best.id,
            "best_loss": best.loss, "base_loss": session.base_loss, "best_levels": best.levels,
            "limit_macs": task.limit_macs, "base_hash": self.base_hash, "eval_set": self.eval_key,
            "macs_thop": result.macs.thop, "macs_op_level": result.macs.op_level, "params": result.macs.params,
            "rounds": [{"round": s.round + 1, "candidates": s.candidates, "losses": s.losses, "mean": s.mean,
                        "std": s.std, "attempts": s.attempts, "seconds": s.seconds} for s in outcome.rounds],
            "usage": outcome.usage,
            "seconds": {"total": total, "build_and_evaluate": outcome.eval_seconds + build_s,
                        "agent_overhead": total - outcome.eval_seconds - build_s},
            "memory_records": self.memory.count(),
            "proxy_evaluations": n_evals, "proxy_forward_images": proxy_images,
            "proxy_forward_macs": float(proxy_images) * task.limit_macs,
        }
        atomic_write_json(group_state_dir(self.out_dir, task.index) / "agent.json", summary)
        outcome.extra["summary"] = summary
        return outcome, result
