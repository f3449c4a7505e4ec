"""The transcript: a JSONL record of every LLM request and reply, tool call and result, per run.

It is what makes LLM decisions reproducible (``replay:`` reads the replies back) and auditable.
Secrets never reach it: every string is scrubbed (:mod:`tdc_agent.core.redaction`) of API keys found in
the environment (including the variable ``agent.api_key_env`` names), of ``sk-...`` style keys, of
``Bearer`` tokens and of credentials in URLs before it is written.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterable
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

# the scrubbers live in a module without LangChain, so that the CLI can use them cheaply too
from ..core.redaction import redact, secret_values
from ..core.bounds import TRANSCRIPT_CHARS, cut_strings


def message_to_dict(m: BaseMessage) -> dict[str, Any]:
    d: dict[str, Any] = {"type": m.type, "content": m.content}
    for attr in ("tool_calls", "invalid_tool_calls", "tool_call_id", "name"):
        v = getattr(m, attr, None)
        if v:
            d[attr] = v
    return d


class Transcript(BaseCallbackHandler):
    """Appends events to ``transcript.jsonl`` (one JSON object per line, flushed each time)."""

    raise_error = True

    def __init__(self, path: str | Path, secret_env: Iterable[str] = ()):
        """``secret_env``: names of further environment variables whose values are secrets
        (``agent.api_key_env`` may name one that does not look like a credential)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._secrets = secret_values(secret_env)
        self.context: dict[str, Any] = {}

    def event(self, kind: str, **fields: Any) -> None:
        rec = {"ts": round(time.time(), 3), "event": kind, **self.context, **fields}
        # scrubbed first, then cut: a key that straddles the cut is never half kept
        line = json.dumps(cut_strings(redact(rec, self._secrets), TRANSCRIPT_CHARS), default=str)
        with self._lock, open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()

    # LangChain callbacks -------------------------------------------------------------------
    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *,
                            run_id: UUID, **kwargs: Any) -> None:
        params = kwargs.get("invocation_params") or {}
        self.event("llm_request", run=str(run_id), model=params.get("model") or params.get("model_name"),
                   messages=[message_to_dict(m) for m in messages[0]])

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        gen = response.generations[0][0] if response.generations and response.generations[0] else None
        msg = getattr(gen, "message", None)
        usage = getattr(msg, "usage_metadata", None) or (response.llm_output or {}).get("token_usage")
        self.event("llm_response", run=str(run_id),
                   message=message_to_dict(msg) if msg is not None else {"content": getattr(gen, "text", "")},
                   usage=usage)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.event("llm_error", run=str(run_id), error=f"{type(error).__name__}: {error}")

    def on_tool_start(self, serialized: dict[str, Any], input_str: str, *, run_id: UUID, **kwargs: Any) -> None:
        self.event("tool_call", run=str(run_id), tool=(serialized or {}).get("name"), input=input_str)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        content = getattr(output, "content", output)
        self.event("tool_result", run=str(run_id), output=content)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.event("tool_error", run=str(run_id), error=f"{type(error).__name__}: {error}")


# A long agent run writes a few MB; a file far larger is not a transcript we wrote.
MAX_TRANSCRIPT_BYTES = 256 * 2**20


def read_transcript(path: str | Path) -> list[dict[str, Any]]:
    """All events of a transcript; a corrupt line is an error naming the file and line."""
    from ..core.errors import TDCError
    from ..core.io import check_size

    path = Path(path)
    if not path.is_file():
        raise TDCError(f"Transcript {path} does not exist.")
    check_size(path, MAX_TRANSCRIPT_BYTES, "Transcript")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise TDCError(f"Transcript {path} is not UTF-8 text; the file is corrupt or not a transcript.") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as e:
            raise TDCError(f"Transcript {path} line {i} is not valid JSON ({e}); the file is truncated or "
                           "corrupt.") from None
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise TDCError(f"Transcript {path} line {i} is not a transcript event (a JSON object with an "
                           "'event' field); the file is corrupt or not a transcript.")
        out.append(event)
    return out
