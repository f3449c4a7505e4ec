"""Figures written into run directories (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .io import atomic_write_bytes  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def image_grid(images: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """NCHW images in [-1, 1] to one HWC uint8 grid with a 1-pixel border."""
    x = ((images.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = np.zeros((ncol * (h + 1) + 1, nrow * (w + 1) + 1, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w] = (
            x[i].permute(1, 2, 0).numpy()
        )
    return grid[..., 0] if c == 1 else grid


def save_grid(images: torch.Tensor, path: str | Path, scale: int | None = None) -> Path:
    """Write a PNG grid of images, upscaled (nearest) so small images stay visible."""
    import io

    from PIL import Image

    grid = image_grid(images)
    img = Image.fromarray(grid)
    scale = scale or max(1, min(8, 512 // img.width))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
