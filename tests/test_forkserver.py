"""The tests' fork server (tests/forkserver.py) runs a CLI command as a plain subprocess would."""

from __future__ import annotations

import os
import subprocess

import forkserver
from conftest import PYTHON, python_env


def test_a_forked_command_behaves_as_a_subprocess(tmp_path):
    cmd = [PYTHON, "-m", "tdc_agent.cli", "--help"]
    plain = subprocess.run(cmd, env=python_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    forked = forkserver.run(cmd, env=python_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert forked.cpu_s is not None, "it went through the fork server"
    assert (forked.returncode, forked.stdout, forked.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    bad = forkserver.run([PYTHON, "-m", "tdc_agent.cli", "no-such-verb"], env=python_env(), capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "No such command" in bad.stderr
    # its own process: a pid of its own, gone once waited for; a kill -9 reads as one
    p = forkserver.popen([PYTHON, "-m", "tdc_agent.cli", "plan", "--config", tmp_path / "missing.yaml"],
                         env={**python_env(), "TDC_AGENT_CACHE": str(tmp_path / "c")}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    assert p.pid not in (os.getpid(), forkserver._server.proc.pid)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "missing.yaml" in out
    # python -c and python SCRIPT run forked too, with their argv
    code = forkserver.run([PYTHON, "-c", "import sys; print(sys.argv[1:], __name__)", "a", "b"], env=python_env(),
                          capture_output=True, text=True, timeout=120)
    assert code.cpu_s is not None and code.stdout.strip() == "['a', 'b'] __main__"
    script = tmp_path / "s.py"
    script.write_text("import os, sys\nprint(sys.argv[1], os.getcwd())\nraise SystemExit(3)\n")
    ran = forkserver.run([PYTHON, str(script), "x"], env=python_env(), capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert ran.returncode == 3 and ran.stdout.split() == ["x", str(tmp_path)]
    # a variable the preloaded libraries read at import time sends the command to a plain subprocess
    other = forkserver.run(cmd, env={**python_env(), "HF_HOME": str(tmp_path / "hf")}, capture_output=True, text=True,
                           timeout=120)
    assert other.returncode == 0 and not hasattr(other, "cpu_s")
