"""The pruning agent end to end: the real LangChain agent loop, real Chroma on disk, real pruning.

The LLM is replaced only at its network boundary: `openai:<model>` talks HTTP to a local server
(tests/openai_server.py) that speaks the Chat Completions protocol and injects faults.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

import forkserver
import torch

from conftest import PYTHON, python_env, tiny_config_dict
from openai_server import FakeOpenAI, estimate_tokens, tool_call
from prompt_reader import PromptReader
from tdc_agent.agent.runner import AgentPruning
from tdc_agent.planning.plan import GroupTask
from tdc_agent.planning.plan import Group
from tdc_agent.agent.transcript import read_transcript
from tdc_agent.core.config import config_from_dict
from tdc_agent.core.errors import ConfigError, TDCError
from tdc_agent.models.unet import build_unet, unet_config
from tdc_agent.models.macs import thop_macs

AGENT = {"rounds": 2, "candidates": 2, "eval_batch_size": 32, "eval_timesteps": 3, "max_retries": 2,
         "timeout_s": 5, "criterion": "magnitude", "max_llm_calls_per_round": 8, "max_round_retries": 2}


def _setup(tmp_path: Path, **agent):
    cfg = config_from_dict(tiny_config_dict(tmp_path, agent={**AGENT, **agent}))
    torch.manual_seed(0)
    base = build_unet(unet_config("tiny")).eval()
    macs = thop_macs(base)
    task = GroupTask(Group.span(1, 30, 60, -2.0, 10.0, 0.6), 0.6 * macs, [0, 2])
    return cfg, base, task


def run_agent(tmp_path: Path, llm: str, out: str = "out", **agent):
    cfg, base, task = _setup(tmp_path, **agent)
    ap = AgentPruning(cfg, base, {"schedule": cfg.schedule.model_dump()}, tmp_path / out, llm, torch.device("cpu"),
                      show=False)
    outcome, result = ap.prune_group(task)
    return outcome, result, ap


def _events(ap: AgentPruning, kind: str) -> list[dict]:
    return [e for e in read_transcript(ap.transcript.path) if e["event"] == kind]


def _check_valid(outcome, result, ap, task_limit=None):
    assert outcome.best.status == "ok" and outcome.best.loss is not None
    assert result.macs.thop <= outcome.best.limit_macs
    assert len(outcome.rounds) == ap.cfg.agent.rounds
    assert all(len(r.candidates) == ap.cfg.agent.candidates for r in outcome.rounds)
    assert (ap.out_dir / "model" / "pruning.json").is_file()


def test_builtin_runs_rounds_and_records_memory(tmp_path):
    outcome, result, ap = run_agent(tmp_path, "builtin")
    _check_valid(outcome, result, ap)
    assert ap.memory.count() >= 4
    summary = json.loads((ap.out_dir / "group_1" / "agent.json").read_text())
    # per round: look up (architecture, context, memory), evaluate; the round closes once its
    # candidates are evaluated, without a submit or confirmation call
    assert summary["usage"]["llm_calls"] == 2 * len(outcome.rounds)
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["usage"]["input_tokens"] == 0 and summary["usage"]["max_tokens_per_group"] is None  # no LLM
    closed = _events(ap, "round_closed")
    assert len(closed) == len(outcome.rounds) and all(e["by"] == "tdc-agent" for e in closed)
    assert summary["seconds"]["agent_overhead"] < summary["seconds"]["total"]
    # within a round the candidates differ (the tool refuses a scheme that fits to one already in
    # it); across rounds a shape can fit to a scheme of an earlier round and is evaluated again (README)
    for r in range(len(outcome.rounds)):
        levels = [json.dumps(x.levels, sort_keys=True) for x in ap.memory.all({"round": r})]
        assert len(levels) == 2 and len(set(levels)) == 2


def test_openai_protocol_good_replies(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    with FakeOpenAI() as srv:
        outcome, result, ap = run_agent(tmp_path, "openai:fake-model", base_url=srv.url)
    _check_valid(outcome, result, ap)
    assert srv.requests and srv.requests[0]["model"] == "fake-model"
    assert any("tools" in r for r in srv.requests)
    # the fake server reports a bytes/4 estimate of what it was sent; the meter adds those up
    assert outcome.usage["input_tokens"] == sum(estimate_tokens(r) for r in srv.requests) > 0
    assert _events(ap, "llm_request") and _events(ap, "tool_result")


FAULTS = {
    "malformed_json": ([{"tool_calls": [tool_call("evaluate_scheme", '{"levels": {"conv_in": 0.5')]}], "not valid JSON"),
    "unknown_unit": ([{"tool_calls": [tool_call("evaluate_scheme", {"levels": {"conv_inn": 0.5}})]}], "did you mean"),
    "out_of_range": ([{"tool_calls": [tool_call("evaluate_scheme", {"levels": {"conv_in": 1.7}})]}], "out of range"),
    "empty_reply": ([{"content": ""}], "reply was empty"),
    "refusal": ([{"content": "I'm sorry, but I can't help with pruning models."}], "text instead of tool calls"),
    "endless_tool_calls": ([{"tool_calls": [tool_call("group_context", {})]}] * 12, "call cap"),
    "http_429_and_500": ([{"status": 429}, {"status": 500}], None),
    "timeout": ([{"sleep": 2.5}], None),
    "dropped_connection": ([{"drop": True}], None),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_llm_faults_end_in_a_valid_scheme(tmp_path, monkeypatch, fault):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    script, needle = FAULTS[fault]
    with FakeOpenAI(script) as srv:
        outcome, result, ap = run_agent(tmp_path, "openai:fake-model", base_url=srv.url, timeout_s=1.0)
    _check_valid(outcome, result, ap)
    text = ap.transcript.path.read_text()
    if needle:
        assert needle in text, f"the transcript must show the fault ({needle!r})"
    if fault in ("malformed_json", "empty_reply", "refusal", "endless_tool_calls"):
        assert _events(ap, "round_retry"), "the round must have been retried"
    if fault == "unknown_unit":  # the tool answered with an error the LLM can act on; no retry needed
        assert "did you mean conv_in" in text


def test_over_budget_scheme_is_fitted(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    script = [{"tool_calls": [tool_call("evaluate_scheme", {"levels": {"conv_in": 1.0}})]}]
    with FakeOpenAI(script) as srv:
        outcome, result, ap = run_agent(tmp_path, "openai:fake-model", base_url=srv.url)
    first = [e for e in _events(ap, "tool_result") if '"fill_of_limit"' in str(e["output"])][0]
    out = json.loads(first["output"])
    assert out["macs"] <= ap.memory.all()[0].limit_macs


def test_endless_tool_calls_forever_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    with FakeOpenAI([{"tool_calls": [tool_call("group_context", {})]}], repeat_last_fault=True) as srv:
        with pytest.raises(TDCError, match="did not produce 2 valid candidates"):
            run_agent(tmp_path, "openai:fake-model", base_url=srv.url, max_round_retries=1)


def test_persistent_500_fails_clearly_and_a_rerun_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    # round 1 takes 2 requests with the policy (look-ups, evaluate x2; then it closes)
    with FakeOpenAI([None] * 2 + [{"status": 500}], repeat_last_fault=True) as srv:
        with pytest.raises(TDCError, match="rerun the same command to resume"):
            run_agent(tmp_path, "openai:fake-model", base_url=srv.url, max_retries=1)
    state = json.loads((tmp_path / "out" / "group_1" / "rounds.json").read_text())
    assert len(state["rounds"]) == 1
    first_round = state["rounds"][0]
    with FakeOpenAI() as srv:
        outcome, result, ap = run_agent(tmp_path, "openai:fake-model", base_url=srv.url)
    _check_valid(outcome, result, ap)
    assert outcome.rounds[0].candidates == first_round["candidates"]
    assert outcome.rounds[0].losses == first_round["losses"]
    assert len(srv.requests) <= 3, "round 1 must not be redone"


def test_replay_reproduces_schemes_and_losses(tmp_path):
    a, _, ap_a = run_agent(tmp_path, "builtin", out="a")
    b, _, ap_b = run_agent(tmp_path, f"replay:{ap_a.transcript.path}", out="b")
    assert [r.losses for r in a.rounds] == [r.losses for r in b.rounds]
    key = lambda recs: sorted((r.round, r.candidate, json.dumps(r.levels, sort_keys=True), r.loss) for r in recs)  # noqa: E731
    assert key(ap_a.memory.all()) == key(ap_b.memory.all())
    assert a.best.levels == b.best.levels


def test_replay_exhausted_is_a_clear_error(tmp_path):
    a, _, ap_a = run_agent(tmp_path, "builtin", out="a")
    with pytest.raises(TDCError, match="ran out of recorded replies"):
        run_agent(tmp_path, f"replay:{ap_a.transcript.path}", out="b", rounds=3)


def _cli(args: list, env: dict | None = None) -> subprocess.CompletedProcess:
    e = python_env()
    e.update(env or {})
    return forkserver.run([PYTHON, "-m", "tdc_agent.cli", *map(str, args)], env=e, capture_output=True, text=True,
                          timeout=600)


def test_memory_persists_across_processes(tmp_path, make_config, cli):
    cfg = make_config(agent=AGENT)
    mem = tmp_path / "shared-memory"
    common = ["prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config", cfg,
              "--memory-dir", mem, "--json"]
    p1 = _cli([*common, "--out", tmp_path / "r1"])
    assert p1.returncode == 0, p1.stderr
    n1 = json.loads(p1.stdout)["memory_records"]
    p2 = _cli([*common, "--out", tmp_path / "r2"])
    assert p2.returncode == 0, p2.stderr
    assert json.loads(p2.stdout)["memory_records"] > n1
    run1 = (tmp_path / "r1" / "run_id").read_text()
    # the second run's first prompt already shows the first run's schemes
    first_request = next(json.loads(x) for x in (tmp_path / "r2" / "transcript.jsonl").read_text().splitlines()
                         if '"llm_request"' in x)
    assert f"(run {run1}, limit 0.600)" in json.dumps(first_request)
    total = json.loads(p2.stdout)["memory_records"]
    # read back by a third process (this one): the two runs' processes are gone
    code, out, err = cli("memory", "list", "--memory-dir", mem)
    assert code == 0 and f"{total} records" in out + err
    assert cli("memory", "export", "--memory-dir", mem, "--out", tmp_path / "m.json")[0] == 0
    runs = {r["run_id"] for r in json.loads((tmp_path / "m.json").read_text())}
    assert runs == {run1, (tmp_path / "r2" / "run_id").read_text()}
    assert cli("memory", "export", "--memory-dir", mem, "--out", tmp_path / "m.csv")[0] == 0
    assert (tmp_path / "m.csv").read_text().count("\n") == total + 1


def test_api_key_never_written(tmp_path, make_config):
    secret = "sk-live-SECRET-0123456789abcdef"
    cfg = make_config(agent=AGENT)
    with FakeOpenAI() as srv:
        p = _cli(["prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config", cfg,
                  "--llm", "openai:fake-model", "--llm-base-url", srv.url, "--out", tmp_path / "r"],
                 env={"OPENAI_API_KEY": secret})
        assert p.returncode == 0, p.stderr
        assert any(secret in {k.lower(): v for k, v in h.items()}.get("authorization", "") for h in srv.headers), \
            "the key must reach the server"
    assert secret not in p.stdout + p.stderr
    for f in (tmp_path / "r").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f"key leaked into {f}"


def test_missing_key_and_unreachable_server_fail_before_compute(tmp_path, make_config, monkeypatch):
    cfg = make_config(agent=AGENT)
    env = {"OPENAI_API_KEY": ""}
    p = _cli(["prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config", cfg,
              "--llm", "openai:gpt-x", "--out", tmp_path / "a"], env=env)
    assert p.returncode == 2 and "OPENAI_API_KEY" in p.stderr and not (tmp_path / "a").exists()
    p = _cli(["prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config", cfg,
              "--llm", "openai:gpt-x", "--llm-base-url", "http://127.0.0.1:9/v1", "--out", tmp_path / "b"])
    assert p.returncode == 2 and "unreachable" in p.stderr and not (tmp_path / "b").exists()
    p = _cli(["prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config", cfg,
              "--llm", "nonsense", "--out", tmp_path / "c"])
    assert p.returncode == 2 and "not a valid spec" in p.stderr


def test_custom_prompt_dir_is_used_and_validated(tmp_path, cli):
    d = tmp_path / "prompts"
    code, _, _ = cli("prompts", "init", d)
    assert code == 0 and (d / "system.md").is_file()
    (d / "system.md").write_text("CUSTOM SYSTEM PROMPT. Evaluate {candidates} schemes, then submit.")
    assert cli("prompts", "validate", "--prompt-dir", d)[0] == 0
    with pytest.raises(ConfigError, match="no effect with --llm builtin"):
        run_agent(tmp_path, "builtin", prompt_dir=str(d), rounds=1)
    with FakeOpenAI(policy=PromptReader()) as srv:
        outcome, result, ap = run_agent(tmp_path, "openai:m", prompt_dir=str(d), rounds=1, base_url=srv.url)
    assert "CUSTOM SYSTEM PROMPT" in ap.transcript.path.read_text()
    assert srv.requests[0]["messages"][0]["content"].startswith("CUSTOM SYSTEM PROMPT")
    (d / "round.md").write_text("Round {round}: {bogus} {candidates} {limit_macs}")
    code, _, err = cli("prompts", "validate", "--prompt-dir", d)
    assert code == 2 and "bogus" in err
    (d / "round.md").write_text("Round {round} only")
    code, _, err = cli("prompts", "validate", "--prompt-dir", d)
    assert code == 2 and "missing required" in err and "limit_macs" in err


def test_custom_llm_example_runs(tmp_path):
    from conftest import ROOT

    p = forkserver.run([PYTHON, str(ROOT / "examples" / "custom_llm.py")], cwd=tmp_path, env=python_env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "runs" / "custom-llm" / "model" / "pruning.json").is_file()


def test_example_prompt_dir_validates(cli):
    from conftest import ROOT

    assert cli("prompts", "validate", "--prompt-dir", ROOT / "examples" / "custom_prompts")[0] == 0


@pytest.mark.parametrize("cap,needle", [({"max_llm_calls_per_group": 3}, "LLM call cap"),
                                        ({"max_tool_calls_per_group": 4}, "Tool call cap"),
                                        ({"max_tokens_per_group": 150}, "Token cap")])
def test_group_caps_stop_with_a_clear_error(tmp_path, monkeypatch, cap, needle):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    with FakeOpenAI() as srv:
        with pytest.raises(TDCError, match=needle):
            run_agent(tmp_path, "openai:fake-model", base_url=srv.url, **cap)


def test_recovery_steps_fine_tune_before_evaluation(tmp_path):
    plain, _, _ = run_agent(tmp_path, "builtin", out="plain", rounds=1)
    rec, _, ap = run_agent(tmp_path, "builtin", out="rec", rounds=1, recovery_steps=3)
    assert (ap.out_dir / "group_1" / "recovery").is_dir()
    # the same first scheme, evaluated after 3 fine-tuning steps, gets a different loss
    first = lambda o: o.rounds[0].losses[0]  # noqa: E731
    assert first(rec) != first(plain)


def test_memory_url_uses_a_chroma_server(tmp_path):
    import os
    import shutil
    import socket
    import sys

    chroma = Path(sys.executable).parent / "chroma"
    if not chroma.exists() and shutil.which("chroma") is None:
        pytest.skip("the chroma server CLI is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    server = subprocess.Popen([str(chroma if chroma.exists() else "chroma"), "run", "--path", str(tmp_path / "srv"),
                               "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        outcome, _, ap = run_agent(tmp_path, "builtin", memory_url=url, rounds=1)
        assert not (ap.out_dir / "memory").exists(), "with --memory-url nothing is stored locally"
        from tdc_agent.agent.memory import MemoryBank

        other = MemoryBank(ap.pruner.graph.names, ap.arch_hash, url=url)
        assert other.count() == ap.memory.count() >= 2
    finally:
        server.terminate()
        server.wait(30)


def test_key_from_custom_env_var_is_scrubbed_from_console_and_transcript(tmp_path, make_config, cli, monkeypatch):
    # agent.api_key_env may name a variable that does not look like a credential (no KEY/TOKEN in
    # its name), and a server may echo the key it got in its 401 reply, which the CLI then prints.
    secret = "cred-0123456789abcdefXYZ"  # no sk- prefix: only the variable's value can catch it
    other = "sk-proj-abcdefghijklmnop"  # another key the server quotes: the sk- pattern must catch it
    monkeypatch.setenv("TDC_TEST_LLM_CRED", secret)
    cfg = make_config(agent={**AGENT, "api_key_env": "TDC_TEST_LLM_CRED"})
    body = {"error": {"message": f"Incorrect API key provided: {secret}. You sent 'Authorization: Bearer "
                                 f"{secret}'; did you mean {other}?", "type": "invalid_request_error",
                      "code": "invalid_api_key"}}
    with FakeOpenAI([{"status": 401, "body": body}], repeat_last_fault=True) as srv:
        code, out, err = cli("prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6",
                             "--config", cfg, "--llm", "openai:fake-model", "--llm-base-url", srv.url,
                             "--out", tmp_path / "r")
        sent = [h.get("Authorization") or h.get("authorization") for h in srv.headers]
    assert sent and all(a == f"Bearer {secret}" for a in sent), "the key from the custom variable must be used"
    assert code == 2 and "401" in err and "Traceback" not in err
    assert "refused the credentials" in err and "retries" not in err  # 401s are not retried: don't say so
    assert len(sent) == 1
    assert secret not in out + err and other not in out + err and "Bearer cred" not in out + err
    transcript = (tmp_path / "r" / "transcript.jsonl").read_text()
    assert "401" in transcript  # the failure is recorded...
    assert secret not in transcript and other not in transcript  # ...without the keys


# --- what the agent sees and remembers ---------------------------------------------------------------

def _round_prompts(ap: AgentPruning) -> list[str]:
    out = []
    for e in _events(ap, "llm_request"):
        for m in e.get("messages", []):
            if m.get("type") == "human":
                out.append(m["content"])
    return out


def test_a_template_change_changes_what_a_prompt_reading_llm_proposes(tmp_path, monkeypatch):
    """The scripted LLM reads the unit table and instructions from the prompt text, as a real one
    does: a line added to the round template steers the schemes it evaluates."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(policy=PromptReader()) as srv:
        plain, _, ap1 = run_agent(tmp_path, "openai:m", out="plain", rounds=1, base_url=srv.url)
    d = tmp_path / "prompts"
    d.mkdir()
    from tdc_agent.agent.prompts import DEFAULT_PROMPT_DIR

    (d / "round.md").write_text((DEFAULT_PROMPT_DIR / "round.md").read_text() + "\nPrune the units of role attention first.\n")
    with FakeOpenAI(policy=PromptReader()) as srv2:
        steered, _, ap2 = run_agent(tmp_path, "openai:m", out="steered", rounds=1, base_url=srv2.url, prompt_dir=str(d))
    roles = {u.name: u.role for u in ap2.pruner.graph.units}
    first_plain = [r.levels for r in ap1.memory.all()]
    first_steered = [r.levels for r in ap2.memory.all()]
    assert first_plain != first_steered
    # the fit scales one shape, so the units the instruction named stay the most pruned
    for lv in first_steered:
        att = [v for n, v in lv.items() if roles[n] == "attention"]
        others = [v for n, v in lv.items() if roles[n] != "attention"]
        assert att and (not others or max(att) < min(others)), lv
    assert not any(roles[n] == "attention" for lv in first_plain for n in lv)
    # lean: one reply proposes the round, which closes once they are evaluated (no submit call)
    assert plain.usage["llm_calls"] == 1
    prompt = _round_prompts(ap1)[0]
    assert prompt.count("conv_in |") == 1, "the unit table is sent once"


