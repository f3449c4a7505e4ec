"""FID and KID with Inception features, for image datasets (CIFAR-10, image folders, npz).

Protocol (pinned, written into ``evaluation.json``): generated and real images are quantised to
8 bits (as saved PNGs would be), resized to 299x299 bilinearly and fed to the FID Inception network
(:mod:`.inception`); the reference is the configured dataset (all of it, or
``evaluation.reference_samples`` drawn with the run seed). Reference statistics are cached per
dataset and weights file, so only the first evaluation pays for them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.io import load_tensors, save_tensors
from ..core.config import DataConfig
from ..core.data import load_dataset
from ..core.progress import track
from .fd import cache_dir, frechet_to_stats, gaussian, kid
from .inception import FIDInception, load_fid_inception

KID_REFERENCE_CAP = 5000  # reference features kept for KID (FID uses the statistics of all of them)


@torch.no_grad()
def inception_features(images: torch.Tensor, model: FIDInception, device: torch.device, batch_size: int = 50,
                       progress: bool = True,
                       label: str = "Inception features") -> np.ndarray:
    """2048-d features of images in [-1, 1], after 8-bit quantisation."""
    out = []
    for i in track(range(0, len(images), batch_size), label, enabled=progress):
        x = images[i:i + batch_size].float()
        x = torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1
        out.append(model(x.to(device)).double().cpu().numpy())
    return np.concatenate(out)


def _reference_key(data: DataConfig, limit: int | None, seed: int, weights_sha: str) -> str:
    blob = json.dumps({"data": data.model_dump(), "limit": limit, "seed": seed, "weights": weights_sha},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reference_statistics(data: DataConfig, model: FIDInception, weights_sha: str, device: torch.device,
                         limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(mu, sigma, features kept for KID, reference size) of the real images, cached."""
    path = cache_dir() / "fid_reference" / f"{_reference_key(data, limit, seed, weights_sha)}.safetensors"
    if path.is_file():
        t = load_tensors(path, "FID reference statistics")
        return t["mu"].numpy(), t["sigma"].numpy(), t["kid_features"].numpy(), int(t["count"].item())
    images = load_dataset(data).images
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(images):
        images = images[torch.from_numpy(np.sort(rng.choice(len(images), limit, replace=False)))]
    feats = inception_features(images, model, device, label="reference features")
    mu, sigma = gaussian(feats)
    keep = feats[np.sort(rng.choice(len(feats), min(KID_REFERENCE_CAP, len(feats)), replace=False))]
    save_tensors(path, {"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma),
                        "kid_features": torch.from_numpy(keep), "count": torch.tensor(len(feats))})
    return mu, sigma, keep, len(feats)


@dataclass
class InceptionScores:
    fid: float
    kid: float
    kid_std: float
    samples: int
    reference: int
    weights_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"fd": self.fid, "kid": self.kid, "kid_std": self.kid_std, "samples": self.samples,
                "reference_images": self.reference, "metric": "fid-inception", "weights_sha256": self.weights_sha256}


class InceptionEvaluator:
    """Loads the network and the reference once; scores any number of sample sets."""

    def __init__(self, data: DataConfig, weights: str | None, device: torch.device, reference_samples: int | None,
                 seed: int) -> None:
        self.model, self.sha = load_fid_inception(weights, device)
        self.device = device
        self.seed = seed
        self.mu, self.sigma, self.kid_ref, self.count = reference_statistics(
            data, self.model, self.sha, device, reference_samples, seed)

    def score(self, images: torch.Tensor) -> InceptionScores:
        feats = inception_features(images, self.model, self.device)
        k, k_std = kid(feats, self.kid_ref, seed=self.seed)
        return InceptionScores(frechet_to_stats(feats, self.mu, self.sigma), k, k_std, len(feats),
                               self.count, self.sha)
