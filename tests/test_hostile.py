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
from pathlib import Path

import numpy as np
import pytest

import forkserver
import yaml

from conftest import PYTHON, ROOT, python_env, tiny_config_dict
from probes import CLASSES, RECORDS, TRACEBACK, children_cpu, files_of, probe, refused, seen, tree

# A bound on how long a refusal may take before it is a hang (an unbounded alias bomb ran for minutes):
# a guard against regressions, not a timing claim. The sweep's report gives the measured times.
HANG_S = 120


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every probe runs in its own empty directory: a stray relative write lands where "wrote nothing"
    looks."""
    monkeypatch.chdir(tmp_path)


def _cli(args: list, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``tdc-agent`` in a subprocess (its console-script entry point); reported to a running probe."""
    e = python_env()
    e.update(env or {})
    t0, c0 = time.monotonic(), children_cpu()
    p = forkserver.run([PYTHON, "-m", "tdc_agent.cli", *map(str, args)], env=e, capture_output=True, text=True,
                       timeout=600, cwd=cwd)
    cpu = getattr(p, "cpu_s", None)  # a fork-server command is not this process's child
    seen(p.stdout, p.stderr, code=p.returncode, seconds=time.monotonic() - t0,
         cpu_s=cpu if cpu is not None else children_cpu() - c0)
    return p


def test_a_probe_is_held_only_when_its_assertions_pass(monkeypatch):
    """The recorder itself: tried always, held only after the block's assertions, tracebacks counted."""
    monkeypatch.delenv("TDC_FAULT_SUMMARY", raising=False)  # these three are no probes of tdc-agent
    n = len(RECORDS)
    with probe(2, "self-check: holds"):
        seen("Usage: ...", code=2, seconds=0.5, cpu_s=0.25)
    with pytest.raises(AssertionError), probe(2, "self-check: an assertion fails"):
        seen(f"{TRACEBACK}:\n  ...", code=1, seconds=0.1)  # CPU time unknown: -1
        assert False
    with pytest.raises(KeyError), probe(2, "self-check: an exception escapes"):
        raise KeyError("x")
    held, failed, escaped = RECORDS[n:]
    assert held["held"] and held["calls"] == [(2, 0.5, 0.25)] and held["tracebacks"] == 0
    assert not failed["held"] and failed["tracebacks"] == 1 and failed["calls"] == [(1, 0.1, -1.0)]
    assert not escaped["held"] and escaped["tracebacks"] == 1


