"""Scrubbing credentials from strings and URLs (the transcript, console errors and config.yaml use it)."""

import pytest

from tdc_agent.core.redaction import redact, redact_url, register_secret_env, secret_values


@pytest.mark.parametrize(
    "url,masked",
    [
        ("https://api.example.com/v1?key=abc123", "https://api.example.com/v1?key=***"),
        ("https://h/v1?api-version=2024-06-01&api_key=abc", "https://h/v1?api-version=2024-06-01&api_key=***"),
        ("http://user:pass@h:8000/v1", "http://***@h:8000/v1"),
        ("https://tok@h/v1?access_token=t&sig=s&design=d", "https://***@h/v1?access_token=***&sig=***&design=d"),
        ("http://localhost:8000/v1", "http://localhost:8000/v1"),
        (None, None),
    ],
)
def test_redact_url(url, masked):
    assert redact_url(url) == masked


def test_a_registered_variable_is_a_secret_whatever_its_name(monkeypatch):
    monkeypatch.setenv("TDC_TEST_PLAIN_NAME", "value-long-enough-1234")
    assert "value-long-enough-1234" not in secret_values()
    assert "value-long-enough-1234" in secret_values(["TDC_TEST_PLAIN_NAME"])
    register_secret_env("TDC_TEST_PLAIN_NAME")
    assert redact("echo value-long-enough-1234 back") == "echo [REDACTED] back"


def test_the_cli_error_format_is_scrubbed():
    # the shape of the message the CLI prints when the LLM endpoint answers 401 with the key echoed
    msg = ("The LLM endpoint failed (AuthenticationError: Error code: 401 - {'error': {'message': 'Incorrect API "
           "key provided: sk-live-0123456789abcdef. Header: Authorization: Bearer abcdefgh12345678', 'type': "
           "'invalid_request_error'}}) after 3 retries with backoff, in group 1, round 1. Finished rounds are "
           "saved; rerun the same command to resume from this round.")
    out = redact(msg, [])
    assert "sk-live-0123456789abcdef" not in out and "abcdefgh12345678" not in out
    assert "Error code: 401" in out and "rerun the same command" in out
