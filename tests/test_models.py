import pytest
import torch

from tdc_agent.core.errors import CheckpointError, ConfigError
from tdc_agent.models.unet import build_unet, denoise, load_pretrained_unet, param_count, unet_config
from tdc_agent.models.macs import count


def test_presets_match_published_sizes():
    ddpm = build_unet(unet_config("ddpm-cifar10"))
    c = count(ddpm)
    assert param_count(ddpm) == pytest.approx(35.7e6, rel=0.005)
    assert c.thop == pytest.approx(6.06e9, rel=0.02)
    # op-level counting sees every aten op; it agrees within a few percent with module hooks
    assert c.op_level == pytest.approx(c.thop, rel=0.05)
    iddpm = count(build_unet(unet_config("iddpm-cifar10")))
    assert iddpm.thop == pytest.approx(8.14e9, rel=0.02)


def test_tiny_preset_is_prunable_and_small():
    m = build_unet(unet_config("tiny"))
    assert param_count(m) < 1e6
    for mod in m.modules():
        if isinstance(mod, torch.nn.GroupNorm):
            assert mod.num_channels // mod.num_groups >= 4


def test_denoise_adapter_shapes():
    m = build_unet(unet_config("tiny"))
    x = torch.randn(3, 1, 8, 8)
    assert denoise(m, x, torch.tensor([1, 2, 3])).shape == x.shape
    assert denoise(m, x, torch.tensor(5)).shape == x.shape


def test_unknown_preset():
    with pytest.raises(ConfigError, match="Unknown model preset"):
        unet_config("huge")


def test_load_save_pretrained_folder(tmp_path):
    m = build_unet(unet_config("tiny"))
    m.save_pretrained(tmp_path / "unet")
    back = load_pretrained_unet(str(tmp_path / "unet"))
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3, 4])
    assert torch.equal(denoise(m.eval(), x, t), denoise(back.eval(), x, t))
    # a pipeline folder (unet/ inside) works too
    assert load_pretrained_unet(str(tmp_path)).config.sample_size == 8
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no diffusers UNet"):
        load_pretrained_unet(str(tmp_path / "empty"))
