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
