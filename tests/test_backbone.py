"""The backbone interface (``tdc_agent.models.backbone``): the UNet built through it is the UNet built
before it (same weights, same MACs), an unknown backbone is a clear error, and a second backbone
defined here (a toy conv denoiser) is built from a config, counted, pruned, saved and rebuilt by the
same code paths as the UNet, and run through ``tdc-agent prune``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from tdc_agent.core.backbones import BUILTIN_BACKBONES, backbone_names
from tdc_agent.core.config import ModelConfig, load_config
from tdc_agent.core.errors import CheckpointError, ConfigError
from tdc_agent.models.backbone import (Backbone, backbone_of, denoise, get_backbone, register_backbone,
                                       unregister_backbone)
from tdc_agent.models.macs import count, thop_macs
from tdc_agent.models.store import load_model, save_model
from tdc_agent.models.unet import PRESETS, UNet2DBackbone
from tdc_agent.pruning.pruner import Pruner
from tdc_agent.pruning.serialize import save_pruned
from tdc_agent.pruning.units import analyse
from tdc_agent.workflow.stage1 import build_model

# thop / op-level MACs and parameters of the tiny preset at 8x8x1, measured on main (bb117aa) before
# the interface existed, with the code that built the UNet directly
TINY_8X8 = {"macs_thop": 16195584, "macs_op_level": 16052224, "params": 701345}


# -- a second backbone: a toy conv denoiser, as a user would write one --------------------------------


class ToyDenoiser(torch.nn.Module):
    """conv_in (+ a time projection) -> GroupNorm -> conv_mid -> conv_out: predicts ε from (x, t)."""

    def __init__(self, channels: int = 1, width: int = 16, sample_size: int = 8) -> None:
        super().__init__()
        # the dense structure, kept as built (pruning removes channels, not this record of them)
        self.structure = {"channels": channels, "width": width, "sample_size": sample_size}
        self.conv_in = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.t_proj = torch.nn.Linear(1, width)
        self.norm = torch.nn.GroupNorm(4, width)
        self.conv_mid = torch.nn.Conv2d(width, width, 3, padding=1)
        self.conv_out = torch.nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x) + self.t_proj(t.float()[:, None] / 1000)[:, :, None, None]
        h = F.silu(self.conv_mid(F.silu(self.norm(h))))
        return self.conv_out(h)


class ToyBackbone(Backbone):
    name = "toy-conv"
    module_type = ToyDenoiser
    presets = ("small", "wide")

    def preset_config(self, preset: str, sample_size: int | None = None, channels: int | None = None) -> dict:
        return {"width": {"small": 16, "wide": 32}[preset], "sample_size": sample_size or 8, "channels": channels or 1}

    def check_config(self, config: Any, path: Path | str) -> None:
        if not (isinstance(config, dict) and all(type(config.get(k)) is int and 0 < config[k] <= 256
                                                 for k in ("width", "sample_size", "channels"))):
            raise CheckpointError(f"{path}: not a toy denoiser structure")

    def build(self, config: dict) -> ToyDenoiser:
        return ToyDenoiser(**config)

    def structure(self, model: torch.nn.Module) -> dict:
        return dict(model.structure)

    def input_shape(self, model: torch.nn.Module) -> tuple[int, int, int]:
        s = model.structure
        return s["channels"], s["sample_size"], s["sample_size"]

    def ignored_layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [model.conv_out]

    def unit_role(self, unit: str) -> str:
        return "stem" if unit in ("conv_in", "t_proj") else "hidden"


@pytest.fixture
def toy():
    """The toy backbone, registered for one test (the registry is per process)."""
    backbone = register_backbone(ToyBackbone)
    yield backbone
    unregister_backbone("toy-conv")


# -- the UNet through the interface is the UNet of before ---------------------------------------------


def test_unet_through_the_interface_has_the_old_weights_and_macs():
    torch.manual_seed(0)
    model = build_model(load_config(), (1, 8, 8))
    torch.manual_seed(0)  # the old path: diffusers' constructor on the preset's keys
    old = UNet2DModel(**PRESETS["tiny"], sample_size=8, in_channels=1, out_channels=1)
    assert backbone_of(model).name == "unet2d" and type(model) is UNet2DModel
    new_state, old_state = model.state_dict(), old.state_dict()
    assert list(new_state) == list(old_state)
    assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)
    assert count(model).to_dict() == count(old).to_dict() == TINY_8X8
    assert dict(model.config) == dict(old.config)


def test_builtin_backbone_names_match_the_implementation():
    assert backbone_names()[: len(BUILTIN_BACKBONES)] == tuple(BUILTIN_BACKBONES)
    unet = get_backbone("unet2d")
    assert isinstance(unet, UNet2DBackbone) and unet.presets == BUILTIN_BACKBONES["unet2d"]
    assert load_config().model.backbone == "unet2d" and load_config().model.preset == "tiny"


def test_an_unknown_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.backbone=dit"])
    assert "model.backbone" in str(e.value) and "unet2d" in str(e.value) and "register_backbone" in str(e.value)
    with pytest.raises(ConfigError, match="Unknown backbone 'dit'. Known backbones: unet2d"):
        get_backbone("dit")
    with pytest.raises(ConfigError) as e:  # a preset of another backbone
        load_config(None, ["model.preset=small"])
    assert "model.preset" in str(e.value) and "tiny, ddpm-cifar10, iddpm-cifar10" in str(e.value)
    with pytest.raises(ConfigError, match="No backbone handles a Linear model"):
        backbone_of(torch.nn.Linear(2, 2))
    # a saved model of a backbone nobody registered
    torch.manual_seed(0)
    save_model(tmp_path / "m", build_model(load_config(), (1, 8, 8)))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "_class_name": "DiTTransformer2DModel"}))
    with pytest.raises(CheckpointError, match=r"config.json: _class_name 'DiTTransformer2DModel' names no backbone"):
        load_model(tmp_path / "m")


# -- a second backbone is real -----------------------------------------------------------------------


def test_a_registered_backbone_is_built_from_the_config(toy, tmp_path):
    # the packaged config names the UNet's preset, so switching backbones names one of the new one's
    with pytest.raises(ConfigError, match="toy-conv backbone, one of small, wide; got 'tiny'"):
        load_config(None, ["model.backbone=toy-conv"])
    cfg = load_config(None, ["model.backbone=toy-conv", "model.preset=small"])
    assert ModelConfig(backbone="toy-conv").preset == "small", "left out, the preset is the backbone's first"
    assert load_config(None, ["model.backbone=toy-conv", "model.preset=wide"]).model.preset == "wide"
    model = build_model(cfg, (1, 8, 8))
    assert type(model) is ToyDenoiser and backbone_of(model) is toy
    assert denoise(model, torch.zeros(2, 1, 8, 8), torch.tensor(5)).shape == (2, 1, 8, 8)
    with pytest.raises(ConfigError, match="cannot start from a pretrained model"):
        build_model(load_config(None, ["model.backbone=toy-conv", "model.preset=small",
                                         f"stage1.init={tmp_path}"]), (1, 8, 8))


def test_a_registered_backbone_is_counted_pruned_saved_and_rebuilt(toy, tmp_path):
    torch.manual_seed(0)
    model = toy.build(toy.preset_config("small")).eval()
    # MACs: the one counter runs it on the backbone's example inputs. Op level counts the convs and
    # the time projection exactly: 8x8 outputs x (1x16 + 16x16 + 16x1) x 3x3 taps, plus 1x16.
    c = count(model)
    assert c.op_level == 64 * (16 + 256 + 16) * 9 + 16
    assert c.thop >= c.op_level and c.params == sum(p.numel() for p in model.parameters())

    # units: coupled groups, conv_out kept whole, the GroupNorm's 4 groups set the stem's quantum
    graph = analyse(model)
    units = {u.name: u for u in graph.units}
    stem = next(u for u in graph.units if u.role == "stem")
    assert stem.channels == 16 and stem.quantum == 4
    assert units["conv_mid"].role == "hidden" and units["conv_mid"].quantum == 1
    assert "conv_out" not in units

    # dense: save (structure JSON + safetensors, no pickles) and rebuild
    save_model(tmp_path / "dense", model, {"image_shape": [1, 8, 8]})
    assert sorted(p.name for p in (tmp_path / "dense").iterdir()) == ["config.json", "model.safetensors",
                                                                       "tdc_model.json"]
    assert json.loads((tmp_path / "dense" / "config.json").read_text()) == {
        "channels": 1, "width": 16, "sample_size": 8, "_class_name": "ToyDenoiser"}
    back, meta = load_model(tmp_path / "dense")
    assert type(back) is ToyDenoiser and meta["image_shape"] == [1, 8, 8]
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())

    # pruned: the record replays on the rebuilt dense structure, weights load strictly, MACs agree
    pruner = Pruner(model)
    result = pruner.prune(None, pruner.limit(0.6), "magnitude")
    assert result.macs.thop <= pruner.limit(0.6) < c.thop
    save_pruned(tmp_path / "pruned", result, {"image_shape": [1, 8, 8]})
    loaded, _ = load_model(tmp_path / "pruned")
    assert type(loaded) is ToyDenoiser and loaded.conv_mid.out_channels < 16
    assert thop_macs(loaded) == result.macs.thop
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 500, 999])
    with torch.no_grad():
        assert torch.equal(denoise(loaded.eval(), x, t), denoise(result.model.eval(), x, t))

    unregister_backbone("toy-conv")  # without its backbone the directory is refused by name
    with pytest.raises(CheckpointError, match="_class_name 'ToyDenoiser' names no backbone"):
        load_model(tmp_path / "pruned")
    register_backbone(toy)  # for the fixture's teardown


def test_a_registered_backbone_prunes_through_the_cli(toy, cli, make_config, tmp_path):
    code, out, err = cli("prune", "--preset", "wide", "--method", "magnitude", "--macs-fraction", "0.6", "--out",
                         tmp_path / "p", "--json", "--config", make_config(), "model.backbone=toy-conv",
                         "model.preset=small")
    assert code == 0, err
    model, _ = load_model(tmp_path / "p" / "model")
    assert type(model) is ToyDenoiser and model.structure["width"] == 32
    assert json.loads(out)["macs_thop"] == thop_macs(model) <= 0.6 * json.loads(out)["base_macs_thop"]


def test_backbone_registration_is_checked(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(ToyBackbone)
    with pytest.raises(ValueError, match="built-in"):
        unregister_backbone("unet2d")

    class Bad(ToyBackbone):
        name = "Bad Name"

    with pytest.raises(ValueError, match="not a backbone name"):
        register_backbone(Bad)

    class SameClass(ToyBackbone):
        name = "toy-2"

    with pytest.raises(ValueError, match="already saves models as 'ToyDenoiser'"):
        register_backbone(SameClass)
    with pytest.raises(TypeError, match="must subclass"):
        register_backbone(object())  # type: ignore[arg-type]


def test_an_entry_point_backbone_works_without_registering(installed_package, cli, make_config, tmp_path):
    """A package that advertises a backbone under ``tdc_agent.backbones`` is usable by name from a
    config and the CLI, and its saved models load, with no register_backbone call; a broken entry
    point is named in one clear error."""
    installed_package("tdc_test_backbones", (
        "from test_backbone import ToyBackbone, ToyDenoiser\n"
        "class EPDenoiser(ToyDenoiser):\n"
        "    pass\n"
        "class EPBackbone(ToyBackbone):\n"
        "    name = 'ep-toy'\n"
        "    module_type = EPDenoiser\n"
        "    presets = ('narrow', 'small')\n"
        "    def preset_config(self, preset, sample_size=None, channels=None):\n"
        "        return {'width': {'narrow': 8, 'small': 16}[preset], 'sample_size': sample_size or 8,\n"
        "                'channels': channels or 1}\n"
        "    def build(self, config):\n"
        "        return EPDenoiser(**config)\n"),
        "[tdc_agent.backbones]\n"
        "ep-toy = tdc_test_backbones:EPBackbone\n"
        "ep-broken = tdc_test_backbones_missing:Nothing\n")
    try:
        assert {"ep-toy", "ep-broken"} <= set(backbone_names())
        assert ModelConfig(backbone="ep-toy").preset == "narrow"  # the presets are read from the package
        assert load_config(None, ["model.backbone=ep-toy", "model.preset=small"]).model.preset == "small"
        code, out, err = cli("prune", "--preset", "small", "--method", "magnitude", "--macs-fraction", "0.6",
                             "--out", tmp_path / "p", "--json", "--config", make_config(), "model.backbone=ep-toy",
                             "model.preset=narrow")
        assert code == 0, err
        unregister_backbone("ep-toy")  # a fresh process: the saved model finds its backbone by _class_name
        model, _ = load_model(tmp_path / "p" / "model")
        assert type(model).__name__ == "EPDenoiser" and model.structure["width"] == 16
        assert get_backbone("ep-toy").name == "ep-toy"
        with pytest.raises(ConfigError, match="ep-broken.*could not be loaded.*ModuleNotFoundError"):
            ModelConfig(backbone="ep-broken")
    finally:
        unregister_backbone("ep-toy")


class ScaledDenoiser(ToyDenoiser):
    """The toy denoiser with a learnable per-channel scale after conv_mid: a bare ``nn.Parameter``
    (not inside a module) that torch-pruning must slice with conv_mid's channels."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, self.conv_mid.out_channels))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x) + self.t_proj(t.float()[:, None] / 1000)[:, :, None, None]
        h = F.silu(self.conv_mid(F.silu(self.norm(h)))) * self.scale[None, :, None, None]
        return self.conv_out(h)