def test_the_report_lists_every_class(tmp_path):
    """tools/reliability_report.py on a summary: one row per class of tests/probes.py, a class without
    probes shown as such, tried/held/tracebacks summed, the slowest exit-2 call of a refusal."""
    summary = tmp_path / "faults.jsonl"
    recs = [{"hostile_class": k, "class_name": name, "probe": f"p{k}", "held": True, "tracebacks": 0, "refusal": True,
             "calls": [[2, 0.25 * k, 0.125 * k]], "seconds": 0.3 * k} for k, name in CLASSES.items() if k != 8]
    recs.append({"hostile_class": 3, "class_name": CLASSES[3], "probe": "broken one", "held": False, "tracebacks": 1,
                 "refusal": True, "calls": [[1, 9.0, 8.0]], "seconds": 9.1})
    summary.write_text("".join(json.dumps(r) + "\n" for r in recs))
    p = subprocess.run([PYTHON, str(ROOT / "tools" / "reliability_report.py"), str(summary), "--out-dir",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "out" / "reliability.md").read_text()
    got = json.loads((tmp_path / "out" / "reliability.json").read_text())["hostile_classes"]
    assert list(got) == [str(k) for k in CLASSES]
    for k, name in CLASSES.items():
        assert (f"| {k}. {name} |" in md) != (k == 8), k
    assert "| 8. (no probe recorded) | 0 | 0 |" in md
    assert got["3"] == {**got["3"], "tried": 2, "held": 1, "tracebacks": 1, "broke": ["broken one"],
                        "slowest_refusal_s": 0.75, "most_refusal_cpu_s": 0.375, "refusal_exit_codes": {"1": 1, "2": 1}}
    assert "| all | 9 | 8 | 1 | 9 |" in md


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
    # relative paths (--out x) land in tmp_path (the working directory): a refusal leaves it empty
    with probe(2, " ".join(args)):
        code, out, err = cli(*args)
        refused(code, err, needle, "Usage:")
        assert TRACEBACK not in out and tree(tmp_path) == {}


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
        before = tree(tmp_path)
        with probe(3, name):
            code, _, err = cli(*args)
            refused(code, err, needle)
            assert tree(tmp_path) == before  # the file in the way is untouched, nothing else written


def test_locks_that_is_a_file_and_export_to_a_directory(cli, make_config, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "locks").write_text("not a directory")
    cfg = make_config()
    before = tree(run)
    with probe(3, "RUN/locks is a file"):
        code, _, err = cli("train-base", "--config", cfg, "--run-dir", run, "-q")
        refused(code, err, str(run / "locks"))
        assert tree(run) == before
    from tdc_agent.agent.memory import MemoryBank, MemoryRecord

    bank = MemoryBank(["a"], "h", path=str(tmp_path / "mem"))
    bank.add(MemoryRecord(id="r0", run_id="x", group=0, t_start=0, t_end=3, limit_macs=1.0, levels={"a": 0.5}))
    (tmp_path / "out.json").mkdir()
    before = tree(tmp_path / "mem")
    with probe(3, "memory export --out a directory"):
        code, _, err = cli("memory", "export", "--memory-dir", tmp_path / "mem", "--out", tmp_path / "out.json")
        refused(code, err, str(tmp_path / "out.json"), "directory")
        assert tree(tmp_path / "out.json") == {} and tree(tmp_path / "mem") == before


# --- 4: bad data refused with one paragraph ----------------------------------------------------------

@pytest.mark.parametrize("kind,arr,needle", [
    ("float 0-255", np.full((12, 8, 8, 1), 200.0, np.float32), "divide by 255"),
    ("uint16", np.full((12, 8, 8, 1), 60000, np.uint16), "65535"),
    ("int64 negative", np.full((12, 8, 8, 1), -5, np.int64), "outside 0..255"),
])
def test_images_out_of_range_are_refused_with_the_range(cli, make_config, tmp_path, kind, arr, needle):
    np.savez(tmp_path / "d.npz", images=arr)
    cfg = make_config()
    before = tree(tmp_path)
    with probe(4, f"npz {kind}"):
        code, _, err = cli("train-base", "--config", cfg, "--run-dir", tmp_path / "run", "-q",
                           "data.name=npz", f"data.root={tmp_path / 'd.npz'}")
        refused(code, err, needle, f"{arr.min():g}")
        assert tree(tmp_path) == before


def test_images_in_range_still_load():
    from tdc_agent.core.data import images_from_array

    with probe(4, "images in range (int64 0..252, float -1..1) still load"):
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
    cfg = make_config()
    before = tree(tmp_path)
    with probe(4, override):
        code, _, err = cli("run", "--config", cfg, "--run-dir", tmp_path / "run", "-q", override)
        refused(code, err, needle)
        assert tree(tmp_path) == before


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
        before, model = tree(tmp_path), tree(base_model)
        with probe(4, f"sample {name}"):
            code, _, err = cli("sample", "--model", base_model, "--num", "2", "-q", "--out", tmp_path / "s", *args)
            refused(code, err, needle)
            assert tree(tmp_path) == before and tree(base_model) == model


def test_empty_groups_and_fd_from_few_samples(cli, make_config, tmp_path):
    cfg = make_config()
    before = tree(tmp_path)
    with probe(4, '--groups ""'):
        code, _, err = cli("run", "--config", cfg, "--run-dir", tmp_path / "run", "-q", "--groups", "")
        refused(code, err, "names no group")
        assert tree(tmp_path) == before
    from tdc_agent.core.errors import DataError
    from tdc_agent.evaluation.fd import frechet

    with probe(4, "FD from 2 samples"):
        with pytest.raises(DataError, match="at least"):
            frechet(np.random.rand(2, 4), np.random.rand(50, 4))


# --- 5: resource bombs --------------------------------------------------------------------------------

BOMB = "\n".join([f"a0: &a0 [{', '.join(['x'] * 9)}]"] +
                 [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n"


def test_yaml_alias_bomb_is_refused_at_once(cli, tmp_path):
    (tmp_path / "bomb.yaml").write_text(BOMB)
    before = tree(tmp_path)
    with probe(5, "YAML alias bomb") as p:
        code, _, err = cli("plan", "--config", tmp_path / "bomb.yaml", "--out", tmp_path / "p")
        refused(code, err, "aliases")
        assert tree(tmp_path) == before and p.calls[-1][1] < HANG_S


def test_oversized_files_are_refused_before_reading(cli, base_model, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(base_model, model)
    with open(model / "pruning.json", "wb") as f:  # a sparse 40 MB file: refused by its size, not parsed
        f.truncate(40 * 2**20)
    before = tree(tmp_path)
    with probe(5, "40 MB pruning record") as p:
        code, _, err = cli("sample", "--model", model, "--num", "2", "--steps", "2", "-q", "--out", tmp_path / "s")
        refused(code, err, "pruning record", "MB")
        assert tree(tmp_path) == before and p.calls[-1][1] < HANG_S


@pytest.mark.parametrize("field,value", [("layers_per_block", 2000), ("block_out_channels", [32] * 40),
                                         ("sample_size", 100000), ("in_channels", 10**6)])
def test_architecture_fields_are_bounded(cli, base_model, tmp_path, field, value):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(base_model, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg[field] = value
    (model / "config.json").write_text(json.dumps(cfg))
    before = tree(tmp_path)
    with probe(5, f"{field}={value if not isinstance(value, list) else len(value)}") as p:
        code, _, err = cli("sample", "--model", model, "--num", "2", "--steps", "2", "-q", "--out", tmp_path / "s")
        refused(code, err, field)
        assert tree(tmp_path) == before and p.calls[-1][1] < HANG_S


@pytest.mark.parametrize("override", ["data.image_size=4096", "stage1.batch_size=2000000000"])
def test_sizes_that_allocate_are_bounded(cli, make_config, tmp_path, override):
    cfg = make_config()
    before = tree(tmp_path)
    with probe(5, override):
        code, _, err = cli("train-base", "--config", cfg, "--run-dir", tmp_path / "run", "-q", override)
        refused(code, err, override.split("=")[0])
        assert tree(tmp_path) == before


def test_out_of_memory_is_one_paragraph(cli, base_model, tmp_path):
    # a real allocation failure: a model whose metadata says 1024x1024 images, sampled in one batch of
    # 65536 (both within their bounds) asks for 256 GB at once
    import shutil

    model = tmp_path / "model"
    shutil.copytree(base_model, model)
    meta = json.loads((model / "tdc_model.json").read_text())
    meta["image_shape"] = [1, 1024, 1024]
    (model / "tdc_model.json").write_text(json.dumps(meta))
    before = tree(tmp_path)
    with probe(5, "allocation failure (256 GB batch)"):
        code, _, err = cli("sample", "--model", model, "--num", "65536", "--batch-size", "65536", "--steps", "2",
                           "-q", "--out", tmp_path / "s")
        refused(code, err, "out of memory", "batch")
        assert tree(tmp_path) == before


# --- 6: prompt templates -------------------------------------------------------------------------------

@pytest.mark.parametrize("placeholder", ["{limit_macs:d}", "{candidates:>999999999}", "{limit_macs!r}",
                                         "{limit_macs[0]}", "{limit_macs.real}", "{}"])
def test_templates_allow_plain_names_only(cli, tmp_path, placeholder):
    d = tmp_path / "prompts"
    assert cli("prompts", "init", d)[0] == 0
    text = (d / "round.md").read_text()
    (d / "round.md").write_text(text + f"\nextra {placeholder}\n")
    before = tree(tmp_path)
    with probe(6, f"round.md with {placeholder}"):
        code, _, err = cli("prompts", "validate", "--prompt-dir", d)
        refused(code, err, "round.md")
        assert tree(tmp_path) == before


def test_validated_templates_render_and_directory_template_is_refused(cli, tmp_path):
    from tdc_agent.agent.prompts import VARIABLES, load_prompts

    with probe(6, "the shipped templates render every variable they validate"):
        ps = load_prompts(None)
        for name, (req, opt) in VARIABLES.items():
            assert "12345" in ps.render(name, **{v: 12345 for v in req | opt})
    d = tmp_path / "prompts"
    d.mkdir()
    (d / "round.md").mkdir()
    before = tree(tmp_path)
    with probe(6, "round.md is a directory"):
        code, _, err = cli("prompts", "validate", "--prompt-dir", d)
        refused(code, err, str(d / "round.md"), "not a file")
        assert tree(tmp_path) == before


def test_run_preflight_checks_templates_before_stage1(make_config, tmp_path):
    d = tmp_path / "prompts"
    assert _cli(["prompts", "init", d]).returncode == 0
    (d / "round.md").write_text((d / "round.md").read_text() + "\n{limit_macs:d}\n")
    from openai_server import FakeOpenAI

    cfg = make_config()
    before = tree(tmp_path)
    with FakeOpenAI() as srv, probe(6, "run with {limit_macs:d} fails in the preflight"):
        p = _cli(["run", "--config", cfg, "--run-dir", tmp_path / "run", "-q", "agent.llm=openai:m",
                  f"agent.base_url={srv.url}", f"agent.prompt_dir={d}"], env={"OPENAI_API_KEY": "k-0123456789"},
                 cwd=tmp_path)
        refused(p.returncode, p.stderr, "round.md", "format spec")
        assert tree(tmp_path) == before and not srv.requests  # refused before stage 1 and before any LLM call


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
    with probe(8, "a read-only bank is called read-only (keep it), not corrupt"):
        msg = failure_advice(ro.value, "BANK")
        assert "read-only" in msg and "keep it" in msg and "corrupt" not in msg
    with probe(8, "a full disk is called full, not corrupt"):
        full = failure_advice(OSError(errno.ENOSPC, "No space left on device"), "BANK")
        assert "full" in full and "corrupt" not in full
    with probe(8, "a bank that is no database is still called corrupt"):
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
        with probe(8, "memory export of a read-only bank"):
            t0, c0 = time.monotonic(), children_cpu()
            p = subprocess.run([*prefix, PYTHON, "-m", "tdc_agent.cli", "memory", "export", "--memory-dir", str(mem),
                                "--out", str(out / "e.json")], env=env, capture_output=True, text=True, timeout=300,
                               cwd=str(out))
            seen(p.stdout, p.stderr, code=p.returncode, seconds=time.monotonic() - t0, cpu_s=children_cpu() - c0)
            assert p.returncode == 0 and TRACEBACK not in p.stderr, p.stderr
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
    cfg = make_config()
    before = tree(tmp_path)
    for verb in ("evaluate", "assemble"):
        with probe(9, f"{verb} on an unrelated directory"):
            code, _, err = cli(verb, "--config", cfg, "--run-dir", d)
            refused(code, err, "not a tdc-agent run directory")
            assert tree(tmp_path) == before and sorted(p.name for p in d.iterdir()) == ["cat.jpg"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v1", "http://[::1/v1", "http://[::zz]:80/v1", "ftp://h/v1"])
def test_bad_ports_and_malformed_urls_are_one_paragraph(cli, make_config, tmp_path, url):
    cfg = make_config()
    before = tree(tmp_path)
    with probe(9, f"base URL {url}"):
        code, _, err = cli("run", "--config", cfg, "--run-dir", tmp_path / "r", "-q",
                           "agent.llm=openai:m", f"agent.base_url={url}")
        refused(code, err, "agent.base_url")
        assert tree(tmp_path) == before


def test_markup_and_emoji_codes_in_messages_are_text(cli, make_config, tmp_path):
    with probe(9, "markup in a message"):
        code, _, err = cli("plan", "--config", tmp_path / "[bold]:x:[/bold].yaml")
        refused(code, err, "[bold]:x:[/bold].yaml")
        assert "❌" not in err and tree(tmp_path) == {}


# --- 1: one secret, planted by each route, appears nowhere (plain or base64) -----------------------------

def _forms(secret: str) -> list[str]:
    """``secret`` as text, and what any standard or URL-safe base64 text that encodes it contains, at
    each of the three byte alignments (the characters that depend on the secret's bytes alone): so an
    ``Authorization: Basic base64(user:secret)`` or any other encoding of a longer text is found too."""
    raw = secret.encode()
    forms = {secret}
    for k in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * k + raw).decode()
            # without the first group (it mixes in the k filler bytes) and the last (padding or what follows)
            forms.add(text[4 if k else 0:(len(text) // 4 - 1) * 4])
    return sorted(forms)


def test_the_secret_forms_find_any_base64_that_encodes_the_secret():
    secret = "Plant3d-self-check-0123456789"
    for prefix in (b"", b"a", b"alice:", b"Bearer xy"):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(prefix + secret.encode() + b"!tail").decode()
            assert any(f in text for f in _forms(secret)), (prefix, text)
    assert min(len(f) for f in _forms(secret)) >= 24  # long enough never to match by chance


def _assert_nowhere(secrets: list[str], texts: list[str], roots: list[Path]) -> None:
    """No form of any secret in ``texts`` (terminal output) or in any file under ``roots`` (read as
    bytes: Chroma's sqlite database and index files included)."""
    forms = [f for s in secrets for f in _forms(s)]
    for t in texts:
        for f in forms:
            assert f not in t, f"{f!r} leaked to the terminal"
    scanned = 0
    for root in roots:
        for p, data in files_of(root).items():
            scanned += 1
            for f in forms:
                assert f.encode() not in data, f"{f!r} leaked into {p}"
    assert scanned, f"no file under {roots}: nothing was checked"


def test_redact_scrubs_userinfo_basic_and_seen_tokens():
    from tdc_agent.core.redaction import redact, register_url_secrets

    with probe(1, "URL userinfo and its base64 Basic form, a token seen once"):
        register_url_secrets("http://alice:Pw-userinfo-7781@host/v1")
        basic = base64.b64encode(b"alice:Pw-userinfo-7781").decode()
        out = redact(f"401: header was Authorization: Basic {basic}; again {basic}; Pw-userinfo-7781")
        assert "Pw-userinfo-7781" not in out and basic not in out and "Basic" in out
        out = redact("Bearer tok-seen-once-123456789 ... later tok-seen-once-123456789")
        assert "tok-seen-once" not in out
        out = redact("later, alone: tok-seen-once-123456789")
        assert "tok-seen-once" not in out
    with probe(1, "'basic' as a word and 'task-...' ids are left alone"):
        assert redact("a basic scheme for task-0123456789") == "a basic scheme for task-0123456789"


def test_memory_records_are_scrubbed_in_the_bank_and_on_export(cli, tmp_path, monkeypatch):
    from tdc_agent.agent.memory import MemoryBank, MemoryRecord

    secret = "k3y-in-rationale-0042-" + "x" * 8
    monkeypatch.setenv("TDC_TEST_API_KEY", secret)
    bank = MemoryBank(["a"], "h", path=str(tmp_path / "mem"))
    bank.add(MemoryRecord(id="r0", run_id="x", group=0, t_start=0, t_end=3, limit_macs=1.0, levels={"a": 0.5},
                          rationale=f"my key is {secret}", error=f"Authorization: Bearer {secret}"))
    del bank
    with probe(1, "key echoed in a tool argument: memory bank and export"):
        code, out, err = cli("memory", "export", "--memory-dir", tmp_path / "mem", "--out", tmp_path / "e.json")
        assert code == 0, err
        assert "[REDACTED]" in (tmp_path / "e.json").read_text()
        _assert_nowhere([secret], [out, err], [tmp_path])


AGENT = {"rounds": 1, "candidates": 2, "eval_batch_size": 16, "eval_timesteps": 2, "max_retries": 0,
         "timeout_s": 10, "criterion": "magnitude", "max_llm_calls_per_round": 6, "max_round_retries": 0}


ROUTES = ["env key", "api_key_env", "url userinfo", "error body", "tool argument"]


@pytest.mark.parametrize("route", ROUTES)
def test_a_planted_secret_appears_nowhere(tmp_path, route):
    """One unique secret, planted by one route, then searched for (plain and base64) in every file
    under the test's directory (run directory, memory bank, export) and the cache, and in everything
    printed. Each route must also be shown to have carried the secret to a sink, scrubbed there:
    otherwise the search would pass vacuously."""
    from openai_server import FakeOpenAI, tool_call

    secret = f"Plant3d-{route.replace(' ', '-')}-0123456789"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, agent=AGENT)))
    # the key itself is what a server echoes in an error body or the LLM echoes into a tool argument
    env = {"OPENAI_API_KEY": secret if route != "url userinfo" else "sk-ordinary-key-for-the-test-000"}
    extra: list[str] = []
    if route == "api_key_env":
        env["OPENAI_API_KEY"] = ""
        env["TDC_PLAIN_NAME"] = secret  # a name the scrubber knows only through agent.api_key_env
        extra.append("agent.api_key_env=TDC_PLAIN_NAME")
    if route in ("env key", "api_key_env", "url userinfo"):
        script: list = [{"status": 401, "echo_auth": True}]  # a server that quotes the Authorization header
    elif route == "error body":
        script = [{"status": 400, "body": {"error": {"message": f"bad request; your token {secret} :x: [red]"}}}]
    else:
        script = [{"tool_calls": [tool_call("evaluate_scheme", {"levels": {}, "rationale": f"key={secret} ok"})]},
                  {"tool_calls": [tool_call("evaluate_scheme", {"levels": {}, "rationale": f"and {secret}"})]}]
    with probe(1, f"secret planted by {route}"), FakeOpenAI(script) as srv:
        url = srv.url.replace("http://", f"http://alice:{secret}@") if route == "url userinfo" else srv.url
        p = _cli(["prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--config", cfg_path,
                  "--llm", "openai:fake-model", "--llm-base-url", url, "--out", tmp_path / "r", *extra], env=env,
                 cwd=tmp_path)
        assert p.returncode in (0, 2) and TRACEBACK not in p.stdout + p.stderr, p.stderr
        # the route carried the secret: it reached the server, and came back to a sink that scrubbed it
        auth = [v for h in srv.headers for k, v in h.items() if k.lower() == "authorization"]
        if route == "url userinfo":
            assert f"Basic {base64.b64encode(f'alice:{secret}'.encode()).decode()}" in auth, auth
            assert "Authorization: Basic [REDACTED]" in p.stderr, p.stderr
        else:
            assert f"Bearer {secret}" in auth, auth
        if route in ("env key", "api_key_env"):
            assert "Authorization: Bearer [REDACTED]" in p.stderr, p.stderr
        if route == "error body":
            assert "your token [REDACTED]" in p.stderr, p.stderr
        assert "[REDACTED]" in (tmp_path / "r" / "transcript.jsonl").read_text()
        exp = _cli(["memory", "export", "--run-dir", tmp_path / "r", "--out", tmp_path / "export.json"], env=env,
                   cwd=tmp_path)
        assert exp.returncode == 0, exp.stderr
        if route == "tool argument":  # the rationale went into the memory bank, scrubbed
            assert "key=[REDACTED] ok" in (tmp_path / "export.json").read_text()
            assert b"key=[REDACTED] ok" in (tmp_path / "r" / "memory" / "chroma.sqlite3").read_bytes()
        _assert_nowhere([secret], [p.stdout, p.stderr, exp.stdout, exp.stderr],
                        [tmp_path, Path(os.environ["TDC_AGENT_CACHE"])])
        assert "❌" not in p.stderr
