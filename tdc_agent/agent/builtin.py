"""``builtin``: the offline default "LLM". It is **not** a language model.

It is a LangChain chat model that reads the tool results in the conversation and replies with the
same tool calls an LLM would make. Its policy is a search in two steps:

1. **Sensitivity.** ``unit_sensitivity`` measures, per unit, the loss rise when that unit alone is
   pruned, against the MACs it saves. Round 1 allocates pruning by it: a unit's pruning amount goes
   with (MACs saved per loss)^alpha for a few alphas, so cheap units are pruned hard and costly ones
   spared (a shape no uniform classical criterion gives). Round 1 is always these shapes, whatever
   the memory holds: the memory adds candidates later, it never displaces the policy's own best first
   guesses (a shared memory once made the search 3 % worse by replacing them).
2. **Memory transfer.** Round 1 also evaluates the best shapes of transferable records (other base
   weights or budgets of this architecture; see :class:`~.memory.Like`), each refitted to this
   group's limit, as *extra* candidates (``evaluate_scheme(transfer_from=...)``, at most
   ``agent.transfer_candidates`` per group): they take none of the round's K slots, and evolution
   never breeds from them, so the policy's own lineage is the same with or without a shared memory
   and its best can only be better with one. Round 2 first tries the best shape of this run's
   neighbouring group.
3. **Evolution.** Later rounds breed from the best comparable records of the memory (same base, eval
   set, timesteps and budget), the transferred ones set aside: tournament-picked parents, crossover
   of the two best, and mutations that move quanta from units that cost loss to units that cost
   little (sampled by the sensitivity), with smaller steps in later rounds.

The uniform shape (what the classical criteria prune) is only a fallback candidate.

Everything is seeded by (``run.seed``, group, round, attempt), and each round's proposals are computed from
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


# How sharply the first shapes follow the sensitivity. alpha 1 is what a quadratic loss-vs-pruning
# model per unit would choose; measured losses rise faster than that (interactions), so flatter first.
ALPHAS = (0.5, 0.25, 1.0)
MAX_SET_ASIDE = 8  # records of the current round the memory query over-fetches by
# transferred records the query over-fetches by too (they are set aside as parents, so the parents are
# those of a run without memory); agent.transfer_candidates is capped at this
MAX_TRANSFERRED = 4


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}


def _key(levels: dict[str, float]) -> str:
    return json.dumps({k: round(v, 6) for k, v in sorted(levels.items()) if v < 1 - 1e-9})


def sensitivity_weights(units: list[dict[str, Any]], sensitivity: dict[str, Any] | None) -> dict[str, float]:
    """Per unit, MACs saved per unit of loss rise (higher: cheaper to prune), in (0, 1]; units that
    were not measured (cannot be pruned further) get 0. Falls back to MACs share without a measurement."""
    if not sensitivity or not sensitivity.get("cheapest_first"):
        share = {u["name"]: max(float(u["macs_share"]), 1e-4) for u in units}
        top = max(share.values())
        return {n: v / top for n, v in share.items()}
    rates = {x["name"]: float(x["rise_per_macs"]) for x in sensitivity["cheapest_first"]}
    positive = sorted(r for r in rates.values() if r > 0)
    floor = 0.05 * positive[len(positive) // 2] if positive else 1.0  # a rise below noise is not "free"
    inv = {n: 1.0 / max(r, floor) for n, r in rates.items()}
    top = max(inv.values())
    return {u["name"]: inv.get(u["name"], 0.0) / top for u in units}


def shape_from(weights: dict[str, float], alpha: float, depth: float = 0.6) -> dict[str, float]:
    """Keep levels whose pruning amounts go with ``weights ** alpha`` (the fit scales them to the limit)."""
    return {n: 1.0 - depth * w ** alpha for n, w in weights.items() if w > 0}


def propose(units: list[dict[str, Any]], memory: dict[str, Any], n: int, exclude: set[str],
            rng: np.random.Generator, sensitivity: dict[str, Any] | None = None,
            round_: int = 0, breed: bool | None = None) -> list[tuple[dict[str, float], str]]:
    """``n`` new schemes (levels, rationale) that are not in ``exclude``, for round ``round_`` (0-based):
    round 0 the sensitivity shapes (never memory), round 1 the neighbouring group's best then evolution, later
    rounds evolution. ``memory["best_this_group"]`` must not hold transferred records (they are not
    parents; see the module docstring). ``breed=True`` breeds from ``memory["best_this_group"]`` in any round (the
    fallback that mutates a round's own fits when shapes keep fitting to the same scheme)."""
    steps = {u["name"]: max(1, u["channels"] // u["quantum"]) for u in units}
    names = [u["name"] for u in units]
    cheap = sensitivity_weights(units, sensitivity)
    p_prune = np.array([cheap[n_] + 1e-3 for n_ in names])  # prune more where loss per MACs is low
    p_keep = np.array([1.0 - cheap[n_] + 1e-3 for n_ in names])  # give back where it is high
    best = [r for r in memory.get("best_this_group", []) if r.get("loss") is not None]
    seeds = [(r["levels"], f"best shape of neighbouring group {r['group']} (this run)")
             for r in memory.get("best_neighbours", [])[:1]]
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
            a = names[rng.choice(len(names), p=p_prune / p_prune.sum())]
            b = names[rng.choice(len(names), p=p_keep / p_keep.sum())]
            if a == b:
                continue
            lv[a] = max(1 / steps[a], lv[a] - 1 / steps[a])
            lv[b] = min(1.0, lv[b] + 1 / steps[b])
        return lv

    if not best or (round_ == 0 and not breed):
        # the policy's own first guesses, the same with a fresh or a shared memory
        first = [(shape_from(cheap, a), f"pruning amount ~ (MACs saved per loss)^{a:g}") for a in ALPHAS]
        first += [({}, "prune every unit alike (the classical criteria's shape)")]
        for levels, why in first:
            if len(out) >= n:
                break
            add(levels, why)
        tries = 0
        while len(out) < n and tries < 200:
            tries += 1
            add(mutate(shape_from(cheap, 1.0), 1 + tries // 10), "sensitivity shape, perturbed")
        return out
    if round_ == 1:
        # the neighbouring group's best, tried once, with at least one slot kept for the search
        for levels, why in seeds[: max(1, n - 1)]:
            add(levels, why)
    # later rounds: evolution over the comparable records
    scale = max(1, 3 - round_ // 2)  # smaller steps as the search narrows
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
        add(mutate(lv, int(rng.integers(1, scale + 1)) + tries // 50), why)
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
        tried: set[str] = set()  # proposals sent this round's turn so far: not proposed again
        attempts = 0
        transfers_sent = False
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
                    args = (calls.get(m.tool_call_id) or {}).get("args", {})
                    if isinstance(args, dict) and args.get("transfer_from"):
                        transfers_sent = True  # extra candidates: they leave the policy's own choices alone
                        continue
                    attempts += 1
                    sent = args.get("levels") if isinstance(args, dict) else None
                    if isinstance(sent, dict):  # in a shared conversation, other replies may be malformed
                        tried.add(_key(sent))
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
        need = {"inspect_architecture", "group_context", "query_memory", "unit_sensitivity"} - set(results)
        if need:
            # a few more than the 5 used, so that setting this round's own records aside still leaves 5
            args = {"inspect_architecture": {}, "group_context": {},
                    "query_memory": {"k": 5 + MAX_SET_ASIDE + MAX_TRANSFERRED},
                    "unit_sensitivity": {}}
            return AIMessage(content="", tool_calls=[_call(n, args[n]) for n in sorted(need)])
        ctx, arch, memory = results["group_context"], results["inspect_architecture"], results["query_memory"]
        sens = results["unit_sensitivity"] if "error" not in results["unit_sensitivity"] else None
        k = int(ctx["candidates_per_round"])
        done = list(dict.fromkeys(ctx.get("evaluated_this_round", []) + evaluated))
        if len(done) >= k:
            return AIMessage(content="", tool_calls=[_call("submit_candidates", {"candidate_ids": done[:k]})])
        rng = np.random.default_rng([self.seed, int(ctx["group"]), int(ctx["round"]), attempts])
        this_round = (ctx.get("run"), ctx["group"], ctx["round"])
        before = {**memory, "best_this_group": [r for r in memory.get("best_this_group", [])
                                                if (r.get("run"), r.get("group"), r.get("round")) != this_round
                                                and not r.get("transferred_from")][:5]}
        # round 1 is the policy's own, whatever the memory holds (not even its records are skipped)
        exclude = ({_key(r["levels"]) for r in before["best_this_group"]} if int(ctx["round"]) > 0 else set()) | tried
        # On a round's first turn: the whole round's proposals, minus those evaluated before a resume
        # (proposals are a prefix-stable sequence, so this equals what an uninterrupted run evaluates).
        skip = len(done) if attempts == 0 else 0
        if rejected:
            # Near the full budget, distinct shapes often fit to the same scheme (the tool rejects the
            # duplicate, or a shape that cannot meet the limit): walk shapes that prune one unit only,
            # cheapest first (each fits to a scheme of its own), skipping those tried this turn.
            order = ([x["name"] for x in sens["cheapest_first"]] if sens else
                     [u["name"] for u in sorted(arch["units"], key=lambda u: -u["macs_share"])])
            props = [({n_: 0.5}, f"prune {n_} only (shapes near the full budget fit alike)") for n_ in order
                     if _key({n_: 0.5}) not in tried | exclude][: k - len(done)]
            if len(props) < k - len(done) and fitted:  # every single unit tried: mutate this round's fits
                exclude |= {_key(f) for f in fitted} | {_key(lv) for lv, _ in props}
                here = {"best_this_group": [{"levels": f, "loss": 0.0, "id": f"this round #{i}"}
                                            for i, f in enumerate(fitted)]}
                props += propose(arch["units"], here, k - len(done) - len(props), exclude, rng, sens,
                                 int(ctx["round"]), breed=True)
        else:
            props = propose(arch["units"], before, k - len(done) + skip, exclude, rng, sens,
                            int(ctx["round"]))[skip:]
        calls_out = [_call("evaluate_scheme", {"levels": lv, "rationale": why}) for lv, why in props]
        if int(ctx["round"]) == 0 and not transfers_sent:
            # memory transfer, beside round 1's own shapes (once: a rejected one is not sent again)
            used = set(ctx.get("transferred_from", []))
            offer = [r for r in memory.get("other_bases", []) if r["id"] not in used]
            calls_out += [_call("evaluate_scheme", {
                "levels": r["levels"], "transfer_from": r["id"],
                "rationale": f"best shape of run {r['run']}, group {r['group']} (another base or budget, limit "
                             f"{r.get('limit_fraction')}): memory transfer"})
                for r in offer[: int(ctx.get("transfer_slots_left", 0))]]
        return AIMessage(content="", tool_calls=calls_out)

