"""Denoisers: the backbone interface (UNet built in) and the one input check, saving and loading, MACs, latent diffusion, progressive models.

The names other layers use, importable from here (``from tdc_agent.models import ...``); each
is loaded from its module on first use, so importing one module of this package does not import
the rest."""

from __future__ import annotations

from ..core.lazy import lazy_exports

_MODULES = {
    "backbone": ["Backbone", "backbone_of", "build_preset", "check_takes", "denoise", "eval_mode", "example_inputs",
                 "get_backbone", "input_shape", "output_tensor", "param_count", "register_backbone",
                 "unregister_backbone"],
    "latent": ["decode", "decoder", "held_out", "latent_meta", "load_autoencoder", "training_data"],
    "macs": ["MacsCount", "count", "thop_layer_ops", "thop_macs"],
    "progressive": ["ProgressiveModel", "is_progressive", "member_from_dir"],
    "record": ["attach", "build_graph", "fix_up", "make_record", "record_of"],
    "store": ["load_model", "load_state_strict", "save_model"],
    "unet": ["build_unet", "load_pretrained_unet", "unet_config"],
}
__all__, __getattr__ = lazy_exports(__name__, _MODULES)
