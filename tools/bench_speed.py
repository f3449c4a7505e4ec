"""Sampling speed of the progressive model vs its base, and the training loop's overhead (`make bench-speed`).

    python tools/bench_speed.py                 # ddpm-cifar10 at 32x32 and the tiny demo model, on the CPU
    python tools/bench_speed.py --device cuda

Run it alone on an idle machine: timings beside other jobs measure the other jobs.

* **Sampling.** A base UNet (random weights: speed does not depend on them) and a progressive
  model whose members are the base pruned to the plan's group limits (N, k, budget rule as in
  ``make bench``; magnitude criterion). Both run the same DDIM trajectory on the same batch;
  repeats alternate base / progressive so drift in the machine's speed hits both alike. Reported:
  MACs ratio over that trajectory, wall-clock speed-up (median over repeats), and where the
  progressive model's time goes (members' forwards, routing, scheduler and the rest).
* **Training loop.** ``tdc_agent.training.train`` (EMA, logging, bookkeeping, no checkpoint inside
  the timed span) against a bare PyTorch AdamW loop on the same model, batches and steps.

Writes ``benchmarks/results/speed.json`` (top level: ``macs_ratio`` and ``speedup`` of the
ddpm-cifar10 model) and ``speed.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tdc_agent.core.config import ScheduleConfig, TrainConfig  # noqa: E402
from tdc_agent.core.data import ImageDataset  # noqa: E402
from tdc_agent.diffusion.process import ForwardProcess  # noqa: E402
from tdc_agent.diffusion.sampling import sample  # noqa: E402
from tdc_agent.models.unet import build_unet, denoise, unet_config  # noqa: E402
from tdc_agent.models.progressive import Member, ProgressiveModel  # noqa: E402
from tdc_agent.pruning.pruner import Pruner  # noqa: E402
from tdc_agent.diffusion.schedule import ddim_timesteps  # noqa: E402
from tdc_agent.planning.plan import make_plan  # noqa: E402
from tdc_agent.training import train  # noqa: E402

MODELS = {
    "ddpm-cifar10": {"preset": "ddpm-cifar10", "size": 32, "channels": 3, "batch": 8, "steps": 10},
    "tiny": {"preset": "tiny", "size": 8, "channels": 1, "batch": 500, "steps": 25},
}


def progressive_of(base: torch.nn.Module, schedule: ScheduleConfig, groups: int, k: float, rule: str,
                   shape: tuple[int, int, int]) -> ProgressiveModel:
    """The base pruned to every group's limit (magnitude criterion), routed by the plan."""
    plan = make_plan(schedule=schedule.name, timesteps=schedule.timesteps, n_groups=groups, k=k, shape="paper",
                     direction="noisy-hard", budget_rule=rule, snr_clip=None, beta_start=schedule.beta_start,
                     beta_end=schedule.beta_end)
    pruner = Pruner(base)
    members = []
    for g in plan.groups:
        if g.limit_fraction >= 1 - 1e-9:
            model, macs = base, pruner.base_count.thop
        else:
            r = pruner.prune(None, pruner.limit(g.limit_fraction), "magnitude")
            model, macs = r.model, r.macs.thop
        members.append(Member(g.index, g.t_start, g.t_end, model.eval(), int(macs), g.limit_fraction))
    return ProgressiveModel(members, schedule, shape)


class Timed:
    """A denoiser wrapper that adds up the time spent inside the wrapped call."""

    def __init__(self, fn: Callable, sync: Callable[[], None]):
        self.fn, self.sync, self.seconds = fn, sync, 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.sync()
        t0 = time.perf_counter()
        out = self.fn(x, t)
        self.sync()
        self.seconds += time.perf_counter() - t0
        return out


