"""The wheel: it ships the default config and prompt templates, and an installed copy (not the
source tree) runs ``plan``, ``prompts show | init`` and a small ``prune`` from outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import PYTHON, ROOT

TEMPLATES = ("system", "round", "memory", "architecture")
# what setuptools reads to build the wheel (copied so the build writes nothing into the checkout)
BUILD_INPUTS = ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in", "LICENSE", "tdc_agent")


@pytest.fixture(scope="session")  # (not module: see test_faults.py's reference)
def installed(tmp_path_factory):
    """Build the wheel from a copy of the source tree and install it (not editable) into site/."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        elif p.is_file():
            shutil.copy2(p, src / name)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    # no build isolation: the venv's setuptools (>= 70.1 builds wheels itself) works offline
    p = subprocess.run([PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp / "dist"), str(src)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    (wheel,) = (tmp / "dist").glob("tdc_agent-*.whl")
    p = subprocess.run([PYTHON, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp / "site"), str(wheel)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    work = tmp / "elsewhere"  # outside the repository: no examples/ or prompts/ next to it
    work.mkdir()
    return wheel, tmp / "site", work


def _run(installed, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    _, site, work = installed
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    p = subprocess.run([PYTHON, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == code, p.stdout + p.stderr
    return p


def _cli(installed, *args, code: int = 0) -> subprocess.CompletedProcess:
    return _run(installed, "-m", "tdc_agent.cli", *map(str, args), code=code)


def test_wheel_holds_real_default_files(installed):
    wheel, _, _ = installed
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        expected = {f"tdc_agent/agent/templates/{n}.md": ROOT / "prompts" / f"{n}.md" for n in TEMPLATES}
        expected["tdc_agent/configs/digits.yaml"] = ROOT / "examples" / "digits.yaml"
        for member, repo_path in expected.items():
            assert member in names, sorted(names)
            # regular files with the content the repository's links point at
            assert (z.getinfo(member).external_attr >> 16) & 0o170000 != 0o120000
            assert z.read(member) == repo_path.read_bytes()
        assert not any(n.startswith(("prompts/", "examples/")) for n in names)


def test_installed_copy_runs_from_anywhere(installed):
    _, site, work = installed
    p = _run(installed, "-c", "import tdc_agent, tdc_agent.core.config as c; print(tdc_agent.__file__); print(c.DEFAULT_CONFIG)")
    mod, default = p.stdout.split()
    assert Path(mod).is_relative_to(site) and Path(default).is_relative_to(site)

    # plan with the packaged default config (digits, 4 groups)
    d = json.loads(_cli(installed, "plan", "--json", "--out", work / "plan").stdout)
    assert d["n_groups"] == 4 and (work / "plan" / "plan.json").is_file()

    # prompts show: the packaged templates
    p = _cli(installed, "prompts", "show", "system")
    assert "pruning proxy" in p.stdout and str(site) in p.stderr.replace("\n", "")

    # prompts init: copies them out, refuses to overwrite, --force replaces
    out = work / "my_prompts"
    p = _cli(installed, "prompts", "init", out)
    for n in TEMPLATES:
        assert (out / f"{n}.md").read_bytes() == (ROOT / "prompts" / f"{n}.md").read_bytes()
        assert f"{n}.md" in p.stderr
    (out / "system.md").write_text("Mine. Evaluate {candidates} schemes.")
    p = _cli(installed, "prompts", "init", out, code=2)
    assert "--force" in p.stderr and "Traceback" not in p.stderr
    assert (out / "system.md").read_text().startswith("Mine.")
    _cli(installed, "prompts", "init", out, "--force")
    assert (out / "system.md").read_bytes() == (ROOT / "prompts" / "system.md").read_bytes()

    # a small classical prune of the tiny preset (random init), default config, CPU
    d = json.loads(_cli(installed, "prune", "--preset", "tiny", "--macs-fraction", "0.6", "--device", "cpu",
                        "--out", work / "pruned", "--json").stdout)
    assert d["macs_thop"] <= d["limit_macs"]
    assert (work / "pruned" / "model" / "pruning.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["my_prompts", "plan", "pruned"]
