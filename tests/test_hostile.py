"""Reliability round three (issue 21): probes a hostile user tries, by class, each refused with one
paragraph (exit 2, no traceback, nothing written) or handled. Every probe is recorded in the fault
summary (``TDC_FAULT_SUMMARY``) as tried and, when its assertions pass, held; ``make test-faults``
runs this module and tools/reliability_report.py lists the classes.

Classes: 1 secrets at every sink, 2 usage errors, 3 OS errors, 4 bad data, 5 resource bombs, 6 prompt
templates, 7 assemble repairs, 8 read-only/full memory bank, 9 smaller (non-run dirs, markup, URLs).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

from conftest import PYTHON, python_env, tiny_config_dict

CLASSES = {1: "secrets scrubbed at every sink", 2: "CLI usage errors", 3: "OS errors", 4: "bad data refused",
           5: "resource bombs", 6: "prompt templates", 7: "assemble repairs the manifest",
           8: "read-only / full memory bank", 9: "non-run dirs, markup, URLs"}


@contextmanager
def probe(cls: int, name: str, tmp_path: Path) -> Iterator[None]:
    """Record one probe of class ``cls`` as tried, and as held when the block's assertions pass."""
    held = False
    try:
        yield
        held = True
    finally:
        summary = Path(os.environ.get("TDC_FAULT_SUMMARY", tmp_path / "summary.jsonl"))
        with open(summary, "a") as f:
            f.write(json.dumps({"hostile_class": cls, "class_name": CLASSES[cls], "probe": name, "held": held}) + "\n")


