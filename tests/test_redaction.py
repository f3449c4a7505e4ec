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


# --- what the scrubber may touch: text sinks, never state that tdc-agent reads back (issue 21) ------

def test_state_is_written_verbatim_when_a_secret_is_a_common_word(tmp_path, monkeypatch):
    """An environment secret can be an ordinary word, and a word seen after "Bearer" in a server's
    text is remembered as a token: a model directory holding either must load as it was saved, while
    a report (a text sink) is still scrubbed."""
    import torch

    from tdc_agent.core.io import atomic_write_text
    from tdc_agent.models.store import load_model, save_model
    from tdc_agent.models.unet import build_unet, denoise, unet_config

    monkeypatch.setenv("TDC_TEST_TOKEN", "DownBlock2D")  # a *TOKEN* variable: a secret, and a block type
    assert redact("server said: Bearer UNetMidBlock2D") == "server said: Bearer [REDACTED]"  # remembered now
    torch.manual_seed(0)
    m = build_unet(unet_config("tiny")).eval()
    save_model(tmp_path / "m", m, {"data": "DownBlock2D-digits", "schedule": {"name": "linear"}})
    cfg_text = (tmp_path / "m" / "config.json").read_text()
    assert "DownBlock2D" in cfg_text and "UNetMidBlock2D" in cfg_text and "[REDACTED]" not in cfg_text
    back, meta = load_model(tmp_path / "m")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 50])
    assert torch.equal(denoise(m, x, t), denoise(back.eval(), x, t))
    assert meta["data"] == "DownBlock2D-digits"
    atomic_write_text(tmp_path / "report.md", "blocks: DownBlock2D, UNetMidBlock2D\n")
    assert (tmp_path / "report.md").read_text() == "blocks: [REDACTED], [REDACTED]\n"


def test_a_word_after_bearer_in_prose_is_not_taken_for_a_token():
    """An LLM or a server writing "Bearer authentication failed" has not shown a token: the word stays,
    here and in every later text; a token-like value after "Bearer" is still scrubbed and remembered."""
    text = "Bearer authentication failed; retry the authentication"
    assert redact(text) == text and redact("authentication") == "authentication"
    assert redact("Authorisation: Bearer abcdEFGH1234ijkl") == "Authorisation: Bearer [REDACTED]"
    assert redact("echo abcdEFGH1234ijkl") == "echo [REDACTED]"


def test_config_yaml_keeps_a_path_that_contains_a_secret_and_the_run_resumes(tmp_path, monkeypatch):
    import yaml
    from conftest import tiny_config_dict

    from tdc_agent.core.config import config_from_dict
    from tdc_agent.workflow.rundir import RunDir

    monkeypatch.setenv("TDC_TEST_SECRET", "shared-datasets")  # a secret that is also a folder name
    root = tmp_path / "shared-datasets" / "d.npz"
    cfg = config_from_dict(tiny_config_dict(tmp_path, data={"name": "npz", "root": str(root)},
                                            agent={"base_url": "http://alice:pw-in-url-123@h:8000/v1"}))
    run = RunDir(tmp_path / "run")
    run.prepare(cfg)
    stored = yaml.safe_load(run.config_path.read_text())
    assert stored["data"]["root"] == str(root)
    assert stored["agent"]["base_url"] == "http://***@h:8000/v1"  # credentials still masked, field by field
    run.prepare(cfg)  # the resume check compares like with like: no "data differ"
