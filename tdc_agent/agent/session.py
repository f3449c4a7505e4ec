"""One group's pruning session: the round being played, its evaluated and submitted candidates,
and what each of the agent's tools does (the LangChain wrapping is in :mod:`.tools`, the quick
evaluations in :mod:`.evaluator`).

A tool action that receives bad arguments (unknown unit, level out of range, unknown candidate
id...) returns ``{"error": ...}`` that tells the LLM what to fix; it never ends the run.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ..core.bounds import NAME_CHARS, RATIONALE_CHARS, cut
from ..core.config import AgentConfig
from ..core.data import ImageDataset
from ..core.faults import failpoint
from ..diffusion.process import ForwardProcess
from ..planning.plan import GroupTask
from ..pruning.apply import fit_levels
from ..pruning.pruner import Pruner
from ..pruning.scheme import PruningScheme, SchemeError
from .evaluator import GroupEvaluator, sig6
from .memory import Like, MemoryBank, MemoryRecord


class PruningSession:
    """State shared by the tools while the agent prunes one group."""

    def __init__(
        self,
        pruner: Pruner,
        task: GroupTask,
        memory: MemoryBank,
        eval_data: ImageDataset,
        process: ForwardProcess,
        cfg: AgentConfig,
        run_id: str,
        llm_spec: str,
        out_dir: Path,
        seed: int = 0,
        base_hash: str = "",
        eval_key: str = "",
    ):
        self.pruner, self.task, self.memory = pruner, task, memory
        self.eval_data, self.process, self.cfg = eval_data, process, cfg
        self.run_id, self.llm_spec, self.out_dir, self.seed = run_id, llm_spec, Path(out_dir), seed
        self.like = Like(base_hash, eval_key, task.t_start, task.t_end, task.limit_fraction)
        self.evaluator = GroupEvaluator(pruner, task, eval_data, process, cfg, self.out_dir, seed)
        self.round = 0
        self.evaluated: list[MemoryRecord] = []
        self.submitted: list[str] | None = None
        self.closed_by: str | None = None  # "llm" (submit_candidates) or "tdc-agent" (K were evaluated)
        # LangChain runs the tool calls of one reply concurrently; the tools (tools.py) take this lock so
        # candidates are built and evaluated one at a time: ids, timings and the CPU are not shared
        self.lock = threading.Lock()
        self.last_tool_failure: str | None = None  # the last unexpected tool exception, for the round's note

    # round bookkeeping -----------------------------------------------------------------------
    def start_round(self, r: int) -> None:
        self.round = r
        self.memory.refresh()  # records other processes added meanwhile (shared memory)
        self.evaluated = [rec for rec in self.memory.all({"$and": [{"run_id": self.run_id}, {"group": self.task.index},
                                                                   {"round": r}]})]
        self.evaluated.sort(key=lambda rec: rec.candidate)
        self.submitted = None
        self.closed_by = None

    def ok_candidates(self) -> list[MemoryRecord]:
        """This round's evaluated candidates that have a loss (its own and those taken from memory)."""
        return [r for r in self.evaluated if r.status == "ok"]

    def own_candidates(self) -> list[MemoryRecord]:
        """This round's valid candidates that count toward its K: all but the shapes taken from other
        bases' memory, which are extra (memory adds candidates, it never takes a slot of the search's)."""
        return [r for r in self.ok_candidates() if not r.transferred_from]

    def transferred(self) -> list[MemoryRecord]:
        """This group's candidates (any round of this run) that copy another base's shape, failed ones too."""
        return [r for r in self.memory.all({"$and": [{"run_id": self.run_id}, {"group": self.task.index}]})
                if r.transferred_from]

    def round_candidates(self) -> list[MemoryRecord]:
        """The round's result: the submitted candidates, else the first K evaluated."""
        ok = {self.short_id(r): r for r in self.ok_candidates()}
        if self.submitted:
            return [ok[i] for i in self.submitted if i in ok]
        return self.own_candidates()[: self.cfg.candidates]

    def close_round(self) -> list[str]:
        """Submit the round's best K evaluated candidates ourselves (lowest loss first). Called once K
        valid candidates exist: the round has what it needs, and a model that never calls
        ``submit_candidates`` would otherwise be called again and again until a cap stops it."""
        best = sorted(self.ok_candidates(), key=lambda r: (r.loss, r.candidate))[: self.cfg.candidates]
        self.submitted = [self.short_id(r) for r in best]
        self.closed_by = "tdc-agent"
        return self.submitted

    def short_id(self, rec: MemoryRecord) -> str:
        return f"g{rec.group}-r{rec.round}-c{rec.candidate}"

    # tools ------------------------------------------------------------------------------------
    def inspect_architecture(self) -> dict[str, Any]:
        c = self.pruner.base_count
        return {"base_macs": c.thop, "base_params": c.params, "units": [u.compact() for u in self.pruner.graph.units]}

    def group_context(self) -> dict[str, Any]:
        t = self.task
        return {"group": t.index, "t_start": t.t_start, "t_end": t.t_end, "snr_min_db": sig6(t.snr_min),
                "snr_max_db": sig6(t.snr_max), "limit_macs": int(t.limit_macs), "limit_fraction": sig6(t.limit_fraction),
                "base_macs": self.pruner.base_count.thop, "round": self.round, "rounds": self.cfg.rounds,
                "candidates_per_round": self.cfg.candidates, "neighbours": t.neighbours, "run": self.run_id,
                "base_loss": sig6(self.base_loss),
                "evaluated_this_round": [self.short_id(r) for r in self.own_candidates()],
                "transfer_slots_left": self.transfer_slots_left(),
                "transferred_from": [r.transferred_from for r in self.transferred()]}

    def transfer_slots_left(self) -> int:
        """How many more shapes of other bases this group may still evaluate as extra candidates."""
        return max(0, self.cfg.transfer_candidates - len(self.transferred()))

    def _brief(self, rec: MemoryRecord, full_id: bool = False) -> dict[str, Any]:
        """A record as the tools show it; ``full_id``: its memory id (other runs' short ids are ambiguous),
        which ``evaluate_scheme(transfer_from=...)`` takes."""
        out = {"id": rec.id if full_id else self.short_id(rec), "run": rec.run_id, "group": rec.group,
               "round": rec.round, "loss": None if rec.loss is None else sig6(rec.loss), "macs": int(rec.macs),
               "limit_fraction": sig6(self.limit_fraction(rec)), "levels": rec.levels}
        if rec.transferred_from:
            out["transferred_from"] = rec.transferred_from
        return out

    def limit_fraction(self, rec: MemoryRecord) -> float:
        """A record's budget as a fraction of the base MACs (older records only stored the MACs)."""
        return rec.limit_fraction if rec.limit_fraction >= 0 else rec.limit_macs / self.pruner.base_count.thop

    @property
    def base_loss(self) -> float:
        """The unpruned base model's quick loss on this group (see :class:`~.evaluator.GroupEvaluator`)."""
        return self.evaluator.base_loss

    @property
    def eval_seconds(self) -> float:
        """Time spent building and evaluating candidates (not agent overhead)."""
        return self.evaluator.eval_seconds

    def remembered(self, k: int = 5) -> dict[str, list[MemoryRecord]]:
        """What the memory offers this group, like with like (see :class:`~.memory.Like`):
        ``this_group``: comparable records (same base, eval set, timesteps, budget band; any run);
        ``neighbours``: this run's best of the neighbouring groups; ``other_bases``: the best shapes of
        earlier runs on other base weights of this architecture (losses not comparable)."""
        like = self.like
        return {
            "this_group": self.memory.best(None, k, where=like.comparable),
            "neighbours": [r for g in self.task.neighbours for r in self.memory.best(
                g, 2, where=lambda m: m.get("run_id") == self.run_id)],
            "other_bases": self.memory.best(None, k, where=like.transferable, per_run=2),
        }

    def query_memory(self, levels: Optional[dict[str, float]] = None, k: int = 5) -> dict[str, Any]:
        mem = self.remembered(k)
        out: dict[str, Any] = {
            "records": self.memory.count(),
            "base_loss": sig6(self.base_loss),
            "best_this_group": [self._brief(r) for r in mem["this_group"]],
            "best_neighbours": [self._brief(r) for r in mem["neighbours"]],
            "other_bases": [self._brief(r, full_id=True) for r in mem["other_bases"]],
        }
        if levels:
            try:
                scheme, _ = PruningScheme(levels=levels).validated(self.pruner.graph)
            except (SchemeError, ValueError) as e:
                return {"error": str(e)}
            out["similar"] = [{**self._brief(r), "distance": sig6(d)}
                              for r, d in self.memory.similar(scheme.full(self.pruner.graph), k)]
        return out

    def unit_sensitivity(self, keep_level: float = 0.5) -> dict[str, Any]:
        """How much the loss rises when one unit alone keeps ``keep_level`` of its channels, per unit,
        against the MACs that saves: where pruning is cheap. Measured once per group (cached)."""
        if not 0 < keep_level < 1:
            return {"error": f"keep_level must be in (0, 1), got {keep_level}."}
        return self.evaluator.sensitivity(keep_level)

    def count_macs(self, levels: dict[str, float]) -> dict[str, Any]:
        try:
            scheme, notes = PruningScheme(levels=levels).validated(self.pruner.graph)
            fitted = fit_levels(self.pruner.graph, scheme.full(self.pruner.graph), self.task.limit_macs, notes)
        except (SchemeError, ValueError) as e:
            return {"error": str(e)}
        macs = self.pruner.graph.predict_macs(fitted)
        return {"fitted_levels": {n: v for n, v in fitted.items() if v < 1}, "predicted_macs": int(macs),
                "limit_macs": int(self.task.limit_macs), "notes": notes}

    def _transfer_source(self, source: str) -> str | None:
        """Why ``source`` cannot be taken as another base's shape here (None: it can)."""
        if self.transfer_slots_left() <= 0:
            return (f"this group has used its {self.cfg.transfer_candidates} extra candidate(s) for shapes of other "
                    "bases (agent.transfer_candidates); evaluate it without transfer_from, as one of the round's "
                    "own candidates, if it is worth it.")
        if source in {r.transferred_from for r in self.transferred()}:
            return f"{cut(source, NAME_CHARS)!r} was already taken in this group."
        meta = self.memory.metadata(source)
        if meta is None or not self.like.transferable(meta) or meta.get("status") != "ok":
            shown = [r.id for r in self.remembered(5)["other_bases"]]
            return (f"transfer_from {cut(source, NAME_CHARS)!r} is not a record of another base or budget that "
                    f"transfers to this group; query_memory lists them under other_bases: {shown}.")
        return None

    def evaluate_scheme(self, levels: dict[str, float], rationale: Optional[str] = None,
                        transfer_from: Optional[str] = None) -> dict[str, Any]:
        if transfer_from:
            why = self._transfer_source(transfer_from)
            if why:
                return {"error": why}
        elif len(self.own_candidates()) >= self.cfg.candidates:
            return {"error": f"this round already has {self.cfg.candidates} evaluated candidates "
                             f"({', '.join(self.short_id(r) for r in self.own_candidates())}); it closes with them, this "
                             "scheme was not evaluated."}
        try:
            rationale = cut(rationale, RATIONALE_CHARS) if rationale else rationale  # stored, re-sent, exported
            scheme = PruningScheme(levels=levels, source=self.llm_spec, rationale=rationale)
            t0 = time.time()
            result = self.pruner.prune(scheme, self.task.limit_macs, self.cfg.criterion, self.task.timesteps)
        except (SchemeError, ValueError) as e:
            return {"error": str(e)}
        fitted = result.scheme.levels
        # an extra candidate is compared with the round's own too; an own one only with own ones, so
        # the memory's shapes never change what the round's own search evaluates
        for prev in (self.ok_candidates() if transfer_from else self.own_candidates()):
            if prev.levels == fitted:
                return {"error": f"after fitting to the limit this scheme equals {self.short_id(prev)} of this "
                                 "round; propose a different shape."}
        n = max([r.candidate for r in self.evaluated], default=-1) + 1
        rec = MemoryRecord(
            id=f"{self.run_id}:g{self.task.index}-r{self.round}-c{n}", run_id=self.run_id, group=self.task.index,
            t_start=self.task.t_start, t_end=self.task.t_end, limit_macs=self.task.limit_macs, macs=result.macs.thop,
            params=result.macs.params, round=self.round, candidate=n, llm=self.llm_spec,
            arch_hash=self.memory.arch_hash, base_hash=self.like.base_hash, limit_fraction=self.task.limit_fraction,
            split=self.like.split, levels=fitted, rationale=rationale or "", transferred_from=transfer_from or "",
        )
        earlier = self._measured_before(fitted)
        if earlier is not None:
            # an earlier round measured this exact scheme on the same images, timesteps and noise:
            # measuring it again would cost the evaluation and give the same number
            rec.loss, rec.repeat_of = earlier.loss, earlier.id
        else:
            model = result.model
            try:
                if self.cfg.recovery_steps:
                    model = self.evaluator.recover(model, self.short_id(rec))
                loss = self.evaluator.loss(model)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss}")
                rec.loss = loss
            except FloatingPointError as e:
                rec.status, rec.error = "failed", str(e)
        self.evaluator.eval_seconds += time.time() - t0
        self.memory.add(rec)
        self.evaluated.append(rec)
        failpoint("agent.candidate")
        if rec.status != "ok":
            return {"error": f"candidate {self.short_id(rec)} diverged during evaluation ({rec.error}); it is "
                             "recorded as failed. Propose a less aggressive shape."}
        return {"id": self.short_id(rec), "loss": sig6(rec.loss), "macs": int(rec.macs),
                "fill_of_limit": sig6(rec.macs / self.task.limit_macs), "params": rec.params,
                "fitted_levels": fitted, "notes": result.notes,
                **({"transferred_from": transfer_from, "extra": True} if transfer_from else {}),
                **({"repeat_of": self.short_id(earlier),
                    "note": f"after fitting to the limit this scheme equals {self.short_id(earlier)} of round "
                            f"{earlier.round + 1}: its loss is reused, not measured again. It counts as a "
                            "candidate; a shape unlike the earlier ones teaches the search more."}
                   if earlier is not None else {}),
                "evaluated_this_round": len(self.own_candidates()), "needed": self.cfg.candidates}

    def _measured_before(self, levels: dict[str, float]) -> MemoryRecord | None:
        """An earlier round's measured record of this run and group with exactly these fitted levels."""
        for rec in self.memory.all({"$and": [{"run_id": self.run_id}, {"group": self.task.index}, {"status": "ok"}]}):
            if rec.round < self.round and not rec.repeat_of and rec.loss is not None and rec.levels == levels:
                return rec
        return None

    def measured(self) -> int:
        """Quick evaluations this run really measured in this group (failed ones too; reused repeats not)."""
        return sum(1 for r in self.memory.all({"$and": [{"run_id": self.run_id}, {"group": self.task.index}]})
                   if not r.repeat_of)

    def submit_candidates(self, candidate_ids: list[str]) -> dict[str, Any]:
        ok = {self.short_id(r) for r in self.ok_candidates()}
        unknown = [i for i in candidate_ids if i not in ok]
        if unknown:
            shown = [cut(i, NAME_CHARS) for i in unknown[:5]] + ([f"and {len(unknown) - 5} more"] if len(unknown) > 5 else [])
            return {"error": f"unknown or failed candidate id(s) {shown}; evaluated this round: {sorted(ok)}."}
        ids = list(dict.fromkeys(candidate_ids))
        own = len(self.own_candidates())
        if own < self.cfg.candidates:
            return {"error": f"this round has {own} of its {self.cfg.candidates} own candidates; evaluate "
                             f"{self.cfg.candidates - own} more without transfer_from (shapes taken from other "
                             "bases are extra candidates, besides the round's own) before submitting."}
        if len(ids) < self.cfg.candidates:
            return {"error": f"submit {self.cfg.candidates} different candidates; got {len(ids)}. "
                             f"Evaluated this round: {sorted(ok)}."}
        self.submitted = ids[: self.cfg.candidates]
        self.closed_by = "llm"
        return {"submitted": self.submitted, "round_done": True}


__all__ = ["PruningSession"]
