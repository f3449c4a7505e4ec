"""Our FID Inception against an independent implementation (pytorch-fid 0.3.0), and the pinned
sha256 of the published weights.

Offline there are no real weights, so both networks get the same randomly initialised tensors
(batch-norm statistics and affine parameters included), copied in memory via state dicts; the
2048-d pool features must then agree to float tolerance. Nothing here unpickles anything, and
pytorch-fid's own weight download is replaced at its boundary by the same construction without
the download.
"""

from __future__ import annotations

import pytest
import torch

pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")  # the dev extra pins pytorch-fid==0.3.0

# pytorch-fid's InceptionV3 block layout (output_blocks=[3]): which Inception3 child each
# ``blocks.i.j`` is; the max pools and the final average pool carry no tensors.
_BLOCKS = [["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", None],
           ["Conv2d_3b_1x1", "Conv2d_4a_3x3", None],
           ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
           ["Mixed_7a", "Mixed_7b", "Mixed_7c", None]]


def _pytorch_fid_inception_without_download():
    """pytorch_fid.inception.fid_inception_v3() minus its final weight download, built from
    pytorch-fid's own classes exactly as that function builds them."""
    m = pytorch_fid_inception
    inception = m._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    inception.Mixed_5b = m.FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = m.FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = m.FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = m.FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = m.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = m.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = m.FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = m.FIDInceptionE_1(1280)
    inception.Mixed_7c = m.FIDInceptionE_2(2048)
    return inception


def _pytorch_fid_model(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("pytorch-fid tried to download weights")

    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(pytorch_fid_inception, "fid_inception_v3", _pytorch_fid_inception_without_download)
    block = pytorch_fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]
    return pytorch_fid_inception.InceptionV3([block], resize_input=True, normalize_input=True).eval()


def _randomise(net: torch.nn.Module, seed: int) -> None:
    """Random weights that keep activations O(1) through the ~95 layers, and non-trivial batch-norm
    statistics, so every tensor (and the batch norms' eps) matters for the features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(n, generator=g))
                mod.bias.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
            elif isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(0.01 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.zero_()


def _copy_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Every tensor of pytorch-fid's network from ours, by name; each of ours used exactly once
    (except the 1008-way classifier, which neither feature path uses) and shapes equal."""
    src = ours.state_dict()
    mapped = {}
    for key in theirs.state_dict():
        parts = key.split(".")
        assert parts[0] == "blocks", key
        name = _BLOCKS[int(parts[1])][int(parts[2])]
        assert name is not None, key
        mapped[key] = ".".join([name, *parts[3:]])
    used = list(mapped.values())
    assert len(used) == len(set(used)), "a tensor of ours was mapped twice"
    assert set(used) == {k for k in src if not k.startswith("fc.")}, set(src) ^ set(used)
    for key, ours_key in mapped.items():
        assert src[ours_key].shape == theirs.state_dict()[key].shape, (key, ours_key)
    missing, unexpected = theirs.load_state_dict({k: src[v].clone() for k, v in mapped.items()}, strict=True)
    assert not missing and not unexpected


def _images(seed: int = 1, n: int = 2) -> torch.Tensor:
    """uint8 RGB images at CIFAR size: smooth structure plus noise, so pools and resizing matter."""
    g = torch.Generator().manual_seed(seed)
    low = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(32, 32), mode="bilinear",
                                          align_corners=False)
    x = 0.7 * low + 0.3 * torch.rand(n, 3, 32, 32, generator=g)
    return torch.round(x * 255).to(torch.uint8)


