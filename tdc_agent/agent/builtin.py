"""``builtin``: the offline default "LLM". It is **not** a language model.

It is a LangChain chat model that reads the tool results in the conversation and replies with the
same tool calls an LLM would make, chosen by a memory-guided local search:

- first it calls ``inspect_architecture``, ``group_context`` and ``query_memory``;
- with no memory for the group, it tries distinct shapes (prune all alike; prune resnet inner and
  attention channels first; prune block outputs first; a neighbouring group's best scheme);
- with memory, it mutates the best remembered schemes of the group: crossover of the two best,
  then moves of one quantum from one unit to another, weighted by MACs share, so budget drifts
  from sensitive units to insensitive ones as the losses say;
- then it evaluates the candidates and submits them.

Everything is seeded by (seed, group, round, attempt), and each round's proposals are computed from
the memory as it was when the round began (this round's own records are set aside, those already
evaluated are skipped), so a run is reproducible, and one resumed after a kill in mid-round makes
the same choices as an uninterrupted one.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Optional

import numpy as np
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult


MAX_SET_ASIDE = 8  # records of the current round the memory query over-fetches by


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}


def _key(levels: dict[str, float]) -> str:
    return json.dumps({k: round(v, 6) for k, v in sorted(levels.items()) if v < 1 - 1e-9})


def propose(units: list[dict[str, Any]], memory: dict[str, Any], n: int,
            exclude: set[str], rng: np.random.Generator) -> list[tuple[dict[str, float], str]]:
    """``n`` new schemes (levels, rationale) that are not in ``exclude``."""
    steps = {u["name"]: max(1, u["channels"] // u["quantum"]) for u in units}
    share = np.array([max(u["macs_share"], 1e-4) for u in units])
    names = [u["name"] for u in units]
    best = [r for r in memory.get("best_this_group", []) if r.get("loss") is not None]
    neigh = [r for r in memory.get("best_neighbours", []) if r.get("loss") is not None]
    out: list[tuple[dict[str, float], str]] = []

    def add(levels: dict[str, float], why: str) -> bool:
        k = _key(levels)
        if k in exclude:
            return False
        exclude.add(k)
        out.append(({n_: v for n_, v in levels.items() if v < 1 - 1e-9}, why))
        return True

    def mutate(levels: dict[str, float], moves: int) -> dict[str, float]:
        lv = {n_: levels.get(n_, 1.0) for n_ in names}
        for _ in range(moves):
            a = names[rng.choice(len(names), p=share / share.sum())]  # prune more where MACs are
            b = names[rng.integers(len(names))]
            if a == b:
                continue
            lv[a] = max(1 / steps[a], lv[a] - 1 / steps[a])
            lv[b] = min(1.0, lv[b] + 1 / steps[b])
        return lv

    if not best:
        role = {u["name"]: u["role"] for u in units}
        seeds = []
        seeds += [(r["levels"], f"best scheme of neighbouring group {r['group']}") for r in neigh[:1]]
        seeds += [
            ({}, "prune every unit alike"),
            ({n_: 0.25 for n_ in names if role[n_] in ("resnet inner", "attention")},
             "prune resnet inner and attention channels first; keep the skip-coupled block outputs"),
            ({n_: 0.5 for n_ in names if role[n_] == "block output"},
             "prune the skip-coupled block outputs first; keep resnet inner channels"),
            ({n_: 0.5 for n_ in names if role[n_] != "time embedding"}, "keep the time embedding whole"),
        ]
        for levels, why in seeds:
            if len(out) >= n:
                break
            add(levels, why)
        tries = 0
        while len(out) < n and tries < 200:
            tries += 1
            add(mutate({}, 1 + tries // 10), "random shape (all seeds already tried)")
        return out
    tries = 0
    while len(out) < n and tries < 500:
        tries += 1
        parent = best[min(int(rng.geometric(0.6)) - 1, len(best) - 1)]
        lv = dict(parent["levels"])
        why = f"mutation of {parent['id']} (loss {parent['loss']})"
        if len(best) > 1 and rng.random() < 0.3:
            other = best[1] if parent is best[0] else best[0]
            lv = {n_: (parent["levels"] if rng.random() < 0.5 else other["levels"]).get(n_, 1.0) for n_ in names}
            why = f"crossover of {parent['id']} and {other['id']}"
        add(mutate(lv, int(rng.integers(1, 4)) + tries // 50), why)
    return out


class BuiltinPolicy(BaseChatModel):
    """A deterministic, offline stand-in for an LLM that drives the same tools (not a language model)."""

    seed: int = 0

    @property
    def _llm_type(self) -> str:
        return "tdc-builtin"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": "builtin", "seed": self.seed}

    def bind_tools(self, tools: Any, **kwargs: Any) -> "BuiltinPolicy":
        return self

    def _generate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        msg = self._decide(messages)
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _decide(self, messages: list[BaseMessage]) -> AIMessage:
        results: dict[str, Any] = {}
        evaluated: list[str] = []
        fitted: list[dict[str, float]] = []  # this turn's evaluated schemes, as fitted to the limit
        rejected = 0
        attempts = 0
        submitted = False
        calls = {}
        for m in messages:
            if isinstance(m, AIMessage):
                for c in m.tool_calls:
                    calls[c["id"]] = c
            if isinstance(m, ToolMessage):
                try:
                    data = json.loads(m.content) if isinstance(m.content, str) else m.content
                except json.JSONDecodeError:
                    data = {"error": m.content}
                name = m.name or calls.get(m.tool_call_id, {}).get("name")
                if name == "evaluate_scheme":
                    attempts += 1
                    if isinstance(data, dict) and "id" in data:
                        evaluated.append(data["id"])
                        fitted.append(dict(data.get("fitted_levels") or {}))
                    else:
                        rejected += 1
                elif name == "submit_candidates" and isinstance(data, dict) and data.get("round_done"):
                    submitted = True
                else:
                    results[name] = data
        if submitted:
            return AIMessage(content="Round submitted.")
        need = {"inspect_architecture", "group_context", "query_memory"} - set(results)
        if need:
            # a few more than the 5 used, so that setting this round's own records aside still leaves 5
            args = {"inspect_architecture": {}, "group_context": {}, "query_memory": {"k": 5 + MAX_SET_ASIDE}}
            return AIMessage(content="", tool_calls=[_call(n, args[n]) for n in sorted(need)])
        ctx, arch, memory = results["group_context"], results["inspect_architecture"], results["query_memory"]
        k = int(ctx["candidates_per_round"])
        done = list(dict.fromkeys(ctx.get("evaluated_this_round", []) + evaluated))
        if len(done) >= k:
            return AIMessage(content="", tool_calls=[_call("submit_candidates", {"candidate_ids": done[:k]})])
        rng = np.random.default_rng([self.seed, int(ctx["group"]), int(ctx["round"]), attempts])
        this_round = (ctx.get("run"), ctx["group"], ctx["round"])
        before = {**memory, "best_this_group": [r for r in memory.get("best_this_group", [])
                                                if (r.get("run"), r.get("group"), r.get("round")) != this_round][:5]}
        exclude = {_key(r["levels"]) for r in before["best_this_group"]}
        # On a round's first turn: the whole round's proposals, minus those evaluated before a resume
        # (proposals are a prefix-stable sequence, so this equals what an uninterrupted run evaluates).
        skip = len(done) if attempts == 0 else 0
        if rejected and fitted:
            # Near the full budget, distinct shapes often fit to the same scheme (the tool rejects the
            # duplicate): move quanta between units of the schemes already fitted this round instead.
            exclude |= {_key(f) for f in fitted}
            here = {"best_this_group": [{"levels": f, "loss": 0.0, "id": f"this round #{i}"}
                                        for i, f in enumerate(fitted)]}
            props = propose(arch["units"], here, k - len(done), exclude, rng)
        else:
            props = propose(arch["units"], before, k - len(done) + skip, exclude, rng)[skip:]
        return AIMessage(content="", tool_calls=[
            _call("evaluate_scheme", {"levels": lv, "rationale": why}) for lv, why in props])

