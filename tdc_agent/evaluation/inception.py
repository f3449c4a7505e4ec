"""The FID Inception-v3 network (the TensorFlow 2015-12-05 graph, as ported by pytorch-fid).

FID numbers are only comparable with published ones when computed with exactly this network:
torchvision's Inception-v3 layout with 1008 classes, whose pooling branches differ from
torchvision's (average pools exclude padding; the last block max-pools). The weights are the
published ``pt_inception-2015-12-05-6726825d.pth``; it is a pickle-format file, so we read its
tensors with :mod:`.torchfile` (never unpickling) and cache them once as safetensors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.models import inception as tv

from ..core.io import load_tensors, save_tensors
from ..core.errors import CheckpointError
from .fd import cache_dir
from .torchfile import read_torch_state_dict

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
CACHED_NAME = "pt_inception-2015-12-05-6726825d.safetensors"
# sha256 of the published file (95,628,359 bytes). Its first 8 digits are the ``6726825d`` in the
# name (torch.hub's naming convention); the full value is the one independently pinned for this
# file by other projects. Not re-verified by a download here (no internet): a mismatch on download
# is refused, so a wrong pin would fail loudly rather than pass silently.
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


class _FIDInceptionA(tv.InceptionA):
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return [self.branch1x1(x), b5, b3, pool]


class _FIDInceptionC(tv.InceptionC):
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return [self.branch1x1(x), b7, d, pool]


class _FIDInceptionE(tv.InceptionE):
    max_pool: bool = False

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.max_pool:  # the TF graph's last block max-pools
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return [self.branch1x1(x), b3, d, self.branch_pool(pooled)]


class _FIDInceptionEMax(_FIDInceptionE):
    max_pool = True


class FIDInception(torch.nn.Module):
    """Images in [-1, 1] (any size, 1 or 3 channels) -> 2048-d pool3 features."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False,
                                 inception_blocks=[tv.BasicConv2d, _FIDInceptionA, tv.InceptionB, _FIDInceptionC,
                                                   tv.InceptionD, _FIDInceptionE, tv.InceptionAux])
        self.net.Mixed_7c = _FIDInceptionEMax(2048)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        # channels-last convolutions are ~1.5x faster on CPU (same features to float rounding)
        x = x.contiguous(memory_format=torch.channels_last)
        n = self.net
        for layer in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1, n.Conv2d_3b_1x1,
                      n.Conv2d_4a_3x3, n.maxpool2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b,
                      n.Mixed_6c, n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = layer(x)
        return torch.flatten(n.avgpool(x), 1)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_weights(weights: str | None) -> Path:
    """A safetensors file with the FID Inception weights.

    ``weights`` may be a ``.safetensors`` file, or a ``.pth`` file (read as data and converted
    once into the cache). Without it, the cached conversion is used, or the published file is
    downloaded on first use (~92 MB) and converted.
    """
    cache = cache_dir()
    if weights:
        src = Path(weights).expanduser()
        if not src.is_file():
            raise CheckpointError(f"evaluation.inception_weights: {src} does not exist. Give the path of "
                                  f"pt_inception-2015-12-05-6726825d.pth ({FID_WEIGHTS_URL}) or of its "
                                  "safetensors conversion.")
        if src.suffix == ".safetensors":
            return src
        out = cache / f"inception-{sha256(src)[:16]}.safetensors"
        if not out.is_file():
            save_tensors(out, read_torch_state_dict(src))
        return out
    out = cache / CACHED_NAME
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = download_verified(FID_WEIGHTS_URL, cache / (CACHED_NAME + ".download"), INCEPTION_SHA256)
    try:
        save_tensors(out, read_torch_state_dict(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    return out


def download_verified(url: str, dest: Path, expected_sha256: str) -> Path:
    """Download ``url`` to ``dest`` and check its sha256; a failed download or a file with another
    hash raises :class:`CheckpointError` and leaves nothing at ``dest``."""
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    except OSError as exc:
        dest.unlink(missing_ok=True)
        raise CheckpointError(f"could not download the FID Inception weights from {url} ({exc}). "
                              "Download the file elsewhere and set evaluation.inception_weights=PATH.") from exc
    got = sha256(dest)
    if got != expected_sha256:
        dest.unlink(missing_ok=True)
        raise CheckpointError(f"the FID Inception weights downloaded from {url} have sha256 {got}, not the "
                              f"published {expected_sha256}; refused and deleted (a corrupted or replaced "
                              "download). Retry, or give a verified copy as evaluation.inception_weights=PATH.")
    return dest


def load_fid_inception(weights: str | None, device: torch.device) -> tuple[FIDInception, str]:
    """The network with its weights (strictly matched) and the weights file's sha256 for the protocol."""
    path = resolve_weights(weights)
    model = FIDInception()
    state = load_tensors(path, "FID Inception weights")
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    expected = model.net.state_dict()
    # state dicts from before BatchNorm counted batches lack num_batches_tracked (unused in eval)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path}: not the FID Inception-v3 weights (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}, wrong shape {wrong[:3]}). Use "
                              f"pt_inception-2015-12-05-6726825d.pth from {FID_WEIGHTS_URL}.")
    model.net.load_state_dict(state, strict=False)
    return model.eval().to(device, memory_format=torch.channels_last), sha256(path)
