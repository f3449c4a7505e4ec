"""The agent under real LLM behaviour (issue 20): rounds that close once they have their candidates,
a token budget that binds, bounded LLM output, a shared memory that never displaces the builtin's
own first guesses, a call cap that is reached and named, and ``run.seed`` reaching the builtin.

As in tests/test_agent.py, the LLM is replaced only at its network boundary: a local server speaking
OpenAI Chat Completions (tests/openai_server.py) whose replies come from a scripted policy wrapped
in the habit under test (tests/llm_behaviours.py), with faults injected in front of it.
"""

from __future__ import annotations

import json

import pytest
import torch

from llm_behaviours import NeverSubmits, OnePerReply
from openai_server import FakeOpenAI, tool_call
from prompt_reader import PromptReader
from test_agent import AGENT, _check_valid, _events, _round_prompts, _setup, run_agent
from tdc_agent.models.unet import build_unet, unet_config
from tdc_agent.agent.runner import AgentPruning
from tdc_agent.planning.plan import GroupTask
from tdc_agent.agent.transcript import read_transcript
from tdc_agent.core.config import AgentConfig
from tdc_agent.core.errors import TDCError
from tdc_agent.planning.plan import Group

KEY = "test-key-not-secret-0000"
# the faults the issue names, in front of the model: HTTP 500 and 429 (retried by the client), a tool
# call whose arguments are not JSON (the attempt is retried with a note), and an unknown unit (the
# tool answers with an error the model acts on)
FAULTS = [{"status": 500}, {"status": 429},
          {"tool_calls": [tool_call("evaluate_scheme", '{"levels": {"conv_in": 0.5')]},
          {"tool_calls": [tool_call("evaluate_scheme", {"levels": {"conv_inn": 0.5}})]}]


# --- 1. a round closes when it has its candidates ----------------------------------------------------

def test_never_submitting_model_with_faults_at_default_settings(tmp_path, make_config, cli, monkeypatch):
    """A model that evaluates but never calls submit_candidates, behind 500/429/bad-JSON/unknown-unit
    faults, at the paper's 5 rounds (the README's token figure) x the default 3 candidates and default
    caps: the run ends (exit 0), every round closed by our code, in one call per round plus what the
    faults cost; no traceback."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    agent = {k: v for k, v in AGENT.items() if k not in ("rounds", "candidates", "max_llm_calls_per_round",
                                                           "max_round_retries")}
    agent["rounds"] = 5
    cfg = make_config(agent=agent)
    model = NeverSubmits(PromptReader())
    with FakeOpenAI([dict(f) for f in FAULTS], policy=model) as srv:
        code, out, err = cli("prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config",
                             cfg, "--llm", "openai:fake-model", "--llm-base-url", srv.url, "--out", tmp_path / "r")
    assert code == 0, err
    assert "Traceback" not in out + err
    summary = json.loads(next((tmp_path / "r").glob("group_*/agent.json")).read_text())
    assert len(summary["rounds"]) == 5 and all(len(r["candidates"]) == 3 for r in summary["rounds"])
    events = read_transcript(tmp_path / "r" / "transcript.jsonl")
    closed = [e for e in events if e["event"] == "round_closed"]
    assert len(closed) == 5 and all(e["by"] == "tdc-agent" for e in closed)
    assert "closed by tdc-agent" in " ".join(err.split()), "the terminal says who closed the round"
    # the model never got to the point of (not) submitting: no "already has 3 candidates" loop
    assert model.would_submit == 0
    assert not any("already has" in str(e.get("output")) for e in events if e["event"] == "tool_result")
    # 5 rounds x 1 reply; the bad-JSON attempt and the unknown unit cost one more reply each; the
    # client retried the 500 and the 429 (2 more POSTs)
    assert summary["usage"]["llm_calls"] == 7
    assert len(srv.requests) == 9
    tokens = srv.input_bytes / 4
    assert summary["usage"]["input_tokens"] == pytest.approx(tokens, rel=0.25)
    assert tokens < 25_000, tokens  # tiny preset; the README quotes this figure
    assert summary["usage"]["max_tokens_per_group"] == AgentConfig().max_tokens_per_group == 150_000
    print(f"never-submitting model, faults, tiny, 5x3: {len(srv.requests)} POSTs, {tokens:,.0f} input tokens")


def test_one_scheme_per_reply_closes_at_k(tmp_path, monkeypatch):
    """A model that evaluates one scheme per reply: K replies per round, the round closes at the K-th
    evaluation (no reply is spent on submitting)."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI(policy=OnePerReply(PromptReader())) as srv:
        outcome, result, ap = run_agent(tmp_path, "openai:fake-model", base_url=srv.url, rounds=2, candidates=3)
    _check_valid(outcome, result, ap)
    assert outcome.usage["llm_calls"] == 2 * 3 == len(srv.requests)
    assert all(len([c for c in m.get("tool_calls", []) if c["function"]["name"] == "evaluate_scheme"]) <= 1
               for r in srv.requests for m in r["messages"] if m["role"] == "assistant")
    assert len(_events(ap, "round_closed")) == 2 and not _events(ap, "round_retry")
    assert all(s.closed_by == "tdc-agent" for s in outcome.rounds)


