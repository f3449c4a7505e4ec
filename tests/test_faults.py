"""Crash safety: `tdc-agent run` killed with SIGKILL at seeded random failpoints, then resumed.

A reference run records every failpoint it passes (tdc_agent/faults.py). A kill chain runs the same
config in a fresh directory, killing the process at a randomly chosen (point, n-th pass) and
rerunning the same command with the next kill position, until a run finishes. The finished run must
equal the uninterrupted one: the same weights bit for bit, the same pruned structures, the same
plan, manifest and FD. `make test-faults` runs a larger sweep (TDC_FAULT_CHAINS, TDC_FAULT_KILLS,
TDC_CHAOS_RUNS) and tools/reliability_report.py turns its TDC_FAULT_SUMMARY into the README's figures.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

import forkserver

from conftest import PYTHON, python_env
from tdc_agent.core.faults import POINTS

CFG = {
    "schedule": {"name": "linear", "timesteps": 60},
    "stage1": {"steps": 6, "batch_size": 16, "ckpt_every": 2, "log_every": 1, "warmup": 1},
    "stage2": {"steps": 4, "batch_size": 16, "ckpt_every": 2, "log_every": 1, "warmup": 1},
    "sample": {"steps": 3, "num": 4},
    "evaluation": {"samples": 8},
    "agent": {"rounds": 2, "candidates": 2, "eval_batch_size": 16, "eval_timesteps": 2},
}
CHAINS = int(os.environ.get("TDC_FAULT_CHAINS", "1"))
KILLS = int(os.environ.get("TDC_FAULT_KILLS", "4"))
SEED = int(os.environ.get("TDC_FAULT_SEED", "0"))


def _run(cfg: Path, run: Path, cache: Path, **env: str) -> subprocess.CompletedProcess:
    e = {**python_env(), "TDC_AGENT_CACHE": str(cache), **env}
    return forkserver.run([PYTHON, "-m", "tdc_agent.cli", "run", "--config", str(cfg), "--run-dir", str(run), "-q"],
                          env=e, capture_output=True, text=True, timeout=600)


def _timeless(obj):
    """JSON without wall-clock fields (how long a step took differs between any two runs)."""
    if isinstance(obj, dict):
        return {k: _timeless(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_timeless(v) for v in obj]
    return obj


def artifacts(run: Path) -> dict[str, str]:
    """What must not depend on crashes: weights, structures, plan, manifest, and the measured FD."""
    out = {}
    for pattern in ("stage1/model/*", "stage2/g*/pruned/*", "stage2/g*/finetune/model/*", "progressive/**/*",
                    "plan.json"):
        for f in sorted(run.glob(pattern)):
            if f.is_file():
                data = f.read_bytes()
                if f.suffix == ".json":
                    data = json.dumps(_timeless(json.loads(data)), sort_keys=True).encode()
                out[str(f.relative_to(run))] = hashlib.sha256(data).hexdigest()[:16]
    ev = json.loads((run / "evaluation.json").read_text())
    out["fd"] = json.dumps({k: ev[k]["fd"] for k in ("base", "tdc")})
    return out


def kill_positions(trace: list[str], rng: random.Random, kills: int) -> list[str]:
    """Failpoint specs spread over the whole run: point kinds drawn round-robin (so rare points such
    as an agent round or an assembly step are hit too), each at a random pass in the reference trace,
    then ordered along the run; n counts the passes since the previous kill (a resumed process starts
    counting afresh)."""
    kinds = list(POINTS)
    rng.shuffle(kinds)
    where = {k: [i for i, name in enumerate(trace) if name == k] for k in kinds}
    picks = sorted({rng.choice(where[kinds[i % len(kinds)]]) for i in range(kills)})
    specs, prev = [], -1
    for pos in picks:
        point = trace[pos]
        specs.append(f"{point}:{trace[prev + 1:pos + 1].count(point)}")
        prev = pos
    return specs


def kill_chain(cfg: Path, run: Path, cache: Path, specs: list[str]) -> list[dict]:
    """Run with each failpoint in turn (each run resumes the previous one), then once without."""
    log = []
    for spec in [*specs, None]:
        p = _run(cfg, run, cache, **({"TDC_AGENT_FAILPOINT": spec} if spec else {}))
        fired = p.returncode == -signal.SIGKILL
        assert fired or p.returncode == 0, f"run with failpoint {spec} failed:\n{p.stderr[-3000:]}"
        log.append({"failpoint": spec, "killed": fired})
    assert not log[-1]["killed"]
    return log


# session-scoped: under pytest-xdist's loadgroup this module's tests share one worker but may be
# interleaved with other modules' tests, and a module-scoped fixture is then torn down and built again
@pytest.fixture(scope="session")
def reference(tmp_path_factory, classifier_files):
    import yaml

    from conftest import tiny_config_dict, with_classifier

    root = tmp_path_factory.mktemp("faults")
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict(root, **CFG)))
    trace = root / "trace.txt"
    with_classifier(root / "cache", classifier_files)  # the chains share this cache
    p = _run(cfg, root / "ref", root / "cache", TDC_AGENT_FAILPOINT_TRACE=str(trace))
    assert p.returncode == 0, p.stderr[-3000:]
    return cfg, root, trace.read_text().split(), artifacts(root / "ref")


def test_this_module_runs_on_one_worker(request):
    """Under `make test` (xdist --dist loadgroup) this module's tests carry their group in their id, which
    is what keeps them, and the reference run they share, on one worker (tests/conftest.py)."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not an xdist loadgroup worker")
    assert request.node.nodeid.endswith("@test_faults"), request.node.nodeid


