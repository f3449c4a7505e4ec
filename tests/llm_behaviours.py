"""Ways real chat models behave that our scripted policies do not, as wrappers around a policy.

Each wraps anything with ``_decide(messages) -> AIMessage`` (the interface the fake servers call:
:class:`~tdc_agent.agent.builtin.BuiltinPolicy`, :class:`prompt_reader.PromptReader`) and changes
one habit, as seen from smaller or sloppier models:

- :class:`NeverSubmits` evaluates but never calls ``submit_candidates``: where the policy would
  submit, it evaluates yet another scheme (the last one again), reply after reply.
- :class:`OnePerReply` evaluates one scheme per reply, however many the round needs.
"""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}


class NeverSubmits:
    """Never calls ``submit_candidates``; counts the replies where it would have (``would_submit``)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.would_submit = 0

    def _decide(self, messages: list[BaseMessage]) -> AIMessage:
        ai = self.inner._decide(messages)
        if not any(c["name"] == "submit_candidates" for c in ai.tool_calls):
            return ai
        self.would_submit += 1
        last = next((c["args"] for m in reversed(messages) if isinstance(m, AIMessage) for c in m.tool_calls
                     if c["name"] == "evaluate_scheme"), {"levels": {}})
        return AIMessage(content="Let me try one more.", tool_calls=[_call("evaluate_scheme", dict(last))])


class OnePerReply:
    """Sends at most one ``evaluate_scheme`` call per reply (other tool calls pass as they are)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def _decide(self, messages: list[BaseMessage]) -> AIMessage:
        ai = self.inner._decide(messages)
        evals = [c for c in ai.tool_calls if c["name"] == "evaluate_scheme"]
        if len(evals) <= 1:
            return ai
        keep = [c for c in ai.tool_calls if c["name"] != "evaluate_scheme"] + evals[:1]
        return AIMessage(content=ai.content, tool_calls=keep)
