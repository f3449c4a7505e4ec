"""`make bench` (tools/bench_table1.py) at toy size: tuning, rows, equal compute, CIs, resume."""

import importlib.util
import json
import math

import pytest

from conftest import ROOT


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # ~4 min alone (two runs: tuned, then a carried choice): make bench-smoke / make test-slow
@pytest.mark.timeout(1800)
def test_table1_smoke_runs_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("TDC_AGENT_CACHE", str(tmp_path / "cache"))
    bench = _module("bench_table1")
    args = ["run", "--scale", "smoke", "--jobs", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    bench.main(args)
    res = json.loads((tmp_path / "out" / "table1-smoke.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert {"base-equal-compute", "tdc-no-prune", "tdc-agent", "tdc-group-taylor"} <= set(rows)
    assert res["seeds_complete"] == bench.SCALES["smoke"]["seeds"]
    eq = rows["base-equal-compute"]
    for name in ("tdc-no-prune", "tdc-agent"):
        r = rows[name]
        assert len(r["fd"]) == len(eq["fd"]) and r["seeds"] == eq["seeds"]
        lo, hi = r["fd_ratio_ci95"]
        assert lo <= r["fd_ratio"] <= hi and all(math.isfinite(x) for x in (lo, hi))
        # the equal-compute base trained at least as much as each headline row
        assert eq["train_macs"] >= r["train_macs"] - 1e-6 * r["train_macs"]
    assert rows["tdc-agent"]["proxy_macs"] > 0 and rows["tdc-agent"]["macs_per_step_ratio"] < 1
    assert rows["tdc-no-prune"]["macs_per_step_ratio"] == 1
    distilled = [r for r in res["rows"] if r["name"].endswith("-distill") or
                 (res["tuning"]["distill"] and r["name"] in ("tdc-agent", "tdc-no-prune", "tdc-group-taylor"))]
    assert distilled and all(r["teacher_macs"] > 0 for r in distilled)
    assert res["real_floor"]["splits"] >= 2 and res["real_floor"]["mean"] > 0
    assert {"tdc-agent", "tdc-no-prune", "seeds", "base_fd_by_steps", "tdc-agent-members"} <= set(res["targets"])
    steps = [str(k) for k in bench.SCALES["smoke"]["fd_steps"]]
    for name in ("tdc-no-prune", "tdc-agent"):
        r = rows[name]
        # FD at every step count from the same noise, each with its paired ratio; the eps-loss ratio
        assert set(r["fd_by_steps"]) == set(steps) and all("fd_ratio_ci95" in v for v in r["fd_by_steps"].values())
        assert r["fd_by_steps"][str(bench.SCALES["smoke"]["sample_steps"])]["fd"] == r["fd"]
        assert 0 < r["eps_loss_ratio"] and len(r["eps_loss_ratio_ci95"]) == 2
        # every member of every seed was checked against the base
        assert r["member_loss_ratio_max"] == max(x for v in r["member_loss_ratios"].values() for x in v)
        assert all(len(v) == res["protocol"]["groups"] for v in r["member_loss_ratios"].values())
    assert set(res["base_fd_by_steps"]) == {"reported", "tuning"}
    assert set(res["base_fd_by_steps"]["reported"]) == {"seeds", *steps}
    assert "Table I" in (tmp_path / "out" / "table1-smoke.md").read_text()
    # the choice came from the tuning seeds only
    assert res["tuning"]["tune_seeds"] and not set(res["tuning"]["tune_seeds"]) & set(res["seeds_complete"])
    # a rerun reads every finished experiment back
    scores = sorted((tmp_path / "work").rglob("scores/*.json"))
    before = {p: p.stat().st_mtime_ns for p in scores}
    bench.main(args)
    assert before == {p: p.stat().st_mtime_ns for p in scores}
    # a recipe carried from an earlier tuning: no tuning jobs, the tuning seeds' bases still scored
    carried = ["run", "--scale", "smoke", "--jobs", "1", "--work", str(tmp_path / "work2"), "--out",
               str(tmp_path / "out2"), "--rows", "core", "--choice", str(tmp_path / "work" / "tune" / "choice.json")]
    bench.main(carried)
    res2 = json.loads((tmp_path / "out2" / "table1-smoke.json").read_text())
    assert res2["tuning"]["carried_from"].endswith("choice.json") and "tdc-group-taylor" not in {
        r["name"] for r in res2["rows"]}
    assert not list((tmp_path / "work2").glob("s*/tune-*"))
    assert res2["base_fd_by_steps"]["tuning"]["seeds"] == bench.SCALES["smoke"]["tune_seeds"]


@pytest.mark.slow  # ~2 min alone: make bench-smoke / make test-slow
def test_agent_quality_smoke_writes_pairs_fd_and_transfer(tmp_path, monkeypatch):
    monkeypatch.setenv("TDC_AGENT_CACHE", str(tmp_path / "cache"))
    bench = _module("bench_agent_quality")
    bench.main(["--scale", "smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "agent_quality.json").read_text())
    groups = bench.SCALES["smoke"]["groups"]
    assert len(res["pairs"]) == len(bench.SEEDS["smoke"]) * groups
    for p in res["pairs"]:
        assert {"seed", "group", "agent_test_loss", "best_classical_test_loss", "best_classical_name", "agent_macs",
                "classical_macs"} <= set(p)
        assert p["best_classical_name"] in bench.CLASSICAL
        assert p["classical_macs"] <= p["agent_macs"] * (1 + 1e-9)  # pruned to the agent's achieved MACs
        assert p["best_classical_test_loss"] == min(c["test_loss"] for c in p["classical"].values())
    assert res["win_rate"] == sum(p["win"] for p in res["pairs"]) / len(res["pairs"])
    ci = res["fd"]["paired_difference_agent_minus_classical"]["ci95"]
    assert ci[0] <= res["fd"]["paired_difference_agent_minus_classical"]["mean"] <= ci[1]
    transfer = [k for k in res if "transfer" in k]
    assert transfer and len(res["memory_transfer"]["groups"]) == len(res["pairs"])
    # the transfer run really had the other seed's records in its memory (offered as shapes; at one
    # round they are not tried: round 1 is the policy's own, the memory adds candidates from round 2)
    warm = tmp_path / "work" / "s1" / "agent-memory-from-s0"
    text = (warm / "stage2" / "g0" / "agent" / "transcript.jsonl").read_text()
    assert '\\"other_bases\\": [{' in text or "memory transfer" in text
    assert "Win rate" in (tmp_path / "out" / "agent_quality.md").read_text()


def test_agent_tokens_counts_what_the_server_was_sent(tmp_path):
    bench = _module("bench_agent_tokens")
    r = bench.measure("tiny", rounds=1, candidates=2)
    assert r["units"] == 22 and len(r["groups"]) == 2
    for g in r["groups"]:
        assert g["llm_calls"] == 1  # one reply proposes; the round closes once they are evaluated
        # the client's reported usage is the server's own estimate of the same bytes
        assert abs(g["input_tokens_reported"] - g["input_bytes"] / 4) <= g["requests"]
    # the second group's prompt carries its neighbour's records: it is the larger one
    assert r["groups"][1]["input_bytes"] > r["groups"][0]["input_bytes"]
