"""The names of the pruning criteria: the vocabulary that config validation (``agent.criterion``,
``stage2.mode``), ``tdc-agent prune --method`` and the benchmarks accept.

The criteria themselves (importance factories and gradient rules) live in
:mod:`tdc_agent.pruning.criteria`, a layer above. Config validation sits here in ``core`` and must
know the names without importing pruning code, so this module holds names only:

* the built-in ones (:data:`BUILTIN_CRITERIA`, defined in :mod:`tdc_agent.pruning.criteria`);
* those registered from code: :func:`tdc_agent.pruning.criteria.register_criterion` adds the name
  here with :func:`add_criterion_name`;
* those installed packages advertise under the entry-point group :data:`ENTRY_POINT_GROUP`, read
  from package metadata without importing the package (it is loaded when the criterion is used).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.metadata import entry_points

BUILTIN_CRITERIA = ("random", "magnitude", "l1", "taylor", "diff-pruning", "group-taylor")
ENTRY_POINT_GROUP = "tdc_agent.criteria"
# names that mean something else where criteria are named: `--method agent`, `stage2.mode: tdc`
RESERVED_NAMES = ("agent", "tdc", "tdc-no-prune")

_registered: list[str] = []


def check_new_name(name: str) -> str:
    """``name`` if it may name a new criterion (a plain lower-case word, not a reserved one), else ValueError."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name):
        raise ValueError(f"{name!r} is not a criterion name: use lower-case letters, digits, '.', '_' and '-' "
                         "(e.g. 'my-taylor')")
    if name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is reserved ({', '.join(RESERVED_NAMES)} mean other things to --method and "
                         "stage2.mode); choose another name")
    return name


def add_criterion_name(name: str) -> None:
    """Make ``name`` a known criterion (called by :func:`tdc_agent.pruning.criteria.register_criterion`)."""
    check_new_name(name)
    if name not in _registered:
        _registered.append(name)


def remove_criterion_name(name: str) -> None:
    """Forget a name added with :func:`add_criterion_name` (built-ins and entry points stay)."""
    if name in _registered:
        _registered.remove(name)


@lru_cache(maxsize=1)
def entry_point_names() -> tuple[str, ...]:
    """Criterion names advertised by installed packages (cached: scanning every distribution's
    metadata takes tens of milliseconds, and configs are validated often; see :func:`refresh_entry_points`)."""
    return tuple(sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}))


def refresh_entry_points() -> None:
    """Read the installed packages' entry points again (after installing one into a running process)."""
    entry_point_names.cache_clear()


def criterion_names() -> tuple[str, ...]:
    """Every known criterion: built-in, registered from code, then advertised by entry points."""
    names = list(BUILTIN_CRITERIA)
    for name in (*_registered, *entry_point_names()):
        if name not in names:
            names.append(name)
    return tuple(names)


def check_criterion(name: str, what: str) -> str:
    """``name`` if it is a known criterion, else a ValueError naming ``what`` and listing the known ones."""
    known = criterion_names()
    if name not in known:
        raise ValueError(f"{what} must be a pruning criterion, one of {', '.join(known)}; got {name!r}. Criteria of "
                         "your own are registered with tdc_agent.pruning.criteria.register_criterion or an entry "
                         f"point in the group {ENTRY_POINT_GROUP!r} (README: Pruning criteria)")
    return name
