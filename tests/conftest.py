"""Shared fixtures: tiny configs in temporary run directories, and an in-process CLI runner."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

# The suite runs offline (no test needs the hub): a hub id in a config (examples/cifar10_pretrained.yaml,
# whose schedule load_config resolves) must fail at once, not after the hub client's network retries.
# Set before diffusers/huggingface_hub are imported, which read it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
# One torch thread per test process when pytest-xdist runs several (`make test`: 2 workers on 2 cores):
# oversubscribed cores make torch's thread pools spin and wait, which measured 10x slower, not 2x.
# A serial run may use the cores itself.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))


def tiny_config_dict(tmp_path: Path, **sections: dict) -> dict:
    """A config that trains in seconds: the tiny UNet on digits, a few steps, few samples."""
    cfg = {
        "run": {"name": "t", "output_dir": str(tmp_path / "runs"), "seed": 0, "device": "cpu"},
        "data": {"name": "digits"},
        "model": {"preset": "tiny"},
        "schedule": {"name": "linear", "timesteps": 100},
        "plan": {"groups": 3, "k": 0.5},
        "stage1": {"steps": 12, "batch_size": 16, "lr": 1e-3, "warmup": 2, "ckpt_every": 4,
                   "log_every": 1, "ema_decay": 0.9},
        "sample": {"steps": 5, "num": 8},
        # no floor and no extra steps: tests pick their stage-2 steps exactly (tests/test_recipe.py
        # checks the floor and the member-vs-base check themselves)
        "stage2": {"min_steps": 0, "extra_steps": 0},
        # the builtin's per-unit sensitivity on 4 images, not 32: the tests check what the search does
        # with it, not how precise it is (the sensitivity is most of a tiny agent run's time)
        "agent": {"sensitivity_images": 4},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory):
    """Each test process gets its own ``$TDC_AGENT_CACHE`` (digits classifier, FID statistics, latents)
    under its own base temp directory (per xdist worker): parallel workers never write the same cache
    files, and no test reads what the user's runs left in ``~/.cache/tdc-agent``. Tests that need a
    cache of their own still set one with monkeypatch; subprocesses inherit it through python_env()."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    mp.setenv("TDC_AGENT_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="session")
def classifier_files(own_cache) -> Path:
    """The digits FD classifier, trained once per test process into its own cache (seeded, so every
    training gives the same weights; tests/test_evaluation.py trains it afresh)."""
    from tdc_agent.evaluation.fd import digits_classifier

    with pytest.MonkeyPatch.context() as mp:  # first asked for by a test that may have set its own cache
        mp.setenv("TDC_AGENT_CACHE", str(own_cache))
        digits_classifier()
    return own_cache / "digits_classifier_v1"


@pytest.fixture
def fresh_cache(classifier_files):
    """``fresh_cache(path)``: an empty ``$TDC_AGENT_CACHE`` at ``path`` holding only the trained digits
    classifier, for a test (or the processes it starts) that must not see the worker's cache: each
    would otherwise train the classifier again (~6 s a process)."""

    return lambda path: with_classifier(path, classifier_files)


def with_classifier(cache: Path, classifier_files: Path) -> Path:
    """``cache`` holding a copy of the trained digits classifier (for session fixtures, which cannot
    take the function-scoped ``fresh_cache``)."""
    shutil.copytree(classifier_files, cache / classifier_files.name, dirs_exist_ok=True)
    return cache


@pytest.fixture
def make_config(tmp_path: Path):
    """Write a tiny config YAML and return its path; keyword args update sections."""

    def _make(name: str = "cfg.yaml", **sections: dict) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, **sections)))
        return path

    return _make


@pytest.fixture
def cli(capsys):
    """Run ``tdc-agent`` in-process; returns (exit code, stdout, stderr). Inside a hostile-input
    probe (tests/probes.py) the call's exit code, time and output are reported to it."""
    from probes import seen
    from tdc_agent.cli.main import run

    def _run(*args: str) -> tuple[int, str, str]:
        t0, c0 = time.monotonic(), time.process_time()
        code = run([str(a) for a in args])
        out = capsys.readouterr()
        seen(out.out, out.err, code=code, seconds=time.monotonic() - t0, cpu_s=time.process_time() - c0)
        return code, out.out, out.err

    return _run


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