def test_every_failpoint_is_on_the_path(reference):
    _, _, trace, _ = reference
    assert set(POINTS) <= set(trace), f"never passed: {set(POINTS) - set(trace)}"


@pytest.mark.parametrize("chain", range(CHAINS))
def test_kill_chain_resumes_to_the_uninterrupted_result(reference, chain, tmp_path):
    cfg, root, trace, expected = reference
    specs = kill_positions(trace, random.Random(SEED * 1000 + chain), KILLS)
    log = kill_chain(cfg, tmp_path / "run", root / "cache", specs)
    got = artifacts(tmp_path / "run")
    assert got.keys() == expected.keys()
    diff = [k for k in expected if got[k] != expected[k]]
    assert not diff, f"differs from the uninterrupted run after kills {log}: {diff}"
    assert sum(x["killed"] for x in log) >= 1
    summary = Path(os.environ.get("TDC_FAULT_SUMMARY", tmp_path / "summary.jsonl"))
    with open(summary, "a") as f:
        f.write(json.dumps({"seed": SEED, "chain": chain, "log": log, "artifacts_compared": len(expected)}) + "\n")


# --- bad files: fuzzed loaders fail with our errors, never a library traceback ----------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tdc_agent.core.errors import TDCError  # noqa: E402

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12)
FUZZ = settings(max_examples=int(os.environ.get("TDC_FUZZ_EXAMPLES", "25")), deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@FUZZ
@given(text=st.text(max_size=200))
def test_fuzz_config_loader(tmp_path_factory, text):
    from tdc_agent.core.config import load_config

    from tdc_agent.core.config import config_from_dict

    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text)
    try:
        cfg = load_config(path)
    except TDCError as e:
        assert str(path) in str(e) or "config" in str(e).lower()
    else:  # a file that loads is a valid config: it round-trips through its plain-data form
        assert config_from_dict(cfg.model_dump(mode="json")) == cfg


@FUZZ
@given(section=st.sampled_from(["run", "data", "model", "schedule", "plan", "stage1", "stage2", "sample",
                                "evaluation", "agent"]), value=JSON)
def test_fuzz_config_sections(section, value):
    from tdc_agent.core.config import config_from_dict

    try:
        cfg = config_from_dict({section: value})
    except TDCError as e:
        assert section in str(e), f"the error must name the section: {e}"
    else:  # accepted: the section reads back as given (defaults filled in) and round-trips
        assert config_from_dict(cfg.model_dump(mode="json")) == cfg
        if isinstance(value, dict):
            stored = getattr(cfg, section).model_dump(mode="json")
            assert set(value) <= set(stored)


def _mutations(valid: bytes):
    return st.one_of(
        st.integers(0, max(0, len(valid) - 1)).map(lambda n: valid[:n]),  # truncated
        st.tuples(st.integers(0, max(0, len(valid) - 1)), st.integers(0, 255)).map(
            lambda p: valid[:p[0]] + bytes([p[1]]) + valid[p[0] + 1:]),  # one byte changed
        st.binary(max_size=64),  # garbage
    )


def _fuzz_file(tmp_path_factory, name: str, valid: bytes, load, data, check=None) -> None:
    """A mutated ``valid`` file either fails with an error naming it, or loads and passes ``check``
    (``check(loaded, blob)``: what a file that loads must be, e.g. that it round-trips)."""
    blob = data.draw(_mutations(valid))
    path = tmp_path_factory.mktemp("f") / name
    path.write_bytes(blob)
    try:
        loaded = load(path)
    except TDCError as e:
        assert name in str(e), f"the error must name the file: {e}"
    else:
        assert check is not None, f"{name}: no check for a file that loads"
        check(loaded, blob, path)


