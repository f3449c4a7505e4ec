"""Use any LangChain chat model as the pruning proxy, from Python.

    python examples/custom_llm.py                       # offline: the builtin policy
    OPENAI_API_KEY=... python examples/custom_llm.py openai   # or any BaseChatModel you construct

The agent accepts a ``BaseChatModel`` instance wherever the CLI takes ``--llm SPEC``. Here we prune
an (untrained) tiny UNet to 60 % of its MACs with 2 rounds of 2 candidates.
"""

import sys
from pathlib import Path

import torch

from tdc_agent.agent.runner import AgentPruning
from tdc_agent.planning.plan import GroupTask
from tdc_agent.planning.plan import Group
from tdc_agent.core.config import load_config
from tdc_agent.models.unet import build_unet, unet_config


def make_llm(kind: str):
    if kind == "openai":
        from langchain_openai import ChatOpenAI

        # any OpenAI-compatible server works too: ChatOpenAI(base_url="http://localhost:8000/v1", api_key="x", ...)
        return ChatOpenAI(model="gpt-4o-mini", temperature=0.2, max_retries=3)
    from tdc_agent.agent.builtin import BuiltinPolicy

    return BuiltinPolicy(seed=0)


def main() -> None:
    llm = make_llm(sys.argv[1] if len(sys.argv) > 1 else "builtin")
    cfg = load_config(None, ["agent.rounds=2", "agent.candidates=2", "agent.criterion=magnitude", "run.device=cpu"])
    torch.manual_seed(0)
    base = build_unet(unet_config("tiny")).eval()
    ap = AgentPruning(cfg, base, {"schedule": cfg.schedule.model_dump()}, Path("runs/custom-llm"), llm,
                      torch.device("cpu"))
    limit = 0.6 * ap.pruner.base_count.thop
    outcome, result = ap.prune_group(GroupTask(Group.span(0, 0, 999, -44.0, 40.0, 0.6), limit))
    print(f"best {outcome.best.id}: loss {outcome.best.loss:.4f}, {result.macs.thop:,} MACs; model in runs/custom-llm/model")


if __name__ == "__main__":
    main()
