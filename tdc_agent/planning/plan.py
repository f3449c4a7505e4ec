"""The plan: difficulty, MACs budgets and timestep groups (paper Eq. 3-5) from a noise schedule's SNR.

Everything here is a pure function of numbers: no torch, no models (the noise schedule and SNR are
:mod:`tdc_agent.diffusion.schedule`). The plan it produces is the
single source of truth for which timesteps belong to which group and how many MACs each group's
model may spend.

Erratum to the paper's Eq. 4. As printed, ``FLOPs_g(i) = (i/N + (N-i)/N * k) F`` for ``0 <= i < N``
makes the largest upper limit ``((N-1)/N + k/N) F < F``, so the hardest timesteps (budget exactly
``F``) fall in no group. We use upper limits ``w(i) = (k + (1-k)(i+1)/N) F``, ``v(0) = 0``,
``v(i) = w(i-1)``: every timestep lands in exactly one group and the hardest group's limit is ``F``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..diffusion.schedule import ScheduleName, alphas_cumprod, betas, ddim_timesteps, snr_db

Shape = Literal["paper", "constant", "increasing", "decreasing"]
Direction = Literal["noisy-hard", "clean-hard"]
BudgetRule = Literal["upper", "mean"]


def difficulty(
    snr: np.ndarray,
    direction: Direction = "noisy-hard",
    snr_clip: tuple[float, float] | None = None,
) -> np.ndarray:
    """Normalised difficulty in [0, 1] (Eq. 3): z-score of -SNR, then min-max.

    ``noisy-hard`` (the paper) makes low-SNR timesteps hardest; ``clean-hard`` flips it.
    ``snr_clip=(lo, hi)`` clips SNR (dB) first, so that a few extreme timesteps (cosine schedule:
    about -86 dB at t = T-1) do not squash everybody else into one end of the range.
    """
    s = np.asarray(snr, dtype=np.float64)
    if snr_clip is not None:
        s = np.clip(s, snr_clip[0], snr_clip[1])
    d = -s if direction == "noisy-hard" else s
    if d.size == 1 or np.ptp(d) == 0:
        return np.zeros_like(d)
    z = (d - d.mean()) / d.std()
    return (z - z.min()) / (z.max() - z.min())


def budget_fraction(
    u: np.ndarray, k: float, shape: Shape = "paper"
) -> np.ndarray:
    """Per-timestep MACs budget as a fraction of the base model's MACs F, in [k, 1].

    ``paper``: k + (1-k)·u (Eq. 3). ``increasing``/``decreasing``: linear in t from k to 1 / 1 to k
    (Table II's uni-increasing and uni-decreasing). ``constant``: (1+k)/2 everywhere.
    """
    n = u.size
    pos = np.arange(n, dtype=np.float64) / max(n - 1, 1)
    if shape == "paper":
        return k + (1 - k) * u
    if shape == "increasing":
        return k + (1 - k) * pos
    if shape == "decreasing":
        return 1 - (1 - k) * pos
    if shape == "constant":
        return np.full(n, (1 + k) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def group_index(u: np.ndarray, n_groups: int) -> np.ndarray:
    """Group of each timestep (Eq. 5 with the erratum): i such that i/N < u <= (i+1)/N.

    u = 0 (the easiest timestep) goes to group 0.
    """
    idx = np.ceil(u * n_groups - 1e-9).astype(int) - 1
    return np.clip(idx, 0, n_groups - 1)


@dataclass
class Group:
    """One timestep group: a contiguous range ``[t_start, t_end]`` (inclusive) and its MACs limit."""

    index: int
    t_start: int
    t_end: int
    num_timesteps: int
    snr_min: float
    snr_max: float
    limit_fraction: float
    interval: tuple[float, float]

    @classmethod
    def span(cls, index: int, t_start: int, t_end: int, snr_min: float, snr_max: float,
             limit_fraction: float) -> "Group":
        """A group outside a plan (e.g. all timesteps at one MACs limit: ``tdc-agent prune --macs-fraction``)."""
        return cls(index, t_start, t_end, t_end - t_start + 1, snr_min, snr_max, limit_fraction, (0.0, 1.0))

    @property
    def timesteps(self) -> list[int]:
        return list(range(self.t_start, self.t_end + 1))

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "num_timesteps": self.num_timesteps,
            "snr_min": self.snr_min,
            "snr_max": self.snr_max,
            "limit_fraction": self.limit_fraction,
            "interval": list(self.interval),
        }


@dataclass
class GroupTask:
    """What one group's pruning must achieve: a plan :class:`~tdc_agent.planning.plan.Group` (the one
    group type), its MACs limit in MACs, and the neighbouring groups. A thin view: the group's
    fields read through."""

    group: Group
    limit_macs: float
    neighbours: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, group: Group, base_macs: float, n_groups: int = 1) -> "GroupTask":
        """The task for ``group`` of a plan with ``n_groups`` groups, for a base of ``base_macs`` MACs."""
        neighbours = [i for i in (group.index - 1, group.index + 1) if 0 <= i < n_groups]
        return cls(group, group.limit_fraction * base_macs, neighbours)

    index = property(lambda self: self.group.index)
    t_start = property(lambda self: self.group.t_start)
    t_end = property(lambda self: self.group.t_end)
    snr_min = property(lambda self: self.group.snr_min)
    snr_max = property(lambda self: self.group.snr_max)
    limit_fraction = property(lambda self: self.group.limit_fraction)
    timesteps = property(lambda self: self.group.timesteps)


@dataclass
class Plan:
    """The grouping of all timesteps and their budgets: what ``tdc-agent plan`` prints and saves."""

    schedule: str
    timesteps: int
    n_groups_requested: int
    k: float
    shape: str
    direction: str
    budget_rule: str
    snr: np.ndarray
    budget: np.ndarray
    groups: list[Group]
    warnings: list[str] = field(default_factory=list)

    def group_of(self, t: int) -> Group:
        for g in self.groups:
            if g.t_start <= t <= g.t_end:
                return g
        raise ValueError(f"timestep {t} is outside [0, {self.timesteps})")

    def routing_table(self) -> np.ndarray:
        """Array of length T: group index for every timestep."""
        table = np.empty(self.timesteps, dtype=np.int64)
        for g in self.groups:
            table[g.t_start : g.t_end + 1] = g.index
        return table

    def mean_budget(self, over: Literal["uniform", "ddim"] = "uniform", ddim_steps: int = 100,
                    per: Literal["timestep", "group"] = "timestep") -> float:
        """Expected MACs per denoising step as a fraction of F.

        ``per='timestep'`` averages the planned per-timestep budget (the paper's reported number);
        ``per='group'`` averages the group limits (what models pruned exactly to their limits cost).
        """
        values = self.budget if per == "timestep" else np.array(
            [g.limit_fraction for g in self.groups]
        )[self.routing_table()]
        ts = np.arange(self.timesteps) if over == "uniform" else ddim_timesteps(self.timesteps, ddim_steps)
        return float(values[ts].mean())

    def to_dict(self) -> dict:
        return {
            "schedule": self.schedule,
            "timesteps": self.timesteps,
            "n_groups_requested": self.n_groups_requested,
            "n_groups": len(self.groups),
            "k": self.k,
            "shape": self.shape,
            "direction": self.direction,
            "budget_rule": self.budget_rule,
            "groups": [g.to_dict() for g in self.groups],
            "mean_budget": {
                "uniform_timestep": self.mean_budget("uniform", per="timestep"),
                "ddim100_timestep": self.mean_budget("ddim", per="timestep"),
                "uniform_group_limit": self.mean_budget("uniform", per="group"),
                "ddim100_group_limit": self.mean_budget("ddim", per="group"),
            },
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: dict, snr: np.ndarray, budget: np.ndarray) -> "Plan":
        groups = [
            Group(
                index=g["index"], t_start=g["t_start"], t_end=g["t_end"],
                num_timesteps=g["num_timesteps"], snr_min=g["snr_min"], snr_max=g["snr_max"],
                limit_fraction=g["limit_fraction"], interval=tuple(g["interval"]),
            )
            for g in d["groups"]
        ]
        return cls(
            schedule=d["schedule"], timesteps=d["timesteps"], n_groups_requested=d["n_groups_requested"],
            k=d["k"], shape=d["shape"], direction=d["direction"], budget_rule=d["budget_rule"],
            snr=snr, budget=budget, groups=groups, warnings=list(d.get("warnings", [])),
        )


def make_plan(
    schedule: ScheduleName = "linear",
    timesteps: int = 1000,
    n_groups: int = 10,
    k: float = 0.5,
    shape: Shape = "paper",
    direction: Direction = "noisy-hard",
    budget_rule: BudgetRule = "upper",
    snr_clip: tuple[float, float] | None = None,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> Plan:
    """Group timesteps by difficulty and give each group a MACs limit (fraction of F).

    Groups come from splitting the difficulty range into ``n_groups`` equal intervals, so every
    budget shape is compared on the same groups. ``budget_rule='upper'`` gives each group its
    interval's upper limit w(i) for the paper shape (the paper's text) and the largest per-timestep
    budget of its members for other shapes; ``'mean'`` gives the mean budget of its members.
    Empty intervals (common with the cosine schedule) are dropped, the rest renumbered, and a
    warning is recorded in the plan.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    if not 1 <= n_groups <= timesteps:
        raise ValueError(f"groups must be in [1, timesteps={timesteps}], got {n_groups}")
    snr = snr_db(alphas_cumprod(betas(schedule, timesteps, beta_start, beta_end)))
    u = difficulty(snr, direction, snr_clip)
    budget = budget_fraction(u, k, shape)
    gidx = group_index(u, n_groups)
    groups: list[Group] = []
    warnings: list[str] = []
    empty = []
    for i in range(n_groups):
        members = np.flatnonzero(gidx == i)
        if members.size == 0:
            empty.append(i)
            continue
        # SNR is monotone in t, so each group's members are contiguous; check rather than assume.
        if members[-1] - members[0] + 1 != members.size:
            raise AssertionError(f"group {i} is not contiguous")  # a bug, not a user error
        if budget_rule == "mean":
            limit = float(budget[members].mean())
        elif shape == "paper":
            limit = k + (1 - k) * (i + 1) / n_groups
        else:
            limit = float(budget[members].max())
        groups.append(
            Group(
                index=len(groups),
                t_start=int(members[0]),
                t_end=int(members[-1]),
                num_timesteps=int(members.size),
                snr_min=float(snr[members].min()),
                snr_max=float(snr[members].max()),
                limit_fraction=float(limit),
                interval=(i / n_groups, (i + 1) / n_groups),
            )
        )
    if empty:
        warnings.append(
            f"{len(empty)} of {n_groups} difficulty intervals hold no timestep ({empty}); they were "
            f"dropped and the remaining {len(groups)} groups renumbered. With the cosine schedule, "
            "try plan.snr_clip (e.g. [-20, 20]) so a few extreme timesteps do not dominate."
        )
    groups.sort(key=lambda g: g.t_start)
    for j, g in enumerate(groups):
        g.index = j
    return Plan(
        schedule=schedule, timesteps=timesteps, n_groups_requested=n_groups, k=k, shape=shape,
        direction=direction, budget_rule=budget_rule, snr=snr, budget=budget, groups=groups,
        warnings=warnings,
    )
