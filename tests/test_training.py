"""The training loop: exact resume after SIGKILL, DDP under torchrun, NaN guard."""

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import forkserver
import torch

from conftest import PYTHON, python_env
from tdc_agent.core.io import load_tensors
from tdc_agent.core.config import load_config
from tdc_agent.core.errors import TDCError
from tdc_agent.workflow.rundir import RunDir
from tdc_agent.workflow.stage1 import train_base


def _losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "stage1" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            assert rec["step"] not in out, "a step was logged twice"
            out[rec["step"]] = rec["loss"]
    return out


def _cli(args, **kw):
    return forkserver.popen([PYTHON, "-m", "tdc_agent.cli", *map(str, args)], env=python_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_kill_and_resume_reproduces_uninterrupted_run(make_config, tmp_path):
    stage1 = {"steps": 60, "batch_size": 32, "ckpt_every": 10, "log_every": 1}
    cfg = make_config(stage1=stage1)
    a, b = tmp_path / "a", tmp_path / "b"
    p = _cli(["train-base", "--config", cfg, "--run-dir", a, "-q"])
    assert p.wait(300) == 0, p.stdout.read().decode()

    p = _cli(["train-base", "--config", cfg, "--run-dir", b, "-q"])
    state = b / "stage1" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert p.returncode == -signal.SIGKILL
    assert not (b / "stage1" / "model" / "model.safetensors").exists(), "run finished before the kill"
    killed_at = json.loads(state.read_text())["step"]
    assert 0 < killed_at < 60

    p = _cli(["train-base", "--config", cfg, "--run-dir", b, "-q"])
    assert p.wait(300) == 0, p.stdout.read().decode()
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == list(range(1, 61))
    assert la == lb, "the resumed loss curve differs from the uninterrupted one"
    wa = load_tensors(a / "stage1" / "model" / "model.safetensors")
    wb = load_tensors(b / "stage1" / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    log = (b / "logs" / "run.log").read_text()
    assert log.count("train-base start") == 2


def test_finished_training_is_not_redone(make_config, tmp_path):
    cfg = load_config(make_config(stage1={"steps": 4}))
    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    first = train_base(cfg, run, torch.device("cpu"), progress=False)
    stamp = (run.base_model / "model.safetensors").stat().st_mtime_ns
    again = train_base(cfg, run, torch.device("cpu"), progress=False)
    assert again.resumed_from == first.steps
    assert (run.base_model / "model.safetensors").stat().st_mtime_ns == stamp


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(make_config, tmp_path):
    # (non-finite data is refused before training now: an absurd learning rate is what still diverges)
    cfg = load_config(make_config(stage1={"steps": 50, "batch_size": 2, "ckpt_every": 1, "lr": 1.0e30,
                                          "warmup": 0, "grad_clip": None}))
    run = RunDir(tmp_path / "r")
    with pytest.raises(TDCError, match="loss became"):
        train_base(cfg, run, torch.device("cpu"), progress=False)
    assert not run.base_model.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_keep_identical_parameters(make_config, tmp_path):
    cfg = make_config(stage1={"steps": 8, "batch_size": 16})
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "tdc_agent.cli", "train-base", "--config", str(cfg),
           "--run-dir", str(tmp_path / "ddp"), "-q"]
    # torchrun's agent keeps a torchelastic_* folder in the temp dir and does not remove it
    p = subprocess.run(cmd, env={**python_env(), "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    recs = [json.loads(x) for x in (tmp_path / "ddp" / "stage1" / "metrics.jsonl").read_text().splitlines()]
    sync = [r["ddp_param_max_diff"] for r in recs if "ddp_param_max_diff" in r]
    assert sync == [0.0]
    assert (tmp_path / "ddp" / "stage1" / "model" / "model.safetensors").is_file()


def test_metrics_not_duplicated_when_killed_before_the_first_checkpoint(tmp_path):
    # A kill before the first checkpoint leaves metrics.jsonl but no checkpoint/: each rerun starts
    # at step 0 and used to append the same steps again (steps logged four times after three kills).
    import shutil

    from tdc_agent.core.config import DataConfig, ScheduleConfig, TrainConfig
    from tdc_agent.core.data import load_dataset
    from tdc_agent.diffusion.process import ForwardProcess
    from tdc_agent.models.unet import build_unet, unet_config
    from tdc_agent.training import train

    data = load_dataset(DataConfig(name="digits", split="train"))
    process = ForwardProcess(ScheduleConfig(timesteps=100))
    cfg = TrainConfig(steps=6, batch_size=8, lr=1e-3, warmup=0, ckpt_every=10**6, log_every=1, amp=False)
    out = tmp_path / "train"

    def attempt() -> list[dict]:
        torch.manual_seed(0)
        res = train(build_unet(unet_config("tiny", sample_size=8, channels=1)), data, process, cfg, out,
                    progress=False)
        return [json.loads(line) for line in res.metrics_path.read_text().splitlines()]

    first = attempt()
    for _ in range(2):
        # what a kill just before the (only, final) checkpoint leaves behind: the log, nothing else
        shutil.rmtree(out / "checkpoint")
        shutil.rmtree(out / "model")
        assert (out / "metrics.jsonl").is_file()
        again = attempt()
    assert [r["step"] for r in again] == list(range(1, 7))
    assert [r["loss"] for r in again] == [r["loss"] for r in first]  # the rerun is the same run
