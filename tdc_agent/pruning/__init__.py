"""Structured pruning of diffusers UNets and the one MACs counter."""
