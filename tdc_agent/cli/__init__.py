"""The ``tdc-agent`` command: a thin Typer front end over the library (``tdc_agent.cli.main``)."""

from .main import app, main

__all__ = ["app", "main"]