def test_memory_compares_like_with_like(tmp_path):
    """Runs sharing one memory bank: records of the same base, eval set, timesteps and budget band
    are ranked together; another base's records are offered as shapes only; a run's final scheme is
    always one it evaluated itself."""
    shared = tmp_path / "bank"
    cfg, base, task = _setup(tmp_path, memory_dir=str(shared), rounds=1)
    meta = {"schedule": cfg.schedule.model_dump()}
    a = AgentPruning(cfg, base, meta, tmp_path / "a", "builtin", torch.device("cpu"), show=False)
    out_a, _ = a.prune_group(task)
    # the same base again, at a budget outside the band: nothing comparable, nothing transferable
    far = GroupTask(Group.span(1, 30, 60, -2.0, 10.0, 0.8), 0.8 * task.limit_macs / 0.6, [0, 2])
    b = AgentPruning(cfg, base, meta, tmp_path / "b", "builtin", torch.device("cpu"), show=False)
    out_b, _ = b.prune_group(far)
    assert out_b.best.run_id == b.run_id
    prompt_b = _round_prompts(b)[0]
    assert "limit 0.600" not in prompt_b and "(none yet)" in prompt_b
    # another base of the same architecture, same budget: a's schemes are shapes to try, not rankings
    torch.manual_seed(1)
    other = build_unet(unet_config("tiny")).eval()
    # two rounds: the memory adds its shapes in round 2 (round 1 is the policy's own)
    cfg2 = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={"rounds": 2})})
    c = AgentPruning(cfg2, other, meta, tmp_path / "c", "builtin", torch.device("cpu"), show=False)
    out_c, _ = c.prune_group(task)
    assert c.base_hash != a.base_hash
    from tdc_agent.agent.session import PruningSession

    s = PruningSession(c.pruner, task, c.memory, c.eval_data, c.process, cfg.agent, c.run_id, "builtin",
                       tmp_path / "c" / "x", 0, base_hash=c.base_hash, eval_key=c.eval_key)
    offered = s.remembered(5)
    assert {r.run_id for r in offered["this_group"]} == {c.run_id}
    assert offered["other_bases"] and {r.run_id for r in offered["other_bases"]} == {a.run_id}
    assert out_c.best.run_id == c.run_id
    # round 1 of c tried a's best shapes as extra candidates (memory transfer), naming their records;
    # the prompt says the limit and base loss
    moved = [r for r in c.memory.all({"run_id": c.run_id}) if r.transferred_from]
    assert moved and {r.round for r in moved} == {0}
    assert all("memory transfer" in r.rationale for r in moved)
    assert {r.transferred_from for r in moved} <= {r.id for r in a.memory.all({"run_id": a.run_id})}
    prompt_c = _round_prompts(c)[0]
    assert "The unpruned base model's loss here is" in prompt_c and "limit 0.600" in prompt_c
    assert f"{out_c.best.loss:.5f}" not in prompt_c  # c's own results came after its first prompt
    summary = json.loads((tmp_path / "c" / "group_1" / "agent.json").read_text())
    assert summary["base_loss"] == s.base_loss and summary["base_hash"] == c.base_hash


