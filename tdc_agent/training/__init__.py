"""Training: one loop for both stages (see :mod:`tdc_agent.training.loop`)."""

from .loop import TrainResult, train

__all__ = ["TrainResult", "train"]
