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
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from langchain_core.language_models.chat_models import BaseChatModel

from ..core.config import AgentConfig
from ..core.errors import ConfigError, TDCError
from ..core.redaction import redact_url, register_secret_env
from ..core.tally import count_step

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


@dataclass(frozen=True)
class ResolvedLLM:
    """A chat model resolved and checked once (:func:`resolve_llm`), with its printable spec: what a
    run's preflight hands the agent, so that the groups of one run share one model and one check."""

    chat: BaseChatModel
    spec: str

    @classmethod
    def of(cls, spec: str | BaseChatModel, cfg: AgentConfig, seed: int = 0) -> "ResolvedLLM":
        """:func:`resolve_llm` (with its checks), kept."""
        return cls(*resolve_llm(spec, cfg, seed=seed))


def resolve_llm(spec: str | BaseChatModel, cfg: AgentConfig, check: bool = True,
                seed: int = 0) -> tuple[BaseChatModel, str]:
    """The chat model for ``spec`` and a printable spec string (never containing a key). ``seed``
    (``run.seed``) seeds the builtin policy's search, so runs with different seeds search differently
    and each is reproducible."""
    if isinstance(spec, BaseChatModel):
        return spec, f"python:{type(spec).__name__}"
    count_step("llm")
    spec = spec.strip()
    if spec == "builtin":
        from .builtin import BuiltinPolicy

        if cfg.protocol == "json":
            raise ConfigError("agent.protocol=json is for language models without tool calling; --llm builtin "
                              "answers with tool calls only. Use agent.protocol=tools with it (the default).")
        if cfg.prompt_dir:
            raise ConfigError(f"agent.prompt_dir={cfg.prompt_dir} has no effect with --llm builtin: the builtin "
                              "policy is a search, not a language model, and reads tool results, never prompts. Drop "
                              "--prompt-dir, or pick an LLM (openai:<model>, anthropic:<model>, ollama:<model>...).")

        return BuiltinPolicy(seed=seed), "builtin"
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
        if not key and not cfg.base_url:
            raise ConfigError(f"--llm {spec} needs an API key in ${key_env}. Export it, or point --llm-base-url at a "
                              "local OpenAI-compatible server, or use --llm builtin.")
        if check:
            check_reachable(cfg.base_url or "https://api.openai.com/v1")
            if key:
                check_key(cfg.base_url or "https://api.openai.com/v1", key, key_env, timeout=min(cfg.timeout_s, 10.0))
        from langchain_openai import ChatOpenAI  # after the checks: a refusal does not pay this import
        kwargs: dict[str, Any] = dict(model=model, temperature=cfg.temperature, max_retries=cfg.max_retries,
                                      timeout=cfg.timeout_s, api_key=key or "not-needed")
        if cfg.base_url:
            kwargs["base_url"] = cfg.base_url
        return ChatOpenAI(**kwargs), spec
    if key_env and not key and not cfg.base_url and provider in PROVIDER_KEYS:
        raise ConfigError(f"--llm {spec} needs an API key in ${key_env}. Export it or use --llm builtin.")
    return _init_provider(spec, provider, model, cfg, key, check), spec


def _one_paragraph(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _init_provider(spec: str, provider: str, model: str, cfg: AgentConfig, key: str | None,
                   check: bool) -> BaseChatModel:
    """``init_chat_model`` for ``<provider>:<model>``; every way it can fail is one paragraph."""
    try:
        from langchain.chat_models import init_chat_model
        from langchain.chat_models.base import _BUILTIN_PROVIDERS
    except ImportError:  # an older/newer langchain without that table: let init_chat_model say it
        from langchain.chat_models import init_chat_model

        _BUILTIN_PROVIDERS = {}
    if _BUILTIN_PROVIDERS and provider not in _BUILTIN_PROVIDERS:
        raise ConfigError(f"--llm {spec}: {provider!r} is not a LangChain chat-model provider. Use builtin, "
                          f"replay:<file>, or one of {', '.join(sorted(_BUILTIN_PROVIDERS))} as <provider>:<model> "
                          "(e.g. openai:gpt-4o, anthropic:claude-sonnet-4-5, ollama:qwen3).")
    kwargs: dict[str, Any] = {"temperature": cfg.temperature, "max_retries": cfg.max_retries, "timeout": cfg.timeout_s}
    if provider == "ollama":  # ChatOllama has no timeout/max_retries fields: its HTTP client takes the timeout
        kwargs = {"temperature": cfg.temperature, "client_kwargs": {"timeout": cfg.timeout_s}}
        if check:
            check_reachable(cfg.base_url or "http://127.0.0.1:11434")
    if cfg.base_url:
        kwargs["base_url"] = cfg.base_url
        if check and provider != "ollama":
            check_reachable(cfg.base_url)
        if provider == "anthropic" and not key:
            kwargs["api_key"] = "not-needed"  # a local Messages-API server that needs no key
    try:
        return init_chat_model(spec, **kwargs)
    except ImportError as e:
        raise ConfigError(f"--llm {spec}: the LangChain integration for {provider!r} is not installed "
                          f"({_one_paragraph(e, 200)})."
                          + (f" Install it: pip install 'tdc-agent[{provider}]'." if provider in ("anthropic", "ollama")
                             else "")) from None
    except Exception as e:  # noqa: BLE001 - missing credentials (OpenAIError...), bad options: one paragraph
        raise ConfigError(f"--llm {spec}: the {provider} chat model could not be created "
                          f"({type(e).__name__}: {_one_paragraph(e)}). Set the provider's credentials or "
                          "options (see its LangChain integration), or use --llm builtin.") from None
