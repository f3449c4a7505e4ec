"""A scripted "LLM" that reads the prompts, for tests and the token benchmark.

Unlike :class:`~tdc_agent.agent.builtin.BuiltinPolicy` (which reads tool results), this policy
decides from the *text* it is sent, as a language model would: it parses the unit table out of the
round message (``name | role | channels | quantum | MACs share | params`` rows), the number of
candidates ("evaluate N ..."), and one instruction a template may carry:
``Prune the units of role <role> first.`` So a template change changes what it proposes.

It behaves like a frugal LLM: one reply proposes the round's candidates (``evaluate_scheme`` calls;
the round then closes by itself); if called again with them evaluated, it submits them; after a
rejection it proposes a different shape.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

ROW = re.compile(r"^\s*([A-Za-z0-9_.]+) \| ([a-z ]+) \| (\d+) \| (\d+) \| ([0-9.]+) \| (\d+)\s*$")
ROLE_RULE = re.compile(r"Prune the units of role ([a-z ]+?) first\.")
COUNT = re.compile(r"(?:evaluate|Evaluate)(?: exactly)? (\d+)")


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}


def units_in(text: str) -> list[dict[str, Any]]:
    """The unit table rows of a prompt, in the order the prompt lists them."""
    out = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            out.append({"name": m[1], "role": m[2].strip(), "channels": int(m[3]), "quantum": int(m[4]),
                        "macs_share": float(m[5])})
    return out


class PromptReader:
    """``_decide(messages) -> AIMessage``, the interface the fake servers call."""

    def _decide(self, messages: list[BaseMessage]) -> AIMessage:
        prompt = "\n".join(m.content for m in messages if isinstance(m, (HumanMessage, SystemMessage))
                           and isinstance(m.content, str))
        units = units_in(prompt)
        counts = [int(x) for x in COUNT.findall(prompt)]
        k = counts[-1] if counts else 3
        rule = ROLE_RULE.search(prompt)
        ok, rejected = [], 0
        for m in messages:
            if isinstance(m, ToolMessage):
                try:
                    data = json.loads(m.content)
                except (TypeError, json.JSONDecodeError):
                    data = {}
                if data.get("round_done"):
                    return AIMessage(content="Submitted.")
                if "id" in data:
                    ok.append(data["id"])
                elif "error" in data:
                    rejected += 1
        if len(ok) >= k:
            return AIMessage(content="", tool_calls=[_call("submit_candidates", {"candidate_ids": ok[:k]})])
        if not units:
            return AIMessage(content="I cannot see a unit table in your message.")
        first = [u for u in units if rule is not None and u["role"] == rule[1]]
        rest = [u for u in units if u not in first]
        calls = []
        for i in range(len(ok), k):
            j = i + rejected  # a rejected shape is not proposed again
            # the instruction's units hard, then the first units of the table, more of them per candidate
            levels = {u["name"]: 0.25 for u in first}
            levels.update({u["name"]: 0.5 if not first else 0.9 for u in rest[: 2 + j]})
            why = (f"prune role {rule[1]} first, then " if rule else "") + f"the first {2 + j} listed units"
            calls.append(_call("evaluate_scheme", {"levels": levels, "rationale": why}))
        return AIMessage(content="", tool_calls=calls)
