"""Paired comparisons with confidence intervals: the statistics behind every quality claim.

Two models of one seed are sampled from the same noise, so their FDs are paired; comparisons are
ratios ``fd(row) / fd(reference)`` per seed, summarised by a t-based 95 % interval over seeds, and
checked by a paired bootstrap over samples (the same resampled indices for both models, because
sample ``i`` of both came from the same initial noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as _st


@dataclass
class Interval:
    mean: float
    lo: float
    hi: float
    n: int

    def to_list(self) -> list[float]:
        return [self.lo, self.hi]


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and two-sided t interval (``n - 1`` degrees of freedom); NaN bounds for one value."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(_st.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def paired_ratios(rows: Sequence[float], reference: Sequence[float]) -> list[float]:
    """Per-seed ratios ``rows[i] / reference[i]`` (same seed order)."""
    if len(rows) != len(reference):
        raise ValueError(f"paired ratios need the same seeds: {len(rows)} vs {len(reference)} values")
    return [float(a) / float(b) for a, b in zip(rows, reference)]


def paired_bootstrap_ratio(
    metric: Callable[[np.ndarray], float],
    a: np.ndarray,
    b: np.ndarray,
    reps: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """``reps`` bootstrap draws of ``metric(a[idx]) / metric(b[idx])`` with shared indices ``idx``.

    ``a`` and ``b`` are per-sample feature arrays of two models sampled from the same noise.
    """
    if len(a) != len(b):
        raise ValueError("a paired bootstrap needs the same number of samples from both models")
    rng = np.random.default_rng(seed)
    out = np.empty(reps)
    for r in range(reps):
        idx = rng.integers(0, len(a), len(a))
        out[r] = metric(a[idx]) / metric(b[idx])
    return out


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> list[float]:
    lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]
