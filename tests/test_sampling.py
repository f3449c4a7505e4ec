import subprocess

import numpy as np
import torch

import forkserver
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
    p = forkserver.run([PYTHON, "-m", "tdc_agent.cli", "sample", "--model", str(m), "--num", "5", "--steps", "10",
                        "--seed", "1", "--out", str(tmp_path / "there"), "-q", "--device", "cpu"],
                       env=python_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    there = np.load(tmp_path / "there" / "samples.npz")["images"]
    here_u8 = np.load(tmp_path / "here" / "samples.npz")["images"]
    assert np.array_equal(there, here_u8)
    assert (tmp_path / "there" / "samples.png").stat().st_size > 100


def test_a_ddim_step_after_clipping_uses_the_eps_of_the_clipped_x0():
    """Where x0 is clipped, the step must use the ε that the clipped x0 implies: the model's own ε
    beside the clipped x0 matches neither, and that error made every model worse with more steps."""
    from tdc_agent.diffusion.process import ForwardProcess
    from tdc_agent.diffusion.sampling import denoise_loop, make_scheduler

    cfg = ScheduleConfig(timesteps=100)
    sched = make_scheduler(cfg, "ddim")
    sched.set_timesteps(2)  # timesteps [50, 0]: one step from t=50 to t=0, then the last one to x0
    t, t_prev = int(sched.timesteps[0]), int(sched.timesteps[1])
    ac = ForwardProcess(cfg).alphas_cumprod.double()
    a, a_prev = ac[t], ac[t_prev]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)).double()
    eps = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)).double() * 3  # x0 far out of range
    seen = []

    def fn(xt: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        seen.append(xt.clone())
        return eps.to(xt.dtype)

    denoise_loop(fn, x.float(), sched)
    x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
    assert (x0.abs() == 1).float().mean() > 0.3  # the case at hand: much of x0 is clipped
    consistent = (x - a.sqrt() * x0) / (1 - a).sqrt()
    expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * consistent
    assert torch.allclose(seen[1].double(), expected, atol=1e-4)
    inconsistent = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    assert not torch.allclose(seen[1].double(), inconsistent, atol=1e-2)
