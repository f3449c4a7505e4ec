"""Opening a memory bank by where it is (a run's ``memory/``, a directory, a server) and reading
its records: the library behind ``tdc-agent memory list|best|export``. The client is opened exactly
as the agent opens it (:meth:`MemoryBank.open_client`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.io import atomic_write_text
from .memory import MemoryBank, MemoryBankError, MemoryRecord, failure_advice


def open_memory(run_dir: Path | None = None, memory_dir: Path | None = None, memory_url: str | None = None) -> Any:
    """The memory bank's Chroma client: ``memory_url``, else ``memory_dir``, else ``run_dir/memory``."""
    path = memory_dir or (run_dir / "memory" if run_dir else None)
    if not memory_url and (path is None or not Path(path).is_dir()):
        raise ConfigError(f"No memory bank at {path}. Pass --run-dir RUN (holding memory/) or --memory-dir DIR.")
    return MemoryBank.open_client(path, memory_url, read_only=True)


def memory_records(run_dir: Path | None = None, memory_dir: Path | None = None, memory_url: str | None = None,
                   group: int | None = None) -> list[MemoryRecord]:
    """Every record in the bank (of every collection), or only group ``group``'s."""
    client = open_memory(run_dir, memory_dir, memory_url)
    recs = []
    try:
        for col in client.list_collections():
            c = client.get_collection(col.name if hasattr(col, "name") else col)
            res = c.get(include=["documents", "metadatas"])
            recs += [MemoryRecord.from_chroma(i, d, m) for i, d, m in zip(res["ids"], res["documents"],
                                                                         res["metadatas"])]
    except Exception as e:  # noqa: BLE001 - a corrupt database fails on first read, not on open
        raise MemoryBankError(failure_advice(e, str(memory_url or memory_dir or (run_dir and run_dir / "memory")))) \
            from None
    if group is not None:
        recs = [r for r in recs if r.group == group]
    return recs


def best_records(recs: list[MemoryRecord], k: int) -> list[MemoryRecord]:
    """The ``k`` lowest-loss successful records of each group, groups in order."""
    ok = [r for r in recs if r.loss is not None and r.status == "ok"]
    best: list[MemoryRecord] = []
    for g in sorted({r.group for r in ok}):
        best += sorted((r for r in ok if r.group == g), key=lambda r: r.loss)[:k]
    return best


def export_records(recs: list[MemoryRecord], out: Path) -> None:
    """Write ``recs`` to ``out``: ``.json`` (a list of records) or ``.csv`` (levels as JSON)."""
    if out.suffix == ".json":
        atomic_write_text(out, json.dumps([r.model_dump() for r in recs], indent=2))
    elif out.suffix == ".csv":
        buf = io.StringIO()
        fields = list(recs[0].model_dump().keys()) if recs else ["id"]
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        for r in recs:
            d = r.model_dump()
            d["levels"] = json.dumps(d["levels"])
            w.writerow(d)
        atomic_write_text(out, buf.getvalue())
    else:
        raise ConfigError(f"--out {out} must end in .csv or .json.")
