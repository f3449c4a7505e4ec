"""Latent diffusion: a tiny autoencoder saved in diffusers format, the whole pipeline on its latents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tdc_agent.core.config import config_from_dict
from tdc_agent.core.errors import CheckpointError

from conftest import tiny_config_dict


def tiny_autoencoder(path, kind: str = "kl"):
    """1x8x8 images <-> 2x4x4 latents, saved with save_pretrained (safetensors)."""
    from diffusers import AutoencoderKL, VQModel

    torch.manual_seed(0)
    common = dict(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=2,
                  norm_num_groups=4, layers_per_block=1, sample_size=8)
    model = AutoencoderKL(**common, scaling_factor=0.7) if kind == "kl" else VQModel(
        **common, num_vq_embeddings=16, vq_embed_dim=2, scaling_factor=1.0)
    model.save_pretrained(path)
    return model


@pytest.fixture
def cache(tmp_path, monkeypatch, fresh_cache):
    monkeypatch.setenv("TDC_AGENT_CACHE", str(fresh_cache(tmp_path / "cache")))


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_encode_decode_and_cached_latents(tmp_path, cache, kind):
    from tdc_agent.models.latent import decode, encode, load_autoencoder, training_data

    tiny_autoencoder(tmp_path / "pipe" / ("vae" if kind == "kl" else "vqvae"), kind)
    vae = load_autoencoder(str(tmp_path / "pipe"))  # a pipeline folder: vae/ or vqvae/ is found
    assert type(vae).__name__ == ("AutoencoderKL" if kind == "kl" else "VQModel")
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    z = encode(vae, x, 0.5)
    assert z.shape == (3, 2, 4, 4)
    assert decode(vae, z, 0.5).shape == (3, 1, 8, 8)
    cfg = config_from_dict(tiny_config_dict(tmp_path, latent={"vae": str(tmp_path / "pipe")}))
    first = training_data(cfg)
    files = list((tmp_path / "cache" / "latents").glob("*.safetensors"))
    assert len(files) == 1 and first.images.shape == (1498, 2, 4, 4)  # the train split
    stamp = files[0].stat().st_mtime_ns
    again = training_data(cfg)
    assert torch.equal(again.images, first.images) and files[0].stat().st_mtime_ns == stamp
    # another scaling factor is another cache entry, scaled accordingly
    other = training_data(config_from_dict(tiny_config_dict(tmp_path, latent={"vae": str(tmp_path / "pipe"),
                                                                              "scaling_factor": 2.0})))
    base_scale = float(vae.config.scaling_factor)
    assert torch.allclose(other.images, first.images * 2.0 / base_scale, atol=1e-5)


def test_pickle_only_autoencoder_is_refused(tmp_path):
    from tdc_agent.models.latent import load_autoencoder

    tiny_autoencoder(tmp_path / "v").save_pretrained(tmp_path / "bin", safe_serialization=False)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_autoencoder(str(tmp_path / "bin"))
    with pytest.raises(CheckpointError, match="no diffusers autoencoder"):
        load_autoencoder(str(tmp_path))


def test_train_base_loads_the_autoencoder_once(tmp_path, cache, cli, make_config):
    """The latents, the model's metadata (twice: the first and the final save) and a second job in
    the same process share one loaded autoencoder; new weights in the folder load again."""
    from tdc_agent.core.tally import step_counts, steps_since

    tiny_autoencoder(tmp_path / "vae")
    cfg = make_config(latent={"vae": str(tmp_path / "vae")}, stage1={"steps": 2, "batch_size": 8, "ckpt_every": 1})
    before = step_counts()
    code, _, err = cli("train-base", "--config", cfg, "--run-dir", tmp_path / "run", "-q")
    assert code == 0, err
    assert steps_since(before).get("autoencoder") == 1
    code, _, err = cli("train-base", "--config", cfg, "--run-dir", tmp_path / "run2", "-q")
    assert code == 0, err
    assert steps_since(before).get("autoencoder") == 1
    meta = json.loads((tmp_path / "run" / "stage1" / "model" / "tdc_model.json").read_text())
    assert meta["latent"]["image_shape"] == [1, 8, 8]
    tiny_autoencoder(tmp_path / "vae", "kl")  # rewritten: the cache key follows the weights
    from tdc_agent.models.latent import load_autoencoder

    load_autoencoder(str(tmp_path / "vae"))
    assert steps_since(before).get("autoencoder") == 2


@pytest.mark.slow  # ~100 s; `make test-slow`
def test_latent_pipeline_end_to_end(tmp_path, cache, cli, make_config):
    from tdc_agent.core.config import SampleConfig
    from tdc_agent.pipelines.export import TDCPipeline
    from tdc_agent.models.latent import decoder
    from tdc_agent.models.progressive import ProgressiveModel
    from tdc_agent.workflow.sampling import generate

    tiny_autoencoder(tmp_path / "vae")
    cfg = make_config(latent={"vae": str(tmp_path / "vae")},
                      stage1={"steps": 10, "batch_size": 16, "ckpt_every": 5},
                      stage2={"steps": 4, "batch_size": 16, "ckpt_every": 2},
                      agent={"rounds": 1, "candidates": 2, "eval_batch_size": 16, "eval_timesteps": 2},
                      evaluation={"samples": 16})
    run = tmp_path / "run"
    code, out, err = cli("run", "--config", cfg, "--run-dir", run, "-q")
    assert code == 0, err
    meta = json.loads((run / "stage1" / "model" / "tdc_model.json").read_text())
    assert meta["image_shape"] == [2, 4, 4] and meta["latent"]["image_shape"] == [1, 8, 8]
    assert meta["latent"]["scaling_factor"] == pytest.approx(0.7)
    unet = json.loads((run / "stage1" / "model" / "config.json").read_text())
    assert unet["in_channels"] == 2 and unet["sample_size"] == 4  # the UNet (and the agent) see latents only
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["protocol"]["metric"] == "digits-fd" and ev["tdc"]["fd"] > 0  # scored on decoded digits
    manifest = json.loads((run / "progressive" / "manifest.json").read_text())
    assert manifest["latent"]["vae"] == str(tmp_path / "vae")
    # `tdc-agent sample` decodes too
    code, _, err = cli("sample", "--model", run / "progressive", "--num", "4", "--steps", "3", "-q",
                       "--out", tmp_path / "s")
    assert code == 0, err
    assert np.load(tmp_path / "s" / "samples.npz")["images"].shape[1:3] == (8, 8)
    # the diffusers pipeline gives the same decoded samples as our sampler under the same seed
    pm = ProgressiveModel.load(run / "progressive")
    ours = decoder(pm.latent)(generate(pm, pm.image_shape, pm.schedule, SampleConfig(steps=4, num=3), seed=7,
                                       progress=False))
    pipe = TDCPipeline.from_progressive(run / "progressive")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=3, num_inference_steps=4, generator=torch.Generator().manual_seed(7),
                  output_type="pt").images
    assert torch.allclose(theirs, (ours + 1) / 2, atol=1e-5)