class ScaledBackbone(ToyBackbone):
    name = "toy-scaled"
    module_type = ScaledDenoiser

    def build(self, config: dict) -> ScaledDenoiser:
        return ScaledDenoiser(**config)


@pytest.mark.filterwarnings("ignore:Unwrapped parameters detected")
def test_a_unit_that_reaches_a_bare_parameter_is_pruned_by_the_general_build(tmp_path):
    """The sensitivity's one-unit build applies a unit's group to a copy; a group that reaches a bare
    parameter (which torch-pruning replaces rather than slices) goes through build_pruned instead:
    same weights and record as build_pruned for every unit, and a scheme that prunes it saves and
    reloads exactly."""
    from tdc_agent.pruning.apply import OneUnitPruning, build_pruned

    backbone = register_backbone(ScaledBackbone)
    try:
        torch.manual_seed(0)
        pruner = Pruner(backbone.build(backbone.preset_config("small")).eval())
        scores = pruner.scores("magnitude")
        one = OneUnitPruning(pruner.base, pruner.graph, scores)
        assert {u.name for u in pruner.graph.units} == {"conv_in", "conv_mid"}
        import torch_pruning as tp  # the premise: conv_mid's group reaches the bare parameter

        root = one.modules["conv_mid"]
        group = one.dg.get_pruning_group(root, one.dg.get_pruner_of_module(root).prune_out_channels, [0])
        assert any(dep.target.type == tp.ops.OPTYPE.PARAMETER for dep, _ in group)
        for u in pruner.graph.units:
            level = u.floor(0.5)
            a, history_a = build_pruned(pruner.base, pruner.graph, {u.name: level}, scores)
            b, history_b = one.build(u.name, level)
            assert history_a == history_b, u.name
            sa, sb = a.state_dict(), b.state_dict()
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), u.name
        assert one.build("conv_mid", 0.5)[0].scale.shape == (8,)  # sliced with conv_mid's channels
        result = pruner.prune(None, pruner.limit(0.6), "magnitude")
        assert result.model.scale.shape == (result.model.conv_mid.out_channels,) != (16,)
        save_pruned(tmp_path / "p", result, {"image_shape": [1, 8, 8]})
        back, _ = load_model(tmp_path / "p")
        x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 500, 999])
        with torch.no_grad():
            assert torch.equal(denoise(back.eval(), x, t), denoise(result.model.eval(), x, t))
    finally:
        unregister_backbone("toy-scaled")
