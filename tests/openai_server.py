"""A local HTTP server speaking the OpenAI Chat Completions protocol, for tests.

It replaces the LLM only at its network boundary. Replies come from a script of *faults* consumed
in order (malformed JSON arguments, unknown units, empty replies, refusals, endless tool calls,
slow replies, HTTP 429/500 or any status with a chosen body, dropped connections), and otherwise from a well-behaved policy: our
builtin policy run on the conversation the client sent, serialised back as OpenAI tool calls.
In chaos mode (``chaos=random.Random(seed)``) every request is, with probability ``chaos_rate``,
answered by a fault drawn at random from :data:`CHAOS`; ``injected`` counts them by kind.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from langchain_openai.chat_models.base import _convert_dict_to_message

from fake_http import FakeServer
from tdc_agent.agent.builtin import BuiltinPolicy


def tool_call(name: str, args: Any) -> dict[str, Any]:
    raw = args if isinstance(args, str) else json.dumps(args)
    return {"id": f"call_{uuid.uuid4().hex[:10]}", "type": "function", "function": {"name": name, "arguments": raw}}


INJECTION = "__import__('os').system('touch PWNED')"
CHAOS: dict[str, Any] = {
    "malformed": lambda: {"tool_calls": [tool_call("evaluate_scheme", '{"levels": {"conv_in": 0.5')]},
    "off_schema": lambda: {"tool_calls": [tool_call("evaluate_scheme", {"levels": "every layer, half"})]},
    "unknown_tool": lambda: {"tool_calls": [tool_call("delete_everything", {"path": "/"})]},
    "over_budget": lambda: {"tool_calls": [tool_call("evaluate_scheme", {"levels": {"conv_in": 1.0}})]},
    "code_injection": lambda: {"content": f"```python\n{INJECTION}\n```", "tool_calls": [
        tool_call("evaluate_scheme", {"levels": {INJECTION: 0.5}, "rationale": INJECTION})]},
    "empty": lambda: {"content": ""},
    "slow": lambda: {"sleep": 1.6},
    "http_429": lambda: {"status": 429},
    "http_500": lambda: {"status": 500},
    "dropped": lambda: {"drop": True},
}


def estimate_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a chat request, estimated as bytes / 4 of its messages and tool schemas."""
    return max(1, (len(json.dumps(body.get("messages", []))) + len(json.dumps(body.get("tools", [])))) // 4)


class FakeOpenAI:
    """Start with ``with FakeOpenAI(script) as srv:``; ``srv.url`` is the base URL (``.../v1``)."""

    def __init__(self, script: list[Any] | None = None, repeat_last_fault: bool = False,
                 chaos: random.Random | None = None, chaos_rate: float = 0.3, valid_keys: set[str] | None = None,
                 policy: Any = None, usage: Any = "estimate"):
        self.script = list(script or [])
        # what the ``usage`` field of a reply says: "estimate" (bytes / 4 of the request), an int (that
        # many prompt tokens, whatever was sent: a provider with another tokenizer), or None (no usage)
        self.usage = usage
        self.valid_keys = valid_keys  # GET /v1/models answers 401 to any other key (None: any key)
        self.model_lookups: list[str] = []
        self.repeat_last_fault = repeat_last_fault
        self.chaos, self.chaos_rate = chaos, chaos_rate
        self.injected: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        # who answers well-behaved requests: anything with ``_decide(messages) -> AIMessage``
        self.policy = policy if policy is not None else BuiltinPolicy(seed=0)
        self.input_bytes = 0  # the conversation bytes clients sent (messages + tool schemas)
        self.max_request_bytes = 0  # the largest such request
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - /v1/models, what clients use to check a key
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
                outer.model_lookups.append(self.path)
                if not self.path.rstrip("/").endswith("/models"):
                    self.send_response(404)
                    self.end_headers()
                    return
                ok = outer.valid_keys is None or key in outer.valid_keys
                data = (json.dumps({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}) if ok else
                        json.dumps({"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}}))
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with outer._lock:
                    outer.requests.append(body)
                    n = len(json.dumps(body.get("messages", []))) + len(json.dumps(body.get("tools", [])))
                    outer.input_bytes += n
                    outer.max_request_bytes = max(outer.max_request_bytes, n)
                    outer.headers.append(dict(self.headers))
                    action = outer._next()
                outer._respond(self, body, action)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _next(self) -> Any:
        if self.chaos is not None and not self.script:
            if self.chaos.random() >= self.chaos_rate:
                return None
            kind = self.chaos.choice(sorted(CHAOS))
            self.injected[kind] = self.injected.get(kind, 0) + 1
            return CHAOS[kind]()
        if not self.script:
            return None
        if self.repeat_last_fault and len(self.script) == 1:
            return self.script[0]
        return self.script.pop(0)

    def _policy_message(self, body: dict[str, Any]) -> dict[str, Any]:
        msgs = [_convert_dict_to_message(m) for m in body["messages"]]
        ai = self.policy._decide(msgs)
        out: dict[str, Any] = {"role": "assistant", "content": ai.content or None}
        if ai.tool_calls:
            out["tool_calls"] = [tool_call(c["name"], c["args"]) for c in ai.tool_calls]
        return out

    def _respond(self, h: BaseHTTPRequestHandler, body: dict[str, Any], action: Any) -> None:
        if isinstance(action, dict) and "status" in action:
            body = action.get("body", {"error": {"message": "injected fault", "type": "server_error"}})
            if action.get("echo_auth"):  # a server that quotes the request's credentials back
                body = {"error": {"message": f"Unauthorized: you sent Authorization: {h.headers.get('Authorization')}"
                                             f" to {h.path}", "type": "invalid_request_error"}}
            payload = json.dumps(body).encode()
            h.send_response(action["status"])
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            if action["status"] == 429:
                h.send_header("retry-after-ms", "50")
            h.end_headers()
            h.wfile.write(payload)
            return
        if isinstance(action, dict) and "sleep" in action:
            time.sleep(action["sleep"])
            action = None
        if isinstance(action, dict) and action.get("drop"):
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if action is None:
            message = self._policy_message(body)
        else:
            message = {"role": "assistant", "content": action.get("content")}
            if "tool_calls" in action:
                message["tool_calls"] = action["tool_calls"]
        resp = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
        }
        if self.usage is not None:
            # a tokenizer-free estimate (4 bytes per token), so token caps and reports see real sizes
            n_in = estimate_tokens(body) if self.usage == "estimate" else int(self.usage)
            n_out = max(1, len(json.dumps(message)) // 4)
            resp["usage"] = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        payload = json.dumps(resp).encode()
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    # start and stop like the other fakes
    __enter__ = FakeServer.__enter__
    __exit__ = FakeServer.__exit__
