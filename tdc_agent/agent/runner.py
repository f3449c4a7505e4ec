"""Proxy-based pruning of groups (paper Eq. 7, 11): the agent's rounds, then the best scheme built.

This is what ``tdc-agent prune --method agent`` and stage 2 call. An output directory holds
``memory/`` (Chroma, unless ``--memory-dir``/``--memory-url``), ``transcript.jsonl``,
``group_<i>/rounds.json`` (resume state) and ``group_<i>/agent.json`` (the summary), and ``model/``
(the chosen pruned model). A run keeps one output directory per group (``stage2/g<i>/agent``) and
one :class:`AgentPruning` for all of them.
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
from ..models.backbone import check_takes
from ..planning.plan import GroupTask
from ..diffusion.process import ForwardProcess
from ..pruning.pruner import Pruner
from ..pruning.scheme import PruningScheme
from ..pruning.serialize import save_pruned
from .llm import ResolvedLLM, resolve_llm
from .loop import GroupOutcome, RoundLoop
from .memory import MemoryBank, architecture_hash, weights_hash
from .prompts import load_prompts
from .session import PruningSession
from .transcript import Transcript


def run_id_for(out_dir: Path) -> str:
    """A stable id for this output directory (kept across resumes)."""
    f = out_dir / "run_id"
    if f.is_file():
        return f.read_text().strip()
    rid = uuid.uuid4().hex[:8]
    atomic_write_text(f, rid, scrub=False)
    return rid


@dataclass
class AgentPruning:
    """Everything the agent needs for one base model, built once; prunes groups one after another.

    The data, the LLM (resolved and checked), the prompts, the pruner (units, channel scores) and the
    memory bank are set up here, once; :meth:`prune_group` only runs a group's rounds. ``llm`` is a
    spec (``builtin``, ``openai:<model>``...), a chat model of yours, or a :class:`ResolvedLLM` a
    caller resolved already. ``eval_data``/``train_data``: the held-out and training data when the
    caller has loaded them (a run loads each once); ``memory_client``: a memory server's client the
    caller opened. ``callbacks``: LangChain callback handlers of yours, given every LLM call and tool
    call of every round (e.g. a LangSmith tracer, a cost logger); each round's run carries
    ``run_name``, ``tags`` and ``metadata`` with the run id, group, round and attempt.
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
    eval_data: ImageDataset | None = None  # default: held_out(cfg)
    train_data: ImageDataset | None = None  # default: training_data(cfg)
    memory_client: Any = None  # default: the bank's client is opened here

    def __post_init__(self) -> None:
        a = self.cfg.agent
        self.out_dir = Path(self.out_dir)
        if self.eval_data is None:
            self.eval_data = held_out(self.cfg)
        # before the LLM is resolved or called: one clear error, not a traceback from evaluate_scheme
        check_takes(self.base, self.eval_data.shape, "The base model", f"{self.eval_data.name}, which the agent "
                    "evaluates it on")
        # the LLM is resolved (key present, server reachable) before any compute is spent
        if isinstance(self.llm, ResolvedLLM):
            self.chat, self.llm_spec = self.llm.chat, self.llm.spec
        else:
            self.chat, self.llm_spec = resolve_llm(self.llm, a, seed=self.cfg.run.seed)
        self.prompts = load_prompts(a.prompt_dir)
        self.process = ForwardProcess(self.cfg.schedule, self.device)
        if self.train_data is None:
            self.train_data = training_data(self.cfg)
        self.pruner = Pruner(self.base, self.train_data, self.process, self.cfg.run.seed)
        config = {k: v for k, v in dict(self.base.config).items() if not k.startswith("_")}
        self.arch_hash = architecture_hash(self.pruner.graph.names, config)
        self.base_hash = weights_hash(self.base)
        # what a quick loss was measured on: records of another eval set are not compared with ours
        self.eval_key = (f"{self.eval_data.name}/t{a.eval_timesteps}/b{min(a.eval_batch_size, len(self.eval_data))}"
                         f"/s{self.cfg.run.seed}")
        # the memory bank first: a bad --memory-dir/--memory-url must fail before anything is written here
        self.memory = MemoryBank(self.pruner.graph.names, self.arch_hash,
                                 path=a.memory_dir or str(self.memory_path or self.out_dir / "memory"),
                                 url=a.memory_url, client=self.memory_client)
        # one id per memory owner: all groups of a pipeline run share it (their records are "this run")
        self.run_id = run_id_for(self.memory_path.parent if self.memory_path else self.out_dir)
        self._open_dir(self.out_dir)

    def _open_dir(self, out_dir: Path) -> None:
        """Write transcripts and group state into ``out_dir`` from now on."""
        a = self.cfg.agent
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.transcript = Transcript(self.out_dir / "transcript.jsonl",
                                     secret_env=[a.api_key_env] if a.api_key_env else [])
        self.loop = RoundLoop(self.chat, self.llm_spec, self.prompts, self.transcript, a, self.show,
                              callbacks=self.callbacks)

    def state_dir(self, index: int) -> Path:
        """Where group ``index``'s ``rounds.json``, ``agent.json``, sensitivities and recovery runs go."""
        return self.out_dir / f"group_{index}"

    def prune_group(self, task: GroupTask, model_dir: Path | None = None,
                    out_dir: Path | None = None) -> tuple[GroupOutcome, Any]:
        """Run the rounds for ``task``, build the best scheme, save it; returns (outcome, PruneResult).

        ``out_dir``: this group's output directory (transcript, group state), when it is not the
        one the agent was made with (a run keeps one per group)."""
        if task.limit_macs >= self.pruner.base_count.thop:
            from ..core.errors import ConfigError

            raise ConfigError(f"The MACs limit of group {task.index} ({task.limit_macs:,.0f}) is not below the base "
                              f"model's {self.pruner.base_count.thop:,}: there is nothing to prune.")
        if out_dir is not None and Path(out_dir) != self.out_dir:
            if hasattr(self.chat, "rewound"):  # a replay replays each group's transcript from its start
                self.chat = self.chat.rewound()
            self._open_dir(Path(out_dir))
        session = PruningSession(self.pruner, task, self.memory, self.eval_data, self.process, self.cfg.agent,
                                 self.run_id, self.llm_spec, self.state_dir(task.index), self.cfg.run.seed,
                                 base_hash=self.base_hash, eval_key=self.eval_key)
        t0 = time.time()
        outcome = self.loop.run_group(session, self.state_dir(task.index) / "rounds.json")
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

        n_evals = session.measured()  # transferred and failed candidates included, reused repeats not
        per_eval = (len(eval_timesteps(task.timesteps, self.cfg.agent.eval_timesteps))
                    * min(self.cfg.agent.eval_batch_size, len(self.eval_data)))
        # a recovery step's forward and backward cost about 3 forwards (STEP_COST in workflow/stage1.py)
        proxy_images = n_evals * (per_eval + self.cfg.agent.recovery_steps * self.cfg.agent.recovery_batch_size * 3)
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
        atomic_write_json(self.state_dir(task.index) / "agent.json", summary)
        outcome.extra["summary"] = summary
        return outcome, result