# --- the token budget ----------------------------------------------------------------------------------

def test_token_budget_flag_is_named_and_binds_before_the_request(tmp_path, make_config, cli, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cfg = make_config(agent=AGENT)
    with FakeOpenAI(policy=NeverSubmits(PromptReader())) as srv:
        code, out, err = cli("prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config",
                             cfg, "--llm", "openai:fake-model", "--llm-base-url", srv.url, "--out", tmp_path / "r",
                             "--max-tokens-per-group", "3000")
    assert code == 2 and "Traceback" not in err
    assert "agent.max_tokens_per_group=3,000" in err and "--max-tokens-per-group" in err
    # checked against what the next request would add: the requests sent stay within the budget
    assert 0 < srv.input_bytes / 4 <= 3000
    state = json.loads(next((tmp_path / "r").glob("group_*/rounds.json")).read_text())
    assert state["usage"]["input_tokens"] <= 3000


def test_run_takes_the_token_budget_flag(tmp_path, make_config, cli, monkeypatch):
    """``run --max-tokens-per-group`` reaches the agent of every group (here: too small for one call)."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI(policy=PromptReader()) as srv:
        cfg = make_config(agent={**AGENT, "llm": "openai:fake-model", "base_url": srv.url})
        code, out, err = cli("run", "--config", cfg, "--run-dir", tmp_path / "run", "-q", "--max-tokens-per-group", "50")
    assert code == 2 and "Traceback" not in err
    assert "agent.max_tokens_per_group=50" in err and "rerun" in err and srv.requests == []


@pytest.mark.parametrize("usage", [5000, None])
def test_tokens_come_from_the_provider_else_an_estimate(tmp_path, monkeypatch, usage):
    """A provider's own usage figures are what is counted (and capped); without them, an estimate
    (bytes / 4 of each request) is counted, and the summary says how many calls were estimated."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI(policy=PromptReader(), usage=usage) as srv:
        outcome, result, ap = run_agent(tmp_path, "openai:fake-model", base_url=srv.url)
    _check_valid(outcome, result, ap)
    u = outcome.usage
    if usage:
        assert u["input_tokens"] == 5000 * u["llm_calls"] and u["tokens_estimated"] == 0
    else:
        assert u["tokens_estimated"] == u["llm_calls"] == len(srv.requests)
        assert u["input_tokens"] == pytest.approx(srv.input_bytes / 4, rel=0.25)
    with FakeOpenAI(policy=PromptReader(), usage=5000) as srv:
        # the cap says what stopped the group and how to go on (it is raised by our usage meter)
        with pytest.raises(TDCError, match=r"agent.max_tokens_per_group=6,000.*raise the cap and rerun"):
            run_agent(tmp_path, "openai:fake-model", out="capped", base_url=srv.url, max_tokens_per_group=6000)
    # the provider's 5000 (not the ~2.5k the request measures) plus the next request's estimate exceed it
    assert len(srv.requests) == 1


# --- 2. LLM output is bounded ------------------------------------------------------------------------

def test_runaway_replies_are_cut_where_stored_logged_and_resent(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    rationale, text, name = "r" * 1_000_000, "t" * 3_000_000, "u" * 1_000_000
    script = [{"content": text, "tool_calls": [tool_call("evaluate_scheme", {"levels": {"conv_in": 0.5},
                                                                             "rationale": rationale})]},
              {"tool_calls": [tool_call("evaluate_scheme", {"levels": {name: 0.5}})]}]
    with FakeOpenAI(script) as srv:
        # no token budget: the 4 MB reply alone reports ~1M output tokens (the budget would end the group)
        outcome, result, ap = run_agent(tmp_path, "openai:fake-model", base_url=srv.url, rounds=1,
                                        max_tokens_per_group=None)
    _check_valid(outcome, result, ap)
    rec = next(r for r in ap.memory.all() if r.candidate == 0)
    assert len(rec.rationale) <= 400 and rec.rationale.endswith(" chars]") and "[cut " in rec.rationale
    # every later request re-sends the conversation: bounded, and the cut is visible in it
    later = [json.dumps(r["messages"]) for r in srv.requests[1:]]
    assert later and all(len(x) < 60_000 for x in later), [len(x) for x in later]
    assert "[cut " in later[0]
    # the unknown unit's error quotes a cut name, not a megabyte
    errors = [e["output"] for e in _events(ap, "tool_result") if "unknown unit" in str(e["output"])]
    assert errors and all(len(x) < 3_000 for x in errors)
    assert _events(ap, "reply_cut")
    size = ap.transcript.path.stat().st_size
    assert size < 400_000, size  # the 4 MB of replies are cut at every sink (was 9 MB for 3 MB replies)


# --- 3. a shared memory never makes the agent worse ----------------------------------------------------

def test_shared_memory_adds_candidates_never_displaces_round_one(tmp_path):
    """With a memory holding other runs' records (same base and budget, and a nearby budget), the
    builtin's round 1 proposes exactly what it proposes with a fresh memory; other budgets' records
    are never ranked as like-for-like; the memory's shapes come in round 2."""
    shared = tmp_path / "bank"
    cfg, base, task = _setup(tmp_path, memory_dir=str(shared), rounds=2, candidates=3)
    meta = {"schedule": cfg.schedule.model_dump()}
    # other runs: the same budget, and a budget 0.02 looser (within the 0.05 shape band)
    AgentPruning(cfg, base, meta, tmp_path / "donor", "builtin", torch.device("cpu"), show=False).prune_group(task)
    near = GroupTask(Group.span(1, 30, 60, -2.0, 10.0, 0.62), 0.62 * task.limit_macs / 0.6, [0, 2])
    AgentPruning(cfg, base, meta, tmp_path / "looser", "builtin", torch.device("cpu"), show=False).prune_group(near)
    warm = AgentPruning(cfg, base, meta, tmp_path / "warm", "builtin", torch.device("cpu"), show=False)
    warm.prune_group(task)
    fresh_cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={"memory_dir": None})})
    fresh = AgentPruning(fresh_cfg, base, meta, tmp_path / "fresh", "builtin", torch.device("cpu"), show=False)
    fresh.prune_group(task)

    def round_levels(ap: AgentPruning, r: int) -> list[str]:
        recs = sorted(ap.memory.all({"$and": [{"run_id": ap.run_id}, {"round": r}]}), key=lambda x: x.candidate)
        return [json.dumps(x.levels, sort_keys=True) for x in recs if not x.transferred_from]

    assert len(warm.memory.all()) > len(fresh.memory.all())
    assert round_levels(warm, 0) == round_levels(fresh, 0)
    # the prompt ranks only same-budget records as comparable; the looser budget's are shapes
    prompt = _round_prompts(warm)[0]
    ranked = prompt.split("Best schemes for this group so far:")[1].split("Best schemes of this run's")[0]
    shapes = prompt.split("at other MACs limits")[1]
    assert "limit 0.600" in ranked and "limit 0.620" not in ranked
    assert "limit 0.620" in shapes
    # round 1 of the warm run also tried the looser budget's shapes, as extra candidates
    transfer = [r for r in warm.memory.all({"run_id": warm.run_id}) if r.transferred_from]
    assert transfer and {r.round for r in transfer} == {0}
    assert {r.transferred_from.split(":")[0] for r in transfer} == {json.loads(
        (tmp_path / "looser" / "group_1" / "agent.json").read_text())["run_id"]}


