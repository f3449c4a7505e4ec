"""The per-group round loop (paper Eq. 11-12): R rounds, each an agent invocation that must end with
K evaluated candidates; every result goes to the memory bank, which the next round sees.

Our code drives the rounds, not an open-ended chat. Each round is built with
``langchain.agents.create_agent`` and capped (LLM calls and tool calls per round via LangChain's
limit middleware, whose step limit is set so that ours bind first; LLM calls and tokens per group via
:class:`UsageMeter`). A round closes as soon as it has K valid evaluated candidates: our code submits
them (:class:`CloseRound`), so a model that never calls ``submit_candidates`` costs no extra calls.
What a reply says is bounded before it is re-sent (:class:`BoundReplies`). A round that ends with
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

from ..core.bounds import NAME_CHARS, RATIONALE_CHARS, REPLY_TEXT_CHARS, cut, cut_strings
from ..core.io import atomic_write_json, read_json
from ..core.config import AgentConfig
from ..core.errors import TDCError
from ..core.faults import failpoint
from ..core.progress import console
from .memory import MemoryRecord
from .prompts import PromptSet
from .session import PruningSession
from .tools import agent_tools
from .transcript import Transcript


def compact_levels(levels: dict[str, float]) -> str:
    """A scheme's levels as compact JSON for prompts (3 decimals: the quanta are coarser)."""
    return json.dumps({k: round(v, 3) for k, v in sorted(levels.items())}, separators=(",", ":"))


