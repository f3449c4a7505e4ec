import subprocess

import numpy as np
import torch

from conftest import PYTHON, python_env
from tdc_agent.models.store import save_model
from tdc_agent.core.config import SampleConfig, ScheduleConfig
from tdc_agent.models.unet import build_unet, unet_config
from tdc_agent.workflow.sampling import sample_model


def _saved(tmp_path):
    torch.manual_seed(0)
    m = build_unet(unet_config("tiny"))
    save_model(tmp_path / "m", m, {"schedule": ScheduleConfig(timesteps=100).model_dump(), "image_shape": [1, 8, 8]})
    return tmp_path / "m"


def test_ddim_and_ddpm_deterministic_under_seed(tmp_path):
    m = _saved(tmp_path)
    for sampler in ("ddim", "ddpm"):
        cfg = SampleConfig(sampler=sampler, steps=10, num=6, batch_size=4)
        a = sample_model(m, cfg, tmp_path / f"{sampler}1", seed=3, progress=False).images
        b = sample_model(m, cfg, tmp_path / f"{sampler}2", seed=3, progress=False).images
        c = sample_model(m, cfg, tmp_path / f"{sampler}3", seed=4, progress=False).images
        assert a.shape == (6, 1, 8, 8)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_sample_cli_in_fresh_process_matches(tmp_path):
    m = _saved(tmp_path)
    cfg = SampleConfig(sampler="ddim", steps=10, num=5)
    here = sample_model(m, cfg, tmp_path / "here", seed=1, progress=False).images
    p = subprocess.run([PYTHON, "-m", "tdc_agent.cli", "sample", "--model", str(m), "--num", "5", "--steps", "10",
                        "--seed", "1", "--out", str(tmp_path / "there"), "-q", "--device", "cpu"],
                       env=python_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    there = np.load(tmp_path / "there" / "samples.npz")["images"]
    here_u8 = np.load(tmp_path / "here" / "samples.npz")["images"]
    assert np.array_equal(there, here_u8)
    assert (tmp_path / "there" / "samples.png").stat().st_size > 100
