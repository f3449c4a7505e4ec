"""Fréchet distance in the feature space of a digits classifier (the offline FD for the default).

The classifier (an MLP on 8x8 digits) is trained on the digits train split; its test accuracy is
reported with every FD, and its weights are cached (safetensors) in ``$TDC_AGENT_CACHE`` (default
``~/.cache/tdc-agent``). The protocol is pinned: reference = all 1797 real digits, features = the
64-d penultimate layer, and every FD comes with the real-vs-real floor (FD of an equally large
resample of real digits against the reference), because on this small dataset the floor is of
the same order as model distances. :func:`intra_fd` (per-class FD, averaged) compares how each
digit looks without weighing which digits were drawn, the part of FD that scatters most between
two trainings of one recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.io import atomic_write_json, cache_dir, load_tensors, read_json, save_tensors
from ..core.config import MIN_FD_SAMPLES, DataConfig
from ..core.errors import DataError
from ..core.data import load_dataset


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
    atomic_write_json(d / "info.json", {"test_accuracy": acc, "train_images": len(train), "test_images": len(test)},
                      scrub=False)
    return model.eval(), acc


@torch.no_grad()
def features(images: torch.Tensor, model: DigitsClassifier) -> np.ndarray:
    return model.features(images.float().cpu()).numpy().astype(np.float64)


def gaussian(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set (rows are samples); too few rows is a :class:`DataError`."""
    if a.ndim != 2 or len(a) < MIN_FD_SAMPLES:
        # a covariance from a couple of points is a rank-1 guess: a distance from it means nothing
        raise DataError(f"A Fréchet distance needs at least {MIN_FD_SAMPLES} samples per side; got {len(a)}. "
                        f"Raise evaluation.samples (and --num) to {MIN_FD_SAMPLES} or more; the paper's protocol "
                        "uses thousands.")
    return a.mean(0), np.cov(a, rowvar=False)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    return frechet_to_stats(a, *gaussian(b))


def frechet_to_stats(a: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet distance between the Gaussian fitted to the features ``a`` and N(mu2, s2).

    With fewer samples than dimensions (1000 samples of 2048-d Inception features, the CPU default)
    the sample covariance is ``A^T A`` with ``A`` the centred samples / sqrt(n - 1), and the nonzero
    eigenvalues of ``A^T A s2`` are those of the n x n ``A s2 A^T``: the same number from an n x n
    eigendecomposition instead of two d x d ones (exact, not an approximation).
    """
    mu1, s1 = gaussian(a)
    n, d = a.shape
    if n - 1 >= d:
        return frechet_from_stats(mu1, s1, mu2, s2)
    c = (a - mu1) / np.sqrt(n - 1)
    return _frechet(mu1, s1, mu2, s2, np.linalg.eigvalsh(c @ s2 @ c.T))


def frechet_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, s1) and N(mu2, s2).

    tr sqrt(s1 s2) is computed as the sum of square roots of the eigenvalues of the symmetric
    sqrt(s1) s2 sqrt(s1) (same spectrum), two symmetric eigendecompositions instead of a general
    matrix square root: exact for covariance matrices and ~10x faster at 2048 dimensions.
    """
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return _frechet(mu1, s1, mu2, s2, np.linalg.eigvalsh(root1 @ s2 @ root1))


def _frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, inner: np.ndarray) -> float:
    """|mu1 - mu2|² + tr s1 + tr s2 - 2 tr sqrt(s1 s2), given the eigenvalues ``inner`` of a matrix
    with the nonzero spectrum of s1 s2 (float error can make tiny ones negative: clipped)."""
    tr_covmean = float(np.sqrt(np.clip(inner, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel, mean and std over
    random subsets (the protocol of Bińkowski et al.; the subset size is capped by the smaller set)."""
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


@torch.no_grad()
def class_labels(feats: np.ndarray, model: DigitsClassifier) -> np.ndarray:
    """The classifier's predicted class of each feature row (its head applied to the features)."""
    return model.head(torch.from_numpy(np.asarray(feats, dtype=np.float32))).argmax(1).numpy()


def intra_fd(gen: np.ndarray, ref: np.ndarray, gen_labels: np.ndarray, ref_labels: np.ndarray) -> float:
    """Intra-FD (Miyato & Koyama 2018): the mean over classes of the Fréchet distance between a
    class's generated and reference features.

    FD over the whole set also weighs *which* classes were drawn: a model whose samples hold 11 %
    threes instead of 10 % moves FD's mean term with no image drawn worse. Per class, only how the
    images of that class look is compared. Both sides are labelled by the same classifier (generated
    digits have no labels), so real digits scored against the reference give the real-vs-real level.
    A class with too few samples on either side is a :class:`DataError`.
    """
    classes = np.unique(ref_labels)
    short = {int(c): int((gen_labels == c).sum()) for c in classes if (gen_labels == c).sum() < MIN_FD_SAMPLES}
    if short:
        raise DataError(f"intra-FD needs at least {MIN_FD_SAMPLES} generated samples of every class; got {short} "
                        "(class: count). Generate more samples.")
    return float(np.mean([frechet(gen[gen_labels == c], ref[ref_labels == c]) for c in classes]))


@dataclass
class FDResult:
    fd: float
    floor: float
    samples: int
    classifier_accuracy: float
    kid: float
    kid_std: float
    intra_fd: float | None = None  # None: a class had too few samples (``intra_fd_note`` says which)
    intra_fd_note: str | None = None

    def to_dict(self) -> dict[str, float | str]:
        out: dict[str, float | str] = {
            "fd": self.fd, "real_floor": self.floor, "samples": self.samples, "kid": self.kid, "kid_std": self.kid_std,
            "metric": "digits-fd", "classifier_test_accuracy": self.classifier_accuracy}
        if self.intra_fd is not None:
            out["intra_fd"] = self.intra_fd
        if self.intra_fd_note:
            out["intra_fd_note"] = self.intra_fd_note
        return out


def digits_fd(samples: torch.Tensor, seed: int = 0) -> FDResult:
    """FD of generated digits (N, 1, 8, 8 in [-1, 1]) against all real digits, with the floor, KID
    and intra-FD (when every class has enough samples)."""
    clf, acc = digits_classifier()
    real = load_dataset(DataConfig(name="digits", split="all")).images
    ref = features(real, clf)
    gen = features(samples, clf)
    rng = np.random.default_rng(seed)
    floor = frechet(ref[rng.integers(len(ref), size=len(gen))], ref)
    k, k_std = kid(gen, ref, seed=seed)
    try:
        intra, note = intra_fd(gen, ref, class_labels(gen, clf), class_labels(ref, clf)), None
    except DataError as e:  # a few samples spread over 10 classes: FD stands, the report says why no intra-FD
        intra, note = None, str(e)
    return FDResult(frechet(gen, ref), floor, len(gen), acc, k, k_std, intra, note)


def real_floor_splits(n_splits: int = 50, seed: int = 0) -> tuple[float, float, int]:
    """The real-vs-real floor: FD between two disjoint random halves of the 1797 real digits,
    averaged over ``n_splits`` splits. Returns (mean, standard deviation, images per half)."""
    clf, _ = digits_classifier()
    real = load_dataset(DataConfig(name="digits", split="all")).images
    ref = features(real, clf)
    rng = np.random.default_rng(seed)
    half = len(ref) // 2
    vals = []
    for _ in range(n_splits):
        perm = rng.permutation(len(ref))
        vals.append(frechet(ref[perm[:half]], ref[perm[half:2 * half]]))
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if n_splits > 1 else 0.0, half
