"""Datasets, held in memory as one image tensor in [-1, 1], shape (N, C, H, W).

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images). Ships with
  scikit-learn, so it is the offline default.
- ``cifar10``: CIFAR-10, read from the official *binary* distribution
  (``cifar-10-batches-bin/*.bin``: one label byte + 3072 pixel bytes per record), which needs no
  unpickling. ``data.download=true`` fetches it with torchvision's downloader.
- ``imagefolder``: every image under a folder (recursively), centre-cropped and resized.
- ``npz``: an array of images in an ``.npz`` file (key ``images`` or the only key), NHWC or NCHW,
  uint8 in [0, 255] or float in [0, 1] / [-1, 1].
"""

from __future__ import annotations

import zipfile
import zlib

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .errors import DataError

CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_BINARY_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class ImageDataset:
    """Images in [-1, 1] as a float tensor; ``name`` says where they came from."""

    images: torch.Tensor
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """Load the dataset a config names, checking paths first so errors come before any compute."""
    loaders = {"digits": _digits, "cifar10": _cifar10, "imagefolder": _imagefolder, "npz": _npz}
    ds = loaders[cfg.name](cfg)
    if cfg.channels is not None and ds.images.shape[1] != cfg.channels:
        ds.images = _convert_channels(ds.images, cfg.channels)
    if cfg.image_size is not None and ds.images.shape[-1] != cfg.image_size:
        ds.images = torch.nn.functional.interpolate(
            ds.images, size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True,
            align_corners=False,
        ).clamp(-1, 1)
    return ds


# float images may stray this far outside [0, 1] / [-1, 1] (rounding in the tool that wrote them)
RANGE_SLACK = 1e-3
HELD_OUT_FRACTION = 6  # 1/6 of a dataset without an official test set is held out


