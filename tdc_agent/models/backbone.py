"""The denoiser backbone interface: what a network must offer the rest of tdc-agent, and the
registry of backbones (name → :class:`Backbone`).

Everything above ``models/`` handles a denoiser as a plain ``torch.nn.Module`` and asks its backbone
(:func:`backbone_of`) for what depends on the architecture. A backbone offers:

* **forward** — its modules are called as ``model(x, t)``: ``x`` a float batch (B, C, H, W), ``t`` a
  long tensor of B timesteps; they return ε as a tensor, or as an object with ``.sample`` (diffusers'
  outputs). :func:`denoise` is the one adapter every caller uses (it also keeps the ε half of a
  learned-variance output). :meth:`Backbone.input_shape` says which images a model takes, and
  :meth:`Backbone.example_inputs` what tracing and MACs counting run it on.
* **building, saving and rebuilding** — :meth:`Backbone.preset_config` sizes a preset to the data,
  :meth:`Backbone.build` builds a dense model from a structure (a JSON object),
  :meth:`Backbone.structure` gives that structure back, and :meth:`Backbone.check_config` refuses a
  hostile one before anything is built. The model store (:mod:`tdc_agent.models.store`) writes the
  structure as ``config.json`` with ``_class_name`` set to :attr:`Backbone.module_type`'s name (which is
  how a directory names its backbone), the weights as safetensors, and a pruned model's record;
  nothing is pickled. :meth:`Backbone.load_pretrained` starts from a published model (``stage1.init``).
* **prunable units** — :mod:`tdc_agent.pruning.units` finds them with torch-pruning's dependency
  graph (traced on :meth:`Backbone.example_inputs`): coupled channel groups rooted at a ``Conv2d`` or
  ``Linear``, kept in steps of the lcm of their GroupNorm groups and attention heads. The backbone
  says which layers must keep their output channels (:meth:`Backbone.ignored_layers`: at least the
  layer writing ε), the head count of attention projections (:meth:`Backbone.attention_heads`), the
  attributes to update after channels are removed (:meth:`Backbone.fix_up`), and a readable role for
  a unit (:meth:`Backbone.unit_role`).
* **MACs** — nothing of its own: :mod:`tdc_agent.models.macs` (the one counter) runs the model on
  :meth:`Backbone.example_inputs`.

The built-in backbone is ``unet2d`` (diffusers ``UNet2DModel``, :mod:`tdc_agent.models.unet`). A DiT
or a ``UNet2DConditionModel`` goes in a module beside it, subclasses :class:`Backbone`, and is
registered with :func:`register_backbone` (from code), or advertised by an installed package as an
entry point in the group ``tdc_agent.backbones`` (``NAME = package.module:MyBackbone``; imported
when first needed); ``model.backbone: NAME`` then selects it. Backbone names
and their presets are also known to :mod:`tdc_agent.core.backbones`, so config validation (in
``core``, below this layer) checks them.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch

from ..core.backbones import (BUILTIN_BACKBONES, ENTRY_POINT_GROUP, add_backbone_name, backbone_names, check_new_name,
                              backbone_entry_points, load_backbone_entry_point, remove_backbone_name)
from ..core.errors import CheckpointError, ConfigError

__all__ = ["Backbone", "backbone_for_class", "backbone_of", "build_preset", "check_takes", "denoise", "eval_mode", "example_inputs",
           "get_backbone", "input_shape", "output_tensor", "param_count", "register_backbone",
           "unregister_backbone"]


class Backbone(ABC):
    """One denoiser architecture, as the rest of tdc-agent sees it (see the module docstring).

    A backbone is stateless: its methods take the model. Subclasses set the three class attributes
    and implement the abstract methods; the others have defaults that fit most convolutional or
    transformer denoisers.
    """

    name: ClassVar[str]  # the registry key: ``model.backbone`` in a config
    module_type: ClassVar[type[torch.nn.Module]]  # its models are instances; saved as config.json's _class_name
    presets: ClassVar[tuple[str, ...]]  # preset names; the first is the default

    # -- building, saving, rebuilding ------------------------------------------------------------

    @abstractmethod
    def preset_config(self, preset: str, sample_size: int | None = None, channels: int | None = None) -> dict[str, Any]:
        """The structure of ``preset`` for images of ``sample_size`` and ``channels`` (None: the preset's own)."""

    @abstractmethod
    def check_config(self, config: Any, path: Path | str) -> None:
        """Raise :class:`CheckpointError` naming ``path`` for a structure no real model has (sizes that
        would allocate gigabytes), before anything is built."""

    @abstractmethod
    def build(self, config: dict[str, Any]) -> torch.nn.Module:
        """A freshly initialised dense model of this structure (keys starting with ``_`` are not passed).

        Raises :class:`ConfigError` for a structure it cannot build."""

    @abstractmethod
    def structure(self, model: torch.nn.Module) -> dict[str, Any]:
        """The JSON-able structure :meth:`build` rebuilds ``model``'s *dense* architecture from.

        Pruning does not change it: a pruned model is its dense base plus the pruning record that
        :mod:`tdc_agent.models.record` replays."""

    def load_pretrained(self, path_or_id: str) -> torch.nn.Module:
        """A published model of this backbone (``stage1.init``), from safetensors only."""
        raise ConfigError(f"The {self.name} backbone cannot start from a pretrained model (stage1.init="
                          f"{path_or_id!r}); train it from a preset instead.")

    # -- forward ------------------------------------------------------------------------------------

    @abstractmethod
    def input_shape(self, model: torch.nn.Module) -> tuple[int, int, int]:
        """(channels, height, width) of the images ``model`` takes."""

    def example_inputs(self, model: torch.nn.Module, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """A zero image batch and timestep 1 on the model's device: what tracing and counting run."""
        device = next(model.parameters()).device
        return (torch.zeros(batch, *self.input_shape(model), device=device),
                torch.ones(batch, dtype=torch.long, device=device))

    def fit_hint(self, model: torch.nn.Module) -> str:
        """Advice for data images ``model`` cannot take (e.g. what their size must be divisible by)."""
        return "Resize the data (data.image_size=...) or pick another preset."

    # -- pruning --------------------------------------------------------------------------------------

    @abstractmethod
    def ignored_layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """Layers whose output channels must stay (at least the one writing ε: one channel per image channel)."""

    def attention_heads(self, model: torch.nn.Module) -> dict[torch.nn.Module, int]:
        """torch-pruning's ``num_heads``: each attention projection and its head count (channels
        leave every head equally)."""
        return {}

    def fix_up(self, model: torch.nn.Module) -> None:
        """Update attributes torch-pruning does not know about, after channels were removed (also when
        a saved pruning record is replayed)."""

    def unit_role(self, unit: str) -> str:
        """A short readable role of the unit rooted at module ``unit`` (shown to the agent and the user)."""
        return "channels"


# -- the registry ------------------------------------------------------------------------------------

# Built-ins are named by module and class and imported on first use: ``unet.py`` subclasses
# :class:`Backbone` and so imports this module, which therefore must not import it back.
_BUILTIN_CLASSES = {"unet2d": ("tdc_agent.models.unet", "UNet2DBackbone")}
_BACKBONES: dict[str, Backbone] = {}


def _registry() -> dict[str, Backbone]:
    for name, (module, cls) in _BUILTIN_CLASSES.items():
        if name not in _BACKBONES:
            _BACKBONES[name] = getattr(importlib.import_module(module), cls)()
    return _BACKBONES


def register_backbone(backbone: type[Backbone] | Backbone) -> Backbone:
    """Register a backbone (a :class:`Backbone` subclass or instance) under its ``name``; returns it.

    Its name and presets become valid ``model.backbone`` / ``model.preset`` values, and model
    directories whose ``_class_name`` is its ``module_type``'s name load through it. A name or module
    type already registered is refused (unregister it first); built-ins cannot be replaced, so that
    results measured with them keep their meaning.
    """
    inst = backbone() if isinstance(backbone, type) else backbone
    if not isinstance(inst, Backbone):
        raise TypeError(f"a backbone must subclass tdc_agent.models.backbone.Backbone, got {type(inst).__name__}")
    name = check_new_name(getattr(inst, "name", None))
    mtype = getattr(inst, "module_type", None)
    if not (isinstance(mtype, type) and issubclass(mtype, torch.nn.Module)):
        raise TypeError(f"backbone {name!r}: module_type must be a torch.nn.Module subclass, got {mtype!r}")
    presets = getattr(inst, "presets", None)
    if not (isinstance(presets, tuple) and presets and all(isinstance(p, str) and p for p in presets)):
        raise ValueError(f"backbone {name!r}: presets must be a non-empty tuple of names, got {presets!r}")
    registry = _registry()
    if name in registry:
        raise ValueError(f"a backbone named {name!r} is already registered"
                         + (" (a built-in one)" if name in BUILTIN_BACKBONES else "; unregister it first"))
    for other in registry.values():
        if other.module_type.__name__ == mtype.__name__:
            raise ValueError(f"backbone {name!r}: the {other.name} backbone already saves models as "
                             f"{mtype.__name__!r} (config.json's _class_name); use another module class name")
    add_backbone_name(name, presets)
    registry[name] = inst
    return inst


def unregister_backbone(name: str) -> None:
    """Remove a backbone registered with :func:`register_backbone` (built-ins stay)."""
    if name in BUILTIN_BACKBONES:
        raise ValueError(f"{name!r} is a built-in backbone and cannot be removed")
    _BACKBONES.pop(name, None)
    remove_backbone_name(name)


def _from_entry_point(name: str) -> Backbone | None:
    """Register and return the backbone an installed package advertises as ``name`` (None if none does)."""
    obj = load_backbone_entry_point(name)
    if obj is None:
        return None
    if getattr(obj, "name", None) != name:
        raise ConfigError(f"The entry point {name!r} in group {ENTRY_POINT_GROUP!r} gives a backbone named "
                          f"{getattr(obj, 'name', None)!r}; the entry point's name and the backbone's name must agree.")
    try:
        return register_backbone(obj)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"The backbone {name!r} of entry point group {ENTRY_POINT_GROUP!r} is not usable: {e}") from None


_ENTRY_POINT_ERRORS: dict[str, str] = {}  # advertised backbones that failed to load (named when nothing matches)


def _with_entry_points() -> dict[str, Backbone]:
    """The registry after importing every advertised backbone (for a saved model or a module whose
    backbone has not been named yet: rare, so they are loaded only then). One broken package does not
    hide the others; its error is kept for the message when no backbone matches."""
    for name in backbone_entry_points():
        if name not in _registry():
            try:
                _from_entry_point(name)
            except ConfigError as e:
                _ENTRY_POINT_ERRORS[name] = str(e)
    return _registry()


def _known() -> str:
    broken = "".join(f"; {e}" for e in _ENTRY_POINT_ERRORS.values())
    return ", ".join(f"{b.name} ({b.module_type.__name__})" for b in _registry().values()) + broken




def get_backbone(name: str) -> Backbone:
    """The backbone registered as ``name``; a :class:`ConfigError` listing the known ones otherwise."""
    registry = _registry()
    if name not in registry and _from_entry_point(name) is None:
        raise ConfigError(f"Unknown backbone {name!r}. Known backbones: {', '.join(backbone_names())}. A backbone "
                          "of your own is registered with tdc_agent.models.backbone.register_backbone or an entry "
                          f"point in the group {ENTRY_POINT_GROUP!r} (README: Backbones).")
    return registry[name]


def backbone_for_class(class_name: Any, path: Path | str) -> Backbone:
    """The backbone whose models are saved with ``_class_name`` ``class_name`` (read from ``path``)."""
    for registry in (_registry, _with_entry_points):
        for b in registry().values():
            if b.module_type.__name__ == class_name:
                return b
    raise CheckpointError(f"{path}: _class_name {class_name!r} names no backbone tdc-agent knows (known: {_known()}). "
                          "Register the backbone the model was saved with (README: Backbones), or re-export the "
                          "model.")


def backbone_of(model: torch.nn.Module) -> Backbone:
    """The backbone ``model`` (or the module a DDP wrapper holds) belongs to."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    found = None
    for registry in (_registry, _with_entry_points):
        backbones = list(registry().values())
        found = next((b for b in backbones if type(model) is b.module_type), None)  # exact class first
        found = found or next((b for b in reversed(backbones) if isinstance(model, b.module_type)), None)
        if found is not None:
            break
    if found is None:
        raise ConfigError(f"No backbone handles a {type(model).__name__} model (known: {_known()}). Register one "
                          "with tdc_agent.models.backbone.register_backbone (README: Backbones).")
    return found


def build_preset(backbone: str, preset: str | None, sample_size: int | None = None,
                 channels: int | None = None) -> torch.nn.Module:
    """A fresh dense model of ``backbone``'s ``preset`` (None: its first) sized to the data (None: the
    preset's own size), initialised from the global torch generator."""
    b = get_backbone(backbone)
    return b.build(b.preset_config(preset or b.presets[0], sample_size, channels))


# -- what every caller uses, whatever the backbone -------------------------------------------------


def output_tensor(out: Any) -> torch.Tensor:
    """A forward's output as a tensor: diffusers models return an object with ``.sample``."""
    return out.sample if hasattr(out, "sample") else out


def denoise(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The one adapter every caller uses: noisy images and timesteps in, predicted ε out.

    Works for any backbone's model (a diffusers UNet returns an output object), a DDP wrapper of one,
    or anything returning a tensor. Models with learned variances (2C output channels) keep the ε half.
    """
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    eps = output_tensor(model(x, t))
    if eps.shape[1] == 2 * x.shape[1]:
        eps = eps[:, : x.shape[1]]
    return eps


def input_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) of the images ``model`` takes, from its backbone."""
    return backbone_of(model).input_shape(model)


def example_inputs(model: torch.nn.Module, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """What tracing and MACs counting run ``model`` on, from its backbone."""
    return backbone_of(model).example_inputs(model, batch)


def param_count(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run a block with the model in eval mode (no dropout), restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_takes(model: torch.nn.Module, shape: tuple[int, ...], what: str, data: str = "",
                forward: bool = False) -> None:
    """The one check that a denoiser takes the data: images (or latents) of ``shape`` (C, H, W).

    Its declared input shape (from its backbone) must match the data's; with ``forward`` it also
    runs once, in eval mode and without gradients, on one blank input, so a size its downsamplings
    cannot take (e.g. 9x9 through two 2x downsamplings) fails here. A mismatch is a
    :class:`ConfigError` naming ``what`` (the model, as the user gave it) and ``data`` (the dataset's
    name), with the fix: one clear error before anything is written or any LLM is called, not a
    traceback from deep inside training, pruning or evaluation."""
    c, h, w = (tuple(shape) + (0, 0, 0))[:3]
    backbone = backbone_of(model)
    mc, mh, mw = backbone.input_shape(model)
    if (mc, mh, mw) != (c, h, w):
        raise ConfigError(
            f"{what} takes {mc}-channel {mh}x{mw} inputs, but the data{f' ({data})' if data else ''} are "
            f"{c}x{h}x{w}: the model and the data disagree. Use data that match the model (e.g. "
            f"data.name=cifar10 for the CIFAR-10 presets, or its latent.vae), or size the model to the data "
            f"(data.image_size={h} data.channels={c} for a preset).")
    if not forward:
        return
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *shape, device=device), torch.zeros(1, dtype=torch.long, device=device))
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"{what} cannot take the data's {'x'.join(map(str, shape))} images ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]}). {backbone.fit_hint(model)}") from None
