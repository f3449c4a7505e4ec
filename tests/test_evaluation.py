import numpy as np
import pytest
import torch

from tdc_agent.core.config import DataConfig, ScheduleConfig
from tdc_agent.core.data import load_dataset
from tdc_agent.diffusion.process import ForwardProcess
from tdc_agent.evaluation.fd import digits_classifier, digits_fd, frechet
from tdc_agent.evaluation.quick import eval_timesteps, quick_loss
from tdc_agent.models.unet import build_unet, unet_config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TDC_AGENT_CACHE", str(tmp_path / "cache"))


def test_frechet_basics():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    assert frechet(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet(a, a + 1.0) == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("n", [16, 63, 64])
def test_fewer_samples_than_dimensions_give_the_same_distance(n):
    """The n x n path (fewer samples than feature dimensions, up to n = d) equals the d x d formula."""
    from tdc_agent.evaluation.fd import frechet_from_stats, frechet_to_stats, gaussian

    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, 64)) @ rng.normal(size=(64, 64)) * 0.3
    b = rng.normal(size=(500, 64)) @ rng.normal(size=(64, 64)) * 0.2 + 0.1
    mu2, s2 = gaussian(b)
    want = frechet_from_stats(*gaussian(a), mu2, s2)
    assert frechet_to_stats(a, mu2, s2) == pytest.approx(want, rel=1e-7)  # rank-deficient d x d: float error
    assert frechet(a, b) == pytest.approx(want, rel=1e-7)


def test_digits_fd_separates_real_from_noise():
    clf, acc = digits_classifier()
    assert acc > 0.9
    _, acc2 = digits_classifier()  # cached
    assert acc2 == acc
    real = load_dataset(DataConfig(name="digits", split="all")).images
    idx = torch.randperm(len(real), generator=torch.Generator().manual_seed(1))[:500]
    fd_real = digits_fd(real[idx])
    fd_noise = digits_fd(torch.rand(500, 1, 8, 8) * 2 - 1)
    assert fd_real.fd < 3 * fd_real.floor + 1e-9
    assert fd_noise.fd > 20 * fd_real.fd
    # 500 real digits hold every class: intra-FD is there; noise is either far off or said to be missing
    assert fd_real.intra_fd is not None and fd_real.intra_fd > 0 and fd_real.intra_fd_note is None
    assert fd_noise.intra_fd_note is not None or fd_noise.intra_fd > 5 * fd_real.intra_fd
    assert ("intra_fd" in fd_real.to_dict()) and ("intra_fd" in fd_noise.to_dict()) != ("intra_fd_note" in fd_noise.to_dict())


def test_intra_fd_ignores_which_classes_were_drawn_but_not_how_they_look():
    """A set that draws the classes in other proportions than the reference moves FD (its mean term)
    but not intra-FD; a set whose classes are each shifted moves intra-FD. Too few samples of a
    class is a clear error, not a silently smaller average."""
    from tdc_agent.core.errors import DataError
    from tdc_agent.evaluation.fd import intra_fd

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 4)) * 3

    def draw(counts, shift=0.0):
        labels = np.repeat(np.arange(3), counts)
        return centres[labels] + rng.normal(size=(len(labels), 4)) + shift, labels

    ref, ref_lab = draw([2000, 2000, 2000])
    same, same_lab = draw([2000, 2000, 2000])
    skewed, skewed_lab = draw([4000, 1000, 1000])
    moved, moved_lab = draw([2000, 2000, 2000], shift=0.5)
    assert frechet(skewed, ref) > 10 * frechet(same, ref)
    assert intra_fd(skewed, ref, skewed_lab, ref_lab) < 3 * intra_fd(same, ref, same_lab, ref_lab)
    assert intra_fd(moved, ref, moved_lab, ref_lab) == pytest.approx(4 * 0.25, rel=0.1)
    few, few_lab = draw([2000, 2000, 3])
    with pytest.raises(DataError, match="every class.*2: 3"):
        intra_fd(few, ref, few_lab, ref_lab)


def test_quick_loss_is_deterministic_and_discriminates():
    torch.manual_seed(0)
    m = build_unet(unet_config("tiny"))
    data = load_dataset(DataConfig(name="digits", split="test"))
    proc = ForwardProcess(ScheduleConfig(timesteps=100))
    a = quick_loss(m, data, proc, range(10, 40), 4, 32, seed=0)
    b = quick_loss(m, data, proc, range(10, 40), 4, 32, seed=0)
    assert a == b
    assert eval_timesteps(range(10, 40), 4) == [10, 20, 29, 39]
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.0)  # predicts ε = 0: loss ≈ E[ε²] = 1
    assert quick_loss(m, data, proc, range(10, 40), 4, 32) == pytest.approx(1.0, abs=0.1)


# --- Inception FID/KID and the pickle-free reader of published .pth weights -------------------------

