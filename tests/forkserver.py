"""A warm interpreter for the tests' ``tdc-agent`` subprocesses.

Every CLI subprocess a test starts spends ~7 s of CPU importing torch and diffusers before it does
anything (measured: ``import diffusers`` 7.4 s, of which torch 3.1 s, torch._dynamo 1.5 s, scipy.stats
1.1 s), about a fifth of the suite. The fork server is one process per pytest worker that imports
those *third-party* libraries once and forks a child per command. The child is a real process of its
own: its own pid (a test may kill it with -9), stdin/stdout/stderr, environment, working directory
and argv, and it imports ``tdc_agent`` itself, after its environment is set, as a fresh interpreter
would; its exit status (or signal) comes back as a subprocess's would. What it shares with the
server is only the third-party modules already imported, so a command whose environment differs
from the server's in a variable those libraries read at import time (``IMPORT_TIME_VARS``) runs as
a plain subprocess instead, as does any command other than ``python -m tdc_agent.cli ...``,
``python -c CODE`` and ``python SCRIPT.py`` (a test about what a fresh interpreter imports keeps
using :mod:`subprocess`).

``run`` and ``popen`` take the arguments of :func:`subprocess.run` / :class:`subprocess.Popen` that
the tests use. ``TDC_TEST_NO_FORKSERVER=1`` turns the server off (every command a plain subprocess).
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PYTHON = sys.executable
CLI = ["-m", "tdc_agent.cli"]
# what the preloaded libraries read from the environment when imported (huggingface_hub's cache
# paths and offline flag, torch's and OpenMP's settings, Python's own startup variables)
IMPORT_TIME_VARS = ("PYTHON", "HF_", "HUGGINGFACE", "DIFFUSERS", "TORCH", "PYTORCH", "CUDA", "OMP_", "MKL_",
                    "XDG_", "HOME", "TRANSFORMERS", "TOKENIZERS", "SCIPY", "NUMPY")
PRELOAD = ["torch", "numpy", "scipy.stats", "diffusers", "diffusers.models.unets.unet_2d", "torch_pruning", "thop",
           "safetensors.torch", "pydantic", "yaml", "rich.console", "chromadb", "langchain_core.messages",
           "langchain.agents", "langchain_openai", "openai", "httpx", "matplotlib.pyplot"]


def _import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_VARS)}


# --- the server ------------------------------------------------------------------------------------

def _serve(path: str) -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    print("ready", flush=True)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        conn, _ = srv.accept()
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        req = json.loads(msg.decode())
        while True:  # reap the supervisors of finished commands
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if os.fork() == 0:  # a supervisor: starts the command, reports its pid and its exit status
            srv.close()
            pid = os.fork()
            if pid == 0:
                conn.close()
                _child(req, fds)
            for fd in fds:
                os.close(fd)
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            _, status, usage = os.wait4(pid, 0)
            try:
                conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status),
                                         "cpu_s": usage.ru_utime + usage.ru_stime}).encode() + b"\n")
            finally:
                os._exit(0)
        conn.close()
        for fd in fds:
            os.close(fd)


def _child(req: dict[str, Any], fds: list[int]) -> None:
    """The command, in the forked child: as ``python -m tdc_agent.cli ARGS`` would run it."""
    import atexit as _atexit
    import runpy
    import traceback

    code = 1
    try:
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
        import random

        import numpy as np

        random.seed()  # a fresh interpreter seeds these from the OS; forked children would share one state
        np.random.seed()
        kind, target = req["kind"], req["target"]
        try:
            if kind == "module":  # python -m MODULE ARGS
                sys.argv, sys.path[0] = [target, *req["args"]], os.getcwd()
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            elif kind == "path":  # python SCRIPT ARGS
                sys.argv, sys.path[0] = [target, *req["args"]], os.path.dirname(os.path.abspath(target))
                runpy.run_path(target, run_name="__main__")
            else:  # python -c CODE ARGS
                sys.argv, sys.path[0] = ["-c", *req["args"]], ""
                exec(compile(target, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - printed as the interpreter prints an uncaught one
            traceback.print_exc()
            code = 1
        _atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# --- the client ------------------------------------------------------------------------------------

class _Server:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="tdc-forkserver-")
        self.path = os.path.join(self.dir, "s")
        from conftest import python_env  # the environment the tests give their subprocesses

        self.env = python_env()
        self.proc = subprocess.Popen([PYTHON, __file__, self.path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     env=self.env, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the tests' fork server did not start (exit {self.proc.poll()})")
        atexit.register(self.close)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)  # the socket's folder, one per worker and run


_server: _Server | None = None


def _command(cmd: list[Any]) -> dict[str, Any] | None:
    """What the child runs for ``cmd``: ``python -m tdc_agent.cli ...``, ``python -c CODE ...`` or
    ``python SCRIPT.py ...``; None for anything else."""
    c = [str(x) for x in cmd]
    if len(c) < 2 or c[0] != PYTHON:
        return None
    if c[1:3] == CLI:
        return {"kind": "module", "target": CLI[1], "args": c[3:]}
    if c[1] == "-c" and len(c) > 2:
        return {"kind": "code", "target": c[2], "args": c[3:]}
    if c[1].endswith(".py") and not c[1].startswith("-"):
        return {"kind": "path", "target": c[1], "args": c[2:]}
    return None


def _forkable(cmd: list[Any], env: dict[str, str] | None, kw: dict[str, Any]) -> bool:
    if os.environ.get("TDC_TEST_NO_FORKSERVER") or _command(cmd) is None:
        return False
    if set(kw) - {"stdout", "stderr", "text", "cwd", "stdin"} or kw.get("stdin") not in (None, subprocess.DEVNULL):
        return False
    global _server
    if _server is None:
        _server = _Server()
    return _import_time_env(dict(env if env is not None else os.environ)) == _import_time_env(_server.env)


class ForkedProcess:
    """A command run by the fork server, with the parts of :class:`subprocess.Popen` the tests use."""

    def __init__(self, cmd: list[Any], env: dict[str, str] | None = None, cwd: Any = None, stdout: Any = None,
                 stderr: Any = None, text: bool = False, stdin: Any = None):
        self.args = cmd
        self.returncode: int | None = None
        self.cpu_s: float | None = None  # the command's CPU seconds (it is not a child of the caller)
        self.text = text
        devnull = os.open(os.devnull, os.O_RDWR)
        mine, theirs = [], []

        def end(spec: Any, default: int) -> tuple[int, Any]:
            if spec == subprocess.PIPE:
                r, w = os.pipe()
                mine.append(w)
                return w, os.fdopen(r, "r" if text else "rb")
            if spec == subprocess.DEVNULL:
                return devnull, None
            if spec is None:
                return default, None
            return spec.fileno() if hasattr(spec, "fileno") else spec, None

        out_fd, self.stdout = end(stdout, 1)
        if stderr == subprocess.STDOUT:
            err_fd, self.stderr = out_fd, None
        else:
            err_fd, self.stderr = end(stderr, 2)
        theirs = [devnull, out_fd, err_fd]
        req = {**_command(cmd), "env": dict(env if env is not None else os.environ), "cwd": str(cwd or os.getcwd())}
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(_server.path)  # type: ignore[union-attr]
        socket.send_fds(self._conn, [json.dumps(req).encode()], theirs)
        for fd in set(mine) | {devnull}:
            os.close(fd)
        self._buf = b""
        self.pid = int(self._line()["pid"])

    def _line(self, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._conn.settimeout(left)
            try:
                chunk = self._conn.recv(4096)
            except (socket.timeout, BlockingIOError):  # a timeout of 0 makes the socket non-blocking
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            if not chunk:
                raise RuntimeError("the tests' fork server went away")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _ended(self, msg: dict[str, Any]) -> int:
        self.returncode, self.cpu_s = int(msg["returncode"]), float(msg["cpu_s"])
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                return self._ended(self._line(timeout=0))
            except subprocess.TimeoutExpired:
                return None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            return self._ended(self._line(timeout))
        return self.returncode

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        parts: dict[Any, list] = {f: [] for f in (self.stdout, self.stderr) if f is not None}
        sel = selectors.DefaultSelector()
        for f in parts:
            sel.register(f.fileno(), selectors.EVENT_READ, f)
        while sel.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            for key, _ in sel.select(left):
                data = os.read(key.fd, 1 << 16)
                if data:
                    parts[key.data].append(data)
                else:
                    sel.unregister(key.fd)
        sel.close()
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

        def joined(f: Any) -> Any:
            if f is None:
                return None
            data = b"".join(parts[f])
            f.close()
            return data.decode() if self.text else data

        return joined(self.stdout), joined(self.stderr)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def __enter__(self) -> "ForkedProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        for f in (self.stdout, self.stderr):
            if f is not None and not f.closed:
                f.close()
        self.wait()


def popen(cmd: list[Any], env: dict[str, str] | None = None, **kw: Any) -> Any:
    """``subprocess.Popen(cmd, env=env, **kw)``, through the fork server where it can be."""
    if _forkable(cmd, env, kw):
        return ForkedProcess(cmd, env=env, **kw)
    return subprocess.Popen([str(c) for c in cmd], env=env, **kw)


def run(cmd: list[Any], env: dict[str, str] | None = None, capture_output: bool = False, timeout: float | None = None,
        check: bool = False, **kw: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, env=env, ...)``, through the fork server where it can be."""
    if capture_output:
        kw.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not _forkable(cmd, env, kw):
        return subprocess.run([str(c) for c in cmd], env=env, timeout=timeout, check=check, **kw)
    p = ForkedProcess(cmd, env=env, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    done = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    done.cpu_s = p.cpu_s  # type: ignore[attr-defined]
    if check:
        done.check_returncode()
    return done


if __name__ == "__main__":
    _serve(sys.argv[1])