def sampling(name: str, spec: dict[str, Any], device: torch.device, repeats: int, groups: int, k: float,
             rule: str) -> dict[str, Any]:
    torch.set_grad_enabled(True)  # pruning traces with autograd (an earlier model's sampling turned it off)
    schedule = ScheduleConfig()
    shape = (spec["channels"], spec["size"], spec["size"])
    torch.manual_seed(0)
    base = build_unet(unet_config(spec["preset"], sample_size=spec["size"], channels=spec["channels"])).eval()
    pm = progressive_of(base, schedule, groups, k, rule, shape).to(device)
    torch.set_grad_enabled(False)  # pruning needs autograd (tracing); sampling does not
    base = base.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ts = ddim_timesteps(schedule.timesteps, spec["steps"]).tolist()
    from tdc_agent.models.macs import count

    base_macs = count(base).thop
    macs_pm = pm.macs_for(ts) / len(ts)
    fns = {"base": lambda x, t: denoise(base, x, t), "progressive": pm}
    run = lambda fn: sample(fn, (spec["batch"], *shape), schedule, "ddim", spec["steps"], 0, 0.0, device)  # noqa: E731
    for fn in fns.values():  # warm-up: allocator, kernels, first-call overheads
        run(fn)
    times: dict[str, list[float]] = {n: [] for n in fns}
    inside: dict[str, list[float]] = {n: [] for n in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for n in order:
            timed = Timed(fns[n], sync)
            sync()
            t0 = time.perf_counter()
            run(timed)
            sync()
            times[n].append(time.perf_counter() - t0)
            inside[n].append(timed.seconds)
    # where the progressive model's denoiser time goes: its members alone on the same inputs
    member_s = 0.0
    x = torch.randn(spec["batch"], *shape, device=device)
    for _ in range(repeats):
        for t in ts:
            m = pm.nets[int(pm.routing[t])]
            tt = torch.full((spec["batch"],), t, device=device, dtype=torch.long)
            sync()
            t0 = time.perf_counter()
            denoise(m, x, tt)
            sync()
            member_s += time.perf_counter() - t0
    member_s /= repeats
    sched_s = _scheduler_seconds(schedule, spec["steps"], (spec["batch"], *shape), device, repeats)
    med = {n: statistics.median(v) for n, v in times.items()}
    inside_med = {n: statistics.median(v) for n, v in inside.items()}
    speedup = med["base"] / med["progressive"]
    macs_ratio = macs_pm / base_macs
    return {
        "model": name, "preset": spec["preset"], "image_shape": list(shape), "batch": spec["batch"],
        "ddim_steps": spec["steps"], "repeats": repeats, "plan": {"groups": groups, "k": k, "budget_rule": rule},
        "members": [{"group": m.group, "t": [m.t_start, m.t_end], "limit_fraction": m.limit_fraction,
                     "macs_ratio": m.macs / base_macs, "channels": _widths(m.model)} for m in pm.members],
        "base_macs_per_step": base_macs, "progressive_macs_per_step": macs_pm, "macs_ratio": macs_ratio,
        "seconds": {"base": med["base"], "progressive": med["progressive"]}, "seconds_all": times,
        "speedup": speedup, "target_speedup": 0.9 / macs_ratio, "target_met": speedup >= 0.9 / macs_ratio,
        "breakdown_progressive_s": {
            "members_forward": member_s, "routing_and_call": max(0.0, inside_med["progressive"] - member_s),
            "scheduler_and_loop": max(0.0, med["progressive"] - inside_med["progressive"]),
            "scheduler_alone": sched_s},
        "breakdown_base_s": {"denoiser": inside_med["base"], "scheduler_and_loop": med["base"] - inside_med["base"]},
    }


def _widths(model: torch.nn.Module) -> list[int]:
    return [int(b.resnets[0].conv1.out_channels) for b in model.down_blocks]


def _scheduler_seconds(schedule: ScheduleConfig, steps: int, shape: tuple[int, ...], device: torch.device,
                       repeats: int) -> float:
    """The DDIM loop with a denoiser that costs nothing: what every sampling run pays regardless of model."""
    zero = torch.zeros(shape, device=device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample(lambda x, t: zero, shape, schedule, "ddim", steps, 0, 0.0, device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def training_overhead(device: torch.device, steps: int, repeats: int) -> dict[str, Any]:
    """Seconds per step of ``train()`` vs a bare AdamW loop, same model, data, batches and lr."""
    from tdc_agent.core.config import DataConfig
    from tdc_agent.core.data import load_dataset
    from tdc_agent.training.loop import step_generator

    data: ImageDataset = load_dataset(DataConfig(name="digits", split="train"))
    process = ForwardProcess(ScheduleConfig(), device)
    cfg = TrainConfig(steps=steps, batch_size=64, lr=1e-3, warmup=0, ema_decay=0.999, ema_warmup=0,
                      ckpt_every=10**9, log_every=25, amp=False)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_unet(unet_config("tiny", sample_size=8, channels=1))

    def bare() -> float:
        model = fresh().to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        t0 = time.perf_counter()
        for step in range(steps):
            g = step_generator(0, 0, step)
            idx = torch.randint(len(data), (cfg.batch_size,), generator=g)
            t = torch.randint(process.timesteps, (cfg.batch_size,), generator=g)
            x0 = data.images[idx]
            noise = torch.randn(x0.shape, generator=g)
            loss = process.loss(lambda x, tt: denoise(model, x, tt), x0.to(device), t.to(device), noise.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            float(loss.detach())
        return (time.perf_counter() - t0) / steps

    def ours() -> float:
        with tempfile.TemporaryDirectory() as d:
            res = train(fresh(), data, process, cfg, d, device=device, progress=False)
            return res.seconds / steps  # the loop's own timer: excludes the final save

    torch.set_grad_enabled(True)
    bare(), ours()  # warm-up
    b, o = [], []
    for r in range(repeats):
        for fn, acc in ([(bare, b), (ours, o)] if r % 2 == 0 else [(ours, o), (bare, b)]):
            acc.append(fn())
    bm, om = statistics.median(b), statistics.median(o)
    return {"model": "tiny", "batch": 64, "steps": steps, "repeats": repeats, "bare_s_per_step": bm,
            "train_s_per_step": om, "overhead": om / bm - 1, "target": 0.05, "target_met": om / bm - 1 <= 0.05,
            "bare_all": b, "train_all": o}


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Sampling speed and training-loop overhead", "",
             f"Machine: {r['machine']}; torch {r['torch']}, {r['threads']} threads; run alone.", "",
             "| model | batch × DDIM steps | MACs ratio | base s | progressive s | speed-up | target (0.9 / MACs ratio) |",
             "|---|---|---|---|---|---|---|"]
    for m in r["sampling"]:
        lines.append(f"| {m['model']} | {m['batch']} × {m['ddim_steps']} | {m['macs_ratio']:.3f} | "
                     f"{m['seconds']['base']:.3f} | {m['seconds']['progressive']:.3f} | {m['speedup']:.3f} × | "
                     f"{m['target_speedup']:.3f} × ({'met' if m['target_met'] else 'not met'}) |")
    lines += ["", "Where the progressive model's time goes (seconds per sampling run, medians):", "",
              "| model | members' forwards | routing + call | scheduler + loop | scheduler alone (zero denoiser) |",
              "|---|---|---|---|---|"]
    for m in r["sampling"]:
        b = m["breakdown_progressive_s"]
        lines.append(f"| {m['model']} | {b['members_forward']:.3f} | {b['routing_and_call']:.3f} | "
                     f"{b['scheduler_and_loop']:.3f} | {b['scheduler_alone']:.3f} |")
    t = r["training"]
    lines += ["", f"Training loop (tiny UNet, batch {t['batch']}, {t['steps']} steps × {t['repeats']} repeats): "
              f"`train()` {t['train_s_per_step'] * 1e3:.2f} ms/step vs bare AdamW loop {t['bare_s_per_step'] * 1e3:.2f} "
              f"ms/step: overhead {t['overhead']:+.1%} (target ≤ +5 %: {'met' if t['target_met'] else 'not met'}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--k", type=float, default=0.5)
    ap.add_argument("--budget-rule", default="mean")
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    res: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "platform": platform.platform(),
                           "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                           "sampling": []}
    for name in a.models.split(","):
        print(f"sampling: {name}", flush=True)
        res["sampling"].append(sampling(name, MODELS[name], device, a.repeats, a.groups, a.k, a.budget_rule))
    print("training loop", flush=True)
    res["training"] = training_overhead(device, a.train_steps, a.repeats)
    main_model = next((m for m in res["sampling"] if m["model"] == "ddpm-cifar10"), res["sampling"][0])
    res["macs_ratio"], res["speedup"] = main_model["macs_ratio"], main_model["speedup"]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "speed.json").write_text(json.dumps(res, indent=1))
    (a.out / "speed.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