def estimate_tokens(payload: Any) -> int:
    """A tokenizer-free estimate of a payload's tokens: bytes / 4 of its JSON (what the README's token
    figures use). Only where the provider reports no usage."""
    return max(1, len(json.dumps(payload, default=str).encode()) // 4)


def _message_payload(m: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"role": getattr(m, "type", ""), "content": getattr(m, "content", "")}
    for attr in ("tool_calls", "invalid_tool_calls", "tool_call_id"):
        if getattr(m, attr, None):
            d[attr] = getattr(m, attr)
    return d


def _reported_usage(response: Any) -> tuple[int, int] | None:
    """(input, output) tokens as the provider reported them: the message's ``usage_metadata``, else
    the ``token_usage`` of the response's ``llm_output``; None when it reported none (or only zeros:
    no real request has no input tokens, so a zero is a missing figure, not a free call)."""
    gen = response.generations[0][0] if response.generations and response.generations[0] else None
    usage = getattr(getattr(gen, "message", None), "usage_metadata", None) or {}
    got = (int(usage.get("input_tokens", 0) or 0), int(usage.get("output_tokens", 0) or 0))
    if got[0] > 0:
        return got
    tu = (getattr(response, "llm_output", None) or {}).get("token_usage") or {}
    got = (int(tu.get("prompt_tokens", tu.get("input_tokens", 0)) or 0),
           int(tu.get("completion_tokens", tu.get("output_tokens", 0)) or 0))
    return got if got[0] > 0 else None


class UsageMeter(BaseCallbackHandler):
    """Counts LLM calls and tokens (and cost, where ``agent.prices`` has the model) and enforces the
    per-group caps before a call is made.

    Tokens are the provider's usage figures (``usage_metadata`` or ``token_usage``); a call without
    them is counted by estimate (bytes / 4 of the request and the reply) and said so in
    ``tokens_estimated``. ``count_tokens=False`` (builtin, replay: no LLM is paid) counts none. The
    token budget is checked against what the next request would add, so it is a bound on the group's
    tokens, not a threshold crossed by one last, possibly huge, request."""

    raise_error = True

    def __init__(self, cfg: AgentConfig, model_name: str, count_tokens: bool = True):
        self.cfg = cfg
        self.model_name = model_name
        self.count_tokens = count_tokens
        self.calls = 0
        self.tool_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.tokens_estimated = 0  # calls whose tokens were estimated (the provider reported none)
        self.cap_hit: str | None = None  # the per-group cap that stopped the group, in words
        self._pending: dict[Any, int] = {}  # run id -> estimated input tokens of a request in flight

    @property
    def cost(self) -> float | None:
        price = self.cfg.prices.get(self.model_name)
        if price is None:
            return None
        return (self.input_tokens * price[0] + self.output_tokens * price[1]) / 1e6

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any = None, **kwargs: Any) -> None:
        if self.calls >= self.cfg.max_llm_calls_per_group:
            self._cap(f"LLM call cap reached: {self.calls} calls for this group "
                      f"(agent.max_llm_calls_per_group={self.cfg.max_llm_calls_per_group}).")
        cap = self.cfg.max_tokens_per_group
        if self.count_tokens:
            tools = (kwargs.get("invocation_params") or {}).get("tools") or []
            est = estimate_tokens({"messages": [_message_payload(m) for m in messages[0]], "tools": tools})
            self._pending[run_id] = est
            used = self.input_tokens + self.output_tokens
            if cap and used + est > cap:
                self._cap(f"Token cap reached: {used:,} tokens used in this group, and the next request would add "
                          f"about {est:,} more, over agent.max_tokens_per_group={cap:,} (set it in the config or with "
                          "--max-tokens-per-group).")
        self.calls += 1

    def _cap(self, message: str) -> None:
        self.cap_hit = message
        raise TDCError(message)

    def on_tool_start(self, serialized: Any, input_str: str, **kwargs: Any) -> None:
        if self.tool_calls >= self.cfg.max_tool_calls_per_group:
            self._cap(f"Tool call cap reached: {self.tool_calls} tool calls for this group "
                      f"(agent.max_tool_calls_per_group={self.cfg.max_tool_calls_per_group}).")
        self.tool_calls += 1

    def on_llm_end(self, response: Any, *, run_id: Any = None, **kwargs: Any) -> None:
        pending = self._pending.pop(run_id, None)
        if not self.count_tokens:
            return
        reported = _reported_usage(response)
        if reported is None:
            gen = response.generations[0][0] if response.generations and response.generations[0] else None
            msg = getattr(gen, "message", None)
            reported = (pending or 0, estimate_tokens(_message_payload(msg)) if msg is not None else 0)
            self.tokens_estimated += 1
        self.input_tokens += reported[0]
        self.output_tokens += reported[1]

    def on_llm_error(self, error: BaseException, *, run_id: Any = None, **kwargs: Any) -> None:
        self._pending.pop(run_id, None)

    def to_dict(self) -> dict[str, Any]:
        return {"llm_calls": self.calls, "tool_calls": self.tool_calls, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "tokens_estimated": self.tokens_estimated,
                "max_tokens_per_group": self.cfg.max_tokens_per_group if self.count_tokens else None,
                "cost_usd": self.cost}


@dataclass
class RoundSummary:
    round: int
    candidates: list[str]
    losses: list[float]
    macs: list[float]
    attempts: int
    seconds: float
    closed_by: str = "llm"  # "llm": it called submit_candidates; "tdc-agent": closed once K were evaluated

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
    n_ok = len(session.own_candidates())
    cap = _cap_hit(messages, session.cfg)
    if cap:
        return f"the round reached {cap} with only {n_ok} of {k} candidates evaluated"
    if not messages:  # LangChain's step limit: set from our caps (see RoundLoop._attempt), so not expected
        return (f"the round ran out of agent steps (LangChain's step limit, set from "
                f"agent.max_llm_calls_per_round={session.cfg.max_llm_calls_per_round}) with only {n_ok} of {k} "
                "candidates evaluated")
    last_ai = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
    if last_ai is not None and last_ai.invalid_tool_calls:
        bad = last_ai.invalid_tool_calls[0]
        return (f"your tool call {cut(str(bad.get('name')), NAME_CHARS)!r} had arguments that are not valid JSON "
                f"({str(bad.get('error') or bad.get('args'))[:200]}); only {n_ok} of {k} candidates are evaluated")
    if last_ai is not None and not last_ai.tool_calls:
        text = (last_ai.content if isinstance(last_ai.content, str) else json.dumps(last_ai.content)).strip()
        if not text:
            return f"your reply was empty; only {n_ok} of {k} candidates are evaluated"
        return f"you replied with text instead of tool calls ({text[:200]!r}); only {n_ok} of {k} candidates are evaluated"
    return f"the round stopped (call cap or step limit reached) with only {n_ok} of {k} candidates evaluated"