def _own_lineage(ap: AgentPruning) -> list[tuple[int, str]]:
    recs = sorted(ap.memory.all({"run_id": ap.run_id}), key=lambda x: (x.round, x.candidate))
    return [(x.round, json.dumps(x.levels, sort_keys=True)) for x in recs if not x.transferred_from]


def test_memory_of_another_base_never_makes_the_builtin_worse(tmp_path):
    """With the memory of a run on other base weights, the builtin evaluates that run's best shapes as
    extra candidates of round 1 and leaves its own search as it is: every round's own proposals (the
    evolution rounds included) equal those of a run with a fresh memory, so the best val loss is the
    fresh run's or lower. Each round still has K candidates of its own."""
    # 2 rounds: round 2 is already evolution (bred from round 1's records), which a memory could derail
    cfg, base, task = _setup(tmp_path, memory_dir=str(tmp_path / "bank"), rounds=2, candidates=3)
    meta = {"schedule": cfg.schedule.model_dump()}
    AgentPruning(cfg, base, meta, tmp_path / "donor", "builtin", torch.device("cpu"), show=False).prune_group(task)
    torch.manual_seed(1)
    other = build_unet(unet_config("tiny")).eval()
    warm = AgentPruning(cfg, other, meta, tmp_path / "warm", "builtin", torch.device("cpu"), show=False)
    out_warm, _ = warm.prune_group(task)
    fresh_cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={"memory_dir": None})})
    cold = AgentPruning(fresh_cfg, other, meta, tmp_path / "cold", "builtin", torch.device("cpu"), show=False)
    out_cold, _ = cold.prune_group(task)

    moved = [r for r in warm.memory.all({"run_id": warm.run_id}) if r.transferred_from]
    assert len(moved) == cfg.agent.transfer_candidates == 2 and {r.round for r in moved} == {0}
    assert _own_lineage(warm) == _own_lineage(cold)
    assert len(_own_lineage(cold)) == 2 * 3
    assert out_warm.best.loss <= out_cold.best.loss
    # a transferred shape that won is a candidate of its round (the round's best K, our code submitted)
    summary = json.loads((tmp_path / "warm" / "group_1" / "agent.json").read_text())
    assert min(summary["rounds"][0]["losses"]) == pytest.approx(min(r.loss for r in warm.memory.all(
        {"$and": [{"run_id": warm.run_id}, {"round": 0}]})), rel=1e-9)


