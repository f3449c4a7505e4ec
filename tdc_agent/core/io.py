"""The one way to save and load models and training state: JSON for structure, safetensors for tensors.

Nothing here unpickles. A model directory holds

- ``config.json``: the diffusers ``UNet2DModel`` config (so ``UNet2DModel.from_pretrained`` reads it),
- ``model.safetensors``: the weights,
- ``tdc_model.json``: our metadata (format version, noise schedule, image shape, extra records).

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

from .errors import CheckpointError
from .faults import failpoint
from ..models.unet import build_unet

FORMAT_VERSION = 1
MODEL_META = "tdc_model.json"
PRUNING_FILE = "pruning.json"
# A pruned model carries its pruning record (torch-pruning history + fix-up version) as this plain
# attribute, so that every save of it (after fine-tuning, as an EMA copy...) keeps its structure.
PRUNING_ATTR = "tdc_pruning_record"


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
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_bytes` for an indented JSON document."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file; a missing or corrupt file is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is missing.")
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


def save_model(directory: str | Path, model: torch.nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Save a UNet as config.json + model.safetensors + tdc_model.json, atomically as a directory."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    config["_class_name"] = type(model).__name__
    atomic_write_json(tmp / "config.json", _jsonable(config))
    save_tensors(tmp / "model.safetensors", model.state_dict())
    atomic_write_json(tmp / MODEL_META, {"format_version": FORMAT_VERSION, **(meta or {})})
    record = getattr(model, PRUNING_ATTR, None)
    if record is not None:
        atomic_write_json(tmp / PRUNING_FILE, record)
    replace_dir(tmp, directory)
    return directory


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


def load_model_meta(directory: str | Path) -> dict[str, Any]:
    directory = resolve_dir(directory)
    meta = read_json(directory / MODEL_META, "model metadata")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{directory / MODEL_META} must hold a JSON object, not {type(meta).__name__}. "
                              "Re-export the model with tdc-agent.")
    shape = meta.get("image_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3
                                  and all(type(x) is int and 0 < x <= 65536 for x in shape)):
        raise CheckpointError(f"{directory / MODEL_META}: image_shape {shape!r} is not [channels, height, width]. "
                              "Fix it or re-export the model with tdc-agent.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / MODEL_META} has format_version {meta.get('format_version')!r}; this "
            f"tdc-agent reads version {FORMAT_VERSION}. Re-export the model with this version."
        )
    return meta


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a model directory written by :func:`save_model`; returns (model, metadata)."""
    directory = resolve_dir(directory)
    if not directory.is_dir():
        raise CheckpointError(f"Model directory {directory} does not exist.")
    meta = load_model_meta(directory)
    config = read_json(directory / "config.json", "model config")
    _check_unet_config(config, directory / "config.json")
    try:
        model = build_unet(config)
    except (TypeError, ValueError, KeyError, ZeroDivisionError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{directory / 'config.json'} does not describe a buildable UNet2DModel "
                              f"({type(e).__name__}: {e}). Fix it or re-export the model.") from None
    if (directory / PRUNING_FILE).is_file():
        from ..pruning.serialize import restore_structure

        setattr(model, PRUNING_ATTR, restore_structure(model, directory))
    state = load_tensors(directory / "model.safetensors", "model weights")
    load_state_strict(model, state, directory / "model.safetensors")
    return model.to(device), meta


# Far above any real diffusion UNet (Stable Diffusion's widest block has 1280 channels): a larger
# number is a corrupt or hostile file that would allocate gigabytes before the weights are checked.
MAX_CHANNELS = 8192


def _check_unet_config(config: Any, path: Path) -> None:
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object (a diffusers UNet2DModel config), not "
                              f"{type(config).__name__}. Re-export the model.")
    widths = config.get("block_out_channels", [])
    groups = config.get("norm_num_groups", 32)
    if not (isinstance(widths, list) and all(type(w) is int and 0 < w <= MAX_CHANNELS for w in widths)):
        raise CheckpointError(f"{path}: block_out_channels {widths!r} must be positive integers up to {MAX_CHANNELS}.")
    if groups is not None and not (type(groups) is int and groups > 0 and all(w % groups == 0 for w in widths)):
        raise CheckpointError(f"{path}: norm_num_groups {groups!r} must be a positive integer dividing every "
                              f"block width {widths}.")


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load weights, turning any key or shape mismatch into a clear :class:`CheckpointError`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        detail = []
        if missing:
            detail.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if shapes:
            k = shapes[0]
            detail.append(f"shape of {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(
            f"Weights in {source} do not match the model architecture ({'; '.join(detail)}). The file "
            "comes from another architecture or config: use the matching config, or a new run directory."
        )
    model.load_state_dict(state, strict=True)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
