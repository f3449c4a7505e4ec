"""The memory bank (paper Eq. 12): every evaluated scheme and its result, in Chroma on disk.

One collection per architecture (named by its hash), so vectors always have the same units in the
same order. The embedding is the scheme's keep-level vector, computed by our own embedding
function from the stored document (the scheme's levels as JSON): nothing is downloaded, and
"similar scheme" means "similar keep levels". Chroma's telemetry is off.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import numpy as np
import torch
from chromadb import Documents, EmbeddingFunction, Embeddings
from pydantic import BaseModel, Field, field_validator

from ..core.redaction import redact, redact_url
from ..core.errors import TDCError
from ..core.faults import failpoint
from ..core.bounds import ERROR_CHARS, RATIONALE_CHARS, cut
from ..core.tally import count_step


class MemoryBankError(TDCError):
    """The memory bank cannot be opened or is corrupt."""


def failure_advice(e: BaseException, where: str) -> str:
    """What to say when the bank at ``where`` fails with ``e``: read-only and full disks are not corruption.

    Moving a read-only or full bank away, as one says of a corrupt one, would throw a good bank away.
    """
    text = f"{type(e).__name__}: {e}"
    low = text.lower()
    err = getattr(e, "errno", None)
    if err in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in low or "no space left" in low or "quota" in low:
        return (f"The disk holding the memory bank at {where} is full ({text}). Free some space and rerun: the bank "
                "itself is fine, keep it.")
    if (err in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in low or "read-only" in low
            or "permission denied" in low):
        return (f"The memory bank at {where} is read-only ({text}). Make it writable (e.g. chmod -R u+w), or point "
                "agent.memory_dir / --memory-dir at a writable copy; `tdc-agent memory list/best/export` read it as "
                "it is. The bank itself is fine, keep it.")
    return (f"Cannot read the memory bank at {where} ({text}). It may be corrupt: move it away to start a fresh "
            "memory.")


def writable(path: str | Path) -> bool:
    """Whether the bank directory and its database may be written (False on a read-only mount too)."""
    db = Path(path) / "chroma.sqlite3"
    return os.access(path, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))


def read_only_copy(path: str | Path) -> Path:
    """A private copy of a bank that may not be written, for reading it with a client that writes on
    open (Chroma migrates and locks its database); removed when the process ends."""
    tmp = Path(tempfile.mkdtemp(prefix="tdc-memory-ro-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    dst = tmp / "memory"
    shutil.copytree(path, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return dst


def weights_hash(model: Any) -> str:
    """A short stable id of a model's weights (what makes two runs' losses comparable)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def architecture_hash(unit_names: list[str], base_config: dict[str, Any]) -> str:
    """A short stable id of an architecture: its diffusers config and its unit list."""
    blob = json.dumps({"config": base_config, "units": unit_names}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class KeepLevelEmbedding(EmbeddingFunction):
    """Maps a scheme document (levels JSON) to its keep-level vector in a fixed unit order."""

    def __init__(self, unit_names: list[str]):
        self.unit_names = list(unit_names)

    def __call__(self, input: Documents) -> Embeddings:
        out = []
        for doc in input:
            levels = json.loads(doc)
            out.append(np.asarray([float(levels.get(n, 1.0)) for n in self.unit_names], dtype=np.float32))
        return out

    @staticmethod
    def name() -> str:
        return "tdc-keep-levels"

    def get_config(self) -> dict[str, Any]:
        return {"unit_names": self.unit_names}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "KeepLevelEmbedding":
        return KeepLevelEmbedding(config["unit_names"])


TEXT_FIELDS = ("rationale", "error", "llm", "run_id")  # what can carry text from outside


class MemoryRecord(BaseModel):
    """One evaluated scheme and how it did."""

    id: str
    run_id: str
    group: int
    t_start: int
    t_end: int
    limit_macs: float
    macs: float = 0.0
    params: int = 0
    loss: Optional[float] = None
    round: int = 0
    candidate: int = 0
    llm: str = ""
    arch_hash: str = ""
    # what makes two records' losses comparable (see ``Like``): the base weights, the budget, the
    # images the loss was measured on; older records lack them and count as "another base"
    base_hash: str = ""
    limit_fraction: float = -1.0
    split: str = ""
    status: str = "ok"  # ok | failed
    error: str = ""
    levels: dict[str, float] = Field(default_factory=dict)
    rationale: str = ""
    # the memory id of another base's record whose shape this candidate copies: an extra candidate of
    # its round, which the builtin does not breed from (see PruningSession.evaluate_scheme)
    transferred_from: str = ""
    # the memory id of an earlier round's record of the same run and group with the same fitted levels:
    # its loss was reused, not measured again (the measurement is deterministic)
    repeat_of: str = ""

    def scrubbed(self) -> "MemoryRecord":
        """This record with its free-text fields scrubbed of credentials: an LLM can echo a key into a
        rationale, and a failure's error text can quote a server's reply."""
        return self.model_copy(update={f: redact(getattr(self, f)) for f in TEXT_FIELDS})

    # LLM-written text is bounded where it enters the bank (and when an older, unbounded record is
    # read back): every later prompt, query and export carries it
    @field_validator("rationale")
    @classmethod
    def _bound_rationale(cls, v: str) -> str:
        return cut(v, RATIONALE_CHARS)

    @field_validator("error")
    @classmethod
    def _bound_error(cls, v: str) -> str:
        return cut(v, ERROR_CHARS)

    def metadata(self) -> dict[str, Any]:
        d = self.model_dump(exclude={"id", "levels"})
        d["loss"] = -1.0 if self.loss is None else float(self.loss)  # Chroma metadata cannot hold None
        return d

    @classmethod
    def from_chroma(cls, id_: str, doc: str, meta: dict[str, Any]) -> "MemoryRecord":
        d = dict(meta)
        d["loss"] = None if d.get("loss", -1.0) < 0 else d["loss"]
        # scrubbed on the way out too: banks written before the scrubber reached them may hold a key
        return cls(id=id_, levels=json.loads(doc), **d).scrubbed()


# Two budgets are the same when their limit fractions differ by at most this (float noise; a plan
# gives every run of one config the same fractions). Only then are losses ranked together: a scheme
# at a looser budget keeps more channels and would outrank every scheme at this one.
SAME_BUDGET = 5e-4
BUDGET_BAND = 0.05  # a shape transfers between budgets this close (it is refitted to the new limit)


@dataclass(frozen=True)
class Like:
    """What a group's records are compared with. *Comparable* (losses ranked together): the same
    base weights, split and timesteps and the same budget. *Transferable* (shapes only, losses never
    used to pick or rank): the rest of this architecture's records with overlapping timesteps and a
    budget within :data:`BUDGET_BAND` — another base, or another budget, whose shapes the fit scales
    to this group's limit."""

    base_hash: str
    split: str
    t_start: int
    t_end: int
    limit_fraction: float

    def budget_alike(self, meta: dict[str, Any]) -> bool:
        return abs(float(meta.get("limit_fraction", -1.0)) - self.limit_fraction) <= BUDGET_BAND + 1e-9

    def same_budget(self, meta: dict[str, Any]) -> bool:
        return abs(float(meta.get("limit_fraction", -1.0)) - self.limit_fraction) <= SAME_BUDGET

    def overlaps(self, meta: dict[str, Any]) -> bool:
        lo, hi = max(self.t_start, int(meta.get("t_start", 0))), min(self.t_end, int(meta.get("t_end", -1)))
        return hi - lo + 1 >= 0.5 * (self.t_end - self.t_start + 1)

    def comparable(self, meta: dict[str, Any]) -> bool:
        """Same base, same split, same timesteps, same budget: the losses can be ranked together."""
        return (meta.get("base_hash") == self.base_hash and meta.get("split") == self.split
                and int(meta.get("t_start", -1)) == self.t_start and int(meta.get("t_end", -1)) == self.t_end
                and self.same_budget(meta))

    def transferable(self, meta: dict[str, Any]) -> bool:
        """Not comparable, but a shape worth trying here: overlapping timesteps, budget in band
        (another base of this architecture, another budget, or both). Records written before the
        budget was stored (no limit fraction) are neither."""
        return (float(meta.get("limit_fraction", -1.0)) >= 0 and self.overlaps(meta) and self.budget_alike(meta)
                and not self.comparable(meta))


class MemoryBank:
    """Persistent store of (scheme, result) pairs for one architecture."""

    @staticmethod
    def open_client(path: str | Path | None = None, url: str | None = None, read_only: bool = False) -> Any:
        """The Chroma client of a memory bank: a server at ``url`` (checked to answer), else the local
        database at ``path``. The one way to open one: the agent, the preflight and ``tdc-agent
        memory`` all come here, so all pin the local engine and all fail with one paragraph.

        ``read_only``: the caller only reads; a bank that may not be written is read from a private
        copy, so a read-only bank can still be listed and exported."""
        import chromadb
        from chromadb.config import Settings

        count_step("memory")
        if url:
            u = urlparse(url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise MemoryBankError(f"--memory-url {redact_url(url)!r} must look like http://host:port.")
            try:
                client = chromadb.HttpClient(host=u.hostname, port=u.port or (443 if u.scheme == "https" else 8000),
                                             ssl=u.scheme == "https", settings=Settings(anonymized_telemetry=False))
                client.heartbeat()
                return client
            except Exception as e:  # noqa: BLE001 - connection refused, DNS, TLS, HTTP errors alike
                raise MemoryBankError(
                    f"The memory bank server at {redact_url(url)} does not answer ({type(e).__name__}: {e}). Start "
                    "it (chroma run --path DIR --port PORT), fix agent.memory_url, or leave it unset for a local "
                    "memory.") from None
        if path is None:
            raise MemoryBankError("The memory bank needs a directory or a server URL.")
        where = path
        if read_only and Path(path).is_dir() and not writable(path):
            try:
                path = read_only_copy(path)
            except OSError as e:
                raise MemoryBankError(failure_advice(e, str(where))) from None
        try:
            # chromadb's Settings also read CHROMA_* variables and a .env file, which could send a local
            # memory to a server; the local engine is named explicitly so only --memory-url can.
            return chromadb.PersistentClient(path=str(path), settings=Settings(
                anonymized_telemetry=False, chroma_api_impl="chromadb.api.rust.RustBindingsAPI"))
        except Exception as e:  # noqa: BLE001 - chromadb raises many types for a broken database
            raise MemoryBankError(failure_advice(e, str(where))) from None

    def __init__(self, unit_names: list[str], arch_hash: str, path: str | None = None, url: str | None = None,
                 client: Any = None):
        """``client``: one :meth:`open_client` already opened (a run's preflight opens a memory server
        once, and the agent uses that client instead of connecting again)."""
        self.client = client if client is not None else self.open_client(path, url)
        try:
            self.collection = self.client.get_or_create_collection(
                f"schemes-{arch_hash}", embedding_function=KeepLevelEmbedding(unit_names),
                metadata={"hnsw:space": "l2"},
            )
        except Exception as e:  # a corrupt database often opens, then fails on first use
            if url:
                raise MemoryBankError(f"Cannot use the memory bank server at {redact_url(url)} ({type(e).__name__}: "
                                      f"{e}). Check the URL and the server.") from None
            raise MemoryBankError(failure_advice(e, str(path))) from None
        self.unit_names = unit_names
        self.arch_hash = arch_hash
        self.where = redact_url(url) if url else path
        self._index: dict[str, dict[str, Any]] | None = None

    def refresh(self) -> None:
        """Reload the metadata index (cheap to query) from the store; sees other writers' records."""
        res = self.collection.get(include=["metadatas"])
        self._index = {i: m for i, m in zip(res["ids"], res["metadatas"])}

    def _meta(self) -> dict[str, dict[str, Any]]:
        if self._index is None:
            self.refresh()
        return self._index  # type: ignore[return-value]

    def add(self, record: MemoryRecord) -> None:
        """Insert or replace (same id) one record (scrubbed of credentials); durable when this returns."""
        record = record.scrubbed()
        try:
            self.collection.upsert(ids=[record.id], documents=[json.dumps(record.levels, sort_keys=True)],
                                   metadatas=[record.metadata()])
        except Exception as e:  # noqa: BLE001 - a full disk or read-only bank is the user's to fix, not the LLM's
            raise MemoryBankError(failure_advice(e, str(self.where))) from None
        failpoint("memory.write")
        self._meta()[record.id] = record.metadata()

    def count(self) -> int:
        return self.collection.count()

    def metadata(self, record_id: str) -> dict[str, Any] | None:
        """One record's metadata from the index (None: no such record)."""
        return self._meta().get(record_id)

    def _fetch(self, ids: list[str]) -> list[MemoryRecord]:
        if not ids:
            return []
        res = self.collection.get(ids=ids, include=["documents", "metadatas"])
        by_id = {i: MemoryRecord.from_chroma(i, d, m) for i, d, m in zip(res["ids"], res["documents"], res["metadatas"])}
        return [by_id[i] for i in ids if i in by_id]

    def all(self, where: dict[str, Any] | None = None) -> list[MemoryRecord]:
        res = self.collection.get(where=where, include=["documents", "metadatas"])
        return [MemoryRecord.from_chroma(i, d, m) for i, d, m in zip(res["ids"], res["documents"], res["metadatas"])]

    def best(self, group: int | None = None, k: int = 5, where: Callable[[dict[str, Any]], bool] | None = None,
             per_run: int | None = None) -> list[MemoryRecord]:
        """The ``k`` lowest-loss successful records (of one group, or all; passing ``where``), from the
        metadata index; ``per_run`` caps how many come from one run (so one run cannot fill the list)."""
        cands = sorted((m["loss"], i) for i, m in self._meta().items()
                       if m.get("status") == "ok" and m.get("loss", -1.0) >= 0
                       and (group is None or m.get("group") == group) and (where is None or where(m)))
        picked, runs = [], {}
        for _, i in cands:
            r = (self._meta()[i].get("run_id"), self._meta()[i].get("group"))
            if per_run is not None and runs.get(r, 0) >= per_run:
                continue
            runs[r] = runs.get(r, 0) + 1
            picked.append(i)
            if len(picked) >= k:
                break
        return self._fetch(picked)

    def similar(self, levels: dict[str, float], k: int = 5, group: int | None = None) -> list[tuple[MemoryRecord, float]]:
        """The ``k`` records whose keep levels are nearest (L2) to ``levels``, with distances."""
        n = self.count()
        if n == 0:
            return []
        res = self.collection.query(query_texts=[json.dumps(levels)], n_results=min(k, n),
                                    where={"group": group} if group is not None else None,
                                    include=["documents", "metadatas", "distances"])
        return [(MemoryRecord.from_chroma(i, d, m), float(dist)) for i, d, m, dist in
                zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0])]
