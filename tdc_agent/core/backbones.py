"""The names of the denoiser backbones and their presets: the vocabulary ``model.backbone`` and
``model.preset`` accept.

The backbones themselves (how a denoiser is built, saved, rebuilt, traced and pruned) live in
:mod:`tdc_agent.models.backbone`, a layer above. Config validation sits here in ``core`` and must
know the names without importing model code, so this module holds names only: the built-in
backbone (:data:`BUILTIN_BACKBONES`, implemented by :class:`tdc_agent.models.unet.UNet2DBackbone`)
and those registered from code with :func:`tdc_agent.models.backbone.register_backbone`, which adds
the name here with :func:`add_backbone_name`.
"""

from __future__ import annotations

import re

# name -> its preset names (the first is the default when a config names the backbone but no preset)
BUILTIN_BACKBONES: dict[str, tuple[str, ...]] = {"unet2d": ("tiny", "ddpm-cifar10", "iddpm-cifar10")}
DEFAULT_BACKBONE = "unet2d"

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


def backbone_names() -> tuple[str, ...]:
    """Every known backbone: built-in first, then registered from code."""
    return (*BUILTIN_BACKBONES, *(n for n in _registered if n not in BUILTIN_BACKBONES))


def backbone_presets(name: str) -> tuple[str, ...]:
    """The preset names of a known backbone (KeyError for an unknown one)."""
    return BUILTIN_BACKBONES[name] if name in BUILTIN_BACKBONES else _registered[name]


def check_backbone(name: str, what: str = "model.backbone") -> str:
    """``name`` if it is a known backbone, else a ValueError naming ``what`` and listing the known ones."""
    known = backbone_names()
    if name not in known:
        raise ValueError(f"{what} must be a denoiser backbone, one of {', '.join(known)}; got {name!r}. Backbones "
                         "of your own are registered with tdc_agent.models.backbone.register_backbone before the "
                         "config is loaded (README: Backbones)")
    return name


def check_preset(backbone: str, preset: str, what: str = "model.preset") -> str:
    """``preset`` if ``backbone`` (a known one) has it, else a ValueError listing its presets."""
    presets = backbone_presets(backbone)
    if preset not in presets:
        raise ValueError(f"{what} must be a preset of the {backbone} backbone, one of {', '.join(presets)}; got "
                         f"{preset!r} (or set stage1.init to a pretrained model)")
    return preset