def test_transfer_allowance_is_capped_at_what_the_builtin_sets_aside():
    from pydantic import ValidationError

    from tdc_agent.agent.builtin import MAX_TRANSFERRED

    assert AgentConfig(transfer_candidates=MAX_TRANSFERRED).transfer_candidates == MAX_TRANSFERRED
    with pytest.raises(ValidationError):
        AgentConfig(transfer_candidates=MAX_TRANSFERRED + 1)


def test_an_llm_takes_memory_shapes_as_extra_candidates(tmp_path, monkeypatch):
    """Over the OpenAI protocol: ``evaluate_scheme(transfer_from=...)`` with an id that is not another
    base's record, or beyond agent.transfer_candidates, is refused with what to do instead; a valid one
    is recorded as an extra candidate, and the round still closes at K candidates of the model's own."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cfg, base, task = _setup(tmp_path, memory_dir=str(tmp_path / "bank"), rounds=1, candidates=2,
                             transfer_candidates=1)
    meta = {"schedule": cfg.schedule.model_dump()}
    donor = AgentPruning(cfg, base, meta, tmp_path / "donor", "builtin", torch.device("cpu"), show=False)
    donor.prune_group(task)
    best = donor.memory.best(None, 2)
    torch.manual_seed(1)
    other = build_unet(unet_config("tiny")).eval()
    script = [{"tool_calls": [tool_call("evaluate_scheme", {"levels": {}, "transfer_from": "no-such-run:g1-r0-c0"}),
                              tool_call("evaluate_scheme", {"levels": best[0].levels, "transfer_from": best[0].id}),
                              tool_call("evaluate_scheme", {"levels": best[1].levels, "transfer_from": best[1].id})]}]
    with FakeOpenAI(script, policy=PromptReader()) as srv:
        cfg_llm = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={"base_url": srv.url})})
        ap = AgentPruning(cfg_llm, other, meta, tmp_path / "llm", "openai:fake-model", torch.device("cpu"), show=False)
        outcome, _ = ap.prune_group(task)
    outputs = [str(e["output"]) for e in _events(ap, "tool_result")]
    # (one reply's tool calls run in any order: which of the two valid ones came second is not fixed)
    assert any("is not a record of another base" in o and best[0].id in o for o in outputs), outputs
    assert any("agent.transfer_candidates" in o for o in outputs), outputs
    recs = ap.memory.all({"run_id": ap.run_id})
    moved = [r.transferred_from for r in recs if r.transferred_from]
    assert len(moved) == 1 and moved[0] in {best[0].id, best[1].id}
    assert len([r for r in recs if not r.transferred_from]) == 2  # K of its own, the extra besides
    assert len(outcome.rounds) == 1 and len(outcome.rounds[0].candidates) == 2


def test_a_scheme_measured_in_an_earlier_round_is_not_measured_again(tmp_path, monkeypatch):
    """A model that proposes, in round 2, a scheme round 1 already measured: the candidate counts, its
    loss is round 1's (the measurement is deterministic), the reply says so, and the training compute
    counts the measurements made (3), not the candidates (4)."""
    from tdc_agent.pruning.pruner import Pruner
    from tdc_agent.pruning.scheme import PruningScheme

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cfg, base, task = _setup(tmp_path, rounds=2, candidates=2)
    pruner = Pruner(base)
    units = [u.name for u in pruner.graph.units]
    shapes = [{}, {u: 0.5 for u in units[::2]}, {u: 0.5 for u in units[1::2]}, {u: 0.5 for u in units[::3]},
              {u: 0.3 for u in units[:4]}]
    fitted: list[dict[str, float]] = []  # three shapes that fit to three different schemes
    for lv in shapes:
        f = pruner.prune(PruningScheme(levels=lv), task.limit_macs, cfg.agent.criterion).scheme.levels
        if f not in fitted:
            fitted.append(f)
    a, b, c = fitted[:3]
    script = [{"tool_calls": [tool_call("evaluate_scheme", {"levels": a}), tool_call("evaluate_scheme", {"levels": b})]},
              {"tool_calls": [tool_call("evaluate_scheme", {"levels": a}), tool_call("evaluate_scheme", {"levels": c})]}]
    with FakeOpenAI(script, policy=PromptReader()) as srv:
        cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={"base_url": srv.url})})
        ap = AgentPruning(cfg, base, {"schedule": cfg.schedule.model_dump()}, tmp_path / "llm", "openai:fake-model",
                          torch.device("cpu"), show=False)
        outcome, _ = ap.prune_group(task)
    recs = sorted(ap.memory.all({"run_id": ap.run_id}), key=lambda r: (r.round, r.candidate))
    assert [r.round for r in recs] == [0, 0, 1, 1] and [r.round for r in recs if r.repeat_of] == [1]
    again = next(r for r in recs if r.repeat_of)
    first = next(r for r in recs if r.id == again.repeat_of)
    assert first.round == 0 and first.levels == again.levels and first.loss == again.loss
    assert any("its loss is reused, not measured again" in str(e["output"]) for e in _events(ap, "tool_result"))
    assert [len(s.candidates) for s in outcome.rounds] == [2, 2]
    summary = json.loads((ap.state_dir(task.index) / "agent.json").read_text())
    assert summary["proxy_evaluations"] == 3


# --- 4. the call cap is reachable and named ------------------------------------------------------------

def test_round_call_cap_binds_at_its_value_and_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    endless = [{"tool_calls": [tool_call("group_context", {})]}]
    with FakeOpenAI(endless, repeat_last_fault=True) as srv:
        with pytest.raises(TDCError) as e:
            run_agent(tmp_path, "openai:fake-model", base_url=srv.url, rounds=1, max_llm_calls_per_round=12,
                      max_round_retries=0)
    assert len(srv.requests) == 12, "our cap (12), not LangChain's step limit, ends the round"
    msg = str(e.value)
    assert "agent.max_llm_calls_per_round=12" in msg and "recursion_limit" not in msg


def test_retry_lines_count_retries_not_attempts(tmp_path, make_config, cli, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cfg = make_config(agent={**AGENT, "rounds": 1, "max_llm_calls_per_round": 2, "max_round_retries": 2})
    with FakeOpenAI([{"tool_calls": [tool_call("group_context", {})]}], repeat_last_fault=True) as srv:
        code, out, err = cli("prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config",
                             cfg, "--llm", "openai:fake-model", "--llm-base-url", srv.url, "--out", tmp_path / "r")
    assert code == 2 and "Traceback" not in err
    text = " ".join((out + err).split())  # rich wraps long lines
    assert "retry 1 of 2" in text and "retry 2 of 2" in text and "retry 3" not in text and "3/2" not in text
    assert "after 3 attempts" in " ".join(err.split())
    assert len(srv.requests) == 3 * 2


# --- 5. run.seed reaches the builtin -------------------------------------------------------------------

def test_run_seed_reaches_the_builtin(tmp_path):
    def levels(seed: int, out: str) -> tuple[int, list[str]]:
        cfg, base, task = _setup(tmp_path)
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": seed})})
        ap = AgentPruning(cfg, base, {"schedule": cfg.schedule.model_dump()}, tmp_path / out, "builtin",
                          torch.device("cpu"), show=False)
        ap.prune_group(task)
        recs = sorted(ap.memory.all(), key=lambda r: (r.round, r.candidate))
        return ap.chat.seed, [json.dumps(r.levels, sort_keys=True) for r in recs]

    s1, a = levels(1, "a")
    _, b = levels(1, "b")
    s2, c = levels(2, "c")
    assert (s1, s2) == (1, 2)
    assert a == b, "one seed, one search"
    assert a[2:] != c[2:], "another seed searches differently after round 1"


# --- 6. the report's agent-rounds plot ---------------------------------------------------------------

def test_rounds_plot_is_relative_to_each_groups_base_with_whole_round_ticks(tmp_path):
    """Groups whose losses differ 100-fold are drawn relative to their own base's loss (so each is
    readable on one axis), on whole-number round ticks."""
    from tdc_agent.core.io import atomic_write_json
    from tdc_agent.workflow.report import rounds_figure
    from tdc_agent.workflow.rundir import RunDir

    run = RunDir(tmp_path / "run")
    bases = {0: 0.01, 1: 0.1, 2: 1.0}
    for i, base in bases.items():
        d = run.agent_state(i)
        rounds = [{"round": r, "candidates": ["a", "b"], "losses": [base * (1.2 - 0.05 * r), base * (1.3 - 0.05 * r)],
                   "macs": [1.0, 1.0], "attempts": 1, "seconds": 1.0} for r in range(3)]
        atomic_write_json(d / "rounds.json", {"rounds": rounds})
        atomic_write_json(d / "agent.json", {"base_loss": base})
    fig = rounds_figure(run, 3)
    ax = fig.axes[0]
    ys = [c.lines[0].get_ydata() for c in ax.containers]  # each errorbar's data line (not its caps)
    assert len(ys) == 3
    for y in ys:  # every group: 1.25, 1.20, 1.15 times its base, whatever its scale
        assert list(map(float, y)) == pytest.approx([1.25, 1.2, 1.15])
    ticks = [t for t in ax.get_xticks() if 0.5 <= t <= 3.5]
    assert ticks == [1, 2, 3]
    assert "base" in ax.get_ylabel()
