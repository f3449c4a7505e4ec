"""The progressive diffusion model: N group members and a routing table from timestep to member.

A directory: ``manifest.json`` (schedule, groups with t ranges and MACs, member folders) and one
model directory per member (``members/g<i>/``: structure JSON + safetensors, pruned or not).
``denoise(x, t)`` sends every sample of a batch to its timestep's member, so batches with mixed
timesteps work too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..core.io import atomic_write_json, read_json, replace_dir
from ..models.store import load_model
from ..core.config import ScheduleConfig
from ..core.errors import CheckpointError
from ..core.faults import failpoint
from .backbone import denoise, input_shape
from .macs import thop_macs
from ..diffusion.schedule import ddim_timesteps

MANIFEST = "manifest.json"
FORMAT = "tdc-progressive/1"


@dataclass
class Member:
    group: int
    t_start: int
    t_end: int
    model: torch.nn.Module
    macs: int
    limit_fraction: float | None = None


class ProgressiveModel(torch.nn.Module):
    """Routes each timestep to the model of its group."""

    def __init__(self, members: Sequence[Member], schedule: ScheduleConfig, image_shape: Sequence[int],
                 latent: dict[str, Any] | None = None):
        super().__init__()
        self.latent = latent  # the autoencoder that decodes samples (latent diffusion), else None
        self.members = list(sorted(members, key=lambda m: m.t_start))
        self.nets = torch.nn.ModuleList([m.model for m in self.members])
        self.schedule = schedule
        self.image_shape = tuple(image_shape)
        table = np.full(schedule.timesteps, -1, dtype=np.int64)
        for i, m in enumerate(self.members):
            table[m.t_start: m.t_end + 1] = i
        if (table < 0).any():
            missing = np.flatnonzero(table < 0)
            raise CheckpointError(f"The members do not cover every timestep (e.g. t={int(missing[0])}); a group "
                                  "model is missing. Finish the missing groups, then assemble again.")
        self.register_buffer("routing", torch.from_numpy(table), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        idx = self.routing[t.to(self.routing.device)].to(x.device)
        first = int(idx[0])
        if bool((idx == first).all()):  # the usual case when sampling: one member for the whole batch
            return denoise(self.nets[first], x, t)
        out = torch.empty_like(x)
        for i in idx.unique().tolist():
            sel = idx == i
            out[sel] = denoise(self.nets[i], x[sel], t[sel]).to(out.dtype)
        return out

    def macs_for(self, timesteps: Sequence[int]) -> int:
        """MACs (thop, per image) of running the denoiser at these timesteps."""
        table = self.routing.cpu().numpy()
        return int(sum(self.members[table[t]].macs for t in timesteps))

    def sampling_macs(self, sampler: str = "ddim", steps: int = 100) -> dict[str, float]:
        """MACs of one whole sampling run per image, and the mean per step."""
        ts = ddim_timesteps(self.schedule.timesteps, steps) if sampler == "ddim" else np.arange(self.schedule.timesteps)
        total = self.macs_for(ts.tolist())
        return {"total": total, "mean_per_step": total / len(ts), "steps": len(ts)}

    def save(self, directory: str | Path, member_dirs: Sequence[Path]) -> Path:
        """Write the manifest next to already-saved member directories (copied in, atomically)."""
        import shutil

        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "members").mkdir(parents=True)
        entries = []
        for m, src in zip(self.members, member_dirs):
            name = f"g{m.group}"
            shutil.copytree(src, tmp / "members" / name)
            failpoint("assemble.member")
            entries.append({"group": m.group, "t_start": m.t_start, "t_end": m.t_end, "dir": f"members/{name}",
                            "macs_thop": m.macs, "limit_fraction": m.limit_fraction})
        atomic_write_json(tmp / MANIFEST, {"format": FORMAT, "schedule": self.schedule.model_dump(mode="json"),
                                           "image_shape": list(self.image_shape), "latent": self.latent,
                                           "members": entries}, scrub=False)  # state: verbatim
        replace_dir(tmp, directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ProgressiveModel":
        directory = Path(directory)
        path = directory / MANIFEST
        man = read_json(path, "progressive model manifest")
        if not isinstance(man, dict) or man.get("format") != FORMAT:
            fmt = man.get("format") if isinstance(man, dict) else type(man).__name__
            raise CheckpointError(f"{path} is not a {FORMAT} manifest (format {fmt!r}).")
        try:
            schedule = ScheduleConfig.model_validate(man["schedule"])
            shape = man["image_shape"]
            if not (isinstance(shape, list) and len(shape) == 3 and all(type(x) is int and x > 0 for x in shape)):
                raise ValueError(f"image_shape {shape!r} is not [channels, height, width]")
            if not isinstance(man["members"], list) or not man["members"]:
                raise ValueError("members must be a non-empty list")
            members = []
            for e in man["members"]:
                member_dir = _inside(directory, e["dir"])
                if not member_dir.is_dir():  # a manifest naming a folder that is not there is a bad manifest
                    raise ValueError(f"member {e['dir']!r} is not a directory of {directory}")
                model, meta = load_model(member_dir, device)
                t0, t1 = _whole(e, "t_start"), _whole(e, "t_end")
                if not 0 <= t0 <= t1 < schedule.timesteps:
                    raise ValueError(f"member {e['dir']} covers t {t0}-{t1}, outside 0-{schedule.timesteps - 1}")
                own = meta.get("schedule")
                if isinstance(own, dict) and ScheduleConfig.model_validate(own) != schedule:
                    raise ValueError(f"member {e['dir']} was trained with another noise schedule ({own}) than the "
                                     f"manifest's ({schedule.model_dump()}), so its timesteps mean something else")
                channels = input_shape(model)[0]
                if channels != shape[0]:
                    raise ValueError(f"member {e['dir']} takes {channels}-channel inputs, the manifest says "
                                     f"image_shape {shape}")
                macs = thop_macs(model)  # what the member costs, not what the manifest claims
                if _whole(e, "macs_thop") != macs:
                    raise ValueError(f"member {e['dir']} costs {macs:,} MACs per image, the manifest claims "
                                     f"{e['macs_thop']:,}")
                members.append(Member(_whole(e, "group"), t0, t1, model.eval(), macs, e.get("limit_fraction")))
            ranges = sorted((m.t_start, m.t_end) for m in members)
            for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
                if b0 <= a1:
                    raise ValueError(f"members overlap at t {b0}-{min(a1, b1)} (t {a0}-{a1} and t {b0}-{b1}): "
                                     "one of them would never be used")
            latent = man.get("latent")
            if latent is not None and not (isinstance(latent, dict) and isinstance(latent.get("vae"), str)
                                           and isinstance(latent.get("scaling_factor"), (int, float))):
                raise ValueError(f"latent {latent!r} is not an autoencoder record")
            pm = cls(members, schedule, shape, latent)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
            raise CheckpointError(f"{path} is malformed ({type(e).__name__}: {e}). Assemble the progressive "
                                  "model again (tdc-agent assemble).") from None
        return pm.to(device).eval()


def _whole(entry: dict, key: str) -> int:
    """``entry[key]`` as a whole number: 30.7 (or true) is a corrupt manifest, not timestep 30."""
    v = entry[key]
    if type(v) is not int:
        raise ValueError(f"member {entry.get('dir')!r}: {key} {v!r} is not a whole number")
    return v


def _inside(directory: Path, rel: object) -> Path:
    """A member folder named by the manifest; it must lie inside the progressive model's folder."""
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"member dir {rel!r} is not a relative path")
    target = (directory / rel).resolve()
    if Path(rel).is_absolute() or not target.is_relative_to(directory.resolve()):
        raise ValueError(f"member dir {rel!r} points outside {directory}")
    return target


def is_progressive(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def member_from_dir(group: int, t_start: int, t_end: int, directory: Path, limit_fraction: float | None,
                    device: str | torch.device = "cpu") -> tuple[Member, dict[str, Any]]:
    model, meta = load_model(directory, device)
    return Member(group, t_start, t_end, model.eval(), thop_macs(model), limit_fraction), meta
