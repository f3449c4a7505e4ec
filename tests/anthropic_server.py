"""A local HTTP server speaking Anthropic's Messages API (``POST /v1/messages``), for tests.

Requests carry ``system``, ``messages`` whose content is a string or a list of blocks (``text``,
``tool_use`` from the assistant, ``tool_result`` from the user), ``tools`` and ``tool_choice``; replies
are a ``message`` object with content blocks (``text``, ``tool_use`` with ``id``/``name``/``input``),
``stop_reason`` (``tool_use`` or ``end_turn``) and ``usage`` (``input_tokens``/``output_tokens``).
Errors are ``{"type": "error", "error": {"type": ..., "message": ...}}`` with an HTTP status.
Script entries: None (the builtin policy), ``{"text": "..."}``, ``{"blocks": [...]}`` (raw content),
``{"status": 529, "type": "overloaded_error"}``.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from fake_http import FakeServer, json_policy_text, policy_reply

INPUT_TOKENS, OUTPUT_TOKENS = 120, 30


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def to_langchain(body: dict[str, Any]) -> list[BaseMessage]:
    """The conversation of a Messages API request, as LangChain messages."""
    out: list[BaseMessage] = []
    if body.get("system"):
        out.append(SystemMessage(_text(body["system"])))
    for m in body["messages"]:
        content = m["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if m["role"] == "assistant":
            calls = [{"name": b["name"], "args": b["input"], "id": b["id"], "type": "tool_call"}
                     for b in blocks if b.get("type") == "tool_use"]
            out.append(AIMessage(content=_text(blocks), tool_calls=calls))
            continue
        for b in blocks:
            if b.get("type") == "tool_result":
                out.append(ToolMessage(content=_text(b.get("content", "")), tool_call_id=b["tool_use_id"]))
            elif b.get("type") == "text":
                out.append(HumanMessage(b["text"]))
    return out


class FakeAnthropic(FakeServer):
    """``srv.url`` is the base URL (the SDK appends ``/v1/messages``)."""

    chat_path = "/v1/messages"

    def respond(self, h: Any, body: dict[str, Any], action: Any) -> None:
        if isinstance(action, dict) and "status" in action:
            self.send_json(h, action["status"], {"type": "error", "error": {
                "type": action.get("type", "api_error"), "message": action.get("message", "injected fault")}})
            return
        if action is None:
            msgs = to_langchain(body)
            if body.get("tools"):
                ai = policy_reply(msgs)
                blocks: list[dict[str, Any]] = [{"type": "text", "text": ai.content}] if ai.content else []
                blocks += [{"type": "tool_use", "id": self.new_id("toolu_"), "name": c["name"], "input": c["args"]}
                           for c in ai.tool_calls]
            else:
                blocks = [{"type": "text", "text": json_policy_text([m.content for m in msgs if isinstance(m.content, str)])}]
        elif "blocks" in action:
            blocks = action["blocks"]
        else:
            blocks = [{"type": "text", "text": action["text"]}]
        uses_tool = any(b.get("type") == "tool_use" for b in blocks)
        self.send_json(h, 200, {
            "id": self.new_id("msg_"), "type": "message", "role": "assistant", "model": body.get("model", "fake"),
            "content": blocks, "stop_reason": "tool_use" if uses_tool else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
        })

