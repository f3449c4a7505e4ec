"""The stage-2 recipe: EMA continuity, distillation from the base, and the training-compute count."""

import json

import pytest
import torch

from tdc_agent.core.config import TrainConfig
from tdc_agent.core.data import load_dataset
from tdc_agent.core.config import DataConfig, ScheduleConfig
from tdc_agent.diffusion.process import ForwardProcess
from tdc_agent.models.unet import build_unet, unet_config
from tdc_agent.models.macs import count
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


def test_bias_corrected_ema_gives_the_starting_weights_no_share():
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.99, warmup=0, bias_correction=True)
    for s in range(23):  # fewer steps than the 100-step window: the plain EMA would keep 0.99**23 = 79 % of 1.0
        with torch.no_grad():
            model.weight.fill_(float(s + 2))
        ema.update(model, s)
    # the average of the trained weights 2..24 with weights 0.99**age, normalised; the start (1.0) has no share
    w = [0.99 ** (22 - s) for s in range(23)]
    expected = sum(wi * (s + 2) for s, wi in enumerate(w)) / sum(w)
    assert ema.shadow["weight"].flatten()[0].item() == pytest.approx(expected, rel=1e-5)
    assert ema_decay_at(0, 0.99, 0, bias_correction=True) == 0.0  # after one step: that step's weights
    assert ema_decay_at(10**5, 0.99, 0, bias_correction=True) == pytest.approx(0.99)  # long runs: the plain EMA


def test_bias_correction_and_warmup_are_refused_together():
    from tdc_agent.core.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="ema_bias_correction"):
        config_from_dict({"stage2": {"ema_warmup": 10}})  # stage 2 corrects the bias by default


def test_every_group_gets_its_floor_of_steps():
    from tdc_agent.core.config import load_config
    from tdc_agent.planning.build import build_plan
    from tdc_agent.workflow.stage2 import group_steps

    cfg = load_config(None, ["stage2.steps=750", "stage2.steps_rule=proportional"])
    plan = build_plan(cfg)
    steps = [group_steps(cfg, plan, g) for g in plan.groups]
    floor = cfg.stage2.floor_steps
    assert floor == cfg.stage2.warmup + 100  # warm-up plus the 0.99 EMA's window
    assert min(steps) >= floor and steps[0] == min(steps)  # group 0 (t 0-30) was 23 steps by size alone
    assert abs(sum(steps) - 750) <= len(steps)  # the rest shared by size: the total stays the budget
    eq = load_config(None, ["stage2.steps=50", "stage2.steps_rule=equal", "stage2.min_steps=80"])
    assert {group_steps(eq, plan, g) for g in plan.groups} == {80}


@pytest.mark.parametrize("ratio, extends", [(0.01, True), (100.0, False)])
def test_a_member_worse_than_the_base_trains_on_then_is_flagged(make_config, tmp_path, cli, ratio, extends):
    cfg = make_config(stage2={"mode": "tdc-no-prune", "steps": 4, "batch_size": 16, "ckpt_every": 2, "warmup": 1,
                              "min_steps": 3, "extra_steps": 6, "max_loss_ratio": ratio},
                      evaluation={"samples": 8, "compare_equal_compute": False},
                      agent={"eval_batch_size": 16, "eval_timesteps": 2})
    code, _, err = cli("run", "--config", cfg, "--run-dir", tmp_path / "r", "-q")
    assert code == 0, err
    run = tmp_path / "r"
    for g in range(3):
        ft = json.loads((run / "stage2" / f"g{g}" / "finetune.json").read_text())
        assert ft["planned_steps"] == 4 and ft["loss_base"] > 0
        assert ft["steps"] == (10 if extends else 4)  # chunks of min_steps (3) while within extra_steps (6)
        assert [c["steps"] for c in ft["checks"]] == ([4, 7, 10] if extends else [4])
        assert ft["worse_than_base"] is extends
        # no pruning: every forward of the check costs the base's MACs; the base once, the member
        # before training, then at every check, on 16 held-out images x 2 timesteps
        macs = count(load_model(run / "stage1" / "model")[0]).thop
        assert ft["check_forward_macs"] == pytest.approx(macs * (2 + len(ft["checks"])) * 16 * 2)
        metrics = (run / "stage2" / f"g{g}" / "finetune" / "metrics.jsonl").read_text().splitlines()
        assert json.loads(metrics[-1])["step"] == ft["steps"]  # the extension resumed the same run
    report = (run / "report.md").read_text()
    assert ("WORSE than the base" in report) is extends
    assert "| base loss | pruned loss |" in report
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["training_steps"]["stage2"] == 3 * (10 if extends else 4)  # the extra steps are counted


