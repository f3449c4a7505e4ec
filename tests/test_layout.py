"""The package layout is a checked contract: the layers (pyproject's import-linter contract), no
module loose at the top of the package, and the README's layout section matching the tree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "tdc_agent"



def _subpackages() -> set[str]:
    return {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}


def test_import_layers_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.is_file(), "import-linter is part of the dev extra: pip install -e '.[dev]'"
    p = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "2 kept, 0 broken" in p.stdout
    assert "the CLI does not import models directly KEPT" in p.stdout  # cli -> models is forbidden


def test_no_module_loose_at_the_top_of_the_package():
    assert sorted(p.name for p in PKG.glob("*.py")) == ["__init__.py"]


def test_readme_layout_section_matches_the_tree():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"^## Layout\n(.*?)(?=^## )", readme, re.M | re.S)
    assert m, "README.md has a '## Layout' section"
    named = set(re.findall(r"^- `tdc_agent/(\w+)/`", m.group(1), re.M))
    assert named == _subpackages(), (named, _subpackages())
    # every module a line names exists in that subpackage, and every module there is named
    for line in re.findall(r"^- `tdc_agent/\w+/`.*$", m.group(1), re.M):
        sub = re.match(r"- `tdc_agent/(\w+)/`", line).group(1)
        named_mods = set(re.findall(r"`(\w+)\.py`", line))
        have = {f.stem for f in (PKG / sub).glob("*.py")} - {"__init__", "__main__"}
        assert named_mods == have, (sub, sorted(named_mods ^ have))


LAYERS = ["core", "diffusion", "models", "planning", "pruning", "evaluation", "agent", "workflow"]


def _cross_layer_imports() -> dict[str, set[str]]:
    """Per subpackage, the names that modules of other subpackages import from its modules."""
    import ast

    used: dict[str, set[str]] = {}
    for f in PKG.rglob("*.py"):
        here = f.relative_to(PKG).parts
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            if node.level:  # from ..models.unet import x (relative to this module's package)
                parts = list(here[:-1])[: len(here) - node.level] + node.module.split(".")
            elif node.module.startswith("tdc_agent."):
                parts = node.module.split(".")[1:]
            else:
                continue
            if len(parts) >= 2 and parts[0] != here[0]:
                used.setdefault(parts[0], set()).update(a.name for a in node.names)
    return used


def test_each_layer_names_its_public_api():
    """Every subpackage's ``__init__`` lists (``__all__``) what other layers use from it, and each of
    those names is importable from the subpackage itself."""
    import importlib

    used = _cross_layer_imports()
    for sub in LAYERS:
        pkg = importlib.import_module(f"tdc_agent.{sub}")
        api = set(getattr(pkg, "__all__", ()))
        missing = used.get(sub, set()) - api
        assert not missing, f"tdc_agent/{sub}/__init__.py: add {sorted(missing)} to its API (other layers use them)"
        for name in api:
            assert getattr(pkg, name) is not None


def test_agent_exports_no_workflow_pieces_and_classical_pruning_needs_no_agent():
    import importlib

    agent = importlib.import_module("tdc_agent.agent")
    assert not {"held_out", "group_state_dir", "check_base_takes", "GroupTask"} & set(agent.__all__)
    proxy = importlib.import_module("tdc_agent.agent.runner")
    assert not hasattr(proxy, "group_state_dir") and not hasattr(proxy, "check_base_takes")
    p = subprocess.run([sys.executable, "-c", "import sys, tdc_agent.workflow.jobs, tdc_agent.workflow.report; "
                        "print(sorted(m for m in sys.modules if m.startswith(('tdc_agent.agent', 'langchain'))))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr
