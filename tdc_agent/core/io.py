"""Atomic file I/O: JSON and safetensors written to a temporary name, fsynced and renamed.

Nothing here unpickles. Model directories (built on these functions) are :mod:`tdc_agent.models.store`.

All writes are atomic: a file is written to a temporary name, fsynced and renamed; a directory is
written next to its final place and swapped in.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save as st_save
from safetensors.torch import load_file

from .errors import CheckpointError, ResourceError
from .faults import failpoint
from .redaction import redact


_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    # Linux reports it in /proc; reading it there cannot race with other threads creating files.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way is set-and-restore; the lock keeps our own writers from racing on it.
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file: ``0o666`` less the umask."""
    return 0o666 & ~_current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The file gets the mode a plain ``open()`` would give it (``mkstemp`` alone makes it 0600, which
    would hide a shared run directory from the group).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, new_file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        failpoint("write.file")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text, scrubbed of credentials first (the file sink of the
    one scrubber, :func:`~tdc_agent.core.redaction.redact`: reports, results, exports, config.yaml)."""
    atomic_write_bytes(path, redact(text).encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_bytes` for an indented JSON document."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# Every JSON file we write (manifests, pruning records, metadata, results) is far smaller: a
# pruning record of the largest preset is under 1 MB. A bigger file is not ours, and parsing it
# could take minutes and gigabytes before failing.
MAX_JSON_BYTES = 32 * 2**20


def check_size(path: str | Path, limit: int, what: str = "file") -> None:
    """Refuse ``path`` before reading it when it is larger than ``limit`` bytes (a :class:`ResourceError`)."""
    size = Path(path).stat().st_size
    if size > limit:
        raise ResourceError(f"{what} {path} is {size / 2**20:,.1f} MB, more than the {limit / 2**20:,.0f} MB such a "
                            "file can be: it is not one we wrote (or it is corrupt). Delete it to redo that step, or "
                            "restore it from a backup.")


def read_json(path: str | Path, what: str = "file", limit: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON file; a missing or corrupt file is a :class:`CheckpointError` naming it, and one
    larger than ``limit`` bytes a :class:`ResourceError` (checked before reading)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is missing.")
    check_size(path, limit, what)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{what} {path} is corrupt ({e}). Delete it (and its directory) to start that step anew."
        ) from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically save a flat dict of tensors as safetensors (contiguous CPU copies).

    Serialised in memory, then written by :func:`atomic_write_bytes`: one write path, and a full
    disk is an ``OSError`` (ENOSPC) the CLI can explain, not safetensors' own error type.
    """
    data = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def load_tensors(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file {path} is missing.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{what} file {path} is corrupt or not safetensors ({e}). Delete it to redo that step, "
            "or restore it from a backup."
        ) from None


def replace_dir(src: Path, dst: Path) -> None:
    """Swap ``src`` in as ``dst``. A crash leaves either the old ``dst``, or ``dst.old`` to recover."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
        failpoint("write.dir")
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def resolve_dir(directory: str | Path) -> Path:
    """The directory, or its ``.old`` twin if a crash happened between the two renames."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.exists():
        return old
    return directory


def cache_dir() -> Path:
    """Where downloaded weights and encoded datasets are cached (``$TDC_AGENT_CACHE``)."""
    return Path(os.environ.get("TDC_AGENT_CACHE", Path.home() / ".cache" / "tdc-agent"))
