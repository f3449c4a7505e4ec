"""The names of the denoiser backbones and their presets: the vocabulary ``model.backbone`` and
``model.preset`` accept.

The backbones themselves (how a denoiser is built, saved, rebuilt, traced and pruned) live in
:mod:`tdc_agent.models.backbone`, a layer above. Config validation sits here in ``core`` and must
know the names without importing model code, so this module holds names only: the built-in
backbone (:data:`BUILTIN_BACKBONES`, implemented by :class:`tdc_agent.models.unet.UNet2DBackbone`),
those registered from code with :func:`tdc_agent.models.backbone.register_backbone`, which adds
the name here with :func:`add_backbone_name`, and those installed packages advertise under the
entry-point group :data:`ENTRY_POINT_GROUP` (names read from package metadata; the package is
imported only when its backbone's presets or models are needed).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError

# name -> its preset names (the first is the default when a config names the backbone but no preset)
BUILTIN_BACKBONES: dict[str, tuple[str, ...]] = {"unet2d": ("tiny", "ddpm-cifar10", "iddpm-cifar10")}
DEFAULT_BACKBONE = "unet2d"
ENTRY_POINT_GROUP = "tdc_agent.backbones"

_registered: dict[str, tuple[str, ...]] = {}


def check_new_name(name: str) -> str:
    """``name`` if it may name a new backbone (a plain lower-case word), else ValueError."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name):
        raise ValueError(f"{name!r} is not a backbone name: use lower-case letters, digits, '.', '_' and '-' "
                         "(e.g. 'dit')")
    return name


def add_backbone_name(name: str, presets: tuple[str, ...]) -> None:
    """Make ``name`` a known backbone with ``presets`` (called by ``register_backbone``)."""
    check_new_name(name)
    if name in BUILTIN_BACKBONES:
        raise ValueError(f"{name!r} is a built-in backbone and cannot be replaced")
    _registered[name] = tuple(presets)


def remove_backbone_name(name: str) -> None:
    """Forget a name added with :func:`add_backbone_name` (built-ins stay)."""
    _registered.pop(name, None)


@lru_cache(maxsize=1)
def backbone_entry_points() -> tuple[str, ...]:
    """Backbone names advertised by installed packages (cached; see :func:`refresh_entry_points`)."""
    return tuple(sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} - set(BUILTIN_BACKBONES)))


def refresh_entry_points() -> None:
    """Read the installed packages' entry points again (after installing one into a running process)."""
    backbone_entry_points.cache_clear()


def load_backbone_entry_point(name: str) -> Any:
    """The object the entry point ``name`` of :data:`ENTRY_POINT_GROUP` names (a ``Backbone`` subclass or
    instance), imported now; None when no installed package advertises ``name``."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as e:  # a user's package: any import error is theirs to fix, said in one line
                raise ConfigError(f"The backbone {name!r} (entry point {ep.value} in group {ENTRY_POINT_GROUP!r}) "
                                  f"could not be loaded: {type(e).__name__}: {e}. Fix or reinstall the package "
                                  "that provides it.") from None
    return None


def backbone_names() -> tuple[str, ...]:
    """Every known backbone: built-in first, then registered from code, then advertised by entry points."""
    names = [*BUILTIN_BACKBONES, *(n for n in _registered if n not in BUILTIN_BACKBONES)]
    return tuple(names + [n for n in backbone_entry_points() if n not in names])


def backbone_presets(name: str) -> tuple[str, ...]:
    """The preset names of a known backbone (KeyError for an unknown one); an entry point's backbone
    is imported to read them."""
    if name in BUILTIN_BACKBONES:
        return BUILTIN_BACKBONES[name]
    if name not in _registered and name in backbone_entry_points():
        presets = getattr(load_backbone_entry_point(name), "presets", None)
        if not (isinstance(presets, tuple) and presets and all(isinstance(p, str) and p for p in presets)):
            raise ConfigError(f"The backbone {name!r} of entry point group {ENTRY_POINT_GROUP!r} has no presets "
                              f"(a non-empty tuple of names); got {presets!r}.")
        return presets
    return _registered[name]


def check_backbone(name: str, what: str = "model.backbone") -> str:
    """``name`` if it is a known backbone, else a ValueError naming ``what`` and listing the known ones."""
    known = backbone_names()
    if name not in known:
        raise ValueError(f"{what} must be a denoiser backbone, one of {', '.join(known)}; got {name!r}. Backbones "
                         "of your own are registered with tdc_agent.models.backbone.register_backbone before the "
                         f"config is loaded, or by an entry point in the group {ENTRY_POINT_GROUP!r} (README: Backbones)")
    return name


def check_preset(backbone: str, preset: str, what: str = "model.preset") -> str:
    """``preset`` if ``backbone`` (a known one) has it, else a ValueError listing its presets."""
    presets = backbone_presets(backbone)
    if preset not in presets:
        raise ValueError(f"{what} must be a preset of the {backbone} backbone, one of {', '.join(presets)}; got "
                         f"{preset!r} (or set stage1.init to a pretrained model)")
    return preset
