"""Run directories: one per run, holding config, logs, plan, checkpoints, samples and reports.

Rerunning a command on the same run directory resumes it. To keep that honest, the settings that
decide what was computed (data, model, schedule, plan, training) must match the stored config;
settings that only affect presentation (sample count, device) may change.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from ..core.io import atomic_write_text, check_size
from ..core.config import MAX_CONFIG_BYTES, Config, load_yaml, stored_config
from ..core.errors import CheckpointError, ConfigError
from ..core.redaction import redact

# What decides a stage-1 result, and what decides the whole pipeline's results.
RESULT_SECTIONS = ("data", "model", "latent", "schedule", "plan", "stage1")
PIPELINE_SECTIONS = RESULT_SECTIONS + ("stage2", "agent")
# How the run reaches its services, not what it computes: these may change on resume (a new server
# address, a longer timeout), which is noted in the run log.
TRANSPORT_KEYS = {"agent": ("base_url", "memory_url", "timeout_s", "max_retries")}
# Knobs a user turns to recover a run that failed (e.g. "the loss became nan: lower the learning
# rate"): they may change on resume, with a note in the log, since the advice must be followable.
RECOVERY_KEYS = {"stage1": ("lr", "grad_clip"), "stage2": ("lr", "grad_clip")}


class RunDir:
    """A run directory and the well-known paths inside it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_config(cls, cfg: Config, override: str | Path | None = None) -> "RunDir":
        return cls(override if override is not None else Path(cfg.run.output_dir) / cfg.run.name)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def stage1(self) -> Path:
        return self.path / "stage1"

    @property
    def base_model(self) -> Path:
        return self.stage1 / "model"

    @property
    def memory(self) -> Path:
        """The agent's memory bank (Chroma), one per run, shared by all groups."""
        return self.path / "memory"

    @property
    def equal_compute(self) -> Path:
        """The base trained on for stage 2's compute (``evaluation.compare_equal_compute``)."""
        return self.path / "base-equal-compute"

    # Comparison variants (e.g. ``noprune``: TDC without pruning) live beside the main run in
    # directories with a ``-<variant>`` suffix: ``stage2-noprune/``, ``progressive-noprune/``.
    @staticmethod
    def variant_suffix(variant: str = "") -> str:
        return f"-{variant}" if variant else ""

    def stage2(self, variant: str = "") -> Path:
        return self.path / ("stage2" + self.variant_suffix(variant))

    def group(self, index: int, variant: str = "") -> Path:
        """``stage2/g<i>`` (or ``stage2-<variant>/g<i>``): ``pruned/``, ``prune.json``, ``agent/``, ``finetune/``."""
        return self.stage2(variant) / f"g{index}"

    def agent(self, index: int, variant: str = "") -> Path:
        """Group ``index``'s agent output directory (transcript, round state, summary)."""
        return self.group(index, variant) / "agent"

    def agent_state(self, index: int, variant: str = "") -> Path:
        """Where group ``index``'s agent keeps its ``rounds.json`` and ``agent.json`` (its
        :meth:`~tdc_agent.agent.runner.AgentPruning.state_dir` in :meth:`agent`)."""
        return self.agent(index, variant) / f"group_{index}"

    def agent_memory(self, index: int, variant: str = "") -> Path:
        """The memory bank group ``index``'s agent uses: the run's :attr:`memory`, except in runs from
        before the shared memory, which kept one bank per group (``agent/memory``) and resume there."""
        old = self.agent(index, variant) / "memory"
        return old if old.is_dir() else self.memory

    def progressive(self, variant: str = "") -> Path:
        return self.path / ("progressive" + self.variant_suffix(variant))

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def evaluation(self) -> Path:
        return self.path / "evaluation.json"

    @property
    def report(self) -> Path:
        return self.path / "report.md"

    @property
    def rounds_plot(self) -> Path:
        return self.path / "agent_rounds.png"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def locks(self) -> Path:
        return self.path / "locks"

    def prepare(self, cfg: Config, sections: tuple[str, ...] = RESULT_SECTIONS) -> None:
        """Create the directory and store the config, or check it against the stored one.

        ``sections`` are the ones the calling verb depends on: they must match the stored config
        (transport and recovery settings may change, with a note in the log), and only they are
        updated in ``config.yaml``; sections the verb does not own keep their stored values.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with self.lock("config"):
            self._prepare(cfg, sections)

    def _prepare(self, cfg: Config, sections: tuple[str, ...]) -> None:
        moved: list[str] = []  # transport or recovery settings that differ from the stored config
        new = stored_config(cfg)
        merged = new
        if self.config_path.is_file():
            check_size(self.config_path, MAX_CONFIG_BYTES, "The stored config")
            try:
                old = load_yaml(self.config_path.read_text())
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                old = e
            if not isinstance(old, dict) or not all(isinstance(v, dict) for v in old.values()):
                raise CheckpointError(
                    f"The stored config {self.config_path} is corrupt ({str(old)[:80]}), so this run directory "
                    "cannot be checked before resuming. Restore it from your config (cp CONFIG.yaml "
                    f"{self.config_path}) or start a new run directory.")
            # Compared as stored (the stored URLs have their credentials masked, so are the new ones).
            # Keys only one side has (a setting added or removed by a newer tdc-agent) do not block
            # a resume; values both sides have must agree.
            differ = [
                f"{s}.{k}" for s in sections for k in set(old.get(s, {})) & set(new.get(s, {}))
                if old.get(s, {}).get(k) != new.get(s, {}).get(k)
            ]
            may_change = {f"{s}.{k}" for table in (TRANSPORT_KEYS, RECOVERY_KEYS) for s, keys in table.items()
                          for k in keys}
            changed = [d for d in differ if d not in may_change]
            moved = sorted(set(differ) & may_change)
            if old.get("run", {}).get("seed") != new["run"]["seed"]:
                changed.append("run.seed")
            if changed:
                raise ConfigError(
                    f"Run directory {self.path} was started with a different config ({', '.join(sorted(changed))} "
                    "differ). Rerun with the same config to resume, or choose a new run directory "
                    "(run.name=... or --run-dir)."
                )
            # the verb's own sections (and any section the stored config lacks) are updated; the rest
            # stays as the verbs that own it wrote it
            merged = {**old, **{k: v for k, v in new.items() if k in sections or k not in old}}
        # verbatim: config.yaml is state (compared on every resume); its URLs are masked field by field
        # (stored_config), and scrubbing a path that contains a secret-looking word would block the resume
        atomic_write_text(self.config_path, yaml.safe_dump(merged, sort_keys=False), scrub=False)
        if moved:
            self.log(f"note: settings changed since the run started ({', '.join(moved)}); resuming with the new "
                     "values")

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold ``RUN/locks/<name>.lock`` exclusively (an OS file lock: released when the process
        ends, SIGKILL included). Jobs on one run directory (``--groups`` spread over processes) take
        the lock of a step before doing it and re-check whether it is done once they hold it, so
        stage 1, each group and the assembly are done once. Under torchrun only rank 0 locks (the
        other ranks follow it through the collectives)."""
        from ..core.devices import dist_env

        if not dist_env().is_main:
            yield
            return
        d = self.locks
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{name}.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                from ..core.progress import console

                from rich.markup import escape

                console.print(f"[yellow]waiting for another job on {escape(str(self.path))} ({name})[/]")
                self.log(f"waiting for the lock {name} (another job holds it)")
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def log(self, message: str) -> None:
        """Append a timestamped line to ``logs/run.log``."""
        logs = self.logs
        logs.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        with open(logs / "run.log", "a") as f:
            f.write(redact(f"{stamp} {message}\n"))  # the log sink of the one scrubber
