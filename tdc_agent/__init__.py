"""tdc-agent: TDC Training (two-stage divide-and-conquer) for diffusion models with agent pruning."""

__version__ = "0.1.0"
