"""Structured pruning of denoisers (any registered backbone; diffusers UNets built in)."""
