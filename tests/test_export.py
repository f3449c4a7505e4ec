"""The progressive model from diffusers: TDCPipeline gives tdc-agent's samples under the same seed."""

import torch

from tdc_agent.models.store import save_model
from tdc_agent.core.config import SampleConfig, ScheduleConfig
from tdc_agent.models.unet import build_unet, unet_config
from tdc_agent.models.progressive import Member, ProgressiveModel
from tdc_agent.models.macs import thop_macs
from tdc_agent.workflow.sampling import generate


def test_diffusers_pipeline_matches_our_sampler(tmp_path):
    from tdc_agent.pipelines.export import ProgressiveUNet, TDCPipeline

    sched = ScheduleConfig(timesteps=100)
    dirs, members = [], []
    for i, (a, b) in enumerate([(0, 29), (30, 99)]):
        torch.manual_seed(i)
        net = build_unet(unet_config("tiny")).eval()
        members.append(Member(i, a, b, net, thop_macs(net)))
        dirs.append(save_model(tmp_path / f"m{i}", net, {"schedule": sched.model_dump()}))
    ProgressiveModel(members, sched, (1, 8, 8)).save(tmp_path / "pm", dirs)
    pm = ProgressiveModel.load(tmp_path / "pm")
    for sampler in ("ddim", "ddpm"):
        pipe = TDCPipeline.from_progressive(tmp_path / "pm", sampler=sampler)
        pipe.set_progress_bar_config(disable=True)
        assert isinstance(pipe.unet, ProgressiveUNet) and pipe.unet.config.sample_size == 8
        out = pipe(batch_size=3, num_inference_steps=6, generator=torch.Generator().manual_seed(11), output_type="pt")
        ours = generate(pm, pm.image_shape, sched, SampleConfig(sampler=sampler, steps=6, num=3), seed=11,
                        progress=False)
        assert torch.allclose(out.images, (ours + 1) / 2, atol=1e-5), sampler
    pil = pipe(batch_size=2, num_inference_steps=2).images
    assert len(pil) == 2 and pil[0].size == (8, 8)