def _fid_weights_pth(path, legacy=True):
    """A randomly initialised FID Inception saved the way the published .pth is (old torch.save format,
    no num_batches_tracked), so conversion, strict matching and scoring run offline."""
    from tdc_agent.evaluation.inception import FIDInception

    torch.manual_seed(0)
    sd = {k: v for k, v in FIDInception().net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    return sd


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_file_reader_matches_torch_save(tmp_path, legacy):
    from tdc_agent.evaluation.torchfile import read_torch_state_dict

    sd = {"w": torch.randn(3, 4), "t": torch.randn(4, 3).t(), "h": torch.randn(5).half(), "i": torch.arange(6),
          "b": torch.tensor([True, False]), "view": torch.randn(10)[2:7], "empty": torch.zeros(0, 3)}
    torch.save(sd, tmp_path / "f.pth", _use_new_zipfile_serialization=not legacy)
    got = read_torch_state_dict(tmp_path / "f.pth")
    assert got.keys() == sd.keys()
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_torch_file_reader_refuses_code_and_corruption(tmp_path, monkeypatch):
    from tdc_agent.core.errors import CheckpointError
    from tdc_agent.evaluation.torchfile import read_torch_state_dict

    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.ones(2), "x": _Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="posix.system|os.system|refers to"):
        read_torch_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()
    torch.save({"w": torch.ones(1000)}, tmp_path / "ok.pth", _use_new_zipfile_serialization=False)
    data = (tmp_path / "ok.pth").read_bytes()
    for cut in (10, len(data) // 3, len(data) - 100):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="cut.pth"):
            read_torch_state_dict(tmp_path / "cut.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_torch_state_dict(tmp_path / "junk.pth")


def test_fid_inception_weights_convert_once_and_match_strictly(tmp_path):
    from tdc_agent.core.errors import CheckpointError
    from tdc_agent.evaluation.inception import load_fid_inception, resolve_weights

    sd = _fid_weights_pth(tmp_path / "pt_inception.pth")
    model, sha = load_fid_inception(str(tmp_path / "pt_inception.pth"), torch.device("cpu"))
    assert len(sha) == 64
    assert torch.equal(model.net.Conv2d_1a_3x3.conv.weight, sd["Conv2d_1a_3x3.conv.weight"])
    converted = resolve_weights(str(tmp_path / "pt_inception.pth"))
    assert converted.suffix == ".safetensors" and converted.parent == tmp_path / "cache"
    # the converted file is accepted directly, and a wrong network is refused by name
    load_fid_inception(str(converted), torch.device("cpu"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not the FID Inception-v3 weights"):
        load_fid_inception(str(tmp_path / "other.pth"), torch.device("cpu"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_fid_inception(str(tmp_path / "missing.pth"), torch.device("cpu"))


def test_fid_and_kid_separate_real_from_noise(tmp_path):
    from tdc_agent.evaluation.fid import InceptionEvaluator

    _fid_weights_pth(tmp_path / "w.pth")
    rng = np.random.default_rng(0)
    # an npz image dataset with structure (smooth blobs) that noise does not have
    xx, yy = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16))
    imgs = np.stack([np.exp(-((xx - rng.uniform(-.5, .5)) ** 2 + (yy - rng.uniform(-.5, .5)) ** 2) * 4)
                     for _ in range(32)])
    imgs = (np.repeat(imgs[:, :, :, None], 3, axis=3) * 255).astype(np.uint8)
    np.savez(tmp_path / "blobs.npz", images=imgs)
    data = DataConfig(name="npz", root=str(tmp_path / "blobs.npz"))
    ev = InceptionEvaluator(data, str(tmp_path / "w.pth"), torch.device("cpu"), reference_samples=16, seed=0)
    assert ev.count == 16 and ev.kid_ref.shape == (16, 2048)
    real = load_dataset(data).images[16:32]
    noise = torch.rand(16, 3, 16, 16) * 2 - 1
    s_real, s_noise = ev.score(real), ev.score(noise)
    assert s_noise.fid > 2 * s_real.fid and s_noise.kid > s_real.kid
    # cached reference: a second evaluator reads it instead of recomputing (which would rewrite the file)
    from tdc_agent.evaluation.fd import cache_dir

    (cached,) = (cache_dir() / "fid_reference").glob("*.safetensors")
    stamp = cached.stat().st_mtime_ns
    ev2 = InceptionEvaluator(data, str(tmp_path / "w.pth"), torch.device("cpu"), reference_samples=16, seed=0)
    assert cached.stat().st_mtime_ns == stamp
    assert ev2.count == ev.count and all(np.array_equal(getattr(ev2, k), getattr(ev, k))
                                         for k in ("mu", "sigma", "kid_ref"))


def test_kid_is_unbiased_near_zero_for_same_distribution():
    from tdc_agent.evaluation.fd import kid

    rng = np.random.default_rng(0)
    same = kid(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), subsets=20, subset_size=200)
    shifted = kid(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 0.5, subsets=20, subset_size=200)
    assert abs(same[0]) < 3 * same[1] + 1e-3 and shifted[0] > 10 * abs(same[0])
