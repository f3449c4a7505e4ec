"""Benchmark: pruning-engine speed and MACs counts on ddpm-cifar10 (or any preset).

Writes benchmarks/results/pruning_<preset>.json and .md. Not a test: run it by hand or via
`make bench-pruning`. Each figure is mean ± std over --repeats candidates built in one process.

    python tools/bench_pruning.py --preset ddpm-cifar10 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from tdc_agent.models.unet import build_unet, unet_config
from tdc_agent.pruning.pruner import Pruner
from tdc_agent.pruning.scheme import PruningScheme


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ddpm-cifar10")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fractions", default="0.5,0.7,0.9")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    base = build_unet(unet_config(args.preset))
    pruner = Pruner(base)
    pruner.scores("magnitude")
    setup_s = time.perf_counter() - t0
    rows = []
    gen = torch.Generator().manual_seed(0)
    for f in [float(x) for x in args.fractions.split(",")]:
        times, results = [], []
        for r in range(args.repeats):
            # a different random shape each repeat, like an agent's candidates
            levels = {u.name: u.levels[int(torch.randint(len(u.levels), (1,), generator=gen))]
                      for u in pruner.graph.units if torch.rand(1, generator=gen) < 0.5}
            t = time.perf_counter()
            res = pruner.prune(PruningScheme(levels=levels), pruner.limit(f))
            times.append(time.perf_counter() - t)
            results.append(res)
        last = results[-1]
        rows.append({
            "limit_fraction": f,
            "seconds_mean": statistics.mean(times),
            "seconds_std": statistics.stdev(times) if len(times) > 1 else 0.0,
            "achieved_fraction_mean": statistics.mean(r.fraction for r in results),
            "fill_min": min(r.macs.thop / r.limit_macs for r in results),
            "macs_thop": last.macs.thop,
            "macs_op_level": last.macs.op_level,
            "params": last.macs.params,
        })
    bc = pruner.base_count
    out = {
        "preset": args.preset,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}",
        "torch": torch.__version__,
        "setup_seconds": setup_s,
        "units": len(pruner.graph.units),
        "base": {"macs_thop": bc.thop, "macs_op_level": bc.op_level, "params": bc.params},
        "candidates": rows,
        "goal_seconds_per_candidate": 10.0,
    }
    d = Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"pruning_{args.preset}.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [f"### Pruning engine on `{args.preset}` ({out['machine']}, torch {torch.__version__})", "",
          f"Setup (dependency analysis, base count, magnitude scores): {setup_s:.2f} s; {out['units']} units.", "",
          "| model | limit | build+fit+count (s) | achieved MACs / base | min fill of limit | MACs thop | MACs op-level | params |",
          "|---|---|---|---|---|---|---|---|",
          f"| base | - | - | 1.000 | - | {bc.thop / 1e9:.3f} G | {bc.op_level / 1e9:.3f} G | {bc.params / 1e6:.2f} M |"]
    for r in rows:
        md.append(f"| pruned | {r['limit_fraction']:.1f} | {r['seconds_mean']:.2f} ± {r['seconds_std']:.2f} | "
                  f"{r['achieved_fraction_mean']:.3f} | {r['fill_min']:.3f} | {r['macs_thop'] / 1e9:.3f} G | "
                  f"{r['macs_op_level'] / 1e9:.3f} G | {r['params'] / 1e6:.2f} M |")
    (d / f"pruning_{args.preset}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
