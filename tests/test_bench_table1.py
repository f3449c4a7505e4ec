"""`make bench` (tools/bench_table1.py) at toy size: tuning, rows, equal compute, CIs, resume."""

import importlib.util
import json
import math

import pytest

from conftest import ROOT


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_table1", ROOT / "tools" / "bench_table1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # ~2 min alone: make bench-smoke / make test-slow
def test_table1_smoke_runs_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("TDC_AGENT_CACHE", str(tmp_path / "cache"))
    bench = _bench_module()
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
    assert set(res["targets"]) == {"tdc-agent", "tdc-no-prune"}
    assert "Table I" in (tmp_path / "out" / "table1-smoke.md").read_text()
    # the choice came from the tuning seeds only
    assert res["tuning"]["tune_seeds"] and not set(res["tuning"]["tune_seeds"]) & set(res["seeds_complete"])
    # a rerun reads every finished experiment back
    scores = sorted((tmp_path / "work").rglob("scores/*.json"))
    before = {p: p.stat().st_mtime_ns for p in scores}
    bench.main(args)
    assert before == {p: p.stat().st_mtime_ns for p in scores}
