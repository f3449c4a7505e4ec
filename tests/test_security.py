"""Security: no unpickling, LLM output is data, names cannot escape the run directory, the memory
bank goes to a server only when one is given. (Planted API keys: test_agent.py and the chaos run in
test_faults.py search every file a run writes.)"""

from __future__ import annotations

import re

import pytest
import torch

from conftest import ROOT, tiny_config_dict
from tdc_agent.core.config import config_from_dict
from tdc_agent.core.errors import ConfigError

PICKLE = re.compile(r"import pickle\b|from pickle\b|pickle\.loads?\(|torch\.load\(|weights_only\s*=\s*False|"
                    r"allow_pickle\s*=\s*True|(?<![.\w])eval\(|(?<![.\w])exec\(|yaml\.load\(|yaml\.unsafe_load|shell\s*=\s*True")


def test_no_pickle_eval_or_unsafe_yaml_in_package_and_tools():
    files = [*(ROOT / "tdc_agent").rglob("*.py"), *(ROOT / "tools").rglob("*.py"), *(ROOT / "examples").rglob("*.py")]
    assert len(files) > 30
    hits = [f"{f.relative_to(ROOT)}: {m.group(0)}" for f in files for m in PICKLE.finditer(f.read_text())]
    assert not hits, hits


def test_numpy_datasets_are_read_without_pickle(tmp_path):
    import numpy as np

    from tdc_agent.core.config import DataConfig
    from tdc_agent.core.data import load_dataset
    from tdc_agent.core.errors import TDCError

    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "obj.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(TDCError):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / "obj.npz")))


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/abs", "x\\y", "", ".hidden/..", "a\x00b"])
def test_run_names_cannot_escape_the_output_dir(tmp_path, name):
    with pytest.raises(ConfigError, match="run.name"):
        config_from_dict(tiny_config_dict(tmp_path, run={"name": name}))


def test_llm_output_is_only_parsed_as_data(tmp_path, monkeypatch):
    from openai_server import CHAOS, FakeOpenAI
    from test_agent import _check_valid, run_agent

    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret-0000")
    monkeypatch.chdir(tmp_path)
    with FakeOpenAI([CHAOS["code_injection"](), CHAOS["unknown_tool"]()]) as srv:
        outcome, result, ap = run_agent(tmp_path, "openai:fake-model", base_url=srv.url)
    _check_valid(outcome, result, ap)
    assert not (tmp_path / "PWNED").exists()
    text = ap.transcript.path.read_text()
    assert "__import__" in text  # recorded as the data it was, and answered with an error
    assert "delete_everything" in text


def test_memory_bank_stays_local_whatever_the_environment_says(tmp_path, monkeypatch):
    from tdc_agent.agent.memory import MemoryBank

    monkeypatch.setenv("CHROMA_API_IMPL", "chromadb.api.fastapi.FastAPI")
    monkeypatch.setenv("CHROMA_SERVER_HOST", "127.0.0.1")
    monkeypatch.setenv("CHROMA_SERVER_HTTP_PORT", "9")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("chroma_api_impl=chromadb.api.fastapi.FastAPI\n")
    bank = MemoryBank(["a", "b"], "hash", path=str(tmp_path / "mem"))
    assert bank.count() == 0 and (tmp_path / "mem" / "chroma.sqlite3").is_file()


def test_torch_files_never_run_code(tmp_path, monkeypatch):
    from tdc_agent.core.errors import CheckpointError
    from tdc_agent.evaluation.torchfile import read_torch_state_dict

    class Evil:
        def __reduce__(self):
            return (eval, ("__import__('os').system('touch PWNED')",))

    monkeypatch.chdir(tmp_path)
    torch.save({"w": Evil()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="builtin__?.eval"):
        read_torch_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()