def split_indices(n: int, split: str, source: str = "dataset") -> torch.Tensor | slice:
    """The images of ``split`` among ``n``, for datasets without an official test set.

    A fixed permutation (seed 0) holds out ``n // 6`` images; ``val`` is the first half of them (the
    agent's quick evaluation), ``test`` the second half (benchmarks score chosen schemes there),
    ``heldout`` both, ``train`` the rest (what stage 1 and stage 2 train on), ``all`` everything.
    """
    if split == "all":
        return slice(None)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_held = n // HELD_OUT_FRACTION
    held = perm[:n_held]
    idx = {"train": perm[n_held:], "heldout": held, "val": held[: n_held // 2], "test": held[n_held // 2:]}[split]
    idx = torch.sort(idx).values  # a split keeps the dataset's order
    if len(idx) == 0:
        raise DataError(f"{source} has {n} images, too few for a {split!r} split (1/{HELD_OUT_FRACTION} of the "
                        f"images are held out, half for val and half for test). Add images, or set data.split=all "
                        "(then the agent's validation images are also training images).")
    return idx


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    if x.shape[1] == 1:
        return x.repeat(1, channels, 1, 1)
    raise DataError(f"Cannot convert images with {x.shape[1]} channels to {channels}; "
                    "set data.channels to match the dataset.")


def _digits(cfg: DataConfig) -> ImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2 - 1
    return ImageDataset(images[split_indices(len(images), cfg.split, "digits")], f"digits[{cfg.split}]")


def _cifar10(cfg: DataConfig) -> ImageDataset:
    root = Path(cfg.root or "data/cifar10")
    folder = root / "cifar-10-batches-bin"
    if not folder.is_dir():
        if not cfg.download:
            raise DataError(
                f"CIFAR-10 not found: {folder} does not exist. Set data.download=true to fetch it "
                f"(binary version, ~162 MB) or set data.root to a folder holding "
                "cifar-10-batches-bin/."
            )
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(CIFAR10_BINARY_URL, str(root), md5=CIFAR10_BINARY_MD5)
    train, held = [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"]
    wanted = {"train": train, "all": train + held}.get(cfg.split, held)
    files = [folder / n for n in wanted if (folder / n).is_file()]
    if not files:
        raise DataError(f"No CIFAR-10 batch files ({', '.join(wanted)}) in {folder}.")
    chunks = []
    for f in files:
        raw = np.frombuffer(f.read_bytes(), dtype=np.uint8)
        if raw.size % 3073:
            raise DataError(f"{f} is truncated or not a CIFAR-10 binary batch (size {raw.size} is "
                            "not a multiple of 3073 bytes). Delete it and download again.")
        chunks.append(raw.reshape(-1, 3073)[:, 1:].reshape(-1, 3, 32, 32))
    images = torch.from_numpy(np.concatenate(chunks)).float() / 127.5 - 1
    if cfg.split in ("val", "test"):  # the official test batch halved: val first, test second
        half = len(images) // 2
        images = images[:half] if cfg.split == "val" else images[half:]
    return ImageDataset(images, f"cifar10[{cfg.split}]")


# 8192 x 8192: far above any diffusion training image, far below what exhausts memory when decoded
MAX_PIXELS = 8192 * 8192


def _imagefolder(cfg: DataConfig) -> ImageDataset:
    from PIL import Image

    if cfg.root is None or not Path(cfg.root).is_dir():
        raise DataError(f"data.root={cfg.root!r} is not a folder. For data.name=imagefolder set "
                        "data.root to a folder of images.")
    paths = sorted(p for p in Path(cfg.root).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(f"No images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {cfg.root}.")
    size = cfg.image_size or 64
    mode = "L" if cfg.channels == 1 else "RGB"
    arrays = []
    for p in paths:
        try:
            img = Image.open(p)
            w, h = img.size  # read from the header: refuse a decompression bomb before decoding it
            if w * h > MAX_PIXELS:
                raise DataError(f"Image {p} declares {w}x{h} pixels (more than {MAX_PIXELS:,}); it would take "
                                "gigabytes to decode. Remove it, or resize it before training.")
            img = img.convert(mode)
        except Image.DecompressionBombError as e:
            raise DataError(f"Image {p} is a decompression bomb ({e}). Remove the file.") from None
        except OSError as e:
            raise DataError(f"Cannot read image {p}: {e}. Remove or replace the file.") from None
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        img = img.resize((size, size), Image.BICUBIC)
        a = np.asarray(img, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    images = torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1
    return ImageDataset(images[split_indices(len(images), cfg.split, str(cfg.root))],
                        f"imagefolder[{cfg.root}][{cfg.split}]")


def _npz(cfg: DataConfig) -> ImageDataset:
    if cfg.root is None or not Path(cfg.root).is_file():
        raise DataError(f"data.root={cfg.root!r} is not a file. For data.name=npz set data.root to "
                        "an .npz file holding an 'images' array.")
    try:
        with np.load(cfg.root, allow_pickle=False) as z:
            key = "images" if "images" in z.files else (z.files[0] if len(z.files) == 1 else None)
            if key is None:
                raise DataError(f"{cfg.root} holds arrays {z.files}; name the images array 'images'.")
            arr = z[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"Cannot read {cfg.root} as .npz ({type(e).__name__}: {e}): the file is truncated or "
                        "corrupt. Write it again (np.savez with an 'images' array).") from None
    images = images_from_array(arr, str(cfg.root))
    return ImageDataset(images[split_indices(len(images), cfg.split, str(cfg.root))], f"npz[{cfg.root}][{cfg.split}]")


def images_from_array(arr: np.ndarray, source: str = "array") -> torch.Tensor:
    """Convert an image array (NHWC or NCHW; uint8, or float in [0,1] or [-1,1]) to NCHW in [-1,1]."""
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{source}: images have dtype {arr.dtype}; use uint8 (0..255) or float (in [0,1] or [-1,1]).")
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise DataError(f"{source}: images must be a 4-d array (N,H,W,C or N,C,H,W), got {arr.shape}.")
    if len(arr) == 0:
        raise DataError(f"{source}: the images array is empty (shape {arr.shape}); it needs at least one image.")
    if arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.shape[1] not in (1, 3, 4):
        raise DataError(f"{source}: images have {arr.shape[1]} channels (shape {arr.shape}); use 1 (grey), 3 (RGB) "
                        "or 4 (RGBA, or latents), as N,H,W,C or N,C,H,W.")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(arr), -1).any(1))[0, 0])
            raise DataError(f"{source}: {int(bad.sum())} pixel values are NaN or infinite (first in image {first}). "
                            "Fix or drop those images: training on them only ends in a NaN loss.")
    lo, hi = (float(arr.min()), float(arr.max()))
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8:
        # int64/int32 arrays of 0..255 pixels are common and fine; anything wider (uint16 PNGs, 12-bit
        # sensors) would be read as if 255 were white, giving values far beyond [-1, 1]
        if lo < 0 or hi > 255:
            raise DataError(f"{source}: images are {arr.dtype} with values in [{lo:g}, {hi:g}], outside 0..255. "
                            "Rescale them to uint8 first, e.g. (arr / arr.max() * 255).round().astype(np.uint8) "
                            "(for 16-bit images: (arr / 65535 * 255)), or to float in [0, 1].")
        arr = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating) and not (-1 - RANGE_SLACK <= lo and hi <= 1 + RANGE_SLACK):
        hint = ("they look like 0..255 pixels: divide by 255 (arr / 255.0) for [0, 1], or save them as uint8"
                if lo >= 0 and hi <= 255 else "rescale them to [0, 1] (e.g. (arr - arr.min()) / (arr.max() - arr.min()))")
        raise DataError(f"{source}: float images must lie in [0, 1] or [-1, 1]; found values in [{lo:g}, {hi:g}]: "
                        f"{hint}.")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1
    x = x.float()
    return x * 2 - 1 if lo >= 0 else x.clamp(-1, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW tensor to uint8 NHWC array (what ``.npz`` sample files hold)."""
    x = ((images.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()
