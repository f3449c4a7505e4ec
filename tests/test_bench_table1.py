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


@pytest.mark.slow  # ~7 min alone (tuned, then a carried choice; need rule; FD attribution): make bench-smoke / make test-slow
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
    # intra-FD per row, or (48 samples spread over 10 classes) the reason it could not be computed
    assert all(("intra_fd" in r) != ("intra_fd_note" in r) for r in res["rows"])
    assert all("intra_fd_ratio_ci95" in r for r in res["rows"] if "intra_fd" in r and r["name"] != "base-equal-compute")
    # the choice came from the tuning seeds only
    assert res["tuning"]["tune_seeds"] and not set(res["tuning"]["tune_seeds"]) & set(res["seeds_complete"])
    # a rerun reads every finished experiment back
    scores = sorted((tmp_path / "work").rglob("scores/*.json"))
    before = {p: p.stat().st_mtime_ns for p in scores}
    bench.main(args)
    assert before == {p: p.stat().st_mtime_ns for p in scores}
    # steps shared by need on the same seeds, bases and pruned models (tools/bench_allocation.py): at
    # this size every group trains its floor under either rule, so the twins must be the same models
    alloc = _module("bench_allocation")
    alloc.main(["run", "--scale", "smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out" / "allocation"),
                "--jobs", "1"])
    tuning = json.loads((tmp_path / "out" / "allocation-tuning.json").read_text())
    assert list(tuning["comparisons"]) == ["tdc-no-prune-need / tdc-no-prune"]
    assert tuning["seeds"] == bench.SCALES["smoke"]["tune_seeds"]
    reported = json.loads((tmp_path / "out" / "allocation.json").read_text())
    assert reported["seeds"] == bench.SCALES["smoke"]["seeds"]
    for mode in ("tdc-no-prune", "tdc-agent"):
        c = reported["comparisons"][f"{mode}-need / {mode}"]
        # (to float noise: the workers run one thread each, Table I's rows ran in this process)
        assert all(abs(r - 1) < 1e-6 for r in c["eps_loss_ratios"] + c["fd_ratios"]), c
        assert f"{mode}-need / base-equal-compute" in reported["comparisons"]
        for sd in reported["seeds"]:
            assert (tmp_path / "work" / f"s{sd}" / f"{mode}-need" / "stage2" / "need.json").is_file()
    # which group's member moves FD (tools/table1_fd_attribution.py): every seed and group swapped,
    # the shares follow from the stored features, and a rerun samples nothing again
    att = _module("table1_fd_attribution")
    att_args = ["run", "--scale", "smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out" / "attr"),
                "--rows", "tdc-no-prune,tdc-agent", "--jobs", "1"]
    att.main(att_args)
    attr = json.loads((tmp_path / "out" / "attr.json").read_text())
    for row in ("tdc-no-prune", "tdc-agent"):
        r = attr["rows"][row]
        assert [p["seed"] for p in r["per_seed"]] == bench.SCALES["smoke"]["seeds"]
        for i, p in enumerate(r["per_seed"]):
            assert len(p["swaps"]) == len(r["groups"]) == bench.SCALES["smoke"]["groups"]
            gap = p["reference"]["fd"] - p["row"]["fd"]
            assert all(abs(g["fd_share"][i] * gap + p["row"]["fd"] - w["fd"]) < 1e-9 for g, w in zip(r["groups"], p["swaps"]))
    # 48 samples over 10 classes: FD's parts are there, intra-FD is not, and the table says why
    assert attr["metrics"] == ["fd"] and "intra_fd_note" in attr
    assert "Intra-FD not computed" in (tmp_path / "out" / "attr.md").read_text()
    stored = sorted((tmp_path / "work").rglob("attribution/*.npy"))
    assert len(stored) == 2 * len(bench.SCALES["smoke"]["seeds"]) * bench.SCALES["smoke"]["groups"]
    before = {p: p.stat().st_mtime_ns for p in stored}
    att.main(att_args)
    assert before == {p: p.stat().st_mtime_ns for p in stored}
    # a recipe carried from an earlier tuning: no tuning jobs, the tuning seeds' bases still scored
    carried = ["run", "--scale", "smoke", "--jobs", "1", "--work", str(tmp_path / "work2"), "--out",
               str(tmp_path / "out2"), "--rows", "core", "--choice", str(tmp_path / "work" / "tune" / "choice.json")]
    bench.main(carried)
    res2 = json.loads((tmp_path / "out2" / "table1-smoke.json").read_text())
    assert res2["tuning"]["carried_from"].endswith("choice.json") and "tdc-group-taylor" not in {
        r["name"] for r in res2["rows"]}
    assert not list((tmp_path / "work2").glob("s*/tune-*"))
    assert res2["base_fd_by_steps"]["tuning"]["seeds"] == bench.SCALES["smoke"]["tune_seeds"]


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