def _same_json(loaded, blob, path):
    assert loaded == json.loads(blob)


def _tensors_round_trip(loaded, blob, path):
    import torch

    from tdc_agent.core.io import load_tensors, save_tensors

    assert isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values())
    again = path.with_name("again.safetensors")
    save_tensors(again, loaded)
    back = load_tensors(again)
    assert back.keys() == loaded.keys() and all(torch.equal(back[k], loaded[k]) for k in loaded)


@functools.lru_cache(maxsize=1)
def _valid_blobs() -> dict[str, bytes]:
    """Valid files, made once: torch.save output varies between calls (storage keys, ids), and
    hypothesis needs the same strategy on every example."""
    import tempfile

    import torch

    from tdc_agent.core.io import save_tensors

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        save_tensors(d / "w.safetensors", {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.int64)})
        torch.save({"a": torch.arange(6.0)}, d / "w.pth", _use_new_zipfile_serialization=False)
        torch.save({"a": torch.arange(6.0)}, d / "z.pth")
        return {n: (d / n).read_bytes() for n in ("w.safetensors", "w.pth", "z.pth")}


@FUZZ
@given(data=st.data())
def test_fuzz_json_and_safetensors_and_torch_files(tmp_path_factory, data):
    from tdc_agent.core.io import load_tensors, read_json
    from tdc_agent.evaluation.torchfile import read_torch_state_dict

    blobs = _valid_blobs()
    _fuzz_file(tmp_path_factory, "x.json", b'{"members": [1, 2], "format": "x"}', read_json, data, _same_json)
    _fuzz_file(tmp_path_factory, "w.safetensors", blobs["w.safetensors"], load_tensors, data, _tensors_round_trip)
    _fuzz_file(tmp_path_factory, "w.pth", blobs["w.pth"], read_torch_state_dict, data, _tensors_round_trip)
    _fuzz_file(tmp_path_factory, "z.pth", blobs["z.pth"], read_torch_state_dict, data, _tensors_round_trip)


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_plan_and_transcript(reference, tmp_path_factory, data):
    import shutil

    from tdc_agent.agent.transcript import read_transcript
    from tdc_agent.core.config import load_config
    from tdc_agent.planning.build import load_plan
    from tdc_agent.models.progressive import ProgressiveModel

    cfg, root, _, _ = reference
    ref = root / "ref"
    d = tmp_path_factory.mktemp("prog")
    prog = d / "progressive"
    if not prog.exists():
        shutil.copytree(ref / "progressive", prog)
    manifest = json.loads((ref / "progressive" / "manifest.json").read_text())
    # a field of the manifest replaced by a random JSON value, or the file's bytes mutated
    if data.draw(st.booleans()):
        target = data.draw(st.sampled_from(["format", "schedule", "image_shape", "members", "m.dir", "m.group",
                                            "m.t_start", "m.macs_thop"]))
        value = data.draw(JSON | st.sampled_from(["../../stage1/model", "/etc", "members/../../.."]))
        bad = json.loads(json.dumps(manifest))
        if target.startswith("m."):
            bad["members"][0][target[2:]] = value
        else:
            bad[target] = value
        (prog / "manifest.json").write_text(json.dumps(bad))
    else:
        (prog / "manifest.json").write_bytes(data.draw(_mutations((ref / "progressive" / "manifest.json").read_bytes())))
    try:
        pm = ProgressiveModel.load(prog)
    except TDCError as e:
        assert "manifest.json" in str(e) or "members" in str(e)
    else:  # a manifest that loads routes every timestep to one of its members, as the reference does
        ref_pm = ProgressiveModel.load(ref / "progressive")
        assert len(pm.members) == len(ref_pm.members)
        assert pm.routing.tolist() == ref_pm.routing.tolist()

    def same_plan(loaded, blob, path):  # load_plan accepts only the plan the config makes
        from tdc_agent.planning.build import build_plan

        assert loaded.to_dict() == build_plan(load_config(cfg)).to_dict()

    def events(loaded, blob, path):  # every line that parses is one event, in order
        assert isinstance(loaded, list) and all(isinstance(e.get("event"), str) for e in loaded)
        assert len(loaded) == len([line for line in blob.decode().splitlines() if line.strip()])

    _fuzz_file(tmp_path_factory, "plan.json", (ref / "plan.json").read_bytes(),
               lambda p: load_plan(p, load_config(cfg)), data, same_plan)
    _fuzz_file(tmp_path_factory, "transcript.jsonl", (ref / "stage2" / "g0" / "agent" / "transcript.jsonl").read_bytes(),
               read_transcript, data, events)


