"""Benchmark: memory-bank query latency at N stored schemes, and the agent's overhead per round.

Writes benchmarks/results/agent.json and agent.md. Not a test.

    python tools/bench_agent.py --records 10000 --queries 200
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tdc_agent.agent.memory import MemoryBank, MemoryRecord, architecture_hash
from tdc_agent.agent.runner import AgentPruning
from tdc_agent.planning.plan import GroupTask
from tdc_agent.planning.plan import Group
from tdc_agent.core.config import load_config
from tdc_agent.models.unet import build_unet, unet_config
from tdc_agent.pruning.units import analyse


def bench_memory(n: int, queries: int, preset: str) -> dict:
    graph = analyse(build_unet(unet_config(preset)))
    names = graph.names
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        bank = MemoryBank(names, architecture_hash(names, {"preset": preset}), path=d)
        t0 = time.perf_counter()
        batch = 500
        for start in range(0, n, batch):
            recs = []
            for i in range(start, min(n, start + batch)):
                lv = {u.name: float(rng.integers(1, u.n_levels + 1)) / u.n_levels for u in graph.units if rng.random() < 0.5}
                recs.append(MemoryRecord(id=f"r{i}", run_id="bench", group=int(rng.integers(10)), t_start=0, t_end=99,
                                         limit_macs=1.0, macs=1.0, loss=float(rng.random()), levels=lv))
            bank.collection.upsert(ids=[r.id for r in recs], documents=[json.dumps(r.levels) for r in recs],
                                   metadatas=[r.metadata() for r in recs])
        insert_s = time.perf_counter() - t0
        bank.refresh()
        sim, sim_group, best = [], [], []
        for q in range(queries):
            lv = {u.name: 0.5 for u in graph.units if rng.random() < 0.5}
            t = time.perf_counter()
            bank.similar(lv, k=5)  # what the agent's query_memory tool runs
            sim.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            bank.similar(lv, k=5, group=int(q % 10))
            sim_group.append((time.perf_counter() - t) * 1e3)
            if q < 50:
                t = time.perf_counter()
                bank.best(int(q % 10), 5)
                best.append((time.perf_counter() - t) * 1e3)
    return {"records": n, "units": len(names), "insert_seconds": insert_s,
            "similar_query_ms_mean": statistics.mean(sim), "similar_query_ms_p95": float(np.percentile(sim, 95)),
            "similar_in_group_query_ms_mean": statistics.mean(sim_group),
            "similar_in_group_query_ms_p95": float(np.percentile(sim_group, 95)),
            "best_query_ms_mean": statistics.mean(best), "goal_ms": 10.0}


def bench_overhead(rounds: int, candidates: int) -> dict:
    cfg = load_config(None, [f"agent.rounds={rounds}", f"agent.candidates={candidates}", "run.device=cpu"])
    torch.manual_seed(0)
    base = build_unet(unet_config("tiny")).eval()
    with tempfile.TemporaryDirectory() as d:
        ap = AgentPruning(cfg, base, {"schedule": cfg.schedule.model_dump()}, Path(d), "builtin", torch.device("cpu"),
                          show=False)
        limit = 0.7 * ap.pruner.base_count.thop
        outcome, _ = ap.prune_group(GroupTask(Group.span(1, 100, 400, -5.0, 10.0, 0.7), limit))
        s = outcome.extra["summary"]["seconds"]
    return {"rounds": rounds, "candidates": candidates, "total_seconds": s["total"],
            "build_and_evaluate_seconds": s["build_and_evaluate"], "agent_overhead_seconds": s["agent_overhead"],
            "agent_overhead_per_round_seconds": s["agent_overhead"] / rounds,
            "overhead_share": s["agent_overhead"] / s["total"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--preset", default="ddpm-cifar10")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    mem = bench_memory(args.records, args.queries, args.preset)
    ovh = bench_overhead(args.rounds, args.candidates)
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads"
    out = {"machine": machine, "memory": mem, "agent_overhead": ovh}
    d = Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "agent.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [f"### Agent and memory bank ({machine})", "",
          "| what | figure | goal |", "|---|---|---|",
          f"| memory query, {mem['records']:,} schemes of {mem['units']} units (`{args.preset}`), 5 nearest (the agent's query) | "
          f"{mem['similar_query_ms_mean']:.2f} ms mean, {mem['similar_query_ms_p95']:.2f} ms p95 | ≤ 10 ms |",
          f"| same, filtered to one group (Chroma metadata filter) | {mem['similar_in_group_query_ms_mean']:.2f} ms mean, "
          f"{mem['similar_in_group_query_ms_p95']:.2f} ms p95 | ≤ 10 ms |",
          f"| best-5 of a group from {mem['records']:,} schemes | {mem['best_query_ms_mean']:.1f} ms mean | - |",
          f"| agent overhead (builtin LLM, prompts, tools, memory, transcript) per round, tiny UNet, K={ovh['candidates']} | "
          f"{ovh['agent_overhead_per_round_seconds']:.3f} s ({ovh['overhead_share']:.1%} of the group's agent time) | - |",
          f"| building + evaluating candidates, {ovh['rounds']} rounds | {ovh['build_and_evaluate_seconds']:.1f} s | - |"]
    (d / "agent.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
