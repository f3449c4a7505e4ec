"""`make bench-smoke`: every benchmark item (tools/bench_tables.py) at toy size, end to end."""

import importlib.util
import json
import math

import pytest

from conftest import ROOT


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "tools" / "bench_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # make test-slow: the paper-tables benchmark (make bench-paper)
def test_bench_smoke_runs_every_item_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("TDC_AGENT_CACHE", str(tmp_path / "cache"))
    bench = _bench_module()
    args = ["--scale", "smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert bench.main(args) == 0
    res = json.loads((tmp_path / "out" / "tables-smoke.json").read_text())
    for key in ("table1", "single", "inside_tdc", "two_stage", "speed", "ablations", "recipe"):
        assert len(res[key]) == 1, key
    t1 = res["table1"][0]
    # equal compute: the long base saw as many steps as TDC without pruning
    assert t1["base_equal_compute"]["training_steps"] == t1["tdc_no_prune"]["training_steps"]
    assert t1["tdc"]["macs_per_step"] < t1["base_stage1"]["macs_per_step"]
    assert set(res["single"][0]) == {"random", "group-taylor", "agent", "scratch"}
    assert all(math.isfinite(r["fd"]) for r in res["single"][0].values())
    assert res["speed"][0]["sampling_speedup"] > 0 and res["speed"][0]["bare_s_per_step"] > 0
    assert {t["target"][:20] for t in res["targets"]} and all(isinstance(t["met"], bool) for t in res["targets"])
    md = (tmp_path / "out" / "tables-smoke.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## Targets"):
        assert heading in md
    # a rerun reads every finished experiment back instead of recomputing it
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("bench.json")}
    assert bench.main(args) == 0
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("bench.json")}
    assert json.loads((tmp_path / "out" / "tables-smoke.json").read_text())["table1"] == res["table1"]


def test_sampler_steps_diagnostic_scores_each_variant(tmp_path, monkeypatch):
    """tools/bench_sampler_steps.py on a tiny untrained digits model: every variant at every step
    count from the same noise, and the ε-loss per timestep."""
    import torch

    from tdc_agent.core.config import ScheduleConfig
    from tdc_agent.models.store import save_model
    from tdc_agent.models.unet import build_unet, unet_config

    monkeypatch.setenv("TDC_AGENT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    save_model(tmp_path / "m", build_unet(unet_config("tiny")),
               {"schedule": ScheduleConfig(timesteps=50).model_dump(), "image_shape": [1, 8, 8]})
    spec = importlib.util.spec_from_file_location("bench_sampler_steps", ROOT / "tools" / "bench_sampler_steps.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--model", str(tmp_path / "m"), "--samples", "16", "--steps", "2,3", "--variants", "old,consistent",
              "--out", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "sampler_steps.json").read_text())
    assert set(res["fd"]) == {"old", "consistent"} and set(res["fd"]["old"]) == {"2", "3"}
    assert all(math.isfinite(v) and v > 0 for d in res["fd"].values() for v in d.values())
    assert "49" in res["eps_loss_per_t"]  # the last timestep of a 50-step schedule
    with pytest.raises(SystemExit, match="unknown variants"):
        mod.main(["--model", str(tmp_path / "m"), "--variants", "bogus", "--out", str(tmp_path / "out")])