def files_of(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def refused(code: int, err: str, *needles: str) -> None:
    """Exit 2, one paragraph (no traceback) that mentions every needle."""
    assert code == 2, err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def _cli(args: list, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    e = python_env()
    e.update(env or {})
    return subprocess.run([PYTHON, "-m", "tdc_agent.cli", *map(str, args)], env=e, capture_output=True, text=True,
                          timeout=600, cwd=cwd)


# --- 2: usage errors: the usual usage line, exit 2, no traceback ------------------------------------

USAGE = [
    (["bogusverb"], "No such command"),
    (["sample"], "Missing option"),
    (["run", "--nope"], "No such option"),
    (["sample", "--model", "m", "--num", "0"], "--num"),
    (["prune", "--rounds", "0", "--out", "x"], "--rounds"),
    (["memory", "best", "--k", "0"], "--k"),
]


@pytest.mark.parametrize("args,needle", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_errors_are_a_usage_line_and_exit_2(cli, tmp_path, args, needle):
    with probe(2, " ".join(args), tmp_path):
        code, out, err = cli(*args)
        refused(code, err, needle, "Usage:")


# --- 3: every OSError is one paragraph naming the path ----------------------------------------------

def test_os_errors_name_the_path(cli, make_config, tmp_path):
    cfg = make_config()
    afile = tmp_path / "afile"
    afile.write_text("x")
    long_dir = tmp_path / ("d" * 300)
    cases = [
        ("run-dir is a file", ["plan", "--config", cfg, "--out", afile], str(afile)),
        ("name too long", ["plan", "--config", cfg, "--out", long_dir], "too long"),
        ("out under /dev/null", ["plan", "--config", cfg, "--out", "/dev/null/x"], "/dev/null/x"),
        ("train-base run-dir is a file", ["train-base", "--config", cfg, "--run-dir", afile, "-q"], str(afile)),
    ]
    for name, args, needle in cases:
        with probe(3, name, tmp_path):
            code, _, err = cli(*args)
            refused(code, err, needle)
            assert afile.read_text() == "x"


def test_locks_that_is_a_file_and_export_to_a_directory(cli, make_config, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "locks").write_text("not a directory")
    with probe(3, "RUN/locks is a file", tmp_path):
        code, _, err = cli("train-base", "--config", make_config(), "--run-dir", run, "-q")
        refused(code, err, str(run / "locks"))
    from tdc_agent.agent.memory import MemoryBank, MemoryRecord

    bank = MemoryBank(["a"], "h", path=str(tmp_path / "mem"))
    bank.add(MemoryRecord(id="r0", run_id="x", group=0, t_start=0, t_end=3, limit_macs=1.0, levels={"a": 0.5}))
    (tmp_path / "out.json").mkdir()
    with probe(3, "memory export --out a directory", tmp_path):
        code, _, err = cli("memory", "export", "--memory-dir", tmp_path / "mem", "--out", tmp_path / "out.json")
        refused(code, err, str(tmp_path / "out.json"), "directory")


# --- 4: bad data refused with one paragraph ----------------------------------------------------------

@pytest.mark.parametrize("kind,arr,needle", [
    ("float 0-255", np.full((12, 8, 8, 1), 200.0, np.float32), "divide by 255"),
    ("uint16", np.full((12, 8, 8, 1), 60000, np.uint16), "65535"),
    ("int64 negative", np.full((12, 8, 8, 1), -5, np.int64), "outside 0..255"),
])
def test_images_out_of_range_are_refused_with_the_range(cli, make_config, tmp_path, kind, arr, needle):
    np.savez(tmp_path / "d.npz", images=arr)
    with probe(4, f"npz {kind}", tmp_path):
        code, _, err = cli("train-base", "--config", make_config(), "--run-dir", tmp_path / "run", "-q",
                           "data.name=npz", f"data.root={tmp_path / 'd.npz'}")
        refused(code, err, needle, f"{arr.min():g}")
        assert not (tmp_path / "run").exists()


def test_images_in_range_still_load():
    from tdc_agent.core.data import images_from_array

    x = images_from_array(np.arange(64, dtype=np.int64).reshape(1, 8, 8, 1) * 4)  # 0..252 as int64
    assert x.min() == -1 and x.max() < 1
    assert images_from_array(np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)).max() == 1


BAD_CONFIG = [
    ("stage1.steps=true", "stage1.steps"),
    ("sample.eta=.inf", "sample.eta"),
    ("sample.steps=5000", "sample.steps"),
    ("agent.tool_choice=delete_everything", "agent.tool_choice"),
    ("evaluation.samples=2", "evaluation.samples"),
]


@pytest.mark.parametrize("override,needle", BAD_CONFIG, ids=[o for o, _ in BAD_CONFIG])
def test_bad_settings_are_refused(cli, make_config, tmp_path, override, needle):
    with probe(4, override, tmp_path):
        code, _, err = cli("run", "--config", make_config(), "--run-dir", tmp_path / "run", "-q", override)
        refused(code, err, needle)
        assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A saved (untrained) tiny model on a 100-timestep schedule."""
    from tdc_agent.models.store import save_model
    from tdc_agent.models.unet import build_unet, unet_config

    d = tmp_path_factory.mktemp("base") / "model"
    save_model(d, build_unet(unet_config("tiny")), {"schedule": {"name": "linear", "timesteps": 100},
                                                    "image_shape": [1, 8, 8]})
    return d


def test_sample_refuses_inf_eta_and_more_steps_than_timesteps(cli, base_model, tmp_path):
    for name, args, needle in [("--eta inf", ["--eta", "inf"], "eta"),
                               ("--steps > T", ["--steps", "500"], "100 diffusion timesteps")]:
        with probe(4, f"sample {name}", tmp_path):
            code, _, err = cli("sample", "--model", base_model, "--num", "2", "-q", "--out", tmp_path / "s", *args)
            refused(code, err, needle)
            assert not (tmp_path / "s").exists()


def test_empty_groups_and_fd_from_few_samples(cli, make_config, tmp_path):
    with probe(4, '--groups ""', tmp_path):
        code, _, err = cli("run", "--config", make_config(), "--run-dir", tmp_path / "run", "-q", "--groups", "")
        refused(code, err, "names no group")
        assert not (tmp_path / "run").exists()
    from tdc_agent.core.errors import DataError
    from tdc_agent.evaluation.fd import frechet

    with probe(4, "FD from 2 samples", tmp_path):
        with pytest.raises(DataError, match="at least"):
            frechet(np.random.rand(2, 4), np.random.rand(50, 4))


# --- 5: resource bombs --------------------------------------------------------------------------------

BOMB = "\n".join([f"a0: &a0 [{', '.join(['x'] * 9)}]"] +
                 [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n"


def test_yaml_alias_bomb_is_refused_at_once(cli, tmp_path):
    (tmp_path / "bomb.yaml").write_text(BOMB)
    with probe(5, "YAML alias bomb", tmp_path):
        t0 = time.time()
        code, _, err = cli("plan", "--config", tmp_path / "bomb.yaml", "--out", tmp_path / "p")
        refused(code, err, "aliases")
        assert time.time() - t0 < 10 and not (tmp_path / "p").exists()


def test_oversized_files_are_refused_before_reading(cli, base_model, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(base_model, model)
    with open(model / "pruning.json", "wb") as f:  # a sparse 40 MB file: refused by its size, not parsed
        f.truncate(40 * 2**20)
    with probe(5, "40 MB pruning record", tmp_path):
        t0 = time.time()
        code, _, err = cli("sample", "--model", model, "--num", "2", "--steps", "2", "-q", "--out", tmp_path / "s")
        refused(code, err, "pruning record", "MB")
        assert time.time() - t0 < 20


@pytest.mark.parametrize("field,value", [("layers_per_block", 2000), ("block_out_channels", [32] * 40),
                                         ("sample_size", 100000), ("in_channels", 10**6)])
def test_architecture_fields_are_bounded(cli, base_model, tmp_path, field, value):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(base_model, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg[field] = value
    (model / "config.json").write_text(json.dumps(cfg))
    with probe(5, f"{field}={value if not isinstance(value, list) else len(value)}", tmp_path):
        t0 = time.time()
        code, _, err = cli("sample", "--model", model, "--num", "2", "--steps", "2", "-q", "--out", tmp_path / "s")
        refused(code, err, field)
        assert time.time() - t0 < 20


@pytest.mark.parametrize("override", ["data.image_size=4096", "stage1.batch_size=2000000000"])
def test_sizes_that_allocate_are_bounded(cli, make_config, tmp_path, override):
    with probe(5, override, tmp_path):
        code, _, err = cli("train-base", "--config", make_config(), "--run-dir", tmp_path / "run", "-q", override)
        refused(code, err, override.split("=")[0])
        assert not (tmp_path / "run").exists()


def test_out_of_memory_is_one_paragraph(cli, base_model, tmp_path):
    # a real allocation failure: a model whose metadata says 1024x1024 images, sampled in one batch of
    # 65536 (both within their bounds) asks for 256 GB at once
    import shutil

    model = tmp_path / "model"
    shutil.copytree(base_model, model)
    meta = json.loads((model / "tdc_model.json").read_text())
    meta["image_shape"] = [1, 1024, 1024]
    (model / "tdc_model.json").write_text(json.dumps(meta))
    with probe(5, "allocation failure (256 GB batch)", tmp_path):
        code, _, err = cli("sample", "--model", model, "--num", "65536", "--batch-size", "65536", "--steps", "2",
                           "-q", "--out", tmp_path / "s")
        refused(code, err, "out of memory", "batch")
        assert not (tmp_path / "s").exists()


# --- 6: prompt templates -------------------------------------------------------------------------------

@pytest.mark.parametrize("placeholder", ["{limit_macs:d}", "{candidates:>999999999}", "{limit_macs!r}",
                                         "{limit_macs[0]}", "{limit_macs.real}", "{}"])
def test_templates_allow_plain_names_only(cli, tmp_path, placeholder):
    d = tmp_path / "prompts"
    assert cli("prompts", "init", d)[0] == 0
    text = (d / "round.md").read_text()
    (d / "round.md").write_text(text + f"\nextra {placeholder}\n")
    with probe(6, f"round.md with {placeholder}", tmp_path):
        code, _, err = cli("prompts", "validate", "--prompt-dir", d)
        refused(code, err, "round.md")


def test_validated_templates_render_and_directory_template_is_refused(cli, tmp_path):
    from tdc_agent.agent.prompts import VARIABLES, load_prompts

    ps = load_prompts(None)
    for name, (req, opt) in VARIABLES.items():
        assert "12345" in ps.render(name, **{v: 12345 for v in req | opt})
    d = tmp_path / "prompts"
    d.mkdir()
    (d / "round.md").mkdir()
    with probe(6, "round.md is a directory", tmp_path):
        code, _, err = cli("prompts", "validate", "--prompt-dir", d)
        refused(code, err, str(d / "round.md"), "not a file")


def test_run_preflight_checks_templates_before_stage1(make_config, tmp_path):
    d = tmp_path / "prompts"
    assert _cli(["prompts", "init", d]).returncode == 0
    (d / "round.md").write_text((d / "round.md").read_text() + "\n{limit_macs:d}\n")
    from openai_server import FakeOpenAI

    with FakeOpenAI() as srv, probe(6, "run with {limit_macs:d} fails in the preflight", tmp_path):
        p = _cli(["run", "--config", make_config(), "--run-dir", tmp_path / "run", "-q", "agent.llm=openai:m",
                  f"agent.base_url={srv.url}", f"agent.prompt_dir={d}"], env={"OPENAI_API_KEY": "k-0123456789"})
        refused(p.returncode, p.stderr, "round.md", "format spec")
        assert not (tmp_path / "run").exists()


# --- 8: a read-only or full memory bank is not called corrupt -------------------------------------------

def test_read_only_and_full_banks_are_named_so():
    import errno
    import sqlite3

    from tdc_agent.agent.memory import failure_advice

    db = Path(os.environ.get("TMPDIR", "/tmp")) / f"ro-{os.getpid()}.sqlite3"
    sqlite3.connect(db).execute("create table t(x)").connection.commit()
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        with pytest.raises(sqlite3.OperationalError) as ro:
            con.execute("insert into t values (1)")
    finally:
        db.unlink()
    msg = failure_advice(ro.value, "BANK")
    assert "read-only" in msg and "keep it" in msg and "corrupt" not in msg
    full = failure_advice(OSError(errno.ENOSPC, "No space left on device"), "BANK")
    assert "full" in full and "corrupt" not in full
    assert "corrupt" in failure_advice(ValueError("file is not a database"), "BANK")


@pytest.mark.skipif(os.geteuid() == 0 and not Path("/usr/bin/setpriv").exists(), reason="needs a non-root user")
def test_memory_export_reads_a_read_only_bank():
    """A bank its reader may not write (here: another user's, read-only) is listed and exported as it is."""
    import shutil
    import tempfile

    from tdc_agent.agent.memory import MemoryBank, MemoryRecord

    root = Path(tempfile.mkdtemp(prefix="tdc-ro-"))  # pytest's tmp dirs are private to root
    root.chmod(0o755)
    mem, out = root / "mem", root / "out"
    out.mkdir()
    out.chmod(0o777)
    try:
        bank = MemoryBank(["a"], "h", path=str(mem))
        bank.add(MemoryRecord(id="r0", run_id="x", group=0, t_start=0, t_end=3, limit_macs=1.0, levels={"a": 0.5}))
        del bank
        before = files_of(mem)
        for p in [mem, *mem.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        env = {**python_env(), "HOME": str(out), "TDC_AGENT_CACHE": str(out / "cache")}
        with probe(8, "memory export of a read-only bank", root):
            p = subprocess.run([*prefix, PYTHON, "-m", "tdc_agent.cli", "memory", "export", "--memory-dir", str(mem),
                                "--out", str(out / "e.json")], env=env, capture_output=True, text=True, timeout=300,
                               cwd=str(out))
            assert p.returncode == 0, p.stderr
            assert json.loads((out / "e.json").read_text())[0]["id"] == "r0"
            assert files_of(mem) == before
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(root, ignore_errors=True)


# --- 9: smaller --------------------------------------------------------------------------------------------

def test_evaluate_on_an_unrelated_directory_writes_nothing(cli, make_config, tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.jpg").write_bytes(b"\xff\xd8")
    before = files_of(d)
    for verb in ("evaluate", "assemble"):
        with probe(9, f"{verb} on an unrelated directory", tmp_path):
            code, _, err = cli(verb, "--config", make_config(), "--run-dir", d)
            refused(code, err, "not a tdc-agent run directory")
            assert files_of(d) == before and sorted(p.name for p in d.iterdir()) == ["cat.jpg"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v1", "http://[::1/v1", "http://[::zz]:80/v1", "ftp://h/v1"])
def test_bad_ports_and_malformed_urls_are_one_paragraph(cli, make_config, tmp_path, url):
    with probe(9, f"base URL {url}", tmp_path):
        code, _, err = cli("run", "--config", make_config(), "--run-dir", tmp_path / "r", "-q",
                           "agent.llm=openai:m", f"agent.base_url={url}")
        refused(code, err, "agent.base_url")


def test_markup_and_emoji_codes_in_messages_are_text(cli, make_config, tmp_path):
    with probe(9, "markup in a message", tmp_path):
        code, _, err = cli("plan", "--config", tmp_path / "[bold]:x:[/bold].yaml")
        refused(code, err, "[bold]:x:[/bold].yaml")
        assert "❌" not in err


# --- 1: one secret, planted by each route, appears nowhere (plain or base64) -----------------------------

def _forms(secret: str) -> list[str]:
    return [secret, base64.b64encode(secret.encode()).decode(), base64.urlsafe_b64encode(secret.encode()).decode()]


def _assert_nowhere(secrets: list[str], texts: list[str], roots: list[Path]) -> None:
    forms = [f for s in secrets for f in _forms(s)]
    for t in texts:
        for f in forms:
            assert f not in t, f"{f!r} leaked to the terminal"
    for root in roots:
        for p, data in files_of(root).items():
            for f in forms:
                assert f.encode() not in data, f"{f!r} leaked into {p}"


def test_redact_scrubs_userinfo_basic_and_seen_tokens():
    from tdc_agent.core.redaction import redact, register_url_secrets

    register_url_secrets("http://alice:Pw-userinfo-7781@host/v1")
    basic = base64.b64encode(b"alice:Pw-userinfo-7781").decode()
    out = redact(f"401: header was Authorization: Basic {basic}; again {basic}; Pw-userinfo-7781")
    assert "Pw-userinfo-7781" not in out and basic not in out and "Basic" in out
    out = redact("Bearer tok-seen-once-123456789 ... later tok-seen-once-123456789")
    assert "tok-seen-once" not in out
    out = redact("later, alone: tok-seen-once-123456789")
    assert "tok-seen-once" not in out
    # "basic" as an English word, and an id that contains "sk-", are left alone
    assert redact("a basic scheme for task-0123456789") == "a basic scheme for task-0123456789"


def test_memory_records_are_scrubbed_in_the_bank_and_on_export(cli, tmp_path, monkeypatch):
    from tdc_agent.agent.memory import MemoryBank, MemoryRecord

    secret = "k3y-in-rationale-0042-" + "x" * 8
    monkeypatch.setenv("TDC_TEST_API_KEY", secret)
    bank = MemoryBank(["a"], "h", path=str(tmp_path / "mem"))
    bank.add(MemoryRecord(id="r0", run_id="x", group=0, t_start=0, t_end=3, limit_macs=1.0, levels={"a": 0.5},
                          rationale=f"my key is {secret}", error=f"Authorization: Bearer {secret}"))
    del bank
    with probe(1, "key echoed in a tool argument: memory bank and export", tmp_path):
        code, out, err = cli("memory", "export", "--memory-dir", tmp_path / "mem", "--out", tmp_path / "e.json")
        assert code == 0, err
        assert "[REDACTED]" in (tmp_path / "e.json").read_text()
        _assert_nowhere([secret], [out, err], [tmp_path])


AGENT = {"rounds": 1, "candidates": 2, "eval_batch_size": 16, "eval_timesteps": 2, "max_retries": 0,
         "timeout_s": 10, "criterion": "magnitude", "max_llm_calls_per_round": 6, "max_round_retries": 0}


@pytest.mark.parametrize("route", ["env key", "api_key_env", "url userinfo", "error body", "tool argument"])
def test_a_planted_secret_appears_nowhere(tmp_path, route):
    from openai_server import FakeOpenAI, tool_call

    secret = f"Plant3d-{route.replace(' ', '-')}-0123456789"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, agent=AGENT)))
    # the key itself is what a server echoes in an error body or the LLM echoes into a tool argument
    env = {"OPENAI_API_KEY": secret if route != "url userinfo" else "sk-ordinary-key-for-the-test-000"}
    extra: list[str] = []
    if route == "api_key_env":
        env["OPENAI_API_KEY"] = ""
        env["TDC_PLAIN_NAME"] = secret
        extra.append("agent.api_key_env=TDC_PLAIN_NAME")
    script: list = []
    echo = {"status": 401, "echo_auth": True}
    if route in ("env key", "api_key_env", "url userinfo"):
        script = [echo]
    elif route == "error body":
        script = [{"status": 400, "body": {"error": {"message": f"bad request; your token {secret} :x: [red]"}}}]
    else:
        script = [{"tool_calls": [tool_call("evaluate_scheme", {"levels": {}, "rationale": f"key={secret} ok"})]},
                  {"tool_calls": [tool_call("evaluate_scheme", {"levels": {}, "rationale": f"and {secret}"})]}]
    with FakeOpenAI(script) as srv:
        url = srv.url.replace("http://", f"http://alice:{secret}@") if route == "url userinfo" else srv.url
        p = _cli(["prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config", cfg_path,
                  "--llm", "openai:fake-model", "--llm-base-url", url, "--out", tmp_path / "r", *extra], env=env)
        seen = json.dumps(srv.headers) + json.dumps(srv.requests)
    with probe(1, f"secret by {route}", tmp_path):
        assert "Traceback" not in p.stderr, p.stderr
        if route == "url userinfo":
            assert secret in seen or base64.b64encode(f"alice:{secret}".encode()).decode() in seen or \
                p.returncode == 2, "the credentials must reach the server (or be refused)"
        exp = _cli(["memory", "export", "--run-dir", tmp_path / "r", "--out", tmp_path / "export.json"], env=env) \
            if (tmp_path / "r" / "memory").is_dir() else None
        texts = [p.stdout, p.stderr] + ([exp.stdout, exp.stderr] if exp else [])
        _assert_nowhere([secret, f"alice:{secret}"], texts, [tmp_path / "r", tmp_path / "runs"] +
                        ([tmp_path / "export.json"] if exp else []))
        assert "❌" not in p.stderr
