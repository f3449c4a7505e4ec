"""``replay:<transcript.jsonl>``: a chat model that returns a recorded run's replies, in order.

Our tools are deterministic (fixed seeds for channel scores and quick evaluation), so replaying
the replies reproduces the recorded run's schemes and losses exactly, with no network.
"""

from __future__ import annotations

from typing import Any, Optional

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from ..core.errors import TDCError
from .transcript import read_transcript


class ReplayChatModel(BaseChatModel):
    """Returns the ``llm_response`` messages of a transcript one after another."""

    replies: list[dict[str, Any]]
    source: str = ""
    _position: int = PrivateAttr(default=0)

    @classmethod
    def from_transcript(cls, path: str) -> "ReplayChatModel":
        events = read_transcript(path)
        replies = [e["message"] for e in events if e.get("event") == "llm_response"]
        if not replies:
            raise TDCError(f"Transcript {path} holds no LLM replies to replay.")
        return cls(replies=replies, source=path)

    def rewound(self) -> "ReplayChatModel":
        """The same replies from the first again (each group of a run replays from the start)."""
        return type(self)(replies=self.replies, source=self.source)

    @property
    def _llm_type(self) -> str:
        return "tdc-replay"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ReplayChatModel":
        return self

    def _generate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        if self._position >= len(self.replies):
            raise TDCError(
                f"Replay of {self.source} ran out of recorded replies after {len(self.replies)}: this run asks the "
                "LLM more often than the recorded one (different config, prompts or rounds?)."
            )
        d = self.replies[self._position]
        self._position += 1
        msg = AIMessage(content=d.get("content") or "", tool_calls=d.get("tool_calls") or [],
                        invalid_tool_calls=d.get("invalid_tool_calls") or [])
        return ChatResult(generations=[ChatGeneration(message=msg)])
