import numpy as np
import pytest
from diffusers import DDPMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from tdc_agent.planning import plan as S


@settings(max_examples=60, deadline=None)
@given(
    sched=st.sampled_from(["linear", "cosine"]),
    T=st.integers(10, 1000),
    n=st.integers(1, 25),
    k=st.floats(0.05, 1.0),
    shape=st.sampled_from(["paper", "constant", "increasing", "decreasing"]),
    direction=st.sampled_from(["noisy-hard", "clean-hard"]),
    rule=st.sampled_from(["upper", "mean"]),
)
def test_groups_partition_timesteps_into_contiguous_ranges(sched, T, n, k, shape, direction, rule):
    n = min(n, T)
    plan = S.make_plan(sched, T, n, k, shape, direction, rule)
    covered = []
    for i, g in enumerate(plan.groups):
        assert g.index == i
        assert g.t_end >= g.t_start
        assert g.num_timesteps == g.t_end - g.t_start + 1
        covered.extend(g.timesteps)
    assert covered == list(range(T)), "groups must be disjoint, contiguous, and cover [0, T)"
    assert len(plan.groups) <= n
    assert all(k - 1e-9 <= b <= 1 + 1e-9 for b in plan.budget)
    assert all(k - 1e-9 <= g.limit_fraction <= 1 + 1e-9 for g in plan.groups)


@pytest.mark.parametrize("sched", ["linear", "cosine"])
@pytest.mark.parametrize("n", [1, 4, 10, 20])
def test_paper_budget_monotone_and_hardest_group_gets_full_model(sched, n):
    plan = S.make_plan(sched, 1000, n, 0.5)
    # noisy-hard: budget rises with t, and so do the group limits
    assert np.all(np.diff(plan.budget) >= -1e-12)
    limits = [g.limit_fraction for g in plan.groups]
    assert limits == sorted(limits)
    assert limits[-1] == pytest.approx(1.0)
    assert plan.budget[-1] == pytest.approx(1.0)
    assert plan.budget.min() == pytest.approx(0.5)


def test_erratum_upper_limits_match_formula():
    plan = S.make_plan("linear", 1000, 10, 0.5)
    assert [g.limit_fraction for g in plan.groups] == pytest.approx(
        [0.5 + 0.5 * (i + 1) / 10 for i in range(10)]
    )
    # every timestep's own budget lies inside its group's interval (v(i), w(i)]
    for g in plan.groups:
        lo = 0.5 + 0.5 * g.index / 10 if g.index else 0.0
        assert np.all(plan.budget[g.t_start: g.t_end + 1] <= g.limit_fraction + 1e-12)
        assert np.all(plan.budget[g.t_start: g.t_end + 1] > lo - 1e-12)


def test_paper_mean_macs_over_ddim100_reproduces_6_56_of_8_14():
    plan = S.make_plan("linear", 1000, 10, 0.5)
    assert plan.mean_budget("ddim", 100, per="timestep") == pytest.approx(6.56 / 8.14, abs=5e-4)
    # models pruned exactly to their group limits cost more than the planned per-step budget
    assert plan.mean_budget("ddim", 100, per="group") > plan.mean_budget("ddim", 100, per="timestep")


def test_direction_flips_difficulty():
    a = S.make_plan("linear", 1000, 4, 0.5, direction="noisy-hard")
    b = S.make_plan("linear", 1000, 4, 0.5, direction="clean-hard")
    assert a.budget[0] == pytest.approx(0.5) and a.budget[-1] == pytest.approx(1.0)
    assert b.budget[0] == pytest.approx(1.0) and b.budget[-1] == pytest.approx(0.5)
    assert b.groups[0].limit_fraction == pytest.approx(1.0)


def test_shapes():
    T, k = 1000, 0.3
    inc = S.make_plan("linear", T, 5, k, shape="increasing")
    dec = S.make_plan("linear", T, 5, k, shape="decreasing")
    const = S.make_plan("linear", T, 5, k, shape="constant")
    assert np.all(np.diff(inc.budget) > 0) and inc.budget[0] == pytest.approx(k)
    assert np.all(np.diff(dec.budget) < 0) and dec.budget[0] == pytest.approx(1.0)
    assert np.allclose(const.budget, (1 + k) / 2)
    assert [g.limit_fraction for g in const.groups] == pytest.approx([(1 + k) / 2] * len(const.groups))
    # all shapes share the same groups, so an ablation changes only the budgets
    paper = S.make_plan("linear", T, 5, k)
    for p in (inc, dec, const):
        assert [(g.t_start, g.t_end) for g in p.groups] == [(g.t_start, g.t_end) for g in paper.groups]


def test_mean_rule_is_below_upper_rule():
    up = S.make_plan("linear", 1000, 10, 0.5, budget_rule="upper")
    mean = S.make_plan("linear", 1000, 10, 0.5, budget_rule="mean")
    for a, b in zip(up.groups, mean.groups):
        assert b.limit_fraction <= a.limit_fraction


def test_cosine_empty_groups_dropped_with_warning_and_clip_helps():
    plan = S.make_plan("cosine", 1000, 20, 0.5)
    assert len(plan.groups) < 20
    assert plan.warnings and "dropped" in plan.warnings[0]
    assert S.snr_db(S.alphas_cumprod(S.betas("cosine", 1000)))[-1] < -80
    clipped = S.make_plan("cosine", 1000, 20, 0.5, snr_clip=(-20, 20))
    sizes = [g.num_timesteps for g in clipped.groups]
    # clipping spreads timesteps over the groups instead of crowding them at one end
    assert max(sizes) < max(g.num_timesteps for g in plan.groups)


@pytest.mark.parametrize("name,diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_betas_match_diffusers(name, diffusers_name):
    ours = S.alphas_cumprod(S.betas(name, 1000))
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name).alphas_cumprod.numpy()
    assert np.allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="k must be"):
        S.make_plan(k=0)
    with pytest.raises(ValueError, match="groups must be"):
        S.make_plan(timesteps=10, n_groups=11)
    with pytest.raises(ValueError, match="unknown schedule"):
        S.betas("sigmoid", 10)


def test_routing_table_and_group_of():
    plan = S.make_plan("linear", 100, 3, 0.5)
    table = plan.routing_table()
    for t in (0, 50, 99):
        assert plan.group_of(t).index == table[t]
    with pytest.raises(ValueError):
        plan.group_of(100)


def test_ddim_timesteps_match_diffusers():
    from diffusers import DDIMScheduler

    s = DDIMScheduler(num_train_timesteps=1000)
    s.set_timesteps(100)
    assert S.ddim_timesteps(1000, 100).tolist() == s.timesteps.tolist()
