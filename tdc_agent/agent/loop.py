"""The per-group round loop (paper Eq. 11-12): R rounds, each an agent invocation that must end with
K evaluated candidates; every result goes to the memory bank, which the next round sees.

Our code drives the rounds, not an open-ended chat. Each round is built with
``langchain.agents.create_agent`` and capped (LLM calls and tool calls per round via LangChain's
limit middleware; LLM calls and tokens per group via :class:`UsageMeter`). A round that ends with
fewer than K valid candidates (malformed tool calls, an empty reply, a refusal, a cap hit) is retried
with a note saying what went wrong, up to ``agent.max_round_retries`` times, and then fails with a
clear error. Round results are saved after every round, so a rerun resumes at the first
unfinished round.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelCallLimitMiddleware, ToolCallLimitMiddleware, hook_config
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from rich.table import Table

from ..core.io import atomic_write_json, read_json
from ..core.config import AgentConfig
from ..core.errors import TDCError
from ..core.faults import failpoint
from ..core.progress import console
from .memory import MemoryRecord
from .prompts import PromptSet
from .tools import PruningSession
from .transcript import Transcript


class UsageMeter(BaseCallbackHandler):
    """Counts LLM calls and tokens (and cost, where ``agent.prices`` has the model) and enforces the
    per-group caps before a call is made."""

    raise_error = True

    def __init__(self, cfg: AgentConfig, model_name: str):
        self.cfg = cfg
        self.model_name = model_name
        self.calls = 0
        self.tool_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0

    @property
    def cost(self) -> float | None:
        price = self.cfg.prices.get(self.model_name)
        if price is None:
            return None
        return (self.input_tokens * price[0] + self.output_tokens * price[1]) / 1e6

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        if self.calls >= self.cfg.max_llm_calls_per_group:
            raise TDCError(f"LLM call cap reached: {self.calls} calls for this group "
                           f"(agent.max_llm_calls_per_group={self.cfg.max_llm_calls_per_group}).")
        if self.cfg.max_tokens_per_group and self.input_tokens + self.output_tokens >= self.cfg.max_tokens_per_group:
            raise TDCError(f"Token cap reached: {self.input_tokens + self.output_tokens} tokens for this group "
                           f"(agent.max_tokens_per_group={self.cfg.max_tokens_per_group}).")
        self.calls += 1

    def on_tool_start(self, serialized: Any, input_str: str, **kwargs: Any) -> None:
        if self.tool_calls >= self.cfg.max_tool_calls_per_group:
            raise TDCError(f"Tool call cap reached: {self.tool_calls} tool calls for this group "
                           f"(agent.max_tool_calls_per_group={self.cfg.max_tool_calls_per_group}).")
        self.tool_calls += 1

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        gen = response.generations[0][0] if response.generations and response.generations[0] else None
        usage = getattr(getattr(gen, "message", None), "usage_metadata", None) or {}
        self.input_tokens += int(usage.get("input_tokens", 0) or 0)
        self.output_tokens += int(usage.get("output_tokens", 0) or 0)

    def to_dict(self) -> dict[str, Any]:
        return {"llm_calls": self.calls, "tool_calls": self.tool_calls, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cost_usd": self.cost}


@dataclass
class RoundSummary:
    round: int
    candidates: list[str]
    losses: list[float]
    macs: list[float]
    attempts: int
    seconds: float

    @property
    def mean(self) -> float:
        return statistics.mean(self.losses)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.losses) if len(self.losses) > 1 else 0.0


@dataclass
class GroupOutcome:
    best: MemoryRecord
    rounds: list[RoundSummary]
    usage: dict[str, Any]
    eval_seconds: float
    total_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


_TRANSPORT_MODULES = ("openai", "httpx", "httpcore", "anthropic", "requests", "urllib3", "langchain_openai",
                      "langchain_anthropic", "langchain_ollama", "ollama")


def _is_transport_error(e: BaseException | None) -> bool:
    """An error from the LLM client (HTTP status, timeout, connection), possibly wrapped."""
    seen = 0
    while e is not None and seen < 10:
        if (type(e).__module__ or "").startswith(_TRANSPORT_MODULES):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _diagnose(messages: list[Any], session: PruningSession) -> str:
    """Why a round ended without K valid candidates, in words the LLM (and the user) can act on."""
    k = session.cfg.candidates
    n_ok = len(session.ok_candidates())
    last_ai = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
    if last_ai is not None and last_ai.invalid_tool_calls:
        bad = last_ai.invalid_tool_calls[0]
        return (f"your tool call {bad.get('name')!r} had arguments that are not valid JSON "
                f"({str(bad.get('error') or bad.get('args'))[:200]}); only {n_ok} of {k} candidates are evaluated")
    if last_ai is not None and not last_ai.tool_calls:
        text = (last_ai.content if isinstance(last_ai.content, str) else json.dumps(last_ai.content)).strip()
        if not text:
            return f"your reply was empty; only {n_ok} of {k} candidates are evaluated"
        if "limits exceeded" in text.lower():  # written by LangChain's call-limit middleware
            return f"the round hit its call cap ({text}) with only {n_ok} of {k} candidates evaluated"
        return f"you replied with text instead of tool calls ({text[:200]!r}); only {n_ok} of {k} candidates are evaluated"
    return f"the round stopped (call cap or step limit reached) with only {n_ok} of {k} candidates evaluated"


class EndWhenSubmitted(AgentMiddleware):
    """Ends the agent loop once ``submit_candidates`` accepted the round's candidates.

    Without it the agent makes one more LLM call only to confirm, resending the whole conversation
    (about a quarter of a round's input tokens).
    """

    def __init__(self, session: PruningSession):
        super().__init__()
        self.session = session

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        return {"jump_to": "end"} if self.session.submitted else None


class RoundLoop:
    """Runs the rounds of one group with one chat model."""

    def __init__(self, llm: BaseChatModel, llm_spec: str, prompts: PromptSet, transcript: Transcript,
                 cfg: AgentConfig, show: bool = True):
        self.llm, self.llm_spec, self.prompts = llm, llm_spec, prompts
        self.transcript, self.cfg, self.show = transcript, cfg, show

    def _round_prompt(self, session: PruningSession, r: int, note: str | None) -> str:
        t = session.task
        units = session.pruner.graph.units
        arch = self.prompts.render(
            "architecture", n_units=len(units), base_macs=f"{session.pruner.base_count.thop:,}",
            base_params=f"{session.pruner.base_count.params:,}",
            # largest MACs share first: where a pruning decision moves the budget most
            units_table="\n".join(f"{u.name} | {u.role} | {u.channels} | {u.quantum} | {u.macs_share:.3f} | {u.params}"
                                  for u in sorted(units, key=lambda u: (-u.macs_share, u.name))))

        def lines(recs: list[MemoryRecord]) -> str:
            return "\n".join(f"- {session.short_id(x)} (run {x.run_id}): loss {x.loss:.5f}, MACs {x.macs:,.0f}, levels "
                             f"{json.dumps(x.levels)}" for x in recs) or "- (none yet)"

        last = [x for x in session.memory.all({"$and": [{"run_id": session.run_id}, {"group": t.index},
                                                        {"round": r - 1}]}) if x.loss is not None]
        memory = self.prompts.render(
            "memory", n_records=session.memory.count(), best_this_group=lines(session.memory.best(t.index, 5)),
            best_neighbours=lines([x for g in t.neighbours for x in session.memory.best(g, 2)]), last_round=lines(last))
        text = self.prompts.render(
            "round", round=r + 1, rounds=self.cfg.rounds, group=t.index, t_start=t.t_start, t_end=t.t_end,
            snr_min=f"{t.snr_min:.1f}", snr_max=f"{t.snr_max:.1f}", limit_macs=f"{t.limit_macs:,.0f}",
            limit_fraction=f"{t.limit_fraction:.3f}", candidates=self.cfg.candidates, architecture=arch, memory=memory)
        done = [session.short_id(x) for x in session.ok_candidates()]
        if done:
            text += f"\n\nAlready evaluated in this round: {', '.join(done)}."
        if note:
            text += f"\n\nYour previous attempt at this round failed: {note}. Reply only with tool calls."
        return text

    def run_group(self, session: PruningSession, state_path: Path) -> GroupOutcome:
        t_group = time.time()
        state = read_json(state_path, "agent round state") if state_path.is_file() else {"rounds": []}
        rounds = [RoundSummary(**x) for x in state["rounds"]]
        meter = UsageMeter(self.cfg, self.llm_spec.split(":", 1)[-1])
        for k, v in state.get("usage", {}).items():
            if k in ("llm_calls", "tool_calls", "input_tokens", "output_tokens") and v:
                setattr(meter, {"llm_calls": "calls"}.get(k, k), int(v))
        system = self.prompts.render("system", candidates=self.cfg.candidates, rounds=self.cfg.rounds)
        for r in range(len(rounds), self.cfg.rounds):
            t0 = time.time()
            session.start_round(r)
            self.transcript.context = {"group": session.task.index, "round": r}
            self.transcript.event("round_start", resumed_candidates=len(session.ok_candidates()))
            note = None
            for attempt in range(self.cfg.max_round_retries + 1):
                if len(session.ok_candidates()) >= self.cfg.candidates and attempt > 0:
                    break
                agent = create_agent(self.llm, session.tools(), system_prompt=system, middleware=[
                    EndWhenSubmitted(session),
                    ModelCallLimitMiddleware(run_limit=self.cfg.max_llm_calls_per_round, exit_behavior="end"),
                    ToolCallLimitMiddleware(run_limit=self.cfg.max_tool_calls_per_round, exit_behavior="end"),
                ])
                try:
                    result = agent.invoke(
                        {"messages": [HumanMessage(self._round_prompt(session, r, note))]},
                        config={"callbacks": [self.transcript, meter], "max_concurrency": 1,
                                "recursion_limit": 4 * self.cfg.max_llm_calls_per_round + 20},
                    )
                    messages = result["messages"]
                except TDCError:
                    self._save(state_path, rounds, meter)
                    raise
                except Exception as e:  # noqa: BLE001 - sorted into transport errors and bugs below
                    if type(e).__name__ == "GraphRecursionError":
                        messages = []
                    elif _is_transport_error(e):
                        self._save(state_path, rounds, meter)
                        self.transcript.event("llm_failure", error=f"{type(e).__name__}: {e}")
                        status = getattr(e, "status_code", None)
                        if status in (401, 403):  # clients do not retry these: saying "after N retries" misleads
                            raise TDCError(
                                f"The LLM endpoint refused the credentials (HTTP {status}: {e}) in group "
                                f"{session.task.index}, round {r + 1}. Check the API key (agent.api_key_env or the "
                                "provider's variable) and agent.base_url, then rerun the same command: finished "
                                "rounds are saved."
                            ) from None
                        raise TDCError(
                            f"The LLM endpoint failed ({type(e).__name__}: {e}) after {self.cfg.max_retries} retries "
                            f"with backoff, in group {session.task.index}, round {r + 1}. Finished rounds are saved; "
                            "rerun the same command to resume from this round."
                        ) from None
                    else:
                        raise
                if len(session.ok_candidates()) >= self.cfg.candidates:
                    break
                note = _diagnose(messages, session)
                self.transcript.event("round_retry", attempt=attempt + 1, reason=note)
                if self.show:
                    console.print(f"[yellow]group {session.task.index} round {r + 1}: {note}; retrying "
                                  f"({attempt + 1}/{self.cfg.max_round_retries})[/]")
            chosen = session.round_candidates()
            if len(chosen) < self.cfg.candidates:
                self._save(state_path, rounds, meter)
                raise TDCError(
                    f"The LLM ({self.llm_spec}) did not produce {self.cfg.candidates} valid candidates in group "
                    f"{session.task.index}, round {r + 1}, after {self.cfg.max_round_retries + 1} attempts: {note}. "
                    f"Its replies are in {self.transcript.path}. Rerun to resume from this round, raise "
                    "agent.max_round_retries, or use another --llm."
                )
            summary = RoundSummary(round=r, candidates=[session.short_id(x) for x in chosen],
                                   losses=[float(x.loss) for x in chosen], macs=[x.macs for x in chosen],
                                   attempts=attempt + 1, seconds=time.time() - t0)
            rounds.append(summary)
            self._save(state_path, rounds, meter)
            failpoint("agent.round")
            self.transcript.event("round_end", candidates=summary.candidates, losses=summary.losses)
            if self.show:
                self._print_round(session, summary, chosen)
        best = min((x for x in session.memory.all({"$and": [{"run_id": session.run_id}, {"group": session.task.index},
                                                            {"status": "ok"}]}) if x.loss is not None),
                   key=lambda x: (x.loss, x.id))
        return GroupOutcome(best=best, rounds=rounds, usage=meter.to_dict(), eval_seconds=session.eval_seconds,
                            total_seconds=time.time() - t_group)

    def _save(self, path: Path, rounds: list[RoundSummary], meter: UsageMeter) -> None:
        atomic_write_json(path, {"rounds": [r.__dict__ for r in rounds], "usage": meter.to_dict()})

    def _print_round(self, session: PruningSession, s: RoundSummary, chosen: list[MemoryRecord]) -> None:
        t = Table(title=f"group {session.task.index}, round {s.round + 1}/{self.cfg.rounds}: loss "
                        f"{s.mean:.5f} ± {s.std:.5f} ({s.attempts} attempt{'s' if s.attempts > 1 else ''})")
        for col in ("candidate", "MACs", "of limit", "loss", "pruned units"):
            t.add_column(col, justify="right" if col != "candidate" else "left")
        for x in chosen:
            t.add_row(session.short_id(x), f"{x.macs / 1e6:,.2f} M", f"{x.macs / session.task.limit_macs:.1%}",
                      f"{x.loss:.5f}", str(len(x.levels)))
        console.print(t)
