"""`tdc-agent run` end to end on a tiny config, the progressive model, and kill-and-resume."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import forkserver
import torch

from conftest import PYTHON, python_env
from tdc_agent.models.store import save_model
from tdc_agent.core.config import ScheduleConfig
from tdc_agent.models.unet import build_unet, denoise, unet_config
from tdc_agent.models.progressive import Member, ProgressiveModel
from tdc_agent.models.macs import thop_macs

E2E = {
    "stage1": {"steps": 30, "batch_size": 32, "ckpt_every": 10, "log_every": 5},
    "stage2": {"steps": 10, "batch_size": 32, "ckpt_every": 5, "log_every": 5},
    "sample": {"steps": 10, "num": 16},
    "evaluation": {"samples": 64},
    "agent": {"rounds": 2, "candidates": 2, "eval_batch_size": 32, "eval_timesteps": 3},
}


def _cli(args, **kw):
    return forkserver.popen([PYTHON, "-m", "tdc_agent.cli", *map(str, args)], env=python_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


@pytest.fixture
def cache_env(tmp_path, monkeypatch, fresh_cache):
    monkeypatch.setenv("TDC_AGENT_CACHE", str(fresh_cache(tmp_path / "cache")))


def test_run_end_to_end_tiny(make_config, tmp_path, cli, cache_env):
    cfg = make_config(**{**E2E, "stage2": {**E2E["stage2"], "distill": 0.5}})
    code, _, err = cli("run", "--config", cfg, "--run-dir", tmp_path / "r", "-q")
    assert code == 0, err
    run = tmp_path / "r"
    for f in ("report.md", "evaluation.json", "plan.png", "agent_rounds.png", "samples/base.png", "samples/tdc.png",
              "progressive/manifest.json", "config.yaml", "logs/run.log"):
        assert (run / f).is_file(), f
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["tdc"]["macs_per_step"] < ev["base"]["macs_per_step"]
    assert 0 < ev["base"]["classifier_test_accuracy"] <= 1 and ev["base"]["fd"] > 0 and ev["base"]["real_floor"] > 0
    # intra-FD, or (64 samples of a barely trained model over 10 classes) the reason there is none
    assert all(("intra_fd" in ev[m]) != ("intra_fd_note" in ev[m]) for m in ("base", "tdc"))
    report = (run / "report.md").read_text()
    assert "| intra-FD |" in report
    assert "| base (stage 1 only)" in report and "| TDC (tdc)" in report
    assert "## Agent usage" in report
    # one memory bank for the run, shared by its groups: group 1's first prompt shows group 0's best
    assert (run / "memory").is_dir() and not list(run.glob("stage2/g*/agent/memory"))
    from tdc_agent.agent.transcript import read_transcript

    first = next(e for e in read_transcript(run / "stage2" / "g1" / "agent" / "transcript.jsonl")
                 if e["event"] == "llm_request")
    text = json.dumps(first)
    neighbours = text.split("neighbouring groups:")[1].split("Last round")[0]
    assert "(none yet)" not in neighbours and "g0-r" in neighbours
    # the equal-compute base: trained on for stage 2's compute, teacher and agent forwards included
    tm = ev["training_macs"]
    assert tm["teacher"] == pytest.approx(ev["base"]["macs_per_step"] * 3 * 10 * 32)  # 3 groups x 10 steps x 32
    assert tm["proxy"] > 0 and tm["stage2"] > 0
    extra = (3 * tm["stage2"] + tm["teacher"] + tm["proxy"]) / (3 * ev["base"]["macs_per_step"] * 32)
    assert ev["equal_compute_steps"] == 30 + math.ceil(extra - 1e-9)
    assert ev["base_equal_compute"]["fd"] > 0
    assert "| base, equal compute" in report
    # the progressive model samples from a fresh process exactly as in this one
    pm = ProgressiveModel.load(run / "progressive")
    from tdc_agent.core.config import SampleConfig
    from tdc_agent.workflow.sampling import generate

    here = generate(lambda x, t: pm(x, t), pm.image_shape, pm.schedule, SampleConfig(steps=10, num=6), seed=5,
                    progress=False)
    p = forkserver.run([PYTHON, "-m", "tdc_agent.cli", "sample", "--model", str(run / "progressive"), "--num", "6",
                        "--steps", "10", "--seed", "5", "--out", str(tmp_path / "s"), "-q", "--device", "cpu"],
                       env=python_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    there = np.load(tmp_path / "s" / "samples.npz")["images"]
    from tdc_agent.core.data import to_uint8

    assert np.array_equal(there, to_uint8(here))
    # the same run scored with Inception FID/KID (a random-weight stand-in for the published .pth)
    from test_evaluation import _fid_weights_pth

    _fid_weights_pth(tmp_path / "inception.pth")
    code, _, err = cli("evaluate", "--config", cfg, "--run-dir", run, "-q", "evaluation.metric=fid",
                       f"evaluation.inception_weights={tmp_path / 'inception.pth'}", "evaluation.reference_samples=16",
                       "evaluation.samples=16",  # Inception at 299x299 is the slow part on a CPU
                       "evaluation.compare_equal_compute=false")  # scored above; off, it is left unscored
    assert code == 0, err
    ev = json.loads((run / "evaluation.json").read_text())
    assert "base_equal_compute" not in ev
    assert ev["protocol"]["metric"] == "fid" and ev["tdc"]["metric"] == "fid-inception"
    assert ev["base"]["reference_images"] == 16 and ev["base"]["fd"] > 0 and "kid" in ev["tdc"]
    assert "FID with the FID Inception-v3" in (run / "report.md").read_text()


def _built(run: Path) -> dict[str, int]:
    """What the last ``tdc-agent run`` on ``run`` built, from its log line ``run built once: k=v ...``."""
    line = [l for l in (run / "logs" / "run.log").read_text().splitlines() if "run built once:" in l][-1]
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split("run built once:")[1].split())}


def test_one_run_builds_the_plan_data_llm_and_memory_once(make_config, tmp_path, cli, cache_env, monkeypatch):
    """One `tdc-agent run` whose agent prunes 2 groups (the third is at full budget) through an
    OpenAI-compatible server builds the plan once, loads the data once per split, resolves the LLM
    once (one key check at the server for the run, not one per group) and opens the memory bank once;
    a rerun reads the run's plan back instead of writing another."""
    from openai_server import FakeOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    run = tmp_path / "r"
    with FakeOpenAI() as srv:
        # small: the counts are the point (stage 1 as tiny_config_dict has it, 3 groups, evaluation on)
        cfg = make_config(stage2={"steps": 4, "batch_size": 16, "ckpt_every": 4},
                          evaluation={"samples": 16, "compare_equal_compute": False},
                          agent={"rounds": 1, "candidates": 2, "eval_batch_size": 16, "eval_timesteps": 2,
                                 "llm": "openai:fake-model", "base_url": srv.url})
        code, _, err = cli("run", "--config", cfg, "--run-dir", run, "-q")
        assert code == 0, err
        pruned = [g for g in range(3) if json.loads((run / "stage2" / f"g{g}" / "prune.json").read_text())["mode"] == "tdc"]
        assert pruned == [0, 1]  # two groups pruned by the agent, each with its own transcript and rounds
        for g in pruned:
            assert (run / "stage2" / f"g{g}" / "agent" / "transcript.jsonl").is_file()
            assert (run / "stage2" / f"g{g}" / "agent" / f"group_{g}" / "agent.json").is_file()
        assert len(srv.requests) >= 2 and len(srv.model_lookups) == 1, srv.model_lookups
        assert _built(run) == {"plan": 1, "data[train]": 1, "data[val]": 1, "llm": 1, "memory": 1}
        assert (run / "evaluation.json").is_file()
        plan = (run / "plan.json").read_bytes()
        stamp = (run / "plan.json").stat().st_mtime_ns
        code, _, err = cli("run", "--config", cfg, "--run-dir", run, "-q", "--no-eval")
        assert code == 0, err
    assert (run / "plan.json").read_bytes() == plan and (run / "plan.json").stat().st_mtime_ns == stamp
    # the finished groups need no agent and no held-out data: the rerun checks the LLM and reads the plan back
    assert _built(run) == {"plan": 1, "data[train]": 1, "llm": 1}
    assert len(srv.model_lookups) == 2