class CloseRound(AgentMiddleware):
    """Ends the agent loop once the round has its candidates.

    If ``submit_candidates`` accepted them, the loop ends without the confirmation call (which
    resends the whole conversation: about a quarter of a round's input tokens). If K valid candidates
    are evaluated and nothing was submitted, our code submits the best K itself and ends the round,
    saying so in the transcript (``round_closed``): ``evaluate_scheme`` accepts no more than K, so the
    model's submit would carry no choice, and a model that never submits (common for smaller ones)
    would otherwise be called until a cap stops it (61 calls, ~516k input tokens for one ddpm-cifar10
    group, before this).
    """

    def __init__(self, session: PruningSession, transcript: Transcript):
        super().__init__()
        self.session = session
        self.transcript = transcript

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        s = self.session
        if s.submitted:
            return {"jump_to": "end"}
        if len(s.own_candidates()) >= s.cfg.candidates:
            ids = s.close_round()
            self.transcript.event("round_closed", by="tdc-agent", candidates=ids,
                                  reason=f"{s.cfg.candidates} valid candidates evaluated; submitted the best "
                                         f"{s.cfg.candidates} without waiting for submit_candidates")
            return {"jump_to": "end"}
        return None


def bound_reply(msg: AIMessage, text_limit: int = REPLY_TEXT_CHARS) -> tuple[AIMessage, int]:
    """``msg`` with its free text (content, rationale, any other string argument) cut to size, and how
    many characters were cut (0: ``msg`` itself is returned). What a reply said is re-sent on every
    later call of the round, so a runaway reply would otherwise be paid for again and again."""
    n = 0

    def c(text: Any, limit: int) -> Any:
        nonlocal n
        out = cut(text, limit) if isinstance(text, str) else cut_strings(text, limit)
        if out != text:
            n += len(json.dumps(text, default=str)) - len(json.dumps(out, default=str))
        return out

    content = c(msg.content, text_limit) if isinstance(msg.content, str) else [
        {**b, "text": c(b["text"], text_limit)} if isinstance(b, dict) and isinstance(b.get("text"), str)
        else c(b, text_limit) for b in msg.content]
    calls = []
    for tc in msg.tool_calls:
        args = dict(tc.get("args") or {})
        if isinstance(args.get("rationale"), str):
            args["rationale"] = c(args["rationale"], RATIONALE_CHARS)
        # unit names and ids are short; anything else of this size is not an argument we can use
        args = {k: (v if k == "rationale" else c(v, 4 * NAME_CHARS)) for k, v in args.items()}
        calls.append({**tc, "args": args})
    invalid = [{**tc, "args": c(tc.get("args"), REPLY_TEXT_CHARS), "error": c(tc.get("error"), REPLY_TEXT_CHARS)}
               for tc in msg.invalid_tool_calls]
    extra = c(msg.additional_kwargs, REPLY_TEXT_CHARS)
    if not n:
        return msg, 0
    return msg.model_copy(update={"content": content, "tool_calls": calls, "invalid_tool_calls": invalid,
                                  "additional_kwargs": extra}), n


