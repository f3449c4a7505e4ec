import numpy as np
import pytest
import torch

from tdc_agent.config import DataConfig, ScheduleConfig
from tdc_agent.data import load_dataset
from tdc_agent.diffusion import ForwardProcess
from tdc_agent.evaluation.fd import digits_classifier, digits_fd, frechet
from tdc_agent.evaluation.quick import eval_timesteps, quick_loss
from tdc_agent.models import build_unet, unet_config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TDC_AGENT_CACHE", str(tmp_path / "cache"))


def test_frechet_basics():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    assert frechet(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet(a, a + 1.0) == pytest.approx(4.0, rel=0.05)


def test_digits_fd_separates_real_from_noise():
    clf, acc = digits_classifier()
    assert acc > 0.9
    _, acc2 = digits_classifier()  # cached
    assert acc2 == acc
    real = load_dataset(DataConfig(name="digits")).images
    idx = torch.randperm(len(real), generator=torch.Generator().manual_seed(1))[:500]
    fd_real = digits_fd(real[idx])
    fd_noise = digits_fd(torch.rand(500, 1, 8, 8) * 2 - 1)
    assert fd_real.fd < 3 * fd_real.floor + 1e-9
    assert fd_noise.fd > 20 * fd_real.fd


def test_quick_loss_is_deterministic_and_discriminates():
    torch.manual_seed(0)
    m = build_unet(unet_config("tiny"))
    data = load_dataset(DataConfig(name="digits", split="test"))
    proc = ForwardProcess(ScheduleConfig(timesteps=100))
    a = quick_loss(m, data, proc, range(10, 40), 4, 32, seed=0)
    b = quick_loss(m, data, proc, range(10, 40), 4, 32, seed=0)
    assert a == b
    assert eval_timesteps(range(10, 40), 4) == [10, 20, 29, 39]
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.0)  # predicts ε = 0: loss ≈ E[ε²] = 1
    assert quick_loss(m, data, proc, range(10, 40), 4, 32) == pytest.approx(1.0, abs=0.1)
