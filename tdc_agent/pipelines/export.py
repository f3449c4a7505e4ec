"""Use a progressive model from diffusers: a UNet adapter that routes timesteps, and a pipeline.

    from tdc_agent.pipelines.export import TDCPipeline
    pipe = TDCPipeline.from_progressive("runs/digits/progressive", sampler="ddim")
    images = pipe(batch_size=16, num_inference_steps=100, generator=torch.manual_seed(0)).images

``ProgressiveUNet`` looks like a ``UNet2DModel`` to diffusers code (``config.sample_size``,
``config.in_channels``, ``unet(x, t).sample``) and sends each sample to its group's member. The
members may be of any registered backbone (:mod:`tdc_agent.models.backbone`): they are reached only
through ``denoise``, and the wrapper keeps the ``unet`` name because that is the component
diffusers' pipelines call.
``TDCPipeline`` is a ``DiffusionPipeline`` running DDIM or DDPM with our β schedule, decoding
latents through the recorded autoencoder for latent-diffusion models. Under the same generator
it gives exactly the samples of ``tdc-agent sample``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion.sampling import denoise_loop, make_scheduler
from ..models.progressive import ProgressiveModel


class ProgressiveUNet(ModelMixin, ConfigMixin):
    """A progressive model behind the ``UNet2DModel`` call signature."""

    @register_to_config
    def __init__(self, sample_size: int = 32, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        self.progressive: ProgressiveModel | None = None

    @classmethod
    def wrap(cls, pm: ProgressiveModel) -> "ProgressiveUNet":
        c, h, _ = pm.image_shape
        unet = cls(sample_size=h, in_channels=c, out_channels=c)
        unet.progressive = pm
        return unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, return_dict: bool = True
                ) -> UNet2DOutput | tuple[torch.Tensor]:
        t = torch.as_tensor(timestep, device=sample.device).long()
        if t.ndim == 0:
            t = t.expand(sample.shape[0])
        out = self.progressive(sample, t)
        return UNet2DOutput(sample=out) if return_dict else (out,)


class TDCPipeline(DiffusionPipeline):
    """DDIM/DDPM sampling of a progressive model (optionally decoding latents with ``vae``)."""

    _optional_components = ["vae"]

    def __init__(self, unet: ProgressiveUNet, scheduler: Any, vae: Any = None) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)

    @classmethod
    def from_progressive(cls, directory: str | Path, sampler: str = "ddim",
                         device: str | torch.device = "cpu") -> "TDCPipeline":
        """Load ``RUN/progressive`` (no download; the autoencoder too, if it is a local folder)."""
        pm = ProgressiveModel.load(directory, device)
        vae = None
        if pm.latent:
            from ..models.latent import load_autoencoder

            vae = load_autoencoder(pm.latent["vae"], device)
        pipe = cls(ProgressiveUNet.wrap(pm), make_scheduler(pm.schedule, sampler), vae)
        pipe.latent = pm.latent
        return pipe

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, num_inference_steps: int = 100,
                 generator: torch.Generator | None = None, eta: float = 0.0, output_type: str = "pil",
                 return_dict: bool = True) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images; ``output_type`` is "pil", "np" or "pt" (NCHW in [0, 1])."""
        pm = self.unet.progressive
        shape = (batch_size, *pm.image_shape)
        device = next(pm.parameters()).device
        # drawn on the CPU like tdc-agent's sampler, so a seed gives the same images on any device
        x = randn_tensor(shape, generator=generator, device=torch.device("cpu")).to(device)
        self.scheduler.set_timesteps(min(num_inference_steps, pm.schedule.timesteps))
        x = denoise_loop(lambda x, t: self.unet(x, t).sample, x, self.scheduler, eta, generator,
                         iterate=self.progress_bar)
        if self.vae is not None:
            from ..models.latent import decode

            x = decode(self.vae, x, float(self.latent["scaling_factor"]))
        image = ((x + 1) / 2).clamp(0, 1).cpu()
        if output_type == "np":
            image = image.permute(0, 2, 3, 1).numpy()
        elif output_type == "pil":
            image = self.numpy_to_pil(image.permute(0, 2, 3, 1).numpy().astype(np.float32))
        elif output_type != "pt":
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        return ImagePipelineOutput(images=image) if return_dict else (image,)