# --- bad files in a finished run: each command names the file and says what to do ----------------

REDO_G0 = ("stage2/g0/pruned", "stage2/g0/prune.json", "stage2/g0/finetune", "stage2/g0/finetune.json",
           "progressive", "evaluation.json")
CORRUPT = [
    # (file, how, what must be redone for the command to read it, command)
    ("stage1/model/model.safetensors", "truncate", (), "run"),
    ("stage1/model/config.json", "garbage", (), "run"),
    ("stage1/checkpoint/state.json", "garbage", ("stage1/model",) + REDO_G0, "run"),
    ("stage1/checkpoint/model.safetensors", "truncate", ("stage1/model",) + REDO_G0, "run"),
    ("config.yaml", "garbage", (), "run"),
    ("stage2/g0/prune.json", "garbage", (), "run"),
    ("stage2/g1/finetune.json", "truncate", (), "run"),
    ("stage2/g0/agent/group_0/rounds.json", "garbage", REDO_G0, "run"),
    ("memory/chroma.sqlite3", "garbage", REDO_G0, "run"),
    ("stage2/g0/finetune/checkpoint/optimizer.safetensors", "truncate", ("stage2/g0/finetune/model",) + REDO_G0[3:],
     "run"),
    ("progressive/manifest.json", "truncate", (), "sample"),
    ("progressive/members/g0/model.safetensors", "truncate", (), "sample"),
    ("progressive/members/g1/pruning.json", "garbage", (), "sample"),
    ("stage2/g0/agent/transcript.jsonl", "garbage", (), "replay"),
]


# the default suite tries one file of each kind; `make test-faults` (TDC_FAULT_ALL=1) tries them all
QUICK = {"stage1/checkpoint/state.json", "config.yaml", "stage2/g0/agent/group_0/rounds.json",
         "memory/chroma.sqlite3", "progressive/manifest.json", "stage2/g0/agent/transcript.jsonl"}
CASES = CORRUPT if os.environ.get("TDC_FAULT_ALL") else [c for c in CORRUPT if c[0] in QUICK]


@pytest.mark.parametrize("rel,how,redo,command", CASES, ids=[c[0] for c in CASES])
def test_corrupt_file_is_named_and_nothing_else_is_touched(reference, tmp_path, cli, rel, how, redo, command):
    import shutil

    cfg, root, _, _ = reference
    run = tmp_path / "run"
    shutil.copytree(root / "ref", run)
    for r in redo:
        p = run / r
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    target = run / rel
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2] if how == "truncate" else b"\x00garbage\xff" * 7)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    if command == "run":
        code, out, err = cli("run", "--config", cfg, "--run-dir", run, "-q")
    elif command == "sample":
        code, out, err = cli("sample", "--model", run / "progressive", "--num", "2", "--steps", "2", "-q",
                             "--out", tmp_path / "s")
    else:
        code, out, err = cli("prune", "--method", "agent", "--config", cfg, "--base", run / "stage1" / "model",
                             "--group", "0", "--llm", f"replay:{target}", "--out", tmp_path / "p")
    assert code == 2, (out, err)
    # the file (or, for a Chroma database, its directory) is named in full
    assert "Traceback" not in err and (str(target) in err or str(target.parent) in err), err
    assert target.read_bytes()[:4] == (data[:4] if how == "truncate" else b"\x00gar"), "the bad file was replaced"
    # nothing that was fine before was deleted
    assert all(p.exists() for p in before if p != target)
    summary = Path(os.environ.get("TDC_FAULT_SUMMARY", tmp_path / "summary.jsonl"))
    with open(summary, "a") as f:
        f.write(json.dumps({"corrupt_file": rel, "how": how, "command": command, "exit_code": code}) + "\n")


# --- LLM chaos: a whole multi-group run against a server that injects random faults ----------------

