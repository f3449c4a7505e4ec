"""FD of one trained digits model by DDIM steps, for DDIM variants, and its held-out ε-loss per timestep.

    python tools/bench_sampler_steps.py --model runs/digits/stage1/model            # all variants
    python tools/bench_sampler_steps.py --model M --variants old,consistent --steps 25,100

What found why every model got worse from DDIM-25 to DDIM-100 (README, "Sampler steps"): diffusers'
DDIM step with ``clip_sample`` keeps the model's ε beside the clipped x0 unless
``use_clipped_model_output=True``. Variants: ``old`` (that default), ``consistent`` (ε recomputed
from the clipped x0: what ``denoise_loop`` does now), ``noclip``, ``eta1`` (stochastic DDIM, η = 1,
clipped, consistent). Every variant samples the same initial noise. Writes
``benchmarks/results/sampler_steps.{json,md}`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tdc_agent.core.config import DataConfig  # noqa: E402
from tdc_agent.core.data import load_dataset  # noqa: E402
from tdc_agent.core.io import atomic_write_json  # noqa: E402
from tdc_agent.diffusion.process import ForwardProcess  # noqa: E402
from tdc_agent.diffusion.sampling import make_scheduler  # noqa: E402
from tdc_agent.evaluation.fd import digits_classifier, features, frechet  # noqa: E402
from tdc_agent.evaluation.quick import grid_loss  # noqa: E402
from tdc_agent.models.store import load_model  # noqa: E402
from tdc_agent.models.unet import denoise  # noqa: E402
from tdc_agent.workflow.sampling import schedule_of  # noqa: E402

VARIANTS = {  # name: (clip_sample, use_clipped_model_output, eta)
    "old": (True, False, 0.0), "consistent": (True, True, 0.0), "noclip": (False, False, 0.0),
    "eta1": (True, True, 1.0),
}


@torch.no_grad()
def sample_variant(model: torch.nn.Module, schedule, variant: str, steps: int, n: int, seed: int) -> torch.Tensor:
    clip, consistent, eta = VARIANTS[variant]
    sched = make_scheduler(schedule, "ddim")
    sched.register_to_config(clip_sample=clip)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 8, 8), generator=gen)
    for t in sched.timesteps:
        eps = denoise(model, x, torch.full((n,), int(t), dtype=torch.long))
        noise = torch.randn(x.shape, generator=gen) if eta > 0 else None
        x = sched.step(eps, t, x, eta=eta, variance_noise=noise, use_clipped_model_output=consistent).prev_sample
    return x.clamp(-1, 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a model directory (e.g. RUN/stage1/model)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", default="10,25,50,100")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    variants = [v for v in a.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; use some of {sorted(VARIANTS)}")
    model, meta = load_model(a.model, "cpu")
    model.eval()
    if tuple(meta.get("image_shape", [])) != (1, 8, 8):
        raise SystemExit(f"{a.model} is not a 1x8x8 digits model; this diagnostic scores digits FD")
    schedule = schedule_of(meta, str(a.model))
    test = load_dataset(DataConfig(name="digits", split="test")).images
    last = schedule.timesteps - 1
    grid = sorted({t for t in (0, 1, 2, 5, 10, 20, 30, 50, 100, 200, 400, 700) if t < last} | {last})
    eps = grid_loss(lambda x, t: denoise(model, x, t), test, ForwardProcess(schedule), grid, seed=a.seed)
    clf, _ = digits_classifier()
    ref = features(load_dataset(DataConfig(name="digits", split="all")).images, clf)
    fd: dict[str, dict[str, float]] = {}
    t0 = time.time()
    for v in variants:
        for steps in (int(s) for s in a.steps.split(",")):
            fd.setdefault(v, {})[str(steps)] = frechet(
                features(sample_variant(model, schedule, v, steps, a.samples, a.seed), clf), ref)
            print(f"{v} DDIM-{steps}: FD {fd[v][str(steps)]:.3f}", flush=True)
    result = {"model": str(a.model), "samples": a.samples, "seed": a.seed, "fd": fd,
              "eps_loss_per_t": eps["per_t"], "seconds": time.time() - t0}
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / "sampler_steps.json", result)
    steps_list = list(next(iter(fd.values())).keys())
    md = ["# FD by DDIM steps and sampler variant", "", f"Model `{a.model}`, {a.samples} samples, seed {a.seed}, same "
          "initial noise for every variant; FD against all 1797 digits.", "",
          "| variant | " + " | ".join(f"DDIM-{k}" for k in steps_list) + " |", "|---|" + "---|" * len(steps_list)]
    md += [f"| {v} | " + " | ".join(f"{fd[v][k]:.3f}" for k in steps_list) + " |" for v in fd]
    md += ["", "Held-out ε-loss per timestep (test split): " +
           ", ".join(f"t={t}: {x:.4f}" for t, x in eps["per_t"].items()), ""]
    (a.out / "sampler_steps.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
