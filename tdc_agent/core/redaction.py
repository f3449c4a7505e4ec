"""The one secret scrubber: every sink goes through :func:`redact`.

Sinks: the terminal (the CLI wraps stdout/stderr in :class:`RedactingStream`), text files for
people (:func:`tdc_agent.core.io.atomic_write_text`, the run log, the transcript), memory records
(their rationale and error fields, before Chroma stores them and again on export), reports and
exception messages (:class:`tdc_agent.core.errors.TDCError` scrubs its own text). Not a sink: state
tdc-agent reads back (model directories, manifests, checkpoints, ``config.yaml``), written with
``scrub=False``, since any text equal to a secret's value is replaced and a value can be a common word.

A plain module (no LangChain import), so the CLI can scrub an error message cheaply. What counts as
a secret: the values of environment variables that look like credentials (``*KEY*``, ``*TOKEN*``...),
of variables registered with :func:`register_secret_env` (``agent.api_key_env`` may name any
variable), values registered with :func:`register_secret` (the password of a URL's ``user:pass@``
part, see :func:`register_url_secrets`), every ``Bearer``/``Basic`` token seen once, ``sk-...``
style keys, ``api_key=...`` pairs, and in URLs the ``user:pass@`` part and credential-named query
parameters. Each literal secret is also scrubbed in its base64 forms (an ``Authorization: Basic``
header carries ``base64(user:pass)``).
"""

from __future__ import annotations

import base64
import io
import os
import re
import threading
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit

# A token after "Bearer"/"Basic" is replaced whole (base64 has + / =, JWTs have dots), and
# remembered: the same token elsewhere, without its scheme word, is scrubbed too. ("Basic" is also
# an English word: only a token that decodes to "user:pass" counts after it.)
_AUTH_TOKEN = re.compile(r"(?i)\b(bearer|basic)(\s+)([A-Za-z0-9._~+/\-]{8,}=*)")
_KEY_PATTERNS = [
    # not inside a word: "task-0123456789" holds no key
    re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}"),
    # "Authorization: Basic abc==" - the whole header value, scheme word and token alike
    re.compile(r"(?i)(authorization|proxy-authorization)(['\"]?\s*[:=]\s*['\"]?"
               r"(?:(?:bearer|basic|token|digest)\s+)?)[^'\"\s,;}]+"),
    # the value ends at a URL's next parameter too ("api_key=...&api-version=2024-06-01")
    re.compile(r"(?i)(api[_-]?key|x-api-key)(['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}&#]+"),
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
# A word of letters only, shorter than this, after "Bearer" is English, not a token (random tokens
# of this length hold a digit or a symbol; a key from the environment is registered by name anyway).
PROSE_WORD_LEN = 24

_named_env: set[str] = set()
_values: set[str] = set()  # literal secrets registered or seen (URL passwords, Bearer/Basic tokens)
_values_lock = threading.Lock()


def register_secret_env(name: str | None) -> None:
    """Treat the value of environment variable ``name`` as a secret from now on, whatever its name."""
    if name:
        _named_env.add(name)


def register_secret(value: str | None) -> None:
    """Treat ``value`` (and its base64 forms) as a secret from now on, wherever it appears."""
    if value and len(value) >= MIN_SECRET_LEN:
        with _values_lock:
            _values.add(value)


def register_url_secrets(url: str | None) -> None:
    """Register the credentials of ``url``: its ``user:pass@`` password, ``user:pass`` (what an
    ``Authorization: Basic`` header encodes) and credential query values."""
    if not url:
        return
    try:
        u = urlsplit(url.strip())
        user, password = u.username, u.password
    except ValueError:  # a malformed URL (bad port, bad IPv6): its userinfo is still masked by pattern
        m = re.match(r"(?i)[a-z][a-z0-9+.\-]*://([^/?#\s@]*)@", url.strip())
        user, _, password = (m.group(1).partition(":") if m else ("", "", ""))
        query = ""
    else:
        query = u.query
    for v in (password, unquote(password or "")):
        register_secret(v)
    if user and password:
        register_secret(f"{user}:{password}")
        register_secret(f"{unquote(user)}:{unquote(password)}")
    elif user and len(user) >= MIN_SECRET_LEN:  # https://TOKEN@host: the user part is the credential
        register_secret(user)
    for m in _URL_PARAM.finditer("?" + query):
        name = m.group(2).lower()
        if any(h in name for h in _URL_PARAM_HINTS) or name in _URL_PARAM_NAMES:
            register_secret(unquote(m.group(3)))