@pytest.mark.parametrize("chaos_run", range(int(os.environ.get("TDC_CHAOS_RUNS", "1"))))
def test_chaos_llm_run_completes_or_fails_clearly_and_resumes(tmp_path, cli, monkeypatch, chaos_run, fresh_cache):
    import yaml

    from conftest import tiny_config_dict
    from openai_server import CHAOS, FakeOpenAI

    secret = "sk-live-CHAOS-SECRET-9f8e7d6c5b4a"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("TDC_AGENT_CACHE", str(fresh_cache(tmp_path / "cache")))
    monkeypatch.chdir(tmp_path)  # an executed injection would create ./PWNED here
    rate = float(os.environ.get("TDC_CHAOS_RATE", "0.35"))
    with FakeOpenAI(chaos=random.Random(SEED * 1000 + chaos_run), chaos_rate=rate) as srv:
        # 5 rounds: enough requests for the seeded chaos to inject several kinds of fault (a round now
        # closes itself once it has its candidates, so a scripted model makes ~2 LLM calls a round)
        # (the token cap is lifted: retried rounds re-send their conversation, and with some seeds a
        # group passes the default cap, which ends it clearly but is not what this test is about;
        # tests/test_agent_real_llm.py checks the cap)
        agent = {**CFG["agent"], "rounds": 5, "llm": "openai:fake-model", "base_url": srv.url, "timeout_s": 1.0,
                 "max_retries": 2, "max_round_retries": 3, "max_llm_calls_per_round": 12,
                 "max_tokens_per_group": 2_000_000}
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, **{**CFG, "agent": agent})))
        attempts = []
        for _ in range(6):
            code, out, err = cli("run", "--config", cfg, "--run-dir", tmp_path / "run", "-q")
            attempts.append(code)
            assert code in (0, 2), err
            assert "Traceback" not in err, err[err.find("Traceback"):][:3000]
            if code == 0:
                break
            assert "rerun" in err.lower() or "resume" in err.lower(), err  # a failure says how to go on
    assert attempts[-1] == 0, f"no success in {attempts}; faults {srv.injected}"
    run = tmp_path / "run"
    assert (run / "progressive" / "manifest.json").is_file() and (run / "report.md").is_file()
    assert sum(srv.injected.values()) >= 5 and len(srv.injected) >= 4, srv.injected
    transcripts = "".join(p.read_text() for p in run.glob("stage2/g*/agent/transcript.jsonl"))
    assert "round_retry" in transcripts or "error" in transcripts
    assert not (tmp_path / "PWNED").exists(), "LLM output was executed"
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaked and secret not in out + err, leaked
    summary = Path(os.environ.get("TDC_FAULT_SUMMARY", tmp_path / "summary.jsonl"))
    with open(summary, "a") as f:
        f.write(json.dumps({"chaos_seed": SEED * 1000 + chaos_run, "rate": rate, "requests": len(srv.requests), "injected": srv.injected,
                            "attempts": attempts, "kinds": sorted(CHAOS)}) + "\n")


# --- issue 21, class 7: `assemble` repairs what `evaluate` asks it to -------------------------------

def test_assemble_rebuilds_a_bad_manifest_and_whole_numbers_are_required(reference, tmp_path, cli):
    import shutil

    from probes import TRACEBACK, probe, refused
    from tdc_agent.models.progressive import ProgressiveModel

    cfg, root, _, _ = reference
    run = tmp_path / "run"
    shutil.copytree(root / "ref", run)
    path = run / "progressive" / "manifest.json"
    good = json.loads(path.read_text())
    overlapping = json.loads(path.read_text())
    overlapping["members"][0]["t_end"] = overlapping["members"][1]["t_start"]
    path.write_text(json.dumps(overlapping))
    sample = ("sample", "--model", run / "progressive", "--num", "2", "--steps", "2", "-q", "--out", tmp_path / "s")
    with probe(7, "overlapping members: sample refuses, assemble rebuilds the manifest"):
        refused(*cli(*sample)[::2], "overlap", "assemble")
        assert not (tmp_path / "s").exists()
        code, _, err = cli("assemble", "--config", cfg, "--run-dir", run)
        assert code == 0 and "rebuilding" in err and TRACEBACK not in err, err
        assert json.loads(path.read_text())["members"] == good["members"]
        ProgressiveModel.load(run / "progressive")

    def corrupt_json() -> None:
        path.write_text("{not json")

    def member_deleted() -> None:
        shutil.rmtree(run / "progressive" / good["members"][0]["dir"])

    def group_dropped() -> None:
        path.write_text(json.dumps({**good, "members": good["members"][:-1]}))

    for breakage in (corrupt_json, member_deleted, group_dropped):
        breakage()
        with probe(7, f"{breakage.__name__.replace('_', ' ')}: assemble rebuilds the manifest"):
            code, _, err = cli("assemble", "--config", cfg, "--run-dir", run)
            assert code == 0 and "rebuilding" in err and TRACEBACK not in err, err
            assert json.loads(path.read_text())["members"] == good["members"]
            ProgressiveModel.load(run / "progressive")

    fractional = json.loads(path.read_text())
    fractional["members"][0]["t_end"] += 0.7
    path.write_text(json.dumps(fractional))
    with probe(4, "manifest t_end 30.7"):
        refused(*cli(*sample)[::2], "not a whole number", str(path))
        assert not (tmp_path / "s").exists()
