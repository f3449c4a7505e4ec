"""Figures written into run directories (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .io import atomic_write_bytes  # noqa: E402
from ..planning.plan import Plan  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_plan(plan: Plan, path: str | Path) -> Path:
    """SNR(t), the per-timestep budget and the group limits, with group boundaries (paper Fig. 2)."""
    t = np.arange(plan.timesteps)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(t, plan.snr, color="tab:blue")
    ax1.set_ylabel("SNR (dB)")
    ax1.set_title(f"{plan.schedule} schedule, N={len(plan.groups)}, k={plan.k}, shape={plan.shape}")
    ax2.plot(t, plan.budget, color="tab:orange", label="budget(t)")
    limits = np.array([g.limit_fraction for g in plan.groups])[plan.routing_table()]
    ax2.step(t, limits, where="post", color="tab:green", label=f"group limit ({plan.budget_rule})")
    ax2.set_ylabel("MACs / F")
    ax2.set_xlabel("timestep t")
    ax2.legend(loc="lower right")
    for g in plan.groups[1:]:
        for ax in (ax1, ax2):
            ax.axvline(g.t_start - 0.5, color="grey", lw=0.6, ls="--")
    return _save(fig, path)


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