def test_fid_features_match_pytorch_fid_with_shared_random_weights(monkeypatch):
    from tdc_agent.evaluation.fid import inception_features
    from tdc_agent.evaluation.inception import FIDInception

    torch.manual_seed(0)
    ours = FIDInception().eval()
    _randomise(ours.net, seed=0)
    theirs = _pytorch_fid_model(monkeypatch)
    _copy_weights(ours.net, theirs)

    u8 = _images()
    # ours: images in [-1, 1] go through the evaluator's 8-bit quantisation (exact for these);
    # pytorch-fid: the same 8-bit images as floats in [0, 1]
    ours_feats = torch.from_numpy(inception_features(u8.float() / 127.5 - 1, ours, torch.device("cpu"),
                                                     progress=False))
    with torch.no_grad():
        theirs_feats = theirs(u8.float() / 255)[0].flatten(1).double()
    assert ours_feats.shape == theirs_feats.shape == (len(u8), 2048)
    scale = theirs_feats.abs().max().item()
    assert scale > 1e-2 and torch.isfinite(theirs_feats).all()
    # features that differ per image (so agreement is not a constant output agreeing)
    assert (theirs_feats[0] - theirs_feats[1]).abs().max().item() > 1e-3 * scale
    diff = (ours_feats - theirs_feats).abs().max().item()
    assert diff < 1e-5 * scale, (diff, scale)

    print(f"max |ours - pytorch-fid| = {diff:.3g}, feature scale {scale:.3g}")

    # the comparison can fail: one perturbed kernel in the first convolution, or a
    # torchvision-style average pool (counting padding) in one block, make the features disagree
    w = theirs.blocks[0][0].conv.weight
    with torch.no_grad():
        w[0, 0] += 0.5
        perturbed = theirs(u8.float() / 255)[0].flatten(1).double()
    print(f"perturbed weight: max diff {(ours_feats - perturbed).abs().max().item():.3g}")
    assert (ours_feats - perturbed).abs().max().item() > 1e-3 * scale
    with torch.no_grad():
        w[0, 0] -= 0.5
        assert (ours_feats - theirs(u8.float() / 255)[0].flatten(1).double()).abs().max().item() < 1e-5 * scale
    import torchvision.models.inception as tv

    monkeypatch.setattr(theirs.blocks[2][0], "forward", lambda x: tv.InceptionA.forward(theirs.blocks[2][0], x))
    with torch.no_grad():
        tv_pool = theirs(u8.float() / 255)[0].flatten(1).double()
    print(f"padding-counting pool: max diff {(ours_feats - tv_pool).abs().max().item():.3g}")
    assert (ours_feats - tv_pool).abs().max().item() > 1e-3 * scale


# --- the published weights' sha256, checked on download (a local file:// "download") -------------------

@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TDC_AGENT_CACHE", str(tmp_path / "cache"))


def test_pinned_sha256_is_the_published_files():
    from tdc_agent.evaluation import inception

    assert len(inception.INCEPTION_SHA256) == 64 and int(inception.INCEPTION_SHA256, 16) >= 0
    # torch.hub names published files NAME-<first 8 hex digits of their sha256>.EXT
    assert inception.FID_WEIGHTS_URL.endswith(f"-{inception.INCEPTION_SHA256[:8]}.pth")


def test_download_refuses_a_file_whose_sha256_differs_and_keeps_nothing(tmp_path, monkeypatch):
    from tdc_agent.core.errors import CheckpointError
    from tdc_agent.evaluation import inception
    from test_evaluation import _fid_weights_pth

    src = tmp_path / "served" / "pt_inception-2015-12-05-6726825d.pth"
    src.parent.mkdir()
    _fid_weights_pth(src)
    good = inception.sha256(src)
    cache = tmp_path / "cache"
    monkeypatch.setattr(inception, "FID_WEIGHTS_URL", src.as_uri())  # no internet: a local "release"

    # a download whose hash differs from the pinned one is refused by name and nothing is cached
    monkeypatch.setattr(inception, "INCEPTION_SHA256", "0" * 64)
    with pytest.raises(CheckpointError, match=f"sha256 {good}, not the published {'0' * 64}"):
        inception.resolve_weights(None)
    assert not any(p.is_file() for p in cache.rglob("*")), list(cache.rglob("*"))
    with pytest.raises(CheckpointError, match="sha256"):
        inception.download_verified(src.as_uri(), tmp_path / "dl.pth", "f" * 64)
    assert not (tmp_path / "dl.pth").exists()

    # an unreachable URL: our error, nothing left behind
    monkeypatch.setattr(inception, "FID_WEIGHTS_URL", (tmp_path / "missing.pth").as_uri())
    with pytest.raises(CheckpointError, match="could not download"):
        inception.resolve_weights(None)
    assert not any(p.is_file() for p in cache.rglob("*"))

    # with the matching hash the download is converted and cached once, the raw download removed
    monkeypatch.setattr(inception, "FID_WEIGHTS_URL", src.as_uri())
    monkeypatch.setattr(inception, "INCEPTION_SHA256", good)
    out = inception.resolve_weights(None)
    assert out == cache / inception.CACHED_NAME and out.is_file()
    assert sorted(p.name for p in cache.iterdir()) == [inception.CACHED_NAME]
    src.unlink()  # the cached conversion is used from now on, without downloading
    assert inception.resolve_weights(None) == out
    model, _ = inception.load_fid_inception(None, torch.device("cpu"))
    assert model.net.Conv2d_1a_3x3.conv.weight.shape == (32, 3, 3, 3)
