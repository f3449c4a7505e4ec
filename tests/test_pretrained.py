"""Starting from a pretrained diffusers pipeline (stage1.init): weights and schedule come with it."""

from __future__ import annotations

import json

import pytest
import torch

from tdc_agent.core.io import load_tensors
from tdc_agent.models.unet import build_unet, unet_config


def save_ddpm_pipeline(path, timesteps: int = 100, schedule: str = "linear") -> torch.nn.Module:
    """A google/ddpm-cifar10-32-style DDPMPipeline folder (unet/ + scheduler/), digits-sized."""
    from diffusers import DDPMPipeline, DDPMScheduler

    torch.manual_seed(3)
    unet = build_unet(unet_config("tiny"))
    sched = DDPMScheduler(num_train_timesteps=timesteps, beta_start=2e-4, beta_end=0.03, beta_schedule=schedule,
                          variance_type="fixed_large")
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(path)
    return unet


@pytest.mark.slow  # ~50 s; `make test-slow`
def test_pretrained_start_skips_stage1_and_takes_the_schedule(tmp_path, cli, make_config, monkeypatch, fresh_cache):
    monkeypatch.setenv("TDC_AGENT_CACHE", str(fresh_cache(tmp_path / "cache")))
    unet = save_ddpm_pipeline(tmp_path / "ddpm")
    cfg = make_config(schedule={"name": "linear", "timesteps": 1000},
                      stage1={"init": str(tmp_path / "ddpm"), "steps": 0},
                      stage2={"steps": 3, "batch_size": 16, "ckpt_every": 2},
                      agent={"rounds": 1, "candidates": 2, "eval_batch_size": 16, "eval_timesteps": 2},
                      evaluation={"samples": 8}, sample={"steps": 3, "num": 4})
    run = tmp_path / "run"
    code, out, err = cli("run", "--config", cfg, "--run-dir", run, "-q")
    assert code == 0, err
    assert "schedule taken from stage1.init" in err and "T=100" in err
    plan = json.loads((run / "plan.json").read_text())
    assert plan["timesteps"] == 100
    stored = (run / "config.yaml").read_text()
    assert "timesteps: 100" in stored and "beta_end: 0.03" in stored
    base = load_tensors(run / "stage1" / "model" / "model.safetensors")
    assert all(torch.equal(base[k], v) for k, v in unet.state_dict().items())  # the pretrained weights, untouched
    assert not (run / "stage1" / "checkpoint").exists()  # no stage-1 training at all
    assert (run / "progressive" / "manifest.json").is_file()


def test_pretrained_start_shortens_stage1(tmp_path, cli, make_config, monkeypatch, fresh_cache):
    monkeypatch.setenv("TDC_AGENT_CACHE", str(fresh_cache(tmp_path / "cache")))
    unet = save_ddpm_pipeline(tmp_path / "ddpm", schedule="squaredcos_cap_v2")
    cfg = make_config(stage1={"init": str(tmp_path / "ddpm"), "steps": 3, "batch_size": 8, "ckpt_every": 3})
    code, _, err = cli("train-base", "--config", cfg, "--run-dir", tmp_path / "run", "-q")
    assert code == 0, err
    meta = json.loads((tmp_path / "run" / "stage1" / "model" / "tdc_model.json").read_text())
    assert meta["init"] == str(tmp_path / "ddpm") and meta["schedule"]["name"] == "cosine"
    tuned = load_tensors(tmp_path / "run" / "stage1" / "model" / "model.safetensors")
    diffs = [float((tuned[k] - v).abs().max()) for k, v in unet.state_dict().items() if v.is_floating_point()]
    assert 0 < max(diffs) < 0.05  # fine-tuned a little from the pretrained weights, not re-initialised


def test_pretrained_errors_are_clear(tmp_path, cli, make_config):
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    build_unet(unet_config("tiny")).save_pretrained(tmp_path / "pickled", safe_serialization=False)
    cfg = make_config(stage1={"init": str(tmp_path / "pickled"), "steps": 0})
    code, _, err = cli("train-base", "--config", cfg, "--run-dir", tmp_path / "r1", "-q")
    assert code == 2 and "safetensors" in err
    save_ddpm_pipeline(tmp_path / "v")
    DDPMScheduler(num_train_timesteps=50, prediction_type="v_prediction").save_pretrained(tmp_path / "v" / "scheduler")
    cfg = make_config(stage1={"init": str(tmp_path / "v"), "steps": 0})
    code, _, err = cli("train-base", "--config", cfg, "--run-dir", tmp_path / "r2", "-q")
    assert code == 2 and "v_prediction" in err
    with pytest.raises(Exception, match="stage1.steps=0 needs stage1.init"):
        from conftest import tiny_config_dict
        from tdc_agent.core.config import config_from_dict

        config_from_dict(tiny_config_dict(tmp_path, stage1={"steps": 0}))


@pytest.mark.parametrize("name", ["cifar10_iddpm.yaml", "cifar10_pretrained.yaml", "ffhq_latent.yaml"])
def test_gpu_example_configs_validate(name):
    from conftest import ROOT
    from tdc_agent.core.config import load_config

    cfg = load_config(ROOT / "examples" / name)
    assert cfg.run.device == "cuda"


def test_plan_run_and_library_callers_plan_alike_with_a_pretrained_start(tmp_path, cli, make_config, monkeypatch):
    """Config resolution (a pretrained start sets the schedule) is the library's: `tdc-agent plan`,
    `tdc-agent run` and `load_config` give the same plan (issue 22, item 2)."""
    import warnings

    from tdc_agent.core.config import ConfigNote, load_config
    from tdc_agent.planning.build import build_plan

    monkeypatch.setenv("TDC_AGENT_CACHE", str(tmp_path / "cache"))
    save_ddpm_pipeline(tmp_path / "ddpm", timesteps=100)  # β 2e-4 -> 0.03 over 100 steps
    cfg = make_config(schedule={"name": "linear", "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
                      stage1={"init": str(tmp_path / "ddpm"), "steps": 0},
                      stage2={"mode": "tdc-no-prune", "steps": 0},  # the run itself is not what is tested
                      agent={"eval_batch_size": 8, "eval_timesteps": 1},
                      evaluation={"compare_equal_compute": False})
    code, out, err = cli("plan", "--config", cfg, "--json", "--out", tmp_path / "planned")
    assert code == 0, err
    assert "schedule taken from stage1.init" in err  # the note goes to stderr; stdout stays JSON
    planned = json.loads(out)
    assert planned["timesteps"] == 100
    run = tmp_path / "run"
    code, _, err = cli("run", "--config", cfg, "--run-dir", run, "--no-eval", "-q")
    assert code == 0, err
    ran = json.loads((run / "plan.json").read_text())

    def comparable(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in ("base_macs", "created")}

    assert comparable(ran)["groups"] == comparable(planned)["groups"]
    assert {k: ran[k] for k in ("schedule", "timesteps", "n_groups")} == \
        {k: planned[k] for k in ("schedule", "timesteps", "n_groups")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        library = load_config(cfg)
    assert any(issubclass(w.category, ConfigNote) and "T=100" in str(w.message) for w in caught)
    assert library.schedule.timesteps == 100 and library.schedule.beta_end == 0.03
    assert [g.to_dict() for g in build_plan(library).groups] == planned["groups"]
    # resolving a resolved config changes nothing and says nothing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from tdc_agent.core.config import resolve_config

        assert resolve_config(library) == library
    assert not [w for w in caught if issubclass(w.category, ConfigNote)]
