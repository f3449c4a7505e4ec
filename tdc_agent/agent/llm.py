"""Resolving ``--llm SPEC`` to a LangChain chat model, and checking it before compute is spent.

- ``builtin``: :class:`~tdc_agent.agent.builtin.BuiltinPolicy` (offline; not a language model).
- ``openai:<model>``: ``langchain_openai.ChatOpenAI``; with ``--llm-base-url`` any OpenAI-compatible
  server (vLLM, llama.cpp server, Ollama's /v1, LM Studio). The key comes from ``OPENAI_API_KEY``
  (or ``agent.api_key_env``); local servers that need none get a placeholder.
- ``replay:<transcript.jsonl>``: replays a recorded run's replies (no network).
- ``<provider>:<model>``: ``langchain.chat_models.init_chat_model`` for any installed integration
  (``pip install 'tdc-agent[anthropic]'`` or ``[ollama]``).
- Python API: pass any ``BaseChatModel`` instance instead of a string.
"""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlparse

from langchain_core.language_models.chat_models import BaseChatModel

from ..core.config import AgentConfig
from ..core.errors import ConfigError, TDCError
from ..core.redaction import redact_url, register_secret_env

PROVIDER_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "google_genai": "GOOGLE_API_KEY",
                 "mistralai": "MISTRAL_API_KEY", "groq": "GROQ_API_KEY"}


def check_reachable(url: str, timeout: float = 3.0) -> None:
    """Open (and close) a TCP connection to the server of ``url``; a clear error if that fails."""
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"LLM base URL {redact_url(url)!r} is not an http(s) URL "
                          "(e.g. http://localhost:8000/v1).")
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        raise TDCError(
            f"The LLM server at {redact_url(url)} is unreachable ({e}). Start it, fix --llm-base-url, or use --llm builtin."
        ) from None


def check_key(url: str, key: str, key_env: str | None, timeout: float = 5.0) -> None:
    """Ask an OpenAI-compatible server's ``GET /models`` whether it accepts ``key``: a refused key
    fails now, before stage 1 trains, instead of at the first agent round. Any other outcome (a
    server without that route, a timeout) proves nothing and is let through."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url.rstrip("/") + "/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout):  # noqa: S310 - an http(s) URL checked above
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise ConfigError(
                f"The LLM server at {redact_url(url)} refused the API key (HTTP {e.code}) from "
                f"${key_env or 'the configured variable'}. Export a valid key (or set agent.api_key_env to the "
                "variable that holds it), or use --llm builtin.") from None
    except (OSError, ValueError):
        return


def resolve_llm(spec: str | BaseChatModel, cfg: AgentConfig, check: bool = True) -> tuple[BaseChatModel, str]:
    """The chat model for ``spec`` and a printable spec string (never containing a key)."""
    if isinstance(spec, BaseChatModel):
        return spec, f"python:{type(spec).__name__}"
    spec = spec.strip()
    if spec == "builtin":
        from .builtin import BuiltinPolicy

        return BuiltinPolicy(seed=0), "builtin"
    if spec.startswith("replay:"):
        from .replay import ReplayChatModel

        return ReplayChatModel.from_transcript(spec.split(":", 1)[1]), spec
    if ":" not in spec:
        raise ConfigError(f"--llm {spec!r} is not a valid spec: use builtin, openai:<model>, replay:<transcript.jsonl> "
                          "or <provider>:<model>.")
    provider, model = spec.split(":", 1)
    key_env = cfg.api_key_env or PROVIDER_KEYS.get(provider)
    register_secret_env(key_env)  # whatever the variable is called, its value is now kept out of every sink
    key = os.environ.get(key_env) if key_env else None
    if provider == "openai":
        from langchain_openai import ChatOpenAI

        if not key and not cfg.base_url:
            raise ConfigError(f"--llm {spec} needs an API key in ${key_env}. Export it, or point --llm-base-url at a "
                              "local OpenAI-compatible server, or use --llm builtin.")
        if check:
            check_reachable(cfg.base_url or "https://api.openai.com/v1")
            if key:
                check_key(cfg.base_url or "https://api.openai.com/v1", key, key_env, timeout=min(cfg.timeout_s, 10.0))
        kwargs: dict[str, Any] = dict(model=model, temperature=cfg.temperature, max_retries=cfg.max_retries,
                                      timeout=cfg.timeout_s, api_key=key or "not-needed")
        if cfg.base_url:
            kwargs["base_url"] = cfg.base_url
        return ChatOpenAI(**kwargs), spec
    if key_env and not key and not cfg.base_url and provider in PROVIDER_KEYS:
        raise ConfigError(f"--llm {spec} needs an API key in ${key_env}. Export it or use --llm builtin.")
    try:
        from langchain.chat_models import init_chat_model

        kwargs = {"temperature": cfg.temperature, "max_retries": cfg.max_retries, "timeout": cfg.timeout_s}
        if cfg.base_url:
            kwargs["base_url"] = cfg.base_url
            if check:
                check_reachable(cfg.base_url)
        return init_chat_model(spec, **kwargs), spec
    except ImportError as e:
        raise ConfigError(f"--llm {spec}: the LangChain integration for {provider!r} is not installed ({e}). "
                          f"Install it, e.g. pip install 'tdc-agent[{provider}]' or langchain-{provider}.") from None
    except ValueError as e:
        raise ConfigError(f"--llm {spec}: {e}") from None
