import json
import os
import stat

import pytest
import torch

from tdc_agent.core.io import load_tensors, read_json, save_tensors
from tdc_agent.models.store import load_model, save_model
from tdc_agent.core.errors import CheckpointError
from tdc_agent.models.unet import build_unet, denoise, unet_config


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return build_unet(unet_config("tiny", **kw)).eval()


def test_save_load_exact(tmp_path):
    m = _model()
    save_model(tmp_path / "m", m, {"schedule": {"name": "linear"}})
    back, meta = load_model(tmp_path / "m")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 500])
    assert torch.equal(denoise(m, x, t), denoise(back.eval(), x, t))
    assert meta["schedule"]["name"] == "linear"
    assert not (tmp_path / "m.tmp").exists()


def test_truncated_weights_fail_clearly(tmp_path):
    save_model(tmp_path / "m", _model())
    f = tmp_path / "m" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "m")


def test_corrupt_json_and_missing_files(tmp_path):
    save_model(tmp_path / "m", _model())
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.*corrupt"):
        load_model(tmp_path / "m")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="missing"):
        read_json(tmp_path / "x.json")


def test_weights_from_other_architecture(tmp_path):
    save_model(tmp_path / "a", _model())
    save_model(tmp_path / "b", _model(channels=3))
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "a")


def test_format_version_checked(tmp_path):
    save_model(tmp_path / "m", _model())
    meta = tmp_path / "m" / "tdc_model.json"
    meta.write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version"):
        load_model(tmp_path / "m")


def test_tensors_roundtrip_and_garbage(tmp_path):
    save_tensors(tmp_path / "t.safetensors", {"a": torch.arange(4.0)})
    assert torch.equal(load_tensors(tmp_path / "t.safetensors")["a"], torch.arange(4.0))
    (tmp_path / "g.safetensors").write_bytes(b"\x80\x04garbage-pickle-like")
    with pytest.raises(CheckpointError):
        load_tensors(tmp_path / "g.safetensors")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    # mkstemp alone makes 0600 files: a run directory shared with a group would be unreadable to it
    from tdc_agent.core.io import atomic_write_json, atomic_write_text, new_file_mode

    old = os.umask(umask)
    try:
        assert new_file_mode() == mode
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_write_text(tmp_path / "b.txt", "hi\n")
        save_tensors(tmp_path / "c.safetensors", {"w": torch.zeros(2)})
        save_model(tmp_path / "m", _model())
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives, for comparison
    finally:
        os.umask(old)
    files = [tmp_path / "a.json", tmp_path / "b.txt", tmp_path / "c.safetensors", *sorted((tmp_path / "m").iterdir())]
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: mode for f in files}
    assert stat.S_IMODE(plain.stat().st_mode) == mode


@pytest.mark.parametrize("case,match", [
    ("config_list", "JSON object"), ("groups_zero", "norm_num_groups"), ("huge_widths", "block_out_channels"),
    ("meta_list", "JSON object"), ("shape_text", "image_shape"), ("pruning_list", "JSON object"),
    ("pruning_text", "JSON object"), ("history_bomb", "pruning steps"),
])
def test_hostile_model_directories_are_refused_by_name(tmp_path, case, match):
    """Issue #15 items 4 and 9: each bad model folder is one clear error naming the file, fast."""
    from tdc_agent.pruning.pruner import Pruner
    from tdc_agent.pruning.serialize import save_pruned

    d = tmp_path / "m"
    if case.startswith(("pruning", "history")):
        pruner = Pruner(_model())
        save_pruned(d, pruner.prune(None, pruner.limit(0.6), "magnitude"), {"image_shape": [1, 8, 8]})
    else:
        save_model(d, _model(), {"image_shape": [1, 8, 8]})
    edit = {
        "config_list": ("config.json", lambda j: []),
        "groups_zero": ("config.json", lambda j: {**j, "norm_num_groups": 0}),
        "huge_widths": ("config.json", lambda j: {**j, "block_out_channels": [65536, 65536]}),
        "meta_list": ("tdc_model.json", lambda j: [1]),
        "shape_text": ("tdc_model.json", lambda j: {**j, "image_shape": "abc"}),
        "pruning_list": ("pruning.json", lambda j: []),
        "pruning_text": ("pruning.json", lambda j: "hello"),
        "history_bomb": ("pruning.json", lambda j: {**j, "history": j["history"] * (5000 // len(j["history"]) + 1)}),
    }[case]
    f = d / edit[0]
    f.write_text(json.dumps(edit[1](json.loads(f.read_text()))))
    with pytest.raises(CheckpointError, match=match) as e:
        load_model(d)
    assert edit[0] in str(e.value)
