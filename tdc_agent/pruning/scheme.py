"""``PruningScheme``: how much of each unit to keep. The same object flows from an LLM reply (or a
baseline criterion) through budget fitting and torch-pruning into the memory bank.

A scheme maps unit names to keep levels in (0, 1]; units it does not name keep everything.
Validation against an architecture rejects unknown units (suggesting the nearest names) and levels
out of range, and snaps levels to the unit's quantum, saying so.
"""

from __future__ import annotations

import difflib
from typing import Optional

from pydantic import BaseModel, Field, field_validator

from ..core.bounds import NAME_CHARS, cut
from ..core.errors import TDCError
from .units import UnitGraph


class SchemeError(TDCError):
    """A scheme does not fit the architecture; the message lists every problem and the fix."""


MAX_PROBLEMS = 8  # problems an error lists (then "and N more")


def valid_names(names: list[str], limit: int = 60) -> str:
    """The valid unit names, for an error message (the first ``limit`` if there are many)."""
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more (inspect_architecture lists them all)" if len(names) > limit else ""
    return f"Valid unit names: {shown}{more}."


class PruningScheme(BaseModel):
    """Keep levels per unit (fraction of channels kept), plus where the scheme came from."""

    levels: dict[str, float] = Field(default_factory=dict)
    source: str = "user"
    rationale: Optional[str] = None

    @field_validator("levels")
    @classmethod
    def _finite(cls, v: dict[str, float]) -> dict[str, float]:
        for name, level in v.items():
            if not isinstance(level, (int, float)) or level != level:
                raise ValueError(f"level of {cut(name, NAME_CHARS)!r} must be a number, got {cut(repr(level), NAME_CHARS)}")
        return {k: float(x) for k, x in v.items()}

    def validated(self, graph: UnitGraph) -> tuple["PruningScheme", list[str]]:
        """Check against an architecture: returns (snapped scheme, notes) or raises SchemeError."""
        problems: list[str] = []
        notes: list[str] = []
        known = set(graph.names)
        snapped: dict[str, float] = {}
        for name, level in self.levels.items():
            if name not in known:
                # a name far longer than any unit's is not a near miss (and difflib is quadratic in it)
                near = (difflib.get_close_matches(name, graph.names, n=3, cutoff=0.5)
                        if len(name) <= 4 * NAME_CHARS else [])
                hint = f"; did you mean {', '.join(near)}?" if near else ""
                problems.append(f"unknown unit {cut(name, NAME_CHARS)!r}{hint}")
                continue
            if not 0 < level <= 1:
                problems.append(f"level {level} of {cut(name, NAME_CHARS)!r} is out of range: keep levels are in (0, 1]")
                continue
            unit = graph.unit(name)
            s = unit.snap(level)
            if abs(s - level) > 1e-9:
                notes.append(f"{name}: {level:g} is not a multiple of 1/{unit.n_levels} "
                             f"(quantum {unit.quantum} of {unit.channels} channels); snapped to {s:g}")
            snapped[name] = s
        if problems:
            unknown = any(p.startswith("unknown unit") for p in problems)
            # the message goes back to the LLM: a scheme with thousands of bad names lists a few
            shown = problems[:MAX_PROBLEMS] + ([f"and {len(problems) - MAX_PROBLEMS} more problems"]
                                              if len(problems) > MAX_PROBLEMS else [])
            raise SchemeError("Invalid pruning scheme: " + "; ".join(shown) + "."
                              + (" " + valid_names(graph.names) if unknown else ""))
        return self.model_copy(update={"levels": snapped}), notes

    def full(self, graph: UnitGraph) -> dict[str, float]:
        """Levels for every unit of the architecture (1.0 where the scheme is silent)."""
        return {n: self.levels.get(n, 1.0) for n in graph.names}

    def vector(self, graph: UnitGraph) -> list[float]:
        """Keep levels in the architecture's fixed unit order (the memory bank's embedding)."""
        return [self.levels.get(n, 1.0) for n in graph.names]

    def kept_channels(self, graph: UnitGraph) -> dict[str, int]:
        return {u.name: round(self.levels.get(u.name, 1.0) * u.channels) for u in graph.units}