def test_share_steps_gives_floors_then_the_rest_by_weight():
    from tdc_agent.workflow.stage2 import share_steps

    assert share_steps(750, 125, [31, 272, 419, 278]) == [133, 193, 230, 195]  # Table I's size rule
    need = share_steps(750, 125, [15.9, 52.8, 13.1, 0.19])
    assert need[3] <= 126 and need[1] == max(need)  # nothing left to win at high noise: only the floor
    assert abs(sum(need) - 750) <= 4
    assert share_steps(100, 125, [1.0, 2.0]) == [125, 125]  # floors above the total: floors win
    assert share_steps(10, 0, [0.0, 0.0]) == [1, 1]  # no weight at all: every group still trains


def test_the_need_rule_shares_steps_by_the_bases_held_out_loss(make_config, tmp_path, cli):
    from tdc_agent.core.config import load_config
    from tdc_agent.planning.build import build_plan
    from tdc_agent.workflow.pipeline import training_macs
    from tdc_agent.workflow.rundir import RunDir
    from tdc_agent.workflow.stage2 import group_steps, stored_needs

    cfg = make_config(stage2={"mode": "tdc-no-prune", "steps": 24, "steps_rule": "need", "batch_size": 16,
                              "ckpt_every": 100, "warmup": 1, "min_steps": 2},
                      evaluation={"samples": 8, "compare_equal_compute": False},
                      agent={"eval_batch_size": 16, "eval_timesteps": 2})
    code, _, err = cli("run", "--config", cfg, "--run-dir", tmp_path / "r", "-q")
    assert code == 0, err
    run = RunDir(tmp_path / "r")
    need = json.loads((run.stage2() / "need.json").read_text())
    fts = [json.loads((run.group(g) / "finetune.json").read_text()) for g in range(3)]
    # the need is the base's held-out loss (the member check's), times the group's timesteps
    c = load_config(cfg)
    plan = build_plan(c)
    assert need["base_losses"] == pytest.approx([ft["loss_base"] for ft in fts])
    assert need["needs"] == pytest.approx([ft["loss_base"] * g.num_timesteps for ft, g in zip(fts, plan.groups)])
    steps = [ft["planned_steps"] for ft in fts]
    assert steps == [group_steps(c, plan, g, stored_needs(c, run)) for g in plan.groups]
    assert min(steps) >= 2 and steps.index(max(steps)) == need["needs"].index(max(need["needs"]))
    macs = count(load_model(run.base_model)[0]).thop
    assert need["forward_macs"] == macs * 16 * 2 * 3  # 16 images x 2 timesteps per group, 3 groups
    # the member checks reuse the need's base losses: the base's forwards count once, in need.json
    for ft in fts:
        assert ft["check_forward_macs"] == macs * (1 + len(ft["checks"])) * 16 * 2
    checks = sum(ft["check_forward_macs"] for ft in fts)
    assert training_macs(c, run, plan, macs)["proxy"] == pytest.approx(checks + need["forward_macs"])
    with pytest.raises(ValueError, match="group_needs"):
        group_steps(c, plan, plan.groups[0])
