"""A subpackage's public names, each loaded from its module on first use (PEP 562)."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, modules: dict[str, list[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` for ``package`` exporting ``modules`` (module name -> its names).

    Importing one module of a subpackage then does not import the rest (the agent's LangChain, the
    models' diffusers) just because the subpackage's ``__init__`` names them."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(where), __getattr__
