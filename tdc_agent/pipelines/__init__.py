"""diffusers pipelines for TDC models (the export): ``from tdc_agent.pipelines import TDCPipeline``."""

from .export import ProgressiveUNet, TDCPipeline

__all__ = ["ProgressiveUNet", "TDCPipeline"]
