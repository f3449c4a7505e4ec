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
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from rich.markup import escape
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


def compact_levels(levels: dict[str, float]) -> str:
    """A scheme's levels as compact JSON for prompts (3 decimals: the quanta are coarser)."""
    return json.dumps({k: round(v, 3) for k, v in sorted(levels.items())}, separators=(",", ":"))


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
        self.cap_hit: str | None = None  # the per-group cap that stopped the group, in words

    @property
    def cost(self) -> float | None:
        price = self.cfg.prices.get(self.model_name)
        if price is None:
            return None
        return (self.input_tokens * price[0] + self.output_tokens * price[1]) / 1e6

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        if self.calls >= self.cfg.max_llm_calls_per_group:
            self._cap(f"LLM call cap reached: {self.calls} calls for this group "
                      f"(agent.max_llm_calls_per_group={self.cfg.max_llm_calls_per_group}).")
        if self.cfg.max_tokens_per_group and self.input_tokens + self.output_tokens >= self.cfg.max_tokens_per_group:
            self._cap(f"Token cap reached: {self.input_tokens + self.output_tokens} tokens for this group "
                      f"(agent.max_tokens_per_group={self.cfg.max_tokens_per_group}).")
        self.calls += 1

    def _cap(self, message: str) -> None:
        self.cap_hit = message
        raise TDCError(message)

    def on_tool_start(self, serialized: Any, input_str: str, **kwargs: Any) -> None:
        if self.tool_calls >= self.cfg.max_tool_calls_per_group:
            self._cap(f"Tool call cap reached: {self.tool_calls} tool calls for this group "
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


# what LangChain's limit middleware writes when a cap ends the run (checked by tests/test_llm_protocols.py)
_MODEL_CAP_MARK = "model call limits exceeded"
_TOOL_CAP_MARKS = ("tool call limit reached", "tool call limit exceeded")


def _cap_hit(messages: list[Any], cfg: AgentConfig) -> str | None:
    """Which per-round cap ended the round, if one did (the limit middleware's own messages say so)."""
    texts = [m.content.lower() for m in messages if isinstance(m, (AIMessage, ToolMessage)) and isinstance(m.content, str)]
    if any(_MODEL_CAP_MARK in t for t in texts):
        return f"the round's LLM call cap (agent.max_llm_calls_per_round={cfg.max_llm_calls_per_round})"
    if any(mark in t for t in texts for mark in _TOOL_CAP_MARKS):
        return f"the round's tool call cap (agent.max_tool_calls_per_round={cfg.max_tool_calls_per_round})"
    return None


def _diagnose(messages: list[Any], session: PruningSession) -> str:
    """Why a round ended without K valid candidates, in words the LLM (and the user) can act on."""
    k = session.cfg.candidates
    n_ok = len(session.ok_candidates())
    cap = _cap_hit(messages, session.cfg)
    if cap:
        return f"the round reached {cap} with only {n_ok} of {k} candidates evaluated"
    if not messages:
        return (f"the round reached LangChain's step limit (recursion_limit) with only {n_ok} of {k} candidates "
                "evaluated")
    last_ai = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
    if last_ai is not None and last_ai.invalid_tool_calls:
        bad = last_ai.invalid_tool_calls[0]
        return (f"your tool call {bad.get('name')!r} had arguments that are not valid JSON "
                f"({str(bad.get('error') or bad.get('args'))[:200]}); only {n_ok} of {k} candidates are evaluated")
    if last_ai is not None and not last_ai.tool_calls:
        text = (last_ai.content if isinstance(last_ai.content, str) else json.dumps(last_ai.content)).strip()
        if not text:
            return f"your reply was empty; only {n_ok} of {k} candidates are evaluated"
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


class ToolChoice(AgentMiddleware):
    """Passes ``agent.tool_choice`` to the model's ``bind_tools`` on every call of the round."""

    def __init__(self, choice: Any):
        super().__init__()
        self.choice = choice

    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        return handler(request.override(tool_choice=self.choice))


def _takes_tool_choice(llm: BaseChatModel) -> bool:
    """Whether the model's ``bind_tools`` accepts ``tool_choice`` (by name or through ``**kwargs``)."""
    import inspect

    try:
        params = inspect.signature(llm.bind_tools).parameters
    except (TypeError, ValueError):
        return False
    return "tool_choice" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class RoundLoop:
    """Runs the rounds of one group with one chat model.

    ``callbacks``: further LangChain callback handlers, given every LLM and tool event of every round
    (next to the transcript and the usage meter). Each round's run carries ``run_name``, ``tags`` and
    ``metadata`` naming the run, group, round and attempt, which LangSmith shows and filters on.
    """

    def __init__(self, llm: BaseChatModel, llm_spec: str, prompts: PromptSet, transcript: Transcript,
                 cfg: AgentConfig, show: bool = True, callbacks: list[BaseCallbackHandler] | None = None):
        self.llm, self.llm_spec, self.prompts = llm, llm_spec, prompts
        self.transcript, self.cfg, self.show = transcript, cfg, show
        self.callbacks = list(callbacks or [])

    def _run_config(self, session: PruningSession, r: int, attempt: int, meter: UsageMeter) -> dict[str, Any]:
        """The RunnableConfig of one attempt at round ``r`` (0-based, as in the transcript and memory)."""
        g = session.task.index
        return {"callbacks": [self.transcript, meter, *self.callbacks], "max_concurrency": 1,
                "recursion_limit": 4 * self.cfg.max_llm_calls_per_round + 20,
                "run_name": f"tdc-agent run {session.run_id} group {g} round {r}",
                "tags": ["tdc-agent", f"run:{session.run_id}", f"group:{g}", f"round:{r}"],
                "metadata": {"tdc_run_id": session.run_id, "group": g, "round": r, "attempt": attempt,
                             "llm": self.llm_spec, "protocol": self.cfg.protocol}}

    def _attempt(self, session: PruningSession, r: int, attempt: int, note: str | None, system: str,
                 meter: UsageMeter) -> tuple[list[Any], str | None]:
        """One attempt at round ``r``: the conversation, and (json protocol) why it fell short."""
        config = self._run_config(session, r, attempt, meter)
        if self.cfg.protocol == "json":
            from .structured import run_json_round

            return run_json_round(self.llm, session, system, self._round_prompt(session, r, None), note, config,
                                  self.cfg.max_llm_calls_per_round, self.transcript)
        middleware: list[AgentMiddleware] = [
            EndWhenSubmitted(session),
            ModelCallLimitMiddleware(run_limit=self.cfg.max_llm_calls_per_round, exit_behavior="end"),
            ToolCallLimitMiddleware(run_limit=self.cfg.max_tool_calls_per_round, exit_behavior="end"),
        ]
        if self.cfg.tool_choice and _takes_tool_choice(self.llm):
            # "required" is OpenAI's word for LangChain's "any" (which langchain-openai maps back)
            middleware.append(ToolChoice("any" if self.cfg.tool_choice == "required" else self.cfg.tool_choice))
        agent = create_agent(self.llm, session.tools(), system_prompt=system, middleware=middleware)
        result = agent.invoke({"messages": [HumanMessage(self._round_prompt(session, r, note))]}, config=config)
        return result["messages"], None

    def _round_prompt(self, session: PruningSession, r: int, note: str | None) -> str:
        t = session.task
        units = session.pruner.graph.units
        arch = self.prompts.render(
            "architecture", n_units=len(units), base_macs=f"{session.pruner.base_count.thop:,}",
            base_params=f"{session.pruner.base_count.params:,}",
            # largest MACs share first: where a pruning decision moves the budget most
            units_table="\n".join(f"{u.name} | {u.role} | {u.channels} | {u.quantum} | {u.macs_share:.3f} | {u.params}"
                                  for u in sorted(units, key=lambda u: (-u.macs_share, u.name))))

        def lines(recs: list[MemoryRecord], with_loss: bool = True) -> str:
            return "\n".join(
                f"- {session.short_id(x)} (run {x.run_id}, limit {session.limit_fraction(x):.3f}): "
                + (f"loss {x.loss:.5f}, " if with_loss else "") + f"MACs {x.macs:,.0f}, levels {compact_levels(x.levels)}"
                for x in recs) or "- (none yet)"

        mem = session.remembered(5)
        shown = {x.id for x in mem["this_group"]}
        last = [x for x in session.memory.all({"$and": [{"run_id": session.run_id}, {"group": t.index},
                                                        {"round": r - 1}]}) if x.loss is not None and x.id not in shown]
        memory = self.prompts.render(
            "memory", n_records=session.memory.count(), best_this_group=lines(mem["this_group"]),
            best_neighbours=lines(mem["neighbours"]), last_round=lines(last),
            other_bases=lines(mem["other_bases"], with_loss=False), base_loss=f"{session.base_loss:.5f}")
        text = self.prompts.render(
            "round", round=r + 1, rounds=self.cfg.rounds, group=t.index, t_start=t.t_start, t_end=t.t_end,
            snr_min=f"{t.snr_min:.1f}", snr_max=f"{t.snr_max:.1f}", limit_macs=f"{t.limit_macs:,.0f}",
            limit_fraction=f"{t.limit_fraction:.3f}", candidates=self.cfg.candidates, architecture=arch, memory=memory,
            base_loss=f"{session.base_loss:.5f}")
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
                shortfall = None
                try:
                    messages, shortfall = self._attempt(session, r, attempt, note, system, meter)
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
                    elif meter.cap_hit:  # a per-group cap raised inside a callback, wrapped on the way out
                        self._save(state_path, rounds, meter)
                        raise TDCError(f"{meter.cap_hit} Group {session.task.index}, round {r + 1}: finished "
                                       "rounds are saved; raise the cap and rerun the same command to resume.") from None
                    else:
                        raise
                if len(session.ok_candidates()) >= self.cfg.candidates:
                    break
                note = shortfall or _diagnose(messages, session)
                self.transcript.event("round_retry", attempt=attempt + 1, reason=note)
                if self.show:
                    # the note may quote the LLM's words: text, never markup
                    console.print(f"[yellow]group {session.task.index} round {r + 1}: {escape(note)}; retrying "
                                  f"({attempt + 1}/{self.cfg.max_round_retries})[/]", emoji=False)
            chosen = session.round_candidates()
            if len(chosen) < self.cfg.candidates:
                self._save(state_path, rounds, meter)
                raise TDCError(
                    f"The LLM ({self.llm_spec}) did not produce {self.cfg.candidates} valid candidates in group "
                    f"{session.task.index}, round {r + 1}, after {self.cfg.max_round_retries + 1} attempts: {note}. "
                    + (f"A tool failed too: {session.last_tool_failure}. " if session.last_tool_failure else "") +
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
