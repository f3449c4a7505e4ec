"""The model store: one way to save and load a model directory (dense or pruned).

Nothing here unpickles. A model directory holds

- ``config.json``: the diffusers ``UNet2DModel`` config (so ``UNet2DModel.from_pretrained`` reads it),
- ``model.safetensors``: the weights,
- ``tdc_model.json``: our metadata (format version, noise schedule, image shape, extra records),
- ``pruning.json`` for a pruned model: its pruning record (:mod:`tdc_agent.models.record`).

A directory is written next to its final place and swapped in (:func:`tdc_agent.core.io.replace_dir`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError
from ..core.io import atomic_write_json, load_tensors, read_json, replace_dir, resolve_dir, save_tensors
from .record import PRUNING_FILE, attach, record_of, restore_structure
from .unet import build_unet, check_unet_config

FORMAT_VERSION = 1
MODEL_META = "tdc_model.json"


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
    record = record_of(model)
    if record is not None:
        atomic_write_json(tmp / PRUNING_FILE, record)
    replace_dir(tmp, directory)
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
    check_unet_config(config, directory / "config.json")
    try:
        model = build_unet(config)
    except (TypeError, ValueError, KeyError, ZeroDivisionError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{directory / 'config.json'} does not describe a buildable UNet2DModel "
                              f"({type(e).__name__}: {e}). Fix it or re-export the model.") from None
    if (directory / PRUNING_FILE).is_file():
        attach(model, restore_structure(model, directory))
    state = load_tensors(directory / "model.safetensors", "model weights")
    load_state_strict(model, state, directory / "model.safetensors")
    return model.to(device), meta


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
