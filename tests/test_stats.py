"""Paired statistics (evaluation/stats.py) and the equal-compute step count (stage1.py)."""

import numpy as np
import pytest
from scipy import stats as st

from tdc_agent.evaluation.stats import paired_bootstrap_ratio, paired_ratios, percentile_interval, t_interval
from tdc_agent.workflow.stage1 import equal_compute_steps


def test_t_interval_matches_scipy():
    x = [0.91, 0.95, 0.88, 1.02, 0.97]
    i = t_interval(x)
    lo, hi = st.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=st.sem(x))
    assert (i.lo, i.hi) == pytest.approx((lo, hi)) and i.mean == pytest.approx(np.mean(x)) and i.n == 5
    assert np.isnan(t_interval([1.0]).lo)
    with pytest.raises(ValueError):
        t_interval([])


def test_paired_ratios_need_the_same_seeds():
    assert paired_ratios([2.0, 3.0], [4.0, 3.0]) == [0.5, 1.0]
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])


def test_paired_bootstrap_shares_the_resampled_indices():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 2))
    # b = a shifted: the per-draw ratio of means is exactly constant only if both use the same indices
    b = a + 10.0
    draws = paired_bootstrap_ratio(lambda f: float(f.mean() + 100.0), a, b, reps=50, seed=1)
    expected = (a.mean() + 100.0) / (b.mean() + 100.0)
    assert np.all(np.abs(draws - expected) < 0.01)
    lo, hi = percentile_interval(draws)
    assert lo <= hi
    with pytest.raises(ValueError):
        paired_bootstrap_ratio(lambda f: 1.0, a, b[:10])


def test_equal_compute_steps_counts_a_step_as_three_forwards():
    # 100 stage-2 steps of a half-size model cost 50 base steps; 300 forward-only base passes
    # (teacher, proxy) cost 300 / (3 x batch 10) = 10 more
    base_macs, batch = 1000.0, 10
    student = 0.5 * base_macs * 100 * batch
    forward_only = 300 * base_macs
    assert equal_compute_steps(forward_only, student, base_macs, batch) == 50 + 10
    assert equal_compute_steps(0.0, 0.0, base_macs, batch) == 0
    assert equal_compute_steps(1.0, 0.0, base_macs, batch) == 1  # any extra compute buys a (partial) step
