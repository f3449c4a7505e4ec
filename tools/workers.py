"""The worker pool of the benchmarks: each job runs as its own process, ``n`` at a time, in order.

A job that waits on an earlier one (a row on its seed's base) polls the work directory itself, so the
pool only keeps ``n`` processes busy, logs each job to ``logs/<name>.log`` (appended, so a resumed
run keeps the earlier attempt's log) and stops everything at a deadline.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

Job = TypeVar("Job")


def run_workers(jobs: Sequence[Job], n: int, command: Callable[[Job, float | None], list[str]],
                log_name: Callable[[Job], str], logs: Path, env: dict[str, str], say: Callable[[str], None],
                deadline: float | None = None, after_poll: Callable[[list[Job], list[Job]], None] | None = None,
                ) -> list[Job]:
    """Run ``command(job, seconds_left)`` for every job, ``n`` processes at a time, and return the jobs
    that failed. ``after_poll(running, pending)`` runs once a second (e.g. to act when a stage ends)."""
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: list[tuple[subprocess.Popen, Job]] = []
    failed: list[Job] = []
    while pending or running:
        while pending and len(running) < n:
            job = pending.pop(0)
            left = (deadline - time.time()) if deadline else None
            log = open(logs / f"{log_name(job)}.log", "a")  # noqa: SIM115 (closed with the process)
            running.append((subprocess.Popen(command(job, left), env=env, stdout=log, stderr=subprocess.STDOUT), job))
        time.sleep(1)
        for p, job in list(running):
            if p.poll() is not None:
                running.remove((p, job))
                if p.returncode != 0:
                    failed.append(job)
                    say(f"worker {job} failed (exit {p.returncode}); see {logs}")
        if after_poll:
            after_poll([j for _, j in running], pending)
        if deadline and time.time() > deadline:
            say("deadline reached: stopping workers and aggregating what finished")
            for p, _ in running:
                p.kill()
            break
    return failed