@pytest.mark.slow
def test_groups_subset_then_assemble(make_config, tmp_path, cli, cache_env):
    cfg = make_config(**E2E)
    run = tmp_path / "r"
    code, _, err = cli("run", "--config", cfg, "--run-dir", run, "--groups", "0,1", "-q")
    assert code == 0, err
    assert not (run / "progressive").exists()
    code, _, err = cli("assemble", "--config", cfg, "--run-dir", run)
    assert code == 2 and "not finished" in err
    code, _, err = cli("run", "--config", cfg, "--run-dir", run, "--groups", "2", "--no-eval", "-q")
    assert code == 0, err
    assert (run / "progressive" / "manifest.json").is_file()
    code, _, err = cli("run", "--config", cfg, "--run-dir", run, "--groups", "9", "-q")
    assert code == 2 and "do not exist" in err


def test_two_group_jobs_on_one_run_dir_run_concurrently(make_config, tmp_path, cache_env):
    """The README's scale-out pattern, as two real processes at once: stage 1 is trained once (the
    other job waits on the run directory's lock), each group once, and the result is bit for bit
    the sequential run's."""
    # small (the locking and the bit-for-bit result are the point; the e2e test above covers the sizes)
    cfg = make_config(stage1={"steps": 12, "batch_size": 16, "ckpt_every": 4},
                      stage2={"steps": 4, "batch_size": 16, "ckpt_every": 2},
                      agent={"rounds": 1, "candidates": 2, "eval_batch_size": 16, "eval_timesteps": 2},
                      evaluation={"compare_equal_compute": False})  # not compared here: not trained
    shared, ref = tmp_path / "shared", tmp_path / "ref"
    env = {**python_env(), "TDC_AGENT_CACHE": str(tmp_path / "cache")}
    jobs = [forkserver.popen([PYTHON, "-m", "tdc_agent.cli", "run", "--config", str(cfg), "--run-dir", str(shared),
                              "--groups", g, "--no-eval", "-q"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for g in ("0", "1,2")]
    outs = [j.communicate(timeout=600)[0] for j in jobs]
    assert all(j.returncode == 0 for j in jobs), outs
    p = forkserver.run([PYTHON, "-m", "tdc_agent.cli", "run", "--config", str(cfg), "--run-dir", str(ref), "--no-eval",
                        "-q"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    steps = [json.loads(x)["step"] for x in (shared / "stage1" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert len(steps) == len(set(steps)), "stage 1 was trained by both jobs"
    log = (shared / "logs" / "run.log").read_text()
    assert log.count("run: group 0") == 1 and log.count("run: group 1") == 1 and log.count("run: group 2") == 1
    files = ["stage1/model/model.safetensors"] + [f"stage2/g{i}/finetune/model/model.safetensors" for i in range(3)]
    files += [str(m.relative_to(ref)) for m in (ref / "progressive").rglob("*.safetensors")]
    assert len(files) > 4
    for f in files:
        assert (shared / f).read_bytes() == (ref / f).read_bytes(), f


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_unet(unet_config("tiny")).eval()


def test_progressive_routes_mixed_batches(tmp_path):
    sched = ScheduleConfig(timesteps=100)
    nets = [_tiny(i) for i in range(3)]
    ranges = [(0, 9), (10, 49), (50, 99)]
    members = [Member(i, a, b, n, thop_macs(n)) for i, ((a, b), n) in enumerate(zip(ranges, nets))]
    pm = ProgressiveModel(members, sched, (1, 8, 8))
    x = torch.randn(5, 1, 8, 8)
    t = torch.tensor([3, 60, 20, 99, 0])
    want = torch.stack([denoise(nets[{3: 0, 60: 2, 20: 1, 99: 2, 0: 0}[int(tt)]], x[i:i + 1], t[i:i + 1])[0]
                        for i, tt in enumerate(t)])
    assert torch.allclose(pm(x, t), want, atol=1e-6)
    m = pm.sampling_macs("ddim", 10)
    assert m["total"] == sum(members[0 if s < 10 else 1 if s < 50 else 2].macs for s in range(0, 100, 10))
    dirs = []
    for i, n in enumerate(nets):
        dirs.append(save_model(tmp_path / f"m{i}", n, {"schedule": sched.model_dump()}))
    pm.save(tmp_path / "pm", dirs)
    back = ProgressiveModel.load(tmp_path / "pm")
    assert torch.equal(back(x, t), pm(x, t))
    with pytest.raises(Exception, match="do not cover"):
        ProgressiveModel(members[:2], sched, (1, 8, 8))


@pytest.mark.parametrize("case,match", [
    ("overlap", "overlap"), ("beyond_T", "outside 0-99"), ("other_schedule", "another noise schedule"),
    ("macs", "claims 1"), ("channels", "3-channel|takes 1-channel"), ("huge_T", "2..100000"),
])
def test_progressive_manifest_is_checked_against_its_members(tmp_path, case, match):
    """A manifest must not be trusted beyond what its members are (issue #15, item 5)."""
    from tdc_agent.core.errors import CheckpointError

    sched = ScheduleConfig(timesteps=100)
    nets = [_tiny(i) for i in range(2)]
    members = [Member(0, 0, 49, nets[0], thop_macs(nets[0])), Member(1, 50, 99, nets[1], thop_macs(nets[1]))]
    dirs = [save_model(tmp_path / f"m{i}", n, {"schedule": sched.model_dump()}) for i, n in enumerate(nets)]
    ProgressiveModel(members, sched, (1, 8, 8)).save(tmp_path / "pm", dirs)
    path = tmp_path / "pm" / "manifest.json"
    man = json.loads(path.read_text())
    if case == "overlap":
        man["members"][1]["t_start"] = 40
    elif case == "beyond_T":
        man["members"][1]["t_end"] = 150
    elif case == "other_schedule":  # members trained at T=100, the manifest says T=50
        man["schedule"]["timesteps"] = 50
        man["members"][1]["t_end"] = 49
        man["members"][1]["t_start"] = 25
        man["members"][0]["t_end"] = 24
    elif case == "macs":
        man["members"][0]["macs_thop"] = 1
    elif case == "channels":
        man["image_shape"] = [3, 8, 8]
    else:
        man["schedule"]["timesteps"] = 10**10
    path.write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match=match):
        ProgressiveModel.load(tmp_path / "pm")


def _wait(cond, p, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _events(path: Path, kind: str) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if f'"{kind}"' in x]


@pytest.mark.slow  # the seeded kill chains of test_faults.py cover kill-and-resume in the default suite
def test_kill_in_stage1_agent_round_and_finetune_then_resume(make_config, tmp_path, cache_env):
    cfg = make_config(
        stage1={"steps": 80, "batch_size": 32, "ckpt_every": 10, "log_every": 1},
        stage2={"steps": 30, "batch_size": 32, "ckpt_every": 5, "log_every": 1},
        sample={"steps": 5, "num": 8}, evaluation={"samples": 16},
        agent={"rounds": 3, "candidates": 2, "eval_batch_size": 32, "eval_timesteps": 3},
    )
    run = tmp_path / "r"
    args = ["run", "--config", cfg, "--run-dir", run, "-q", "--no-eval"]
    g0 = run / "stage2" / "g0"
    kills = {
        "stage 1": lambda: (run / "stage1" / "checkpoint" / "state.json").is_file(),
        "agent round": lambda: (g0 / "agent" / "group_0" / "rounds.json").is_file(),
        "fine-tune": lambda: (g0 / "finetune" / "checkpoint" / "state.json").is_file(),
    }
    for where, cond in kills.items():
        p = _cli(args)
        assert _wait(cond, p), f"never reached {where}: {p.stdout.read().decode() if p.poll() is not None else ''}"
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        assert p.returncode == -signal.SIGKILL, f"the run ended before the kill in {where}"
        if where == "agent round":
            rounds_at_kill = json.loads((g0 / "agent" / "group_0" / "rounds.json").read_text())["rounds"]
    p = _cli(args)
    assert p.wait(600) == 0, p.stdout.read().decode()
    assert (run / "progressive" / "manifest.json").is_file()
    # stage 1: every step logged once (no step trained twice into the curve)
    steps = [json.loads(x)["step"] for x in (run / "stage1" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert steps == list(range(1, 81))
    # agent: rounds finished before the kill are kept as they were, and never started again
    rounds = json.loads((g0 / "agent" / "group_0" / "rounds.json").read_text())["rounds"]
    assert rounds[: len(rounds_at_kill)] == rounds_at_kill
    starts = [(e["round"]) for e in _events(g0 / "agent" / "transcript.jsonl", "round_start")]
    for r in range(len(rounds_at_kill)):
        assert starts.count(r) == 1, f"round {r} was redone"
    # fine-tune: every step once
    ft = [json.loads(x)["step"] for x in (g0 / "finetune" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert ft == list(range(1, 31))
    log = (run / "logs" / "run.log").read_text()
    assert log.count("run start") == 4


@pytest.mark.slow
def test_embedded_default_end_to_end(tmp_path, cli, cache_env):
    """The full `make demo` pipeline on the embedded default (about 9 minutes on 2 cores)."""
    from conftest import ROOT

    code, _, err = cli("run", "--config", ROOT / "examples" / "digits.yaml", "--run-dir", tmp_path / "demo", "-q")
    assert code == 0, err
    ev = json.loads((tmp_path / "demo" / "evaluation.json").read_text())
    assert ev["tdc"]["macs_per_step"] <= 0.9 * ev["base"]["macs_per_step"]
    assert ev["tdc"]["fd"] < ev["base"]["fd"] * 2  # sanity: TDC samples are digits too
    assert ev["tdc"]["intra_fd"] > 0 and ev["base"]["intra_fd"] > 0  # 1000 samples: every digit drawn often enough


@pytest.mark.slow
def test_compare_no_prune_adds_the_table_i_row(make_config, tmp_path, cli, cache_env):
    cfg = make_config(**{**E2E, "evaluation": {"samples": 32, "compare_no_prune": True}})
    code, _, err = cli("run", "--config", cfg, "--run-dir", tmp_path / "r", "-q")
    assert code == 0, err
    ev = json.loads((tmp_path / "r" / "evaluation.json").read_text())
    assert {"base", "tdc_no_prune", "tdc"} <= set(ev)
    assert ev["tdc_no_prune"]["macs_per_step"] == ev["base"]["macs_per_step"]
    assert ev["tdc"]["macs_per_step"] < ev["tdc_no_prune"]["macs_per_step"]
    assert ev["training_macs"]["stage2"] < ev["training_macs"]["stage2_noprune"]
    assert "| TDC without pruning |" in (tmp_path / "r" / "report.md").read_text()
    assert (tmp_path / "r" / "progressive-noprune" / "manifest.json").is_file()


@pytest.mark.slow  # ~40 s; stage-1 DDP stays in the default suite (test_training.py)
def test_whole_pipeline_under_torchrun_two_processes(make_config, tmp_path, cache_env):
    """Stage 1 and every group's fine-tune run data-parallel; rank 0 alone prunes and assembles."""
    from test_training import _free_port

    cfg = make_config(stage1={"steps": 8, "batch_size": 16, "ckpt_every": 4},
                      # steps shared by need: rank 0 measures the base's losses, every rank reads them
                      stage2={"steps": 12, "steps_rule": "need", "batch_size": 16, "ckpt_every": 2, "log_every": 2},
                      agent={"rounds": 1, "candidates": 2, "eval_batch_size": 16, "eval_timesteps": 2},
                      evaluation={"samples": 16})
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "tdc_agent.cli", "run", "--config", str(cfg),
           "--run-dir", str(tmp_path / "ddp"), "-q"]
    # torchrun's agent keeps a torchelastic_* folder in the temp dir and does not remove it
    p = subprocess.run(cmd, env={**python_env(), "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "ddp"
    assert (run / "progressive" / "manifest.json").is_file() and (run / "report.md").is_file()
    metrics = [run / "stage1" / "metrics.jsonl"] + sorted(run.glob("stage2/g*/finetune/metrics.jsonl"))
    assert len(metrics) == 4  # stage 1 + 3 groups, all trained under DDP
    need = json.loads((run / "stage2" / "need.json").read_text())
    steps = [json.loads((run / "stage2" / f"g{g}" / "finetune.json").read_text())["steps"] for g in range(3)]
    assert steps.index(max(steps)) == need["needs"].index(max(need["needs"])) and abs(sum(steps) - 12) <= 3
    for m in metrics:
        sync = [json.loads(x)["ddp_param_max_diff"] for x in m.read_text().splitlines() if "ddp_param" in x]
        assert sync == [0.0], m
    # one agent ran (rank 0 alone): exactly one round per pruned group in its transcript
    for g in (0, 1):
        events = [json.loads(x).get("event") for x in
                  (run / "stage2" / f"g{g}" / "agent" / "transcript.jsonl").read_text().splitlines()]
        assert events.count("round_start") == 1 and events.count("round_end") == 1
