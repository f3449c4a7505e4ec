"""``agent.protocol: json``: rounds for chat models without tool calling.

The LLM cannot call tools. The round message already carries what the look-up tools would return
(the group, its limit, the unit table, the memory), so it is sent as it is, once, and asks for a reply that is only a JSON object ``{"schemes": [{"levels": {...}, "rationale": "..."}]}``.
The reply is validated by the same pydantic types the tools use (:class:`~.tools.SchemeArgs`); our
code then runs the ``evaluate_scheme`` and ``submit_candidates`` tools itself, so memory, transcript,
caps and resume behave exactly as with tool calls. A reply that is not valid JSON, or not of that
shape, is told to the LLM (and recorded in the transcript as ``json_reply_invalid``) and asked
again, within ``agent.max_llm_calls_per_round``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, Field, ValidationError

from ..core.bounds import JSON_REPLY_CHARS
from .loop import bound_reply
from .session import PruningSession
from .tools import SchemeArgs, agent_tools
from .transcript import Transcript

SYSTEM_NOTE = ("\n\nThis model is used without tool calling: you cannot call tools. Each message gives you what "
               "the tools return, and you answer with schemes as a JSON object only; we evaluate and submit them "
               "for you.")


class SchemeReply(BaseModel):
    """What the LLM must answer in ``json`` mode: schemes with the evaluate_scheme tool's arguments."""

    schemes: list[SchemeArgs] = Field(min_length=1, description="New pruning schemes to evaluate.")


class ReplyError(ValueError):
    """A reply that is not a valid :class:`SchemeReply`; the message is what the LLM is told."""


def reply_text(msg: BaseMessage) -> str:
    """The text of a reply (some providers answer with a list of content blocks)."""
    c = msg.content
    if isinstance(c, str):
        return c
    return "".join(b if isinstance(b, str) else str(b.get("text", "")) for b in c if isinstance(b, (str, dict)))


def parse_reply(text: str) -> SchemeReply:
    """The schemes in ``text``: a JSON object (a bare list of schemes is accepted too), possibly in a
    code fence or with words around it. Raises :class:`ReplyError` saying what is wrong."""
    s = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", s, re.S)
    if fence:
        s = fence.group(1).strip()
    if not s:
        raise ReplyError("your reply was empty")
    try:
        data = json.loads(s)
    except json.JSONDecodeError as e:
        start, end = s.find("{"), s.rfind("}")
        try:
            if start < 0 or end <= start:
                raise e
            data = json.loads(s[start:end + 1])
        except json.JSONDecodeError:
            raise ReplyError(f"your reply is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
                             f"{text.strip()[:200]!r}") from None
    if isinstance(data, list):
        data = {"schemes": data}
    try:
        return SchemeReply.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'reply'}: {err['msg']}" for err in e.errors()[:5])
        raise ReplyError(f"your JSON does not have the required shape ({problems})") from None


def answer_format(n: int) -> str:
    return (f'Reply with only a JSON object, no other text: {{"schemes": [{{"levels": {{"<unit name>": <keep level '
            f'in (0, 1]>, ...}}, "rationale": "<one sentence>"}}, ...]}} holding {n} new scheme'
            f'{"s" if n != 1 else ""}. Units left out keep all their channels. We evaluate them and tell you '
            "their losses (lower is better) or what was wrong.")


def run_json_round(llm: BaseChatModel, session: PruningSession, system: str, prompt: str, note: str | None,
                   config: dict[str, Any], max_calls: int, transcript: Transcript) -> tuple[list[BaseMessage], str | None]:
    """One attempt at a round in ``json`` mode. Returns the conversation and, when it ended without
    K evaluated candidates, why (in words for the LLM and the user)."""
    tools = {t.name: t for t in agent_tools(session)}
    k = session.cfg.candidates
    need = k - len(session.own_candidates())
    text = prompt
    if note:
        text += f"\n\nYour previous attempt at this round failed: {note}."
    messages: list[BaseMessage] = [SystemMessage(system + SYSTEM_NOTE), HumanMessage(text + "\n\n" + answer_format(need))]
    problem = None
    for _ in range(max_calls):
        reply = llm.invoke(messages, config=config)
        reply = reply if isinstance(reply, AIMessage) else AIMessage(content=reply_text(reply))
        # what is re-sent on the next call is bounded (a runaway reply is not paid for again and again)
        bounded, n_cut = bound_reply(reply, JSON_REPLY_CHARS)
        if n_cut:
            transcript.event("reply_cut", chars_cut=n_cut,
                             note="the reply's free text was cut before it was re-sent")
        messages.append(bounded)
        try:
            schemes = parse_reply(reply_text(reply)).schemes
        except ReplyError as e:
            problem = str(e)
            transcript.event("json_reply_invalid", error=problem)
            messages.append(HumanMessage(f"{problem[0].upper()}{problem[1:]}. {answer_format(need)}"))
            continue
        results = []
        # shapes copied from other bases are extra candidates (the session bounds how many)
        for s in [s for s in schemes if not s.transfer_from][:need] + [s for s in schemes if s.transfer_from]:
            out = json.loads(tools["evaluate_scheme"].invoke(s.model_dump(), config=config))
            results.append(out)
        need = k - len(session.own_candidates())
        if need <= 0:
            ids = session.close_round()
            tools["submit_candidates"].invoke({"candidate_ids": ids}, config=config)
            session.closed_by = "tdc-agent"  # in json mode our code always submits
            return messages, None
        errors = [r["error"] for r in results if "error" in r]
        problem = (f"{len(errors)} of your schemes failed ({errors[0][:200]})" if errors
                   else f"you sent {len(schemes)} scheme(s), fewer than needed")
        messages.append(HumanMessage(f"Results: {json.dumps(results)}\n\n{need} more needed this round. "
                                     f"{answer_format(need)}"))
    n_ok = len(session.own_candidates())
    return messages, (f"the round's LLM call cap (agent.max_llm_calls_per_round={max_calls}) was reached with only "
                      f"{n_ok} of {k} candidates evaluated; the last problem: {problem}")
