"""Typed results passed between the pipeline, the CLI, the report and the benchmarks.

:class:`Evaluation` is what ``evaluation.json`` holds (:meth:`Evaluation.to_dict` writes exactly
that layout; :meth:`Evaluation.from_dict` reads it back); :class:`PipelineResult` is what one
``run_pipeline`` call did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# evaluation.json's model entries, in report order: the base, the base trained on for equal
# compute, TDC without pruning, TDC
MODEL_NAMES = ("base", "base_equal_compute", "tdc_no_prune", "tdc")
_FIXED = ("macs_per_step", "seconds_per_image", "params", "planned_macs_per_step", "group_limit_macs_per_step")


@dataclass
class ModelScore:
    """One sampled model: its MACs per denoising step, speed, size, and the metric's scores
    (``fd``, ``kid``, ``kid_std``, ``real_floor``, ``intra_fd`` for digits, and the metric's notes, e.g. ``metric``)."""

    macs_per_step: float
    seconds_per_image: float
    params: int | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    planned_macs_per_step: float | None = None  # TDC: the plan's per-timestep budget on this trajectory
    group_limit_macs_per_step: float | None = None  # TDC: the group limits on this trajectory

    @property
    def fd(self) -> float | None:
        return self.scores.get("fd")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"macs_per_step": self.macs_per_step, "seconds_per_image": self.seconds_per_image}
        if self.params is not None:
            d["params"] = self.params
        d.update(self.scores)
        for k in ("planned_macs_per_step", "group_limit_macs_per_step"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelScore":
        return cls(d["macs_per_step"], d["seconds_per_image"], d.get("params"),
                   {k: v for k, v in d.items() if k not in _FIXED}, d.get("planned_macs_per_step"),
                   d.get("group_limit_macs_per_step"))


@dataclass
class Evaluation:
    """A run's evaluation: the sampling protocol, every model's scores, training steps and compute.

    ``training_macs`` keys: ``stage1``, and ``stage2``/``teacher``/``proxy`` for the main run, with
    ``_<variant>`` appended for a comparison variant (``stage2_noprune``)."""

    protocol: dict[str, Any]
    models: dict[str, ModelScore]
    training_steps: dict[str, int]
    training_macs: dict[str, float]
    equal_compute_steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"protocol": self.protocol}
        if self.equal_compute_steps is not None:
            d["equal_compute_steps"] = self.equal_compute_steps
        d.update({n: self.models[n].to_dict() for n in MODEL_NAMES if n in self.models})
        d["training_steps"] = self.training_steps
        d["training_macs"] = self.training_macs
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Evaluation":
        return cls(d["protocol"], {n: ModelScore.from_dict(d[n]) for n in MODEL_NAMES if n in d},
                   d["training_steps"], d.get("training_macs", {}), d.get("equal_compute_steps"))


@dataclass
class PipelineResult:
    """What ``run_pipeline`` did: the groups done (of the plan's), per-step timings, and the
    progressive models assembled (variant, ``""`` for the main run, to directory)."""

    groups_total: int
    groups_done: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    progressive: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """Every group is done and the main progressive model is assembled."""
        return "" in self.progressive