class BoundReplies(AgentMiddleware):
    """Replaces a reply in the round's conversation by its bounded form (:func:`bound_reply`) before
    its tool calls run, so what is stored, logged and re-sent is bounded; says so in the transcript."""

    def __init__(self, transcript: Transcript):
        super().__init__()
        self.transcript = transcript

    def after_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        last = state["messages"][-1] if state.get("messages") else None
        if not isinstance(last, AIMessage):
            return None
        bounded, n = bound_reply(last)
        if not n:
            return None
        self.transcript.event("reply_cut", chars_cut=n,
                              note="the reply's free text was cut before it was stored and re-sent")
        return {"messages": [bounded]}  # same id: LangGraph replaces the message in the conversation


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

    def _run_config(self, session: PruningSession, r: int, attempt: int, meter: UsageMeter,
                    n_middleware: int = 0) -> dict[str, Any]:
        """The RunnableConfig of one attempt at round ``r`` (0-based, as in the transcript and memory).

        ``recursion_limit`` is LangChain's step limit. Each LLM call of the agent loop takes one step
        for the model, one for the tools and one per middleware hook (each of ``n_middleware`` has a
        ``before_model`` and/or an ``after_model`` node): the limit is set above what
        ``agent.max_llm_calls_per_round`` calls take, so that our named cap is the one that binds (at
        ``4N + 20`` LangChain stopped a round at 11 of 12 calls, with a message naming its own knob)."""
        g = session.task.index
        steps_per_call = 2 + 2 * n_middleware
        return {"callbacks": [self.transcript, meter, *self.callbacks], "max_concurrency": 1,
                "recursion_limit": steps_per_call * (self.cfg.max_llm_calls_per_round + 2) + 20,
                "run_name": f"tdc-agent run {session.run_id} group {g} round {r}",
                "tags": ["tdc-agent", f"run:{session.run_id}", f"group:{g}", f"round:{r}"],
                "metadata": {"tdc_run_id": session.run_id, "group": g, "round": r, "attempt": attempt,
                             "llm": self.llm_spec, "protocol": self.cfg.protocol}}

    def _attempt(self, session: PruningSession, r: int, attempt: int, note: str | None, system: str,
                 meter: UsageMeter) -> tuple[list[Any], str | None]:
        """One attempt at round ``r``: the conversation, and (json protocol) why it fell short."""
        if self.cfg.protocol == "json":
            from .structured import run_json_round

            return run_json_round(self.llm, session, system, self._round_prompt(session, r, None), note,
                                  self._run_config(session, r, attempt, meter),
                                  self.cfg.max_llm_calls_per_round, self.transcript)
        middleware: list[AgentMiddleware] = [
            CloseRound(session, self.transcript),
            BoundReplies(self.transcript),
            ModelCallLimitMiddleware(run_limit=self.cfg.max_llm_calls_per_round, exit_behavior="end"),
            ToolCallLimitMiddleware(run_limit=self.cfg.max_tool_calls_per_round, exit_behavior="end"),
        ]
        if self.cfg.tool_choice and _takes_tool_choice(self.llm):
            # "required" is OpenAI's word for LangChain's "any" (which langchain-openai maps back)
            middleware.append(ToolChoice("any" if self.cfg.tool_choice == "required" else self.cfg.tool_choice))
        config = self._run_config(session, r, attempt, meter, n_middleware=len(middleware))
        agent = create_agent(self.llm, agent_tools(session), system_prompt=system, middleware=middleware)
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
            # other runs' records by their memory id: what evaluate_scheme(transfer_from=...) takes
            return "\n".join(
                f"- {session.short_id(x) if with_loss else x.id} (run {x.run_id}, limit {session.limit_fraction(x):.3f}): "
                + (f"loss {x.loss:.5f}, " if with_loss else "") + f"MACs {x.macs:,.0f}, levels {compact_levels(x.levels)}"
                for x in recs) or "- (none yet)"

        mem = session.remembered(5)
        shown = {x.id for x in mem["this_group"]}
        last = [x for x in session.memory.all({"$and": [{"run_id": session.run_id}, {"group": t.index},
                                                        {"round": r - 1}]}) if x.loss is not None and x.id not in shown]
        memory = self.prompts.render(
            "memory", n_records=session.memory.count(), best_this_group=lines(mem["this_group"]),
            best_neighbours=lines(mem["neighbours"]), last_round=lines(last),
            other_bases=lines(mem["other_bases"], with_loss=False), base_loss=f"{session.base_loss:.5f}",
            transfer_slots=session.transfer_slots_left())
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
        # builtin and replay are not paid LLMs: their "tokens" are neither counted nor capped
        meter = UsageMeter(self.cfg, self.llm_spec.split(":", 1)[-1],
                           count_tokens=not (self.llm_spec == "builtin" or self.llm_spec.startswith("replay:")))
        for k, v in state.get("usage", {}).items():
            if k in ("llm_calls", "tool_calls", "input_tokens", "output_tokens", "tokens_estimated") and v:
                setattr(meter, {"llm_calls": "calls"}.get(k, k), int(v))
        system = self.prompts.render("system", candidates=self.cfg.candidates, rounds=self.cfg.rounds)
        for r in range(len(rounds), self.cfg.rounds):
            t0 = time.time()
            session.start_round(r)
            self.transcript.context = {"group": session.task.index, "round": r}
            self.transcript.event("round_start", resumed_candidates=len(session.ok_candidates()))
            note = None
            for attempt in range(self.cfg.max_round_retries + 1):
                if len(session.own_candidates()) >= self.cfg.candidates and attempt > 0:
                    break
                shortfall = None
                try:
                    messages, shortfall = self._attempt(session, r, attempt, note, system, meter)
                except TDCError as e:
                    self._save(state_path, rounds, meter)
                    if meter.cap_hit and str(e) == meter.cap_hit:  # a cap raised by the meter itself, unwrapped
                        raise TDCError(self._cap_message(meter, session, r)) from None
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
                        raise TDCError(self._cap_message(meter, session, r)) from None
                    else:
                        raise
                if len(session.own_candidates()) >= self.cfg.candidates:
                    if not session.submitted:  # a cap ended the attempt right after the K-th evaluation
                        ids = session.close_round()
                        self.transcript.event("round_closed", by="tdc-agent", candidates=ids,
                                              reason=f"{self.cfg.candidates} valid candidates evaluated when the "
                                                     "attempt ended; submitted the best of them")
                    break
                note = shortfall or _diagnose(messages, session)
                if attempt < self.cfg.max_round_retries:  # the last attempt's failure is the error below
                    self.transcript.event("round_retry", attempt=attempt + 1, reason=note)
                    if self.show:
                        # the note may quote the LLM's words: text, never markup
                        console.print(f"[yellow]group {session.task.index} round {r + 1}: {escape(note)}; retry "
                                      f"{attempt + 1} of {self.cfg.max_round_retries}[/]", emoji=False)
                else:
                    self.transcript.event("round_failed", attempts=attempt + 1, reason=note)
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
                                   attempts=attempt + 1, seconds=time.time() - t0,
                                   closed_by=session.closed_by or "tdc-agent")
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

    @staticmethod
    def _cap_message(meter: UsageMeter, session: PruningSession, r: int) -> str:
        """A per-group cap that stopped the group, and how to go on (the usage so far is saved with the
        rounds, so the same cap would stop a rerun at once)."""
        return (f"{meter.cap_hit} Group {session.task.index}, round {r + 1}: finished rounds are saved; raise the "
                "cap and rerun the same command to resume.")

    def _save(self, path: Path, rounds: list[RoundSummary], meter: UsageMeter) -> None:
        atomic_write_json(path, {"rounds": [r.__dict__ for r in rounds], "usage": meter.to_dict()})

    def _print_round(self, session: PruningSession, s: RoundSummary, chosen: list[MemoryRecord]) -> None:
        closed = ("; closed by tdc-agent once it had its candidates" if s.closed_by == "tdc-agent"
                  else "; submitted by the LLM")
        t = Table(title=f"group {session.task.index}, round {s.round + 1}/{self.cfg.rounds}: loss "
                        f"{s.mean:.5f} ± {s.std:.5f} ({s.attempts} attempt{'s' if s.attempts > 1 else ''}{closed})")
        for col in ("candidate", "MACs", "of limit", "loss", "pruned units"):
            t.add_column(col, justify="right" if col != "candidate" else "left")
        for x in chosen:
            t.add_row(session.short_id(x), f"{x.macs / 1e6:,.2f} M", f"{x.macs / session.task.limit_macs:.1%}",
                      f"{x.loss:.5f}", str(len(x.levels)))
        console.print(t)
