"""Benchmark: LLM input tokens per group, per model preset and LLM habit, at the default rounds x candidates.

The LLM is a scripted one behind a local OpenAI-protocol server (tests/prompt_reader.py): it reads
the unit table from the round message and answers as a frugal LLM does (one reply proposes the
round's candidates; the round closes once K are evaluated), so what is measured is what our prompts, tool schemas and tool
results cost. Tokens are a **tokenizer-free estimate: bytes / 4** of every request body's messages
and tool schemas (labelled so in the output). Two groups run on one memory bank, so the second
group's prompts carry a neighbour's records as in a real run.

The candidates' quick losses are computed on 2 images at 1 timestep, channels picked by magnitude
(tokens depend on neither), on digits resized to the preset's input (32x32 RGB for the CIFAR-10
presets). Presets measured earlier stay in the JSON when ``--presets`` names only some.

Behaviours (``--behaviours``; tests/llm_behaviours.py): ``batching`` (the frugal LLM above),
``never-submits+faults`` (it never calls ``submit_candidates``, behind an HTTP 500, a 429, a tool call
whose arguments are not JSON and an unknown unit: the issue-20 target, <= 100k per ddpm-cifar10
group), ``one-per-reply`` (one ``evaluate_scheme`` per reply).

Writes benchmarks/results/agent_tokens.json and .md. Not a test.

    python tools/bench_agent_tokens.py                      # every preset and behaviour, default rounds
    python tools/bench_agent_tokens.py --presets ddpm-cifar10 --behaviours never-submits+faults
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from llm_behaviours import NeverSubmits, OnePerReply  # noqa: E402
from openai_server import FakeOpenAI, tool_call  # noqa: E402
from prompt_reader import PromptReader  # noqa: E402
from tdc_agent.agent.runner import AgentPruning  # noqa: E402
from tdc_agent.planning.plan import GroupTask  # noqa: E402
from tdc_agent.core.io import atomic_write_json  # noqa: E402
from tdc_agent.core.config import AgentConfig, load_config  # noqa: E402
from tdc_agent.models.unet import build_unet, unet_config  # noqa: E402
from tdc_agent.planning.plan import Group  # noqa: E402

PRESETS = ("tiny", "ddpm-cifar10", "iddpm-cifar10")
TARGET = {"ddpm-cifar10": 100_000}  # input tokens per group (issue #13; issue #20 for never-submits+faults)
BEHAVIOURS = ("batching", "never-submits+faults", "one-per-reply")


def server(behaviour: str) -> FakeOpenAI:
    """The local OpenAI-protocol server of one behaviour (faults only for never-submits+faults)."""
    if behaviour == "batching":
        return FakeOpenAI(policy=PromptReader())
    if behaviour == "one-per-reply":
        return FakeOpenAI(policy=OnePerReply(PromptReader()))
    faults = [{"status": 500}, {"status": 429},
              {"tool_calls": [tool_call("evaluate_scheme", '{"levels": {"conv_in": 0.5')]},
              {"tool_calls": [tool_call("evaluate_scheme", {"levels": {"conv_inn": 0.5}})]}]
    return FakeOpenAI(faults, policy=NeverSubmits(PromptReader()))


def measure(preset: str, rounds: int, candidates: int, behaviour: str = "batching") -> dict[str, Any]:
    data = {} if preset == "tiny" else {"data.channels": 3, "data.image_size": 32}
    ov = {"model.preset": preset, "run.device": "cpu", "agent.rounds": rounds, "agent.candidates": candidates,
          "agent.eval_batch_size": 2, "agent.eval_timesteps": 1, "agent.base_url": None,
          "agent.criterion": "magnitude", **data}  # no gradient pass: tokens do not depend on the criterion
    groups = []
    with tempfile.TemporaryDirectory() as d, server(behaviour) as srv:
        ov["agent.base_url"] = srv.url
        cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in ov.items()])
        torch.manual_seed(0)
        base = build_unet(unet_config(preset)).eval()
        ap = AgentPruning(cfg, base, {"schedule": cfg.schedule.model_dump()}, Path(d) / "agent", "openai:scripted",
                          torch.device("cpu"), show=False, memory_path=Path(d) / "memory")
        macs = ap.pruner.base_count.thop
        tasks = [GroupTask(Group.span(0, 0, 499, 0.0, 40.0, 0.7), 0.7 * macs, [1]),
                 GroupTask(Group.span(1, 500, 999, -40.0, 0.0, 0.7), 0.7 * macs, [0])]
        for task in tasks:
            before_req, before_bytes = len(srv.requests), srv.input_bytes
            t0 = time.time()
            outcome, _ = ap.prune_group(task, model_dir=Path(d) / f"model{task.index}")
            groups.append({"group": task.index, "llm_calls": outcome.usage["llm_calls"],
                           "max_request_bytes": srv.max_request_bytes,
                           "input_tokens_reported": outcome.usage["input_tokens"],
                           "output_tokens_reported": outcome.usage["output_tokens"],
                           "input_bytes": srv.input_bytes - before_bytes,
                           "requests": len(srv.requests) - before_req, "seconds": time.time() - t0})
    per_group = max(g["input_bytes"] for g in groups) / 4
    return {"preset": preset, "behaviour": behaviour, "units": len(ap.pruner.graph.units), "rounds": rounds,
            "candidates": candidates,
            "groups": groups, "input_tokens_per_group": per_group,
            "input_tokens_per_group_mean": sum(g["input_bytes"] for g in groups) / 4 / len(groups),
            "target": TARGET.get(preset), "met": per_group <= TARGET[preset] if preset in TARGET else None}


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Agent tokens per group (estimate: bytes / 4, no tokenizer)", "",
             f"{r['rounds']} rounds x {r['candidates']} candidates, a scripted prompt-reading LLM behind a local "
             "OpenAI-protocol server; the larger of two groups sharing one memory. Default settings "
             "(agent.max_tokens_per_group 150,000).", "",
             "| behaviour | preset | units | input tokens / group | LLM calls / group | POSTs / group | target |",
             "|---|---|---|---|---|---|---|"]
    for beh in BEHAVIOURS:
        for name in PRESETS:
            x = r.get("behaviours", {}).get(beh, {}).get(name)
            if not x:
                continue
            tgt = f"≤ {x['target']:,}: {'met' if x['met'] else 'NOT met'}" if x["target"] else "-"
            lines.append(f"| {beh} | {name} | {x['units']} | {x['input_tokens_per_group']:,.0f} | "
                         f"{max(g['llm_calls'] for g in x['groups'])} | {max(g['requests'] for g in x['groups'])} | "
                         f"{tgt} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--behaviours", nargs="*", default=list(BEHAVIOURS), choices=list(BEHAVIOURS))
    ap.add_argument("--rounds", type=int, default=AgentConfig().rounds, help="default: agent.rounds' default")
    ap.add_argument("--candidates", type=int, default=AgentConfig().candidates)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args(argv)
    path = a.out / "agent_tokens.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    same = lambda v: (v["rounds"], v["candidates"]) == (a.rounds, a.candidates)  # noqa: E731
    # measurements of an older version (before rounds closed by themselves) have no behaviour: dropped
    behaviours = {b: {k: v for k, v in old.get("behaviours", {}).get(b, {}).items() if same(v)} for b in BEHAVIOURS}
    res = {"estimate": "bytes / 4 of request messages and tool schemas (tokenizer-free)", "rounds": a.rounds,
           "candidates": a.candidates, "behaviours": behaviours}
    for beh in a.behaviours:
        for p in a.presets:
            behaviours[beh][p] = measure(p, a.rounds, a.candidates, beh)
            print(f"{beh}, {p}: {behaviours[beh][p]['input_tokens_per_group']:,.0f} input tokens per group",
                  flush=True)
    # the batching figures, keyed by preset name (what the issue-13 checks read)
    res["presets"] = behaviours["batching"]
    res.update({p: {"input_tokens_per_group": v["input_tokens_per_group"]} for p, v in res["presets"].items()})
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / "agent_tokens.json", res)
    (a.out / "agent_tokens.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