def _b64_forms(value: str) -> list[str]:
    raw = value.encode()
    forms = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    # without padding too (JWT-style), when that is still long enough to be unmistakable
    forms |= {f.rstrip("=") for f in forms if len(f.rstrip("=")) >= MIN_SECRET_LEN}
    return sorted(forms, key=len, reverse=True)


def secret_values(extra_env: Iterable[str] = ()) -> list[str]:
    """Every literal secret known now, longest first, each with its base64 forms.

    The values of environment variables whose names look like credentials, of those registered with
    :func:`register_secret_env` and of those named in ``extra_env``; and the values registered with
    :func:`register_secret` or seen as Bearer/Basic tokens.
    """
    named = _named_env | {n for n in extra_env if n}
    plain = {v for k, v in os.environ.items()
             if (k in named or any(h in k.upper() for h in SECRET_ENV_HINTS)) and v and len(v) >= MIN_SECRET_LEN}
    with _values_lock:
        plain |= _values
    out = set(plain)
    for v in plain:
        out.update(_b64_forms(v))
    # longest first: a secret that contains another is replaced whole
    return sorted(out, key=len, reverse=True)


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


def _is_basic_credential(token: str) -> bool:
    try:
        return b":" in base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except ValueError:
        return False


def _redact_str(text: str, secrets: list[str]) -> str:
    seen: list[str] = []

    def auth_token(m: re.Match) -> str:
        if m.group(1).lower() == "basic" and not _is_basic_credential(m.group(3)):
            return m.group(0)
        if m.group(3).isalpha() and len(m.group(3)) < PROSE_WORD_LEN:
            return m.group(0)  # "Bearer authentication" is prose: remembering the word would scrub it everywhere
        register_secret(m.group(3))  # seen once, scrubbed everywhere from now on
        seen.append(m.group(3))
        return m.group(1) + m.group(2) + "[REDACTED]"

    text = _AUTH_TOKEN.sub(auth_token, text)  # first: a token seen here is scrubbed everywhere below
    for s in (secrets + sorted(seen, key=len, reverse=True)) if seen else secrets:
        text = text.replace(s, "[REDACTED]")
    for pat in _KEY_PATTERNS:
        text = pat.sub(lambda m: (m.group(1) + m.group(2) + "[REDACTED]") if m.lastindex and m.lastindex >= 2
                       else "[REDACTED]", text)
    return _redact_urls(text)


def _redact(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, str):
        return _redact_str(obj, secrets)
    if isinstance(obj, dict):
        return {k: ("[REDACTED]" if isinstance(k, str) and k.lower() in ("api_key", "openai_api_key", "authorization")
                    else _redact(v, secrets)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_redact(v, secrets) for v in obj]
    return obj


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of ``obj`` with credentials replaced by ``[REDACTED]`` (``***`` in URLs) in every string.

    ``secrets``: further literal values to scrub; every value :func:`secret_values` knows is scrubbed
    in any case, so no caller can miss one registered after it started.
    """
    known = secret_values()
    return _redact(obj, known if not secrets else sorted(set(secrets) | set(known), key=len, reverse=True))


class RedactingStream(io.TextIOBase):
    """A text stream that scrubs what is written to it before passing it on (the terminal sink).

    Writes are scrubbed one call at a time; rich writes a whole rendered print in one call, so a
    secret is never split between two writes by our own output.
    """

    def __init__(self, inner: Any):
        self._inner = inner

    def write(self, text: str) -> int:  # type: ignore[override]
        self._inner.write(redact(text) if isinstance(text, str) else text)
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return bool(getattr(self._inner, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self._inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._inner, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