@pytest.mark.slow  # ~6 CPU-minutes (37 min wall on a loaded 2-core machine): make bench-smoke / make test-slow
@pytest.mark.timeout(3600)
def test_agent_quality_smoke_every_row_at_macs_parity_and_resumes(tmp_path, monkeypatch):
    """tools/bench_agent_quality.py at toy size: the pairs (uniform and global baselines within 0.5 %
    of the agent's MACs), round 1 vs the full search, FD with a paired CI, memory transfer with its
    noise; a rerun (through worker processes) recomputes nothing."""
    monkeypatch.setenv("TDC_AGENT_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("bench_agent_quality", ROOT / "tools" / "bench_agent_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--scale", "smoke", "--threads", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    bench.main(args)
    res = json.loads((tmp_path / "out" / "agent_quality-smoke.json").read_text())
    seeds, groups = bench.QUALITY["smoke"]["seeds"], bench.SCALES["smoke"]["groups"]
    assert res["protocol"]["seeds"] == seeds and res["protocol"]["rounds"] == 2
    assert any("global" in c for c in res["protocol"]["classical"]) and res["targets"]["global_criterion_among_baselines"]
    assert len(res["pairs"]) == len(seeds) * groups
    for p in res["pairs"]:
        # MACs parity, either side, for the best baseline and every baseline compared
        assert abs(p["classical_macs"] / p["agent_macs"] - 1) <= bench.MACS_TOLERANCE
        assert abs(p["macs_gap"]) <= bench.MACS_TOLERANCE
        assert all(abs(c["macs"] / p["agent_macs"] - 1) <= bench.MACS_TOLERANCE for c in p["classical"].values())
        assert all(c["macs_gap"] is None or abs(c["macs_gap"]) > bench.MACS_TOLERANCE for c in p["excluded"].values())
        assert set(p["classical"]) | set(p["excluded"]) == set(bench.CLASSICAL)
        assert p["best_classical_test_loss"] == min(c["test_loss"] for c in p["classical"].values())
        assert p["win"] == (p["agent_test_loss"] < p["best_classical_test_loss"])
        # round 1 alone: rebuilt from the memory exactly as the agent builds its final scheme
        r1 = p["round1"]
        assert r1["val_loss"] >= p["agent_val_loss"] - 1e-12 and math.isfinite(r1["test_loss"])
        if r1["is_final"]:
            assert r1["test_loss"] == p["agent_test_loss"] and r1["macs"] == p["agent_macs"]
    assert res["all_within_macs_tolerance"] and res["max_macs_gap"] <= bench.MACS_TOLERANCE
    r1 = res["round1_vs_search"]
    lo, hi = r1["test_loss_ratio_full_over_round1"]["ci95"]
    assert lo <= r1["test_loss_ratio_full_over_round1"]["mean"] <= hi
    assert r1["search_adds_beyond_round1"] == (hi < 1)
    fd = res["fd"]["paired_difference_agent_minus_classical"]
    assert fd["n"] == len(seeds) and fd["ci95"][0] <= fd["mean"] <= fd["ci95"][1]
    assert res["targets"]["fd_win_ci_below_0"] == (fd["ci95"][1] < 0)
    mt = res["memory_transfer"]
    assert mt["n"] == len(seeds) * groups
    for x in mt["groups"]:
        assert x["never_worse"] == (x["with_memory_final_val"] <= x["no_memory_final_val"] * 1.002)
        assert x["val_noise_rel_sd"] > 0 and len(x["with_memory_best_by_round"]) == 2
        assert 1 <= x["no_memory_rounds_to_final"] <= 2
        # the verdict against the round-to-round noise (paired, fresh draws)
        r1 = x["cold_round1_vs_final"]
        assert x["search_gains_beyond_noise"] == (r1["mean"] > bench.NOISE_MARGIN * r1["sd"])
        if x["faster_beyond_noise"]:
            assert x["rounds_saved"] > 0 and x["cold_at_reach_vs_final"]["mean"] > 0
    for s in seeds:  # every best-so-far model was rebuilt from the memory and gave its record's loss back
        for name in ("round_noise.json", f"round_noise-agent-memory-from-s{seeds[seeds.index(s) - 1]}.json"):
            for g in json.loads((tmp_path / "work" / f"s{s}" / "scores" / name).read_text())["groups"]:
                assert len(g["best_by_round"]) == 2 and set(g["best_by_round"]) == set(g["models"])
                for m in g["models"].values():
                    assert abs(m["rebuilt_loss"] / m["record_loss"] - 1) <= 1e-4 and len(m["draws"]) == bench.NOISE_DRAWS
    assert mt["search_gains_beyond_noise"] == sum(x["search_gains_beyond_noise"] for x in mt["groups"])
    assert mt["faster_beyond_noise_where_search_gains"] == sum(
        x["faster_beyond_noise"] and x["search_gains_beyond_noise"] for x in mt["groups"])
    for x in mt["groups"]:  # every group that saved rounds is checked on the test split too
        assert ("test_at_reach" in x) == bool(x["rounds_saved"])
        # the no-memory search again under another policy seed: the same round 1 (the builtin's round 1
        # does not draw random numbers), its own later rounds
        rep = x["replicate"]
        assert rep["round1_equals_cold"] and rep["best_by_round"][0] == x["no_memory_best_by_round"][0]
        assert rep["rounds_to_reach_cold_final"] is None or 1 <= rep["rounds_to_reach_cold_final"] <= 2
    assert mt["replicate_round1_equals_cold"] is True
    assert res["targets"]["memory_never_worse"] == all(x["never_worse"] for x in mt["groups"])
    assert set(res["seconds_per_seed"][str(seeds[0])]) >= {"stage1", "agent", "pairs", "finetune_fd", "transfer",
                                                          "replicate"}
    md = (tmp_path / "out" / "agent_quality-smoke.md").read_text()
    for text in ("Round 1 alone vs the full search", "FD after fine-tuning", "Memory transfer", "global-"):
        assert text in md
    if not fd["ci95"][1] < 0:  # the wording follows the CI: no win and no "no worse" without one
        assert "agent better" not in md and "no worse" not in md.replace("'no worse'", "")
    # --bases-from: a finished stage-1 base of another work directory (Table I's) is copied, not retrained
    b2 = bench.QualityBench("smoke", tmp_path / "work2", "cpu", "builtin", bases_from=tmp_path / "work")
    copied = b2.base(seeds[0]).base_model / "model.safetensors"
    assert copied.read_bytes() == (tmp_path / "work" / f"s{seeds[0]}" / "base" / "stage1" / "model" /
                                   "model.safetensors").read_bytes()
    assert not (tmp_path / "work2" / f"s{seeds[0]}" / "base" / "stage1" / "metrics.jsonl").exists()
    # a rerun through worker processes reads every finished part back
    scores = sorted((tmp_path / "work").rglob("scores/*.json"))
    before = {p: p.stat().st_mtime_ns for p in scores}
    bench.main(args[:2] + ["--jobs", "2"] + args[2:])
    assert before == {p: p.stat().st_mtime_ns for p in scores}
    assert json.loads((tmp_path / "out" / "agent_quality-smoke.json").read_text())["pairs"] == res["pairs"]


def test_memory_transfer_is_judged_against_the_paired_round_to_round_noise():
    """tools/bench_agent_quality.py:paired_transfer: "faster beyond noise" needs the cold run's best at
    the warm run's round to be worse than its final one by more than 2 SDs of their paired difference
    over fresh noise draws, and the warm run's best there not to be worse; one model's own (unpaired)
    SD is kept only as the first verdict."""
    spec = importlib.util.spec_from_file_location("bench_agent_quality", ROOT / "tools" / "bench_agent_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    final = [1.00, 1.10, 0.90, 1.05, 0.95]  # one model's loss over 5 draws: SD ~ 7 %

    def run(*rounds: list[float]) -> dict:
        return {"best_by_round": [f"r{i}" for i in range(len(rounds))],
                "models": {f"r{i}": {"draws": d} for i, d in enumerate(rounds)}}

    def group(saved: int | None, margin: float) -> dict:
        return {"rounds_to_reach": None if saved is None else 2 - saved, "rounds_saved": saved,
                "margin_at_reach": margin, "val_noise_rel_sd": 0.07, "faster_beyond_noise": True}

    worse = [v * 1.02 for v in final]  # 2 % worse on every draw: far beyond the paired noise (0)
    jitter = [v * (1 + e) for v, e in zip(final, (0.03, -0.02, 0.01, -0.03, 0.02))]  # mean ~0, SD 2.5 %
    cold = run(worse, final)
    x = bench.paired_transfer(group(1, 0.02), cold, run(final, final))
    assert x["search_gains_beyond_noise"] and x["faster_beyond_noise"]
    assert not x["faster_beyond_val_noise_unpaired"]  # 2 % < 2 x 7 %: the first verdict missed it
    assert abs(x["cold_at_reach_vs_final"]["mean"] - 0.02) < 1e-12 and x["cold_at_reach_vs_final"]["sd"] < 1e-12
    # the warm run's best is itself worse than the cold final beyond noise: not faster
    assert not bench.paired_transfer(group(1, 0.02), cold, run(worse, final))["faster_beyond_noise"]
    # the cold run's gain is within its paired noise: nothing to be faster about
    y = bench.paired_transfer(group(1, 0.001), run(jitter, final), run(final, final))
    assert not y["search_gains_beyond_noise"] and not y["faster_beyond_noise"]
    # no round saved: never faster, whatever the noise
    assert not bench.paired_transfer(group(0, 0.0), cold, run(worse, final))["faster_beyond_noise"]
    assert not bench.paired_transfer(group(None, 0.0), cold, run(worse, worse))["faster_beyond_noise"]
    # reached in round 2 of 3 where the cold run needed 3: judged at round 2, and checked on the test split
    worse2 = [v * 1.05 for v in final]
    three = {"rounds_to_reach": 2, "rounds_saved": 1, "margin_at_reach": 0.02, "val_noise_rel_sd": 0.07}
    z = bench.paired_transfer(three, run(worse2, worse, final), run(worse2, final, final),
                              {"cold_at_reach": 0.52, "warm_at_reach": 0.51, "cold_final": 0.515})
    assert z["faster_beyond_noise"] and abs(z["cold_at_reach_vs_final"]["mean"] - 0.02) < 1e-12
    assert z["test_at_reach"]["warm_ahead_on_test"] and abs(z["test_at_reach"]["cold_gain_on_test"] - 0.005 / 0.52) < 1e-12
    # the warm run's best is not worse than the cold final beyond noise, but not ahead of the cold run's
    # best at that round either (both about 1 % above the final): not faster
    tie = [v * 1.01 * (1 + e) for v, e in zip(final, (0.03, -0.02, 0.01, -0.03, 0.02))]
    assert not bench.paired_transfer(three, run(worse2, [v * 1.01 for v in final], final),
                                     run(worse2, tie, tie))["faster_beyond_noise"]


def test_fd_infinity_removes_the_finite_sample_bias():
    """tools/table1_fd_estimators.py:fd_infinity: FD on subsets extrapolated to 1/n = 0. Samples of
    the reference Gaussian itself have FD > 0 at every finite n (the bias), FD∞ near 0; a mean shift
    of length 1 keeps FD∞ near 1 (the bias removed, the real distance kept)."""
    import numpy as np

    spec = importlib.util.spec_from_file_location("table1_fd_estimators", ROOT / "tools" / "table1_fd_estimators.py")
    est = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(est)
    from tdc_agent.evaluation.fd import frechet_to_stats

    rng = np.random.default_rng(0)
    d = 16
    mu, sigma = np.zeros(d), np.eye(d)
    same = rng.standard_normal((2000, d))
    biased = frechet_to_stats(same, mu, sigma)
    assert biased > 0.05  # ~ d(d+1)/(2n) for an identity covariance
    assert abs(est.fd_infinity(same, mu, sigma, seed=0)) < 0.3 * biased
    shift = np.zeros(d)
    shift[0] = 1.0
    moved = same + shift
    # (the sample mean's own error along the shift moves both by ~2 x 1/sqrt(2000))
    assert abs(est.fd_infinity(moved, mu, sigma, seed=0) - 1.0) < 0.1
    assert est.fd_infinity(moved, mu, sigma, seed=0) < frechet_to_stats(moved, mu, sigma)


def test_fd_attribution_swaps_one_member_and_splits_fd():
    """tools/table1_fd_attribution.py: the swapped sampler is the other model on the group's
    timesteps and the progressive model elsewhere (mixed batches too); FD splits into its mean and
    covariance terms; a swap that undoes the whole gap has share 1."""
    import numpy as np
    import torch

    spec = importlib.util.spec_from_file_location("table1_fd_attribution", ROOT / "tools" / "table1_fd_attribution.py")
    att = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(att)
    from tdc_agent.core.config import ScheduleConfig
    from tdc_agent.evaluation.fd import frechet_to_stats
    from tdc_agent.models.macs import thop_macs
    from tdc_agent.models.progressive import Member, ProgressiveModel
    from tdc_agent.models.unet import build_unet, denoise, unet_config

    nets = []
    for i in range(3):
        torch.manual_seed(i)
        nets.append(build_unet(unet_config("tiny")).eval())
    members = [Member(i, a, b, n, thop_macs(n)) for i, ((a, b), n) in enumerate(zip([(0, 9), (10, 49), (50, 99)], nets))]
    pm = ProgressiveModel(members, ScheduleConfig(timesteps=100), (1, 8, 8))
    torch.manual_seed(9)
    other = build_unet(unet_config("tiny")).eval()
    fn = att.swap_member(pm, 1, other)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fn(x, torch.tensor(20)), denoise(other, x, torch.tensor(20).expand(4)))
        assert torch.equal(fn(x, torch.tensor(70)), pm(x, torch.tensor(70)))
        t = torch.tensor([5, 20, 49, 99])
        mixed = fn(x, t)
        for i, tt in enumerate(t.tolist()):
            want = denoise(other if 10 <= tt <= 49 else nets[0 if tt < 10 else 2], x[i:i + 1], t[i:i + 1])
            # (a sub-batch and a batch of one may take different conv kernels: float noise; a wrong
            # model differs by ~1)
            assert torch.allclose(mixed[i:i + 1], want, atol=1e-4), tt
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 6)) + 0.5
    mu, sigma = np.zeros(6), np.eye(6)
    terms = att.fd_terms(a, mu, sigma)
    assert abs(terms["fd"] - frechet_to_stats(a, mu, sigma)) < 1e-9
    assert abs(terms["mean_term"] - float((a.mean(0) ** 2).sum())) < 1e-9 and terms["cov_term"] > 0
    # row 2.0, reference 2.5: a swap back to 2.5 undoes the whole gap, one to 2.0 none, one to 1.5 the opposite
    assert att.attribution_shares(2.0, 2.5, [2.5, 2.0, 1.5]) == [1.0, 0.0, -1.0]


