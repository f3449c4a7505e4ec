"""The registry of pruning criteria: name → how to score channels (an importance factory, and which
timesteps' gradients it needs, if any).

A criterion decides *which* channels of a unit go (a scheme or budget decides *how many*). The
built-in ones are torch-pruning importances (:mod:`tdc_agent.pruning.importance` explains them);
users bring their own as torch-pruning lets them bring an ``Importance``:

* from code::

      import torch_pruning as tp
      from tdc_agent.pruning.criteria import register_criterion

      register_criterion("bn-scale", lambda: tp.importance.BNScaleImportance())
      register_criterion("my-taylor", lambda: tp.importance.GroupTaylorImportance(multivariable=True),
                         gradients="group")

* by entry point, in the ``pyproject.toml`` of the package that defines it, so the ``tdc-agent``
  command finds it without any code of ours changing::

      [project.entry-points."tdc_agent.criteria"]
      my-taylor = "my_package.criteria:MY_TAYLOR"   # a Criterion, or a zero-argument importance factory

Either way the name is then accepted by ``tdc-agent prune --method NAME``, ``agent.criterion``,
``stage2.mode`` and the benchmarks' lists (:func:`criterion_names`). The names alone live in
:mod:`tdc_agent.core.criteria`, so that config validation (in ``core``, below this layer) knows them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import Callable, Literal, get_args

import torch_pruning as tp

from ..core.criteria import (BUILTIN_CRITERIA, ENTRY_POINT_GROUP, add_criterion_name, check_new_name,
                             criterion_names, remove_criterion_name)
from ..core.errors import ConfigError

# Which timesteps' ε-loss gradients fill ``.grad`` before a gradient-based importance scores:
# uniform: drawn uniformly over all timesteps; early-t: from t = 0 upward until the loss falls below
# 0.05 of its maximum (Diff-Pruning); group: the group's own timesteps (needs a plan group).
GradientRule = Literal["uniform", "early-t", "group"]
ImportanceFactory = Callable[[], tp.importance.Importance]

__all__ = ["Criterion", "GradientRule", "criterion_names", "get_criterion", "register_criterion",
           "unregister_criterion"]


@dataclass(frozen=True)
class Criterion:
    """A pruning criterion: ``importance()`` makes the torch-pruning ``Importance`` that scores a
    unit's channels (higher = keep); ``gradients`` says which timesteps' gradients it reads
    (None: it reads weights only and needs no data)."""

    name: str
    importance: ImportanceFactory
    gradients: GradientRule | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not callable(self.importance):
            raise TypeError(f"criterion {self.name!r}: importance must be a zero-argument factory of a "
                            f"torch_pruning Importance, got {type(self.importance).__name__}")
        if self.gradients is not None and self.gradients not in get_args(GradientRule):
            raise ValueError(f"criterion {self.name!r}: gradients must be None or one of "
                             f"{', '.join(get_args(GradientRule))}, got {self.gradients!r}")


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, importance: ImportanceFactory, *, gradients: GradientRule | None = None,
                       description: str = "", replace_existing: bool = False) -> Criterion:
    """Register a criterion under ``name`` (see the module docstring); returns it.

    A name already taken is refused unless ``replace_existing`` (the built-ins cannot be replaced:
    results measured with them must keep their meaning).
    """
    check_new_name(name)
    if name in BUILTIN_CRITERIA:
        raise ValueError(f"{name!r} is a built-in criterion and cannot be replaced; register yours under another name")
    if name in _CRITERIA and not replace_existing:
        raise ValueError(f"a criterion named {name!r} is already registered; pass replace_existing=True to replace it")
    crit = Criterion(name, importance, gradients, description)
    _CRITERIA[name] = crit
    add_criterion_name(name)
    return crit


def unregister_criterion(name: str) -> None:
    """Remove a criterion registered from code (a no-op for unknown names; built-ins stay)."""
    if name in BUILTIN_CRITERIA:
        raise ValueError(f"{name!r} is a built-in criterion and cannot be removed")
    _CRITERIA.pop(name, None)
    remove_criterion_name(name)


def _from_entry_point(name: str) -> Criterion | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name != name:
            continue
        try:
            obj = ep.load()
        except Exception as e:  # a user's package: any import error is theirs to fix, said in one line
            raise ConfigError(f"The pruning criterion {name!r} (entry point {ep.value} in group {ENTRY_POINT_GROUP!r}) "
                              f"could not be loaded: {type(e).__name__}: {e}. Fix or reinstall the package "
                              "that provides it.") from None
        if isinstance(obj, Criterion):
            return replace(obj, name=name)
        if callable(obj):
            return Criterion(name, obj, None, f"entry point {ep.value}")
        raise ConfigError(f"The entry point {ep.value} for criterion {name!r} is a {type(obj).__name__}; it must "
                          "be a tdc_agent.pruning.criteria.Criterion or a zero-argument importance factory.")
    return None


def get_criterion(name: str) -> Criterion:
    """The criterion called ``name``: registered from code, built in, or loaded from its entry point."""
    if name in _CRITERIA:
        return _CRITERIA[name]
    crit = _from_entry_point(name)
    if crit is None:
        raise ConfigError(f"Unknown pruning criterion {name!r}; use one of {', '.join(criterion_names())}, or "
                          "register yours (tdc_agent.pruning.criteria.register_criterion, or an entry point in "
                          f"the group {ENTRY_POINT_GROUP!r}).")
    _CRITERIA[name] = crit  # loaded once per process
    return crit


def _builtin(name: str, importance: ImportanceFactory, gradients: GradientRule | None, description: str) -> None:
    _CRITERIA[name] = Criterion(name, importance, gradients, description)


# The built-ins (tdc_agent.pruning.importance explains the Taylor variants). Their names are
# core.criteria.BUILTIN_CRITERIA, which config validation reads; tests check that the two agree.
_builtin("random", tp.importance.RandomImportance, None, "random channels (seeded)")
_builtin("magnitude", lambda: tp.importance.GroupMagnitudeImportance(p=2), None, "L2 norm of the group's weights")
_builtin("l1", lambda: tp.importance.GroupMagnitudeImportance(p=1), None, "L1 norm of the group's weights")
_builtin("taylor", tp.importance.GroupTaylorImportance, "uniform", "Taylor, gradients at uniform timesteps")
_builtin("diff-pruning", tp.importance.GroupTaylorImportance, "early-t",
         "Taylor, gradients from t = 0 up to the loss threshold (Fang et al. 2023)")
_builtin("group-taylor", tp.importance.GroupTaylorImportance, "group", "Taylor, gradients over the group's timesteps")
