"""Every LLM path at its wire protocol, the json protocol, tool_choice, run metadata and callbacks,
and the agent's error paths (tool failures, caps, shape mismatches, bad --llm specs).

The LLM is replaced only at its network boundary: local servers speaking OpenAI Chat Completions
(tests/openai_server.py), Anthropic's Messages API (tests/anthropic_server.py) and Ollama's
/api/chat (tests/ollama_server.py), all answering with our builtin policy run on the conversation
the client sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler

from anthropic_server import FakeAnthropic
from fake_http import json_policy_text
from ollama_server import FakeOllama
from openai_server import FakeOpenAI, tool_call
from test_agent import AGENT, _check_valid, _events, _setup, run_agent
from tdc_agent.agent.runner import AgentPruning
from tdc_agent.core.errors import ConfigError, TDCError

ONE = {"rounds": 1}


class FakeOpenAIText(FakeOpenAI):
    """An OpenAI-compatible server for a model without tool calling: it answers in text only."""

    def _policy_message(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = [m["content"] for m in body["messages"] if isinstance(m.get("content"), str)]
        return {"role": "assistant", "content": json_policy_text(texts)}


# --- protocols ----------------------------------------------------------------------------------

def test_anthropic_messages_api(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key-0000")
    with FakeAnthropic() as srv:
        outcome, result, ap = run_agent(tmp_path, "anthropic:claude-fake", base_url=srv.url, tool_choice="any")
    _check_valid(outcome, result, ap)
    assert set(srv.paths) == {"POST /v1/messages"}
    # the SDK sends the key as x-api-key or (newer versions) as a bearer token
    assert all("test-anthropic-key-0000" in (h.get("x-api-key", "") + h.get("authorization", "")) for h in srv.headers)
    first = srv.requests[0]
    assert first["model"] == "claude-fake" and first["system"] and first["tools"]
    assert first["tool_choice"] == {"type": "any"}  # agent.tool_choice reaches bind_tools
    later = srv.requests[1]["messages"]
    blocks = [b for m in later if isinstance(m["content"], list) for b in m["content"]]
    assert any(b["type"] == "tool_use" for b in blocks) and any(b["type"] == "tool_result" for b in blocks)
    assert outcome.usage["input_tokens"] == 120 * outcome.usage["llm_calls"]
    assert outcome.usage["output_tokens"] == 30 * outcome.usage["llm_calls"]


def test_anthropic_overloaded_is_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key-0000")
    with FakeAnthropic([{"status": 529, "type": "overloaded_error"}]) as srv:
        outcome, result, ap = run_agent(tmp_path, "anthropic:claude-fake", base_url=srv.url, **ONE)
    _check_valid(outcome, result, ap)
    assert len(srv.requests) == outcome.usage["llm_calls"] + 1  # the SDK retried the 529


def test_ollama_chat_api(tmp_path):
    with FakeOllama() as srv:
        outcome, result, ap = run_agent(tmp_path, "ollama:qwen-fake", base_url=srv.url)
    _check_valid(outcome, result, ap)
    assert set(srv.paths) == {"POST /api/chat"}
    first = srv.requests[0]
    assert first["model"] == "qwen-fake" and first["tools"] and first["stream"] is True
    roles = [m["role"] for m in srv.requests[1]["messages"]]
    assert roles[:3] == ["system", "user", "assistant"] and "tool" in roles
    assert srv.requests[1]["messages"][2]["tool_calls"][0]["function"]["arguments"] is not None
    assert outcome.usage["input_tokens"] == 90 * outcome.usage["llm_calls"]  # prompt_eval_count
    assert outcome.usage["output_tokens"] == 15 * outcome.usage["llm_calls"]  # eval_count


def test_ollama_server_down_fails_before_compute(tmp_path):
    with pytest.raises(TDCError, match="unreachable"):
        run_agent(tmp_path, "ollama:qwen-fake", base_url="http://127.0.0.1:9")


def test_openai_tool_choice_required(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    with FakeOpenAI() as srv:
        outcome, result, ap = run_agent(tmp_path, "openai:fake-model", base_url=srv.url, tool_choice="required", **ONE)
    _check_valid(outcome, result, ap)
    assert all(r.get("tool_choice") == "required" for r in srv.requests)


# --- the json protocol --------------------------------------------------------------------------

JSON_FAULTS = [{"content": '{"schemes": [{"levels": {"conv_in": 0.5'},  # cut off: not valid JSON
               {"content": '{"schemes": "prune every layer by half"}'}]  # valid JSON, wrong shape


def _json_server(kind: str):
    if kind == "openai":
        return FakeOpenAIText([dict(f) for f in JSON_FAULTS]), "openai:fake-model"
    if kind == "anthropic":
        return FakeAnthropic([{"text": f["content"]} for f in JSON_FAULTS]), "anthropic:claude-fake"
    return FakeOllama([dict(f) for f in JSON_FAULTS]), "ollama:qwen-fake"


@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama"])
def test_json_protocol_without_tool_calling(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key-0000")
    server, spec = _json_server(kind)
    with server as srv:
        outcome, result, ap = run_agent(tmp_path, spec, base_url=srv.url, protocol="json")
    _check_valid(outcome, result, ap)
    assert not any(r.get("tools") for r in srv.requests), "json mode sends no tool definitions"
    invalid = _events(ap, "json_reply_invalid")
    assert len(invalid) == 2
    assert "not valid JSON" in invalid[0]["error"] and "required shape" in invalid[1]["error"]
    # the LLM was told, in the next request, what was wrong
    assert "not valid JSON" in json.dumps(srv.requests[1]) and "required shape" in json.dumps(srv.requests[2])
    # our code evaluated and submitted the schemes itself, through the same tools
    tools = [e["tool"] for e in _events(ap, "tool_call")]
    assert tools.count("submit_candidates") == 2 and tools.count("evaluate_scheme") >= 4
    assert outcome.usage["llm_calls"] == len(srv.requests)


def test_json_protocol_endless_bad_json_is_a_cap_hit(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    with FakeOpenAIText([{"content": "I think you should prune the middle."}], repeat_last_fault=True) as srv:
        with pytest.raises(TDCError) as e:
            run_agent(tmp_path, "openai:fake-model", base_url=srv.url, protocol="json", max_llm_calls_per_round=3,
                      max_round_retries=0, **ONE)
    assert "agent.max_llm_calls_per_round=3" in str(e.value) and "not valid JSON" in str(e.value)
    assert len(srv.requests) == 3


def test_json_protocol_refused_for_builtin(tmp_path):
    with pytest.raises(ConfigError, match="protocol=tools"):
        run_agent(tmp_path, "builtin", protocol="json")


def test_cli_llm_protocol_flag(tmp_path, make_config, cli, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    cfg = make_config(agent={**AGENT, **ONE})
    with FakeOpenAIText() as srv:
        code, out, err = cli("prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config",
                             cfg, "--llm", "openai:fake-model", "--llm-base-url", srv.url, "--llm-protocol", "json",
                             "--out", tmp_path / "r", "--json")
    assert code == 0, err
    assert json.loads(out)["usage"]["llm_calls"] == 1 and not srv.requests[0].get("tools")


# --- run metadata and user callbacks ------------------------------------------------------------

class Recorder(BaseCallbackHandler):
    def __init__(self):
        self.chains: list[dict] = []
        self.chat: list[dict] = []
        self.tools: list[str] = []

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, tags=None, metadata=None, **kw):
        self.chains.append({"root": parent_run_id is None, "name": kw.get("name"), "tags": tags or [],
                            "metadata": metadata or {}})

    def on_chat_model_start(self, serialized, messages, *, run_id, tags=None, metadata=None, **kw):
        self.chat.append({"tags": tags or [], "metadata": metadata or {}})

    def on_tool_start(self, serialized, input_str, **kw):
        self.tools.append((serialized or {}).get("name"))


def test_user_callbacks_get_run_group_round_metadata(tmp_path):
    cfg, base, task = _setup(tmp_path)
    rec = Recorder()
    ap = AgentPruning(cfg, base, {"schedule": cfg.schedule.model_dump()}, tmp_path / "out", "builtin",
                      torch.device("cpu"), show=False, callbacks=[rec])
    outcome, _ = ap.prune_group(task)
    assert len(rec.chat) == outcome.usage["llm_calls"] and len(rec.tools) == outcome.usage["tool_calls"]
    roots = [c for c in rec.chains if c["root"]]
    assert [c["name"] for c in roots] == [f"tdc-agent run {ap.run_id} group 1 round {r}" for r in range(2)]
    for r, root in enumerate(roots):
        assert {"tdc-agent", f"run:{ap.run_id}", "group:1", f"round:{r}"} <= set(root["tags"])
        assert {"tdc_run_id": ap.run_id, "group": 1, "round": r, "attempt": 0}.items() <= root["metadata"].items()
    # every LLM call inherits them (what LangSmith filters on)
    assert all(c["metadata"].get("group") == 1 and "group:1" in c["tags"] for c in rec.chat)
    assert {c["metadata"]["round"] for c in rec.chat} == {0, 1}


# --- error paths --------------------------------------------------------------------------------

@pytest.mark.parametrize("cap,value", [("max_tool_calls_per_round", 2), ("max_llm_calls_per_round", 1)])
def test_round_cap_is_reported_as_that_cap(tmp_path, cap, value):
    # builtin needs 3 LLM calls and 6 tool calls for a round of 2 candidates
    with pytest.raises(TDCError) as e:
        run_agent(tmp_path, "builtin", **{cap: value}, max_round_retries=1, **ONE)
    msg = str(e.value)
    assert f"agent.{cap}={value}" in msg and "text instead of tool calls" not in msg
    retries = [x["reason"] for x in _events_at(tmp_path / "out", "round_retry")]
    assert retries and all(f"agent.{cap}={value}" in x for x in retries)


def _events_at(out: Path, kind: str) -> list[dict]:
    from tdc_agent.agent.transcript import read_transcript

    return [x for x in read_transcript(out / "transcript.jsonl") if x["event"] == kind]


def test_group_llm_cap_is_named(tmp_path):
    # the builtin needs 2 LLM calls a round now that a round closes itself at its K candidates
    with pytest.raises(TDCError, match=r"agent.max_llm_calls_per_group=1") as e:
        run_agent(tmp_path, "builtin", max_llm_calls_per_group=1, **ONE)
    assert "text instead" not in str(e.value)


def test_tool_exception_becomes_an_error_result(tmp_path):
    """A failure inside a tool (here: evaluation data the model cannot take, which a session built
    by hand from Python can have) is an error result for the LLM, not a traceback."""
    from tdc_agent.agent.memory import MemoryBank, architecture_hash
    from tdc_agent.agent.session import PruningSession
    from tdc_agent.agent.tools import agent_tools
    from tdc_agent.core.data import ImageDataset
    from tdc_agent.diffusion.process import ForwardProcess
    from tdc_agent.pruning.pruner import Pruner

    cfg, base, task = _setup(tmp_path)
    process = ForwardProcess(cfg.schedule, torch.device("cpu"))
    wrong = ImageDataset(torch.zeros(16, 3, 8, 8), "three-channel")
    pruner = Pruner(base, None, process, 0)
    memory = MemoryBank(pruner.graph.names, architecture_hash(pruner.graph.names, {}), path=str(tmp_path / "m"))
    session = PruningSession(pruner, task, memory, wrong, process, cfg.agent, "r", "test", tmp_path / "s")
    tools = {t.name: t for t in agent_tools(session)}
    out = json.loads(tools["evaluate_scheme"].invoke({"levels": {}}))
    assert "error" in out and "evaluate_scheme failed with RuntimeError" in out["error"]
    assert "Traceback" not in out["error"] and session.last_tool_failure
    assert memory.count() == 0


def test_shape_mismatch_caught_before_any_llm_call(tmp_path, monkeypatch):
    from tdc_agent.models.unet import build_unet, unet_config

    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    base = build_unet(unet_config("tiny", channels=3)).eval()  # 3 channels; the digits are 1
    with FakeOpenAI() as srv:
        cfg, _, task = _setup(tmp_path, base_url=srv.url)
        with pytest.raises(ConfigError, match="disagree"):
            AgentPruning(cfg, base, {}, tmp_path / "out", "openai:fake-model", torch.device("cpu"), show=False)
    assert srv.requests == [] and srv.model_lookups == []
    assert not (tmp_path / "out").exists()


def test_unknown_unit_lists_valid_names_and_no_cli_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    script = [{"tool_calls": [tool_call("evaluate_scheme", {"levels": {"zzzz": 0.5}})]}]
    with FakeOpenAI(script) as srv:
        outcome, result, ap = run_agent(tmp_path, "openai:fake-model", base_url=srv.url, **ONE)
    _check_valid(outcome, result, ap)
    err = next(e["output"] for e in _events(ap, "tool_result") if "zzzz" in str(e["output"]))
    assert "Valid unit names: " in err and "conv_in" in err and "tdc-agent" not in err


@pytest.mark.parametrize("spec,needle", [
    ("azure_openai:gpt-4o", "could not be created"),
    ("nosuchprovider:model-x", "is not a LangChain chat-model provider"),
    ("bedrock:some-model", "is not installed"),
])
def test_llm_spec_errors_are_one_paragraph(tmp_path, make_config, cli, monkeypatch, spec, needle):
    for var in ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN", "OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    cfg = make_config(agent=AGENT)
    code, out, err = cli("prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config", cfg,
                         "--llm", spec, "--out", tmp_path / "r")
    assert code == 2, err
    assert needle in err and spec in err and "Traceback" not in err
    assert "\n\n" not in err.strip(), "one paragraph"
    assert not (tmp_path / "r").exists()
