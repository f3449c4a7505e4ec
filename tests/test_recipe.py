"""The stage-2 recipe: EMA continuity, distillation from the base, and the training-compute count."""

import json

import pytest
import torch

from tdc_agent.core.config import TrainConfig
from tdc_agent.core.data import load_dataset
from tdc_agent.core.config import DataConfig, ScheduleConfig
from tdc_agent.diffusion.process import ForwardProcess
from tdc_agent.models.unet import build_unet, unet_config
from tdc_agent.models.store import load_model
from tdc_agent.training import train
from tdc_agent.training.ema import EMA, ema_decay_at


def _tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_unet(unet_config("tiny", sample_size=8, channels=1))


def test_ema_without_warmup_keeps_the_starting_weights_share():
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9, warmup=0)
    with torch.no_grad():
        model.weight.fill_(0.0)
    for s in range(5):
        ema.update(model, s)
    # the start (1.0) keeps decay**steps of the average; the new weights (0.0) the rest
    assert ema.shadow["weight"].flatten()[0].item() == pytest.approx(0.9 ** 5, rel=1e-6)


def test_ema_warmup_reaches_the_configured_decay_at_its_end():
    assert ema_decay_at(0, 0.999, 0) == 0.999
    assert ema_decay_at(499, 0.999, 500) == pytest.approx(0.999)
    assert ema_decay_at(500, 0.999, 500) == 0.999
    early = ema_decay_at(0, 0.999, 500)
    assert early < 0.7  # a window of ~3 steps: the first weights fade fast
    # the window grows monotonically
    ds = [ema_decay_at(s, 0.999, 500) for s in range(0, 600, 50)]
    assert ds == sorted(ds)


def test_distillation_pulls_the_student_to_the_teacher(tmp_path):
    data = load_dataset(DataConfig(name="digits", split="train"))
    process = ForwardProcess(ScheduleConfig(timesteps=100))
    teacher = _tiny(1)
    student = _tiny(2)
    cfg = TrainConfig(steps=30, batch_size=16, lr=2e-3, warmup=0, ema_decay=0.0, ema_warmup=0, ckpt_every=10**6,
                      log_every=10, amp=False)

    def gap(model: torch.nn.Module) -> float:
        g = torch.Generator().manual_seed(7)
        x = torch.randn(64, 1, 8, 8, generator=g)
        t = torch.randint(0, 100, (64,), generator=g)
        with torch.no_grad():
            return float(((model(x, t).sample - teacher(x, t).sample) ** 2).mean())

    before = gap(student)
    res = train(student, data, process, cfg, tmp_path / "kd", teacher=teacher, distill=5.0, progress=False)
    tuned, _ = load_model(res.model_dir)
    plain = train(_tiny(2), data, process, cfg, tmp_path / "plain", progress=False)
    untaught, _ = load_model(plain.model_dir)
    rows = [json.loads(line) for line in res.metrics_path.read_text().splitlines()]
    kd = [r["distill_mse_avg"] for r in rows if "distill_mse_avg" in r]
    assert len(kd) == 3 and kd[-1] < kd[0]  # the logged distillation loss goes down
    assert gap(tuned) < before
    assert gap(tuned) < gap(untaught)  # closer to the teacher than the same training without it
    assert all("distill_mse_avg" not in json.loads(line) for line in plain.metrics_path.read_text().splitlines())
