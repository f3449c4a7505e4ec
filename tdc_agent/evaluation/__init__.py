"""Evaluation: quick group loss (for the agent), and later Fréchet distances and speed."""
