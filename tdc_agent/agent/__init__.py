"""The pruning agent: LangChain tools, pluggable chat models, prompt templates, Chroma memory.

The names other layers use, importable from here (``from tdc_agent.agent import ...``); each
is loaded from its module on first use, so importing one module of this package does not import
the rest."""

from __future__ import annotations

from ..core.lazy import lazy_exports

_MODULES = {
    "records": ["best_records", "export_records", "memory_records"],
    "llm": ["ResolvedLLM"],
    "memory": ["MemoryBank"],
    "prompts": ["init_prompts", "load_prompts"],
    "runner": ["AgentPruning"],
}
__all__, __getattr__ = lazy_exports(__name__, _MODULES)
