"""Latent diffusion: the UNet learns the latents of a frozen autoencoder (the paper's LDM setting).

With ``latent.vae`` set, the dataset is encoded once (cached as safetensors in
``$TDC_AGENT_CACHE/latents``, keyed by data, autoencoder and scaling factor) and everything that
trains, prunes or evaluates a denoiser sees latents: stage 1, the agent, stage 2 and the quick
loss. Only samples are decoded, for FD and the report's grids. Saved models record the
autoencoder and scaling factor, so ``tdc-agent sample`` decodes them too.

Autoencoders are diffusers ``AutoencoderKL`` (encoded to the posterior mean, as latent diffusion
trains on) or ``VQModel`` (decoded through its quantiser), loaded from safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.io import load_tensors, save_tensors
from ..core.config import Config, DataConfig
from ..core.data import ImageDataset, load_dataset
from ..core.errors import CheckpointError
from ..core.tally import count_step

_SUBFOLDERS = ("vae", "vqvae")


def _folder(spec: str) -> tuple[str, str | None]:
    """(path or id, subfolder) of an autoencoder spec: a model folder or a pipeline's vae/vqvae."""
    p = Path(spec)
    if p.exists():
        if (p / "config.json").is_file():
            return spec, None
        for sub in _SUBFOLDERS:
            if (p / sub / "config.json").is_file():
                return spec, sub
        raise CheckpointError(f"latent.vae {spec} holds no diffusers autoencoder (no config.json, vae/ or vqvae/).")
    return spec, None


def _fingerprint(path: str, sub: str | None) -> tuple:
    """What identifies a local autoencoder's weights without reading them (name, size, mtime)."""
    folder = Path(path) / (sub or "")
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.glob("*.safetensors")))


# One autoencoder per (folder, weights, device) per process: a run needs it for the latents, the
# model's metadata and the decoder, and loading it is the slow part (a real VAE is 80+ MB).
_LOADED: dict[tuple, torch.nn.Module] = {}
_LOADED_LOCK = threading.Lock()


def load_autoencoder(spec: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """An ``AutoencoderKL`` or ``VQModel`` in eval mode (the class comes from its config), loaded
    once per process for the same folder, weights and device (it is frozen, so sharing it is safe)."""
    path, sub = _folder(spec)
    key = (str(Path(path).resolve()) if Path(path).exists() else path, sub, str(torch.device(device)),
           _fingerprint(path, sub))
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load_autoencoder(spec, path, sub, device)
        return _LOADED[key]


def _load_autoencoder(spec: str, path: str, sub: str | None, device: torch.device | str) -> torch.nn.Module:
    from diffusers import AutoencoderKL, VQModel

    count_step("autoencoder")
    errors = []
    for cls in (AutoencoderKL, VQModel):
        try:
            cfg = cls.load_config(path, subfolder=sub)
            if cfg.get("_class_name") not in (None, cls.__name__):
                continue
            model = cls.from_pretrained(path, subfolder=sub, use_safetensors=True, low_cpu_mem_usage=False)
            return model.to(device).eval().requires_grad_(False)
        except Exception as e:  # diffusers raises OSError, ValueError, EnvironmentError...
            errors.append(f"{cls.__name__}: {e}")
    raise CheckpointError(f"Could not load an autoencoder from latent.vae={spec!r} ({'; '.join(errors)[:400]}). "
                          "Give a diffusers AutoencoderKL/VQModel folder with safetensors weights, or a hub id.")


def scaling_factor(cfg: Config, vae: torch.nn.Module) -> float:
    return float(cfg.latent.scaling_factor or getattr(vae.config, "scaling_factor", 1.0) or 1.0)


@torch.no_grad()
def encode(vae: torch.nn.Module, images: torch.Tensor, scale: float, batch_size: int = 64) -> torch.Tensor:
    """Images in [-1, 1] -> scaled latents (KL: the posterior mean; VQ: the pre-quantisation latents)."""
    device = next(vae.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        enc = vae.encode(images[i:i + batch_size].to(device))
        z = enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents
        out.append((z * scale).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor, scale: float, batch_size: int = 64) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1]."""
    device = next(vae.parameters()).device
    out = [vae.decode(latents[i:i + batch_size].to(device) / scale).sample.clamp(-1, 1).float().cpu()
           for i in range(0, len(latents), batch_size)]
    return torch.cat(out)


def _cache_key(data: DataConfig, spec: str, scale: float) -> str:
    path, sub = _folder(spec) if Path(spec).exists() else (spec, None)
    weights = ""
    folder = Path(path) / (sub or "")
    for f in sorted(folder.glob("*.safetensors")):  # a local autoencoder: its weights decide
        weights += hashlib.sha256(f.read_bytes()).hexdigest()
    blob = json.dumps({"data": data.model_dump(), "vae": spec, "weights": weights, "scale": scale}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_data(cfg: Config, data: DataConfig | None = None, device: torch.device | str = "cpu") -> ImageDataset:
    """What the denoiser learns: the images, or (latent mode) their cached latents."""
    from ..core.io import cache_dir

    data = data or cfg.data
    count_step(f"data[{data.split}]")
    if not cfg.latent.vae:
        return load_dataset(data)
    vae = load_autoencoder(cfg.latent.vae, device)
    scale = scaling_factor(cfg, vae)
    path = cache_dir() / "latents" / f"{_cache_key(data, cfg.latent.vae, scale)}.safetensors"
    if path.is_file():
        latents = load_tensors(path, "cached latents")["latents"]
    else:
        latents = encode(vae, load_dataset(data).images, scale, cfg.latent.batch_size)
        save_tensors(path, {"latents": latents}, metadata={"vae": cfg.latent.vae, "scale": str(scale)})
    return ImageDataset(latents, f"{data.name}[{data.split}] latents")


def held_out(cfg: Config, split: str = "val") -> ImageDataset:
    """Images (or latents) the models never trained on: ``val`` for the agent's quick evaluation
    (and stage 2's before/after losses), ``test`` for benchmarks that score the chosen schemes.

    When stage 1 trains on ``data.split=all`` the validation images were trained on; that is said
    once, loudly, since the agent's choices then rest on training loss.
    """
    if cfg.data.split != "train" and split in ("val", "test") and not _WARNED.get(cfg.data.split):
        from ..core.progress import console

        _WARNED[cfg.data.split] = True
        console.print(f"[yellow]warning:[/] data.split={cfg.data.split} trains on the {split} images too, so the "
                      "agent's quick losses are not held out. Set data.split=train (the default) for honest ones.")
    return training_data(cfg, cfg.data.model_copy(update={"split": split}))


_WARNED: dict[str, bool] = {}


def latent_meta(cfg: Config, latent_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """What a saved model records so that its samples can be decoded later (None for pixel models)."""
    if not cfg.latent.vae:
        return None
    vae = load_autoencoder(cfg.latent.vae)
    scale = scaling_factor(cfg, vae)
    image_shape = decode(vae, torch.zeros(1, *latent_shape), scale).shape[1:]
    return {"vae": cfg.latent.vae, "scaling_factor": scale, "image_shape": list(image_shape),
            "batch_size": cfg.latent.batch_size}


def decoder(latent: dict[str, Any] | None, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """Latents -> images for a model's recorded latent settings (the identity for pixel models)."""
    if not latent:
        return lambda x: x
    vae = load_autoencoder(latent["vae"], device)
    return lambda z: decode(vae, z, float(latent["scaling_factor"]), int(latent.get("batch_size", 64)))