def test_builtin_searches_with_sensitivity(tmp_path):
    """Round 1 allocates pruning by measured per-unit sensitivity (not the uniform shape), the
    measurement is made once per group, and later rounds breed from the best records."""
    outcome, result, ap = run_agent(tmp_path, "builtin", rounds=2, candidates=2)
    recs = sorted(ap.memory.all(), key=lambda r: (r.round, r.candidate))
    assert "MACs saved per loss" in recs[0].rationale
    levels = set(recs[0].levels.values())
    assert len(levels) > 1, "a sensitivity shape prunes units by different amounts"
    assert any(("mutation" in r.rationale or "crossover" in r.rationale) for r in recs if r.round == 1)
    sens = json.loads((ap.out_dir / "group_1" / "sensitivity-0.5.json").read_text())
    rates = [u["rise_per_macs"] for u in sens["cheapest_first"]]
    assert rates == sorted(rates) and len(rates) > 5
    assert sum(1 for e in _events(ap, "tool_call") if e["tool"] == "unit_sensitivity") == 2  # asked each round, measured once


def test_builtin_finds_distinct_candidates_near_the_full_budget(tmp_path):
    """At 97 % of the base MACs most shapes fit to the same few schemes; the builtin walks shapes that
    prune one unit only until each round has K distinct candidates (a GPU run failed here once)."""
    cfg, base, _ = _setup(tmp_path, rounds=3, candidates=3, max_round_retries=0)
    macs = thop_macs(base)
    task = GroupTask(Group.span(3, 70, 99, -30.0, -20.0, 0.97), 0.97 * macs, [2])
    ap = AgentPruning(cfg, base, {"schedule": cfg.schedule.model_dump()}, tmp_path / "near", "builtin",
                      torch.device("cpu"), show=False)
    outcome, result = ap.prune_group(task)
    assert len(outcome.rounds) == 3 and all(len(r.candidates) == 3 for r in outcome.rounds)
    for r in range(3):
        levels = [json.dumps(x.levels, sort_keys=True) for x in ap.memory.all({"round": r})]
        assert len(set(levels)) == len(levels) == 3
    assert result.macs.thop <= task.limit_macs
