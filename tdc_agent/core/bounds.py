"""Bounds on what an LLM writes and we keep: free text is cut, and says that it was cut.

An LLM can answer with megabytes (a runaway rationale, a reply that repeats itself, a unit name of
a million characters). Whatever of it we store (the memory bank), log (the transcript) or send back
(later calls of the round, retry notes, tool errors) is cut to a size that serves its purpose, and
the cut is visible: ``"... [cut 12345 chars]"``. Nothing that decides a result is cut: levels are
numbers, and unit names that long are not unit names (the tool rejects them either way).
"""

from __future__ import annotations

from typing import Any

# A rationale is "one sentence: why this scheme" (the tool's own description); a few hundred
# characters hold a long one. Stored in the memory bank and re-sent with the reply that made it.
RATIONALE_CHARS = 400
# Free text in a reply (what a model says next to, or instead of, tool calls), as re-sent on the
# round's later calls and quoted in retry notes.
REPLY_TEXT_CHARS = 1_000
# A reply in ``agent.protocol: json``: its text *is* the schemes (K schemes of every unit of a large
# UNet, with rationales, fit well below this), so it is bounded only against runaway output.
JSON_REPLY_CHARS = 20_000
# A tool's error result: our message plus what of the LLM's arguments it quotes (unit names).
ERROR_CHARS = 2_000
# A name the LLM sent (a unit name, a candidate id) when an error message quotes it.
NAME_CHARS = 80
# Any string in a transcript event. Generous: the round prompt and tool results of a large UNet are
# written whole (the transcript is the audit log); only runaway LLM output reaches this.
TRANSCRIPT_CHARS = 64_000


def cut(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and ``"… [cut N chars]"``
    (N: the characters left out), ``limit`` characters in all. Idempotent: a text cut once is not
    cut again by the same (or a larger) limit on its way to the next sink."""
    if not isinstance(text, str) or len(text) <= limit:
        return text
    keep = limit
    for _ in range(3):  # the marker's length depends on N, which depends on how much is kept
        marker = f"… [cut {len(text) - keep} chars]"
        keep = max(0, limit - len(marker))
    return text[:keep] + f"… [cut {len(text) - keep} chars]"


def cut_strings(value: Any, limit: int) -> Any:
    """``value`` with every string in it (dict keys included, nested lists and dicts) cut to ``limit``."""
    if isinstance(value, str):
        return cut(value, limit)
    if isinstance(value, dict):
        return {cut(k, limit) if isinstance(k, str) else k: cut_strings(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [cut_strings(v, limit) for v in value]
    return value
