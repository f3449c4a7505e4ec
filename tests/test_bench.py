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
