"""Keeping credentials out of every place we write: the transcript, console errors, the stored config.

A plain module (no LangChain import), so the CLI can scrub an error message cheaply. What counts as
a secret: the values of environment variables that look like credentials (``*KEY*``, ``*TOKEN*``...),
of variables registered with :func:`register_secret_env` (``agent.api_key_env`` may name any
variable), ``sk-...`` style keys, ``Bearer`` tokens, ``api_key=...`` pairs, and in URLs the
``user:pass@`` part and credential-named query parameters.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable

_KEY_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)(api[_-]?key|authorization|x-api-key)(['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"),
]
SECRET_ENV_HINTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
# a query parameter whose name contains one of these carries a credential (?key=, ?access_token=)
_URL_PARAM_HINTS = ("key", "token", "secret", "passw", "auth", "credential", "signature")
_URL_PARAM_NAMES = ("sig", "code", "pwd")  # only as the whole name ("design" is no signature)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s@'\"]+@")
_URL_PARAM = re.compile(r"([?&])([^=&#\s'\"]+)=([^&#\s'\"]*)")
URL_MASK = "***"
# Values shorter than this are not scrubbed: replacing a short common substring would garble the
# transcript (which replay reads back), and no real key is that short.
MIN_SECRET_LEN = 8

_named_env: set[str] = set()


def register_secret_env(name: str | None) -> None:
    """Treat the value of environment variable ``name`` as a secret from now on, whatever its name."""
    if name:
        _named_env.add(name)


def secret_values(extra_env: Iterable[str] = ()) -> list[str]:
    """Values of environment variables that hold credentials (long enough to be real).

    Those whose names look like credentials, those registered with :func:`register_secret_env`, and
    those named in ``extra_env``.
    """
    named = _named_env | {n for n in extra_env if n}
    return [v for k, v in os.environ.items()
            if (k in named or any(h in k.upper() for h in SECRET_ENV_HINTS)) and v and len(v) >= MIN_SECRET_LEN]


def redact_url(url: str | None) -> str | None:
    """``url`` with its ``user:pass@`` part and credential query values replaced by ``***``."""
    if url is None:
        return None
    return _redact_urls(url)


def _redact_urls(text: str) -> str:
    text = _URL_USERINFO.sub(lambda m: m.group(1) + URL_MASK + "@", text)

    def param(m: re.Match) -> str:
        name = m.group(2).lower()
        if (any(h in name for h in _URL_PARAM_HINTS) or name in _URL_PARAM_NAMES) and m.group(3):
            return f"{m.group(1)}{m.group(2)}={URL_MASK}"
        return m.group(0)

    return _URL_PARAM.sub(param, text)


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of ``obj`` with credentials replaced by ``[REDACTED]`` (``***`` in URLs) in every string."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, "[REDACTED]")
        for pat in _KEY_PATTERNS:
            obj = pat.sub(lambda m: (m.group(1) + m.group(2) + "[REDACTED]") if m.lastindex and m.lastindex >= 2
                          else "[REDACTED]", obj)
        return _redact_urls(obj)
    if isinstance(obj, dict):
        return {k: ("[REDACTED]" if isinstance(k, str) and k.lower() in ("api_key", "openai_api_key", "authorization")
                    else redact(v, secrets)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    return obj