def test_worker_pool_runs_jobs_in_order_keeps_logs_and_reports_failures(tmp_path):
    """tools/workers.py (the pool of `make bench` and `make bench-agent-quality`): at most n at a time,
    every job's output in its own appended log, failed jobs returned, a deadline stops the rest."""
    import os
    import sys
    import time

    spec = importlib.util.spec_from_file_location("workers", ROOT / "tools" / "workers.py")
    workers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workers)
    said: list[str] = []
    script = ("import sys, time, pathlib; d = pathlib.Path(sys.argv[1]); n = len(list(d.glob('*.on')));"
              "(d / (sys.argv[2] + '.on')).touch(); print('job', sys.argv[2], 'saw', n); time.sleep(0.3);"
              "(d / (sys.argv[2] + '.on')).unlink(); sys.exit(int(sys.argv[3]))")
    flags = tmp_path / "flags"
    flags.mkdir()
    jobs = [("a", 0), ("b", 3), ("c", 0), ("d", 0)]
    failed = workers.run_workers(jobs, 2, lambda j, left: [sys.executable, "-c", script, str(flags), j[0], str(j[1])],
                                 lambda j: j[0], tmp_path / "logs", dict(os.environ), said.append)
    assert failed == [("b", 3)] and len(said) == 1 and "exit 3" in said[0]
    seen = [int((tmp_path / "logs" / f"{j}.log").read_text().split()[-1]) for j in "abcd"]
    assert max(seen) <= 1  # never more than 2 running: each saw at most one other
    polls: list[int] = []
    t0 = time.time()
    failed = workers.run_workers([("e", 0)], 1, lambda j, left: [sys.executable, "-c", "import time; time.sleep(30)"],
                                 lambda j: j[0], tmp_path / "logs", dict(os.environ), said.append,
                                 deadline=time.time() + 1.5, after_poll=lambda r, p: polls.append(len(r)))
    assert time.time() - t0 < 10 and polls and "deadline reached" in said[-1]
