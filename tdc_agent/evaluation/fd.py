"""Fréchet distance in the feature space of a digits classifier (the offline FD for the default).

The classifier (an MLP on 8x8 digits) is trained on the digits train split; its test accuracy is
reported with every FD, and its weights are cached (safetensors) in ``$TDC_AGENT_CACHE`` (default
``~/.cache/tdc-agent``). The protocol is pinned: reference = all 1797 real digits, features = the
64-d penultimate layer, and every FD comes with the real-vs-real floor (FD of an equally large
resample of real digits against the reference), because on this small dataset the floor is of
the same order as model distances.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from ..checkpoint import atomic_write_json, load_tensors, read_json, save_tensors
from ..config import DataConfig
from ..data import load_dataset


def cache_dir() -> Path:
    return Path(os.environ.get("TDC_AGENT_CACHE", Path.home() / ".cache" / "tdc-agent"))


class DigitsClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.SiLU(),
                                        torch.nn.Linear(128, 64), torch.nn.SiLU())
        self.head = torch.nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def digits_classifier() -> tuple[DigitsClassifier, float]:
    """The cached classifier and its test accuracy (trained in ~2 s on first use)."""
    d = cache_dir() / "digits_classifier_v1"
    model = DigitsClassifier()
    if (d / "model.safetensors").is_file() and (d / "info.json").is_file():
        model.load_state_dict(load_tensors(d / "model.safetensors", "digits classifier"))
        return model.eval(), float(read_json(d / "info.json", "classifier info")["test_accuracy"])
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2 - 1
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_test = len(x) // 6  # the same split as data.split=train/test
    test, train = perm[:n_test], perm[n_test:]
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(400):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[train]), y[train])
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((model(x[test]).argmax(1) == y[test]).float().mean())
    save_tensors(d / "model.safetensors", model.state_dict())
    atomic_write_json(d / "info.json", {"test_accuracy": acc, "train_images": len(train), "test_images": len(test)})
    return model.eval(), acc


@torch.no_grad()
def features(images: torch.Tensor, model: DigitsClassifier) -> np.ndarray:
    return model.features(images.float().cpu()).numpy().astype(np.float64)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@dataclass
class FDResult:
    fd: float
    floor: float
    samples: int
    classifier_accuracy: float

    def to_dict(self) -> dict[str, float]:
        return {"fd": self.fd, "real_floor": self.floor, "samples": self.samples,
                "classifier_test_accuracy": self.classifier_accuracy}


def digits_fd(samples: torch.Tensor, seed: int = 0) -> FDResult:
    """FD of generated digits (N, 1, 8, 8 in [-1, 1]) against all real digits, with the floor."""
    clf, acc = digits_classifier()
    real = load_dataset(DataConfig(name="digits")).images
    ref = features(real, clf)
    gen = features(samples, clf)
    rng = np.random.default_rng(seed)
    floor = frechet(ref[rng.integers(len(ref), size=len(gen))], ref)
    return FDResult(frechet(gen, ref), floor, len(gen), acc)
