"""What the local fake LLM servers share: a threaded HTTP server that records requests and consumes
a script of replies, and the well-behaved policy (our builtin policy run on the conversation the
client sent) for tool calls, and a prompt-reading policy for schemes as JSON text (``agent.protocol: json``)."""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from tdc_agent.agent.builtin import BuiltinPolicy

_RESULTS = re.compile(r"^Results: (\[.*?\])\n\n", re.S)


def policy_reply(messages: list[BaseMessage]) -> AIMessage:
    """What the builtin policy answers to a tool-calling conversation."""
    return BuiltinPolicy(seed=0)._decide(messages)


def json_policy_text(texts: list[str]) -> str:
    """What a well-behaved model without tool calling answers in ``json`` mode: it reads the round
    message (the unit table, how many schemes) as :class:`prompt_reader.PromptReader` does, and the
    results our code sent back, and answers with schemes as JSON text."""
    from prompt_reader import PromptReader

    msgs: list[BaseMessage] = []
    for t in texts:
        msgs.append(HumanMessage(t))
        m = _RESULTS.match(t)
        if m:
            msgs += [ToolMessage(content=json.dumps(r), tool_call_id=f"r{i}") for i, r in enumerate(json.loads(m[1]))]
    ai = PromptReader()._decide(msgs)
    schemes = [{"levels": c["args"]["levels"], "rationale": c["args"].get("rationale")}
               for c in ai.tool_calls if c["name"] == "evaluate_scheme"]
    return "Here are my schemes:\n```json\n" + json.dumps({"schemes": schemes}) + "\n```"


class FakeServer:
    """Start with ``with Sub(script) as srv:``. ``script`` entries are consumed one per chat request
    (None: the well-behaved policy); ``repeat_last_fault`` keeps answering with the last one."""

    chat_path = "/"

    def __init__(self, script: list[Any] | None = None, repeat_last_fault: bool = False):
        self.script = list(script or [])
        self.repeat_last_fault = repeat_last_fault
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.paths.append("GET " + self.path)
                outer.send_json(self, 404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with outer._lock:
                    outer.paths.append("POST " + self.path)
                    if self.path.split("?")[0] != outer.chat_path:
                        outer.send_json(self, 404, {"error": f"no route {self.path}"})
                        return
                    outer.requests.append(body)
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                    action = outer._next()
                outer.respond(self, body, action)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _next(self) -> Any:
        if not self.script:
            return None
        if self.repeat_last_fault and len(self.script) == 1:
            return self.script[0]
        return self.script.pop(0)

    @staticmethod
    def send_json(h: BaseHTTPRequestHandler, status: int, data: Any, content_type: str = "application/json") -> None:
        payload = (data if isinstance(data, str) else json.dumps(data)).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def respond(self, h: BaseHTTPRequestHandler, body: dict[str, Any], action: Any) -> None:
        raise NotImplementedError

    @staticmethod
    def new_id(prefix: str) -> str:
        return f"{prefix}{uuid.uuid4().hex[:16]}"

    def __enter__(self) -> "FakeServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
