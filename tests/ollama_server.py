"""A local HTTP server speaking Ollama's native chat API (``POST /api/chat``), for tests.

Requests carry ``model``, ``messages`` (roles system/user/assistant/tool; assistant messages may hold
``tool_calls`` with ``function.name`` and ``function.arguments`` as an object; tool results follow in
the order of the calls), ``tools``, ``stream`` and ``options``. Replies, streamed as NDJSON when
``stream`` is true (what langchain-ollama asks for), are chunks ``{"model", "created_at", "message":
{"role": "assistant", "content", "tool_calls"?}, "done": false}`` and a last one with ``"done": true``,
``done_reason`` and the token counts ``prompt_eval_count``/``eval_count``.
Script entries: None (the builtin policy), ``{"content": "..."}``, ``{"status": 500}``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from fake_http import FakeServer, json_policy_text, policy_reply

PROMPT_TOKENS, EVAL_TOKENS = 90, 15


def to_langchain(body: dict[str, Any]) -> list[BaseMessage]:
    """The conversation of an /api/chat request, as LangChain messages (tool results are matched
    to the calls of the preceding assistant message by position, as Ollama does)."""
    out: list[BaseMessage] = []
    pending: list[dict[str, Any]] = []
    for i, m in enumerate(body["messages"]):
        role, content = m["role"], m.get("content") or ""
        if role == "system":
            out.append(SystemMessage(content))
        elif role == "user":
            out.append(HumanMessage(content))
        elif role == "assistant":
            calls = [{"name": c["function"]["name"], "args": c["function"]["arguments"], "id": f"call_{i}_{j}",
                      "type": "tool_call"} for j, c in enumerate(m.get("tool_calls") or [])]
            pending = list(calls)
            out.append(AIMessage(content=content, tool_calls=calls))
        elif role == "tool":
            call = pending.pop(0) if pending else {"id": "unknown", "name": m.get("tool_name")}
            out.append(ToolMessage(content=content, tool_call_id=call["id"], name=call["name"]))
    return out


class FakeOllama(FakeServer):
    """``srv.url`` is the Ollama host URL (``base_url``)."""

    chat_path = "/api/chat"

    def respond(self, h: Any, body: dict[str, Any], action: Any) -> None:
        if isinstance(action, dict) and "status" in action:
            self.send_json(h, action["status"], {"error": action.get("message", "injected fault")})
            return
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if action is None:
            msgs = to_langchain(body)
            if body.get("tools"):
                ai = policy_reply(msgs)
                message["content"] = ai.content
                if ai.tool_calls:
                    message["tool_calls"] = [{"function": {"name": c["name"], "arguments": c["args"]}}
                                             for c in ai.tool_calls]
            else:
                message["content"] = json_policy_text([m.content for m in msgs if isinstance(m.content, str)])
        else:
            message["content"] = action.get("content", "")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        model = body.get("model", "fake")
        final = {"model": model, "created_at": now, "message": {"role": "assistant", "content": ""}, "done": True,
                 "done_reason": "stop", "total_duration": 1000, "load_duration": 10,
                 "prompt_eval_count": PROMPT_TOKENS, "prompt_eval_duration": 100,
                 "eval_count": EVAL_TOKENS, "eval_duration": 100}
        if not body.get("stream", True):
            self.send_json(h, 200, {**final, "message": message})
            return
        lines = [{"model": model, "created_at": now, "message": message, "done": False}, final]
        self.send_json(h, 200, "".join(json.dumps(x) + "\n" for x in lines), content_type="application/x-ndjson")
