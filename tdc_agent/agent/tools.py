"""The agent's tools: LangChain ``StructuredTool``s with pydantic arguments and JSON results.

They act on a :class:`~.session.PruningSession` (one group, one round at a time). A tool that
receives bad arguments (unknown unit, level out of range, unknown candidate id...) returns
``{"error": ...}`` that tells the LLM what to fix, and an unexpected failure inside a tool comes back
the same way: neither ends the run.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from ..core.bounds import ERROR_CHARS, cut
from ..core.errors import TDCError
from .session import PruningSession


class NoArgs(BaseModel):
    pass


class QueryMemoryArgs(BaseModel):
    levels: Optional[dict[str, float]] = Field(
        default=None, description="A scheme {unit: keep level}; if given, the most similar stored schemes are returned too.")
    k: int = Field(default=5, ge=1, le=20, description="How many records to return per list.")


class CountArgs(BaseModel):
    levels: dict[str, float] = Field(description="Keep level in (0, 1] per unit name; units left out keep all channels.")


class SchemeArgs(BaseModel):
    levels: dict[str, float] = Field(description="Keep level in (0, 1] per unit name; units left out keep all channels.")
    rationale: Optional[str] = Field(default=None, description="One sentence: why this scheme.")
    transfer_from: Optional[str] = Field(
        default=None, description="Only for a shape copied from the memory's other_bases: that record's id. Such "
                                  "a scheme is an extra candidate, not one of the round's own (a few per group).")


class SensitivityArgs(BaseModel):
    keep_level: float = Field(default=0.5, gt=0, lt=1, description="The keep level each unit is pruned to alone.")


class SubmitArgs(BaseModel):
    candidate_ids: list[str] = Field(description="Ids returned by evaluate_scheme in this round.")


def _tool_failure(session: PruningSession, name: str, e: Exception) -> dict[str, Any]:
    """An unexpected exception inside a tool, as an error result the LLM can act on (the round's
    retry note and the final error quote it, so the user sees it too)."""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    session.last_tool_failure = f"{name} failed with {type(e).__name__}: {first}"
    return {"error": f"{session.last_tool_failure}. This is a failure of the tool on this scheme, not of your "
                     "arguments' format; try a different (e.g. less aggressive) scheme."}


def agent_tools(session: PruningSession) -> list[StructuredTool]:
    """The seven tools of one group's session, as LangChain tools returning JSON strings."""
    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., str]:
        def run(**kwargs: Any) -> str:
            with session.lock:
                try:
                    out = fn(**kwargs)
                    if isinstance(out, dict) and isinstance(out.get("error"), str):
                        # errors quote the LLM's arguments; they are re-sent on every later call
                        out["error"] = cut(out["error"], ERROR_CHARS)
                    return json.dumps(out)
                except TDCError:
                    raise  # already one clear message for the user (caps, a dead memory server...)
                except Exception as e:  # noqa: BLE001 - any other failure is reported, not a traceback
                    return json.dumps(_tool_failure(session, fn.__name__, e))
        return run

    specs = [
        ("inspect_architecture", session.inspect_architecture, NoArgs,
         "List the prunable units of the base UNet: name, role, channels, quantum, MACs share, params."),
        ("group_context", session.group_context, NoArgs,
         "The timestep group being pruned: t range, SNR range, MACs limit, round number, what is evaluated."),
        ("query_memory", session.query_memory, QueryMemoryArgs,
         "Stored schemes: comparable ones of this group, this run's neighbouring groups, shapes from other "
         "bases; with `levels`, also the most similar ones."),
        ("unit_sensitivity", session.unit_sensitivity, SensitivityArgs,
         "Per unit, the loss rise when it alone is pruned to keep_level, and the MACs that saves; "
         "cheapest first. Measured once per group."),
        ("count_macs", session.count_macs, CountArgs,
         "Fit a scheme to the MACs limit and return its fitted levels and MACs, without evaluating it."),
        ("evaluate_scheme", session.evaluate_scheme, SchemeArgs,
         "Build, fit, quick-evaluate and record a scheme. Returns its id and loss (lower is better)."),
        ("submit_candidates", session.submit_candidates, SubmitArgs,
         "End the round with the ids of the candidates evaluated in it (optional: the round closes by "
         "itself once it has its candidates)."),
    ]
    return [StructuredTool.from_function(func=wrap(fn), name=name, description=desc, args_schema=schema)
            for name, fn, schema, desc in specs]


__all__ = ["PruningSession", "SchemeArgs", "agent_tools"]