PYTHON = sys.executable


# The fast tier (`make test-fast`, <= 3 min): unit tests of pure functions, files and small models.
# No end-to-end runs, CLI subprocesses, wheel builds, agent rounds or crash/chaos sweeps.
FAST_MODULES = {
    "test_schedule", "test_config", "test_redaction", "test_stats", "test_data", "test_models", "test_layout",
    "test_checkpoint", "test_evaluation", "test_security",
}


# `make test` runs the suite on 2 pytest-xdist workers with --dist loadgroup: tests go to whichever
# worker is free, except that the tests of these modules stay together on one worker, because each
# builds an expensive module-scoped fixture (a reference run, a wheel, a pruner) that two workers would
# both build.
ONE_WORKER_MODULES = {"test_faults", "test_packaging", "test_pruning"}


def pytest_itemcollected(item):
    # marked as each test is collected, so before any pytest_collection_modifyitems: pytest-xdist's
    # (which reads xdist_group) ran before ours there, even with tryfirst
    module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
    if module in FAST_MODULES:
        item.add_marker(pytest.mark.fast)
    if module in ONE_WORKER_MODULES:
        item.add_marker(pytest.mark.xdist_group(module))


# The longest work first (seconds from `pytest --durations` on this machine, under load; a module
# name stands for its pinned group): with xdist the collection order is the order in which work is
# handed out, so a long test collected last would run alone at the end while the other worker idles.
LONGEST_FIRST = {
    "test_faults.py": 350, "test_pipeline.py::test_run_end_to_end_tiny": 216, "test_pruning.py": 170,
    "test_pipeline.py::test_two_group_jobs": 117, "test_agent.py::test_memory_persists": 88,
    "test_evaluation.py::test_fid_and_kid": 65, "test_agent_real_llm.py::test_shared_memory": 64,
    "test_training.py::test_kill_and_resume": 61, "test_agent.py::test_memory_compares": 48,
    "test_agent_real_llm.py::test_run_seed": 44, "test_packaging.py": 40, "test_agent.py::test_api_key_never": 39,
    "test_agent.py::test_custom_llm_example": 38, "test_hostile.py::test_a_planted_secret": 35,
    "test_training.py::test_torchrun": 31, "test_pipeline.py::test_one_run_builds": 31,
}


def pytest_collection_modifyitems(session, config, items):
    def cost(item: pytest.Item) -> float:
        name = item.nodeid.rsplit("/", 1)[-1]
        return max((v for k, v in LONGEST_FIRST.items() if name.startswith(k)), default=0.0)

    items.sort(key=cost, reverse=True)  # stable: the rest keeps its order
    if getattr(config.option, "loadgroup", False):  # set on the xdist workers by --dist loadgroup
        for item in items:
            group = next((m.args[0] for m in item.iter_markers("xdist_group")), None)
            if group is not None and not item.nodeid.endswith(f"@{group}"):
                _suffix_group(item, group)


def _suffix_group(item: pytest.Item, group: str) -> None:
    """What pytest-xdist's loadgroup does to a grouped test's id (``<nodeid>@<group>``, which its
    scheduler splits on), done here because xdist 3.8 writes ``item._nodeid`` and pytest >= 9.2 keeps
    the id in ``item._id``: there xdist's write is lost and every group is silently split over the
    workers (the faults reference run and the wheel were each built twice)."""
    new = f"{item.nodeid}@{group}"
    if hasattr(item, "_id"):
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(new)
    else:
        item._nodeid = new


@pytest.fixture
def installed_package(tmp_path, monkeypatch):
    """A package installed on sys.path (module + dist-info with entry points), as pip would leave it
    (test_criteria.py, test_backbone.py)."""

    def _install(module: str, source: str, entry_points: str) -> None:
        (tmp_path / "site").mkdir(exist_ok=True)
        (tmp_path / "site" / f"{module}.py").write_text(source)
        info = tmp_path / "site" / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(entry_points)
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        refresh()

    def refresh() -> None:
        from tdc_agent.core import backbones, criteria

        criteria.refresh_entry_points()
        backbones.refresh_entry_points()

    yield _install
    refresh()  # rescanned lazily, after monkeypatch has taken the path away
