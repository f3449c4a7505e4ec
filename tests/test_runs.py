import pytest
import yaml

from tdc_agent.core.config import load_config
from tdc_agent.core.errors import ConfigError
from tdc_agent.workflow.rundir import RunDir


def test_prepare_refuses_changed_settings_but_tolerates_new_ones(make_config, tmp_path):
    cfg = load_config(make_config())
    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    run.prepare(cfg)  # same config: fine
    # a setting a newer version added (absent from the stored config) does not block a resume
    stored = yaml.safe_load(run.config_path.read_text())
    del stored["stage1"]["grad_clip"]
    run.config_path.write_text(yaml.safe_dump(stored))
    run.prepare(cfg)
    with pytest.raises(ConfigError, match="stage1.steps"):
        run.prepare(cfg.model_copy(update={"stage1": cfg.stage1.model_copy(update={"steps": 999})}))
    with pytest.raises(ConfigError, match="run.seed"):
        run.prepare(cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": 7})}))
    # presentation-only settings may change
    run.prepare(cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"num": 3})}))


def test_credentials_in_urls_are_not_stored_and_transport_changes_do_not_block_resume(make_config, tmp_path):
    url = "https://bob:hunter2-pass@llm.example.com/v1?api_key=SECRET-VALUE-123&api-version=2024-06-01"
    cfg = load_config(make_config(), [f"agent.base_url={url}", "agent.memory_url=http://chroma-tok-999@mem:8000"])
    assert cfg.agent.base_url == url  # the run itself still uses the real URL
    run = RunDir(tmp_path / "r")
    sections = ("data", "model", "schedule", "plan", "stage1", "stage2", "agent")
    run.prepare(cfg, sections)
    text = run.config_path.read_text()
    for leak in ("SECRET-VALUE-123", "hunter2-pass", "bob", "chroma-tok-999"):
        assert leak not in text
    stored = yaml.safe_load(text)["agent"]
    assert stored["base_url"] == "https://***@llm.example.com/v1?api_key=***&api-version=2024-06-01"
    assert stored["memory_url"] == "http://***@mem:8000"
    run.prepare(cfg, sections)  # the stored, masked URL does not count as a change
    assert not (run.path / "logs" / "run.log").exists()
    # transport settings may change on resume, with a note in the log
    moved = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={
        "base_url": "http://localhost:8000/v1", "timeout_s": 120.0, "max_retries": 9})})
    run.prepare(moved, sections)
    log = (run.path / "logs" / "run.log").read_text()
    assert "agent.base_url" in log and "agent.timeout_s" in log and "agent.max_retries" in log
    # what the agent decides with still has to match
    with pytest.raises(ConfigError, match="agent.rounds"):
        run.prepare(moved.model_copy(update={"agent": moved.agent.model_copy(update={"rounds": 9})}), sections)


def test_verbs_update_only_their_sections_and_recovery_knobs_may_change(make_config, tmp_path):
    from tdc_agent.workflow.rundir import PIPELINE_SECTIONS

    cfg = load_config(make_config())
    run = RunDir(tmp_path / "r")
    run.prepare(cfg, PIPELINE_SECTIONS)  # `run` stored stage 2 with its steps
    # `train-base` with other stage-2 values (defaults, say) neither checks nor rewrites stage 2 ...
    other = cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"steps": 99, "lr": 0.1})})
    run.prepare(other)
    assert yaml.safe_load(run.config_path.read_text())["stage2"]["steps"] == cfg.stage2.steps
    # ... so a later `run` with them is refused instead of reporting steps it never trained
    with pytest.raises(ConfigError, match="stage2.steps"):
        run.prepare(other, PIPELINE_SECTIONS)
    # the latent section decides results too
    with pytest.raises(ConfigError, match="latent.batch_size"):
        run.prepare(cfg.model_copy(update={"latent": cfg.latent.model_copy(update={"batch_size": 7})}))
    # "lower the learning rate" after a NaN must be followable: lr may change, with a note
    lower = cfg.model_copy(update={"stage1": cfg.stage1.model_copy(update={"lr": cfg.stage1.lr / 10})})
    run.prepare(lower, PIPELINE_SECTIONS)
    assert "stage1.lr" in (run.path / "logs" / "run.log").read_text()


def test_evaluate_and_assemble_refuse_another_config(make_config, tmp_path, cli):
    cfg = make_config()
    run = tmp_path / "r"
    code, _, err = cli("train-base", "--config", cfg, "--run-dir", run, "-q")
    assert code == 0, err
    before = (run / "config.yaml").read_text()
    for verb in ("evaluate", "assemble"):
        code, _, err = cli(verb, "--config", cfg, "--run-dir", run, "schedule.timesteps=50")
        assert code == 2 and "schedule.timesteps" in err, (verb, err)
    assert (run / "config.yaml").read_text() == before


def test_dead_memory_url_fails_before_anything_is_written(make_config, tmp_path, cli):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "r"
    code, _, err = cli("run", "--config", make_config(), "--run-dir", run, f"agent.memory_url=http://127.0.0.1:{port}")
    assert code == 2 and "does not answer" in err and "agent.memory_url" in err
    assert not run.exists()


def test_a_refused_api_key_fails_before_stage_1(make_config, tmp_path, cli, monkeypatch):
    from openai_server import FakeOpenAI

    bad = "sk-bad-key-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", bad)
    with FakeOpenAI(valid_keys={"sk-good-key-000000000000"}) as srv:
        run = tmp_path / "r"
        code, out, err = cli("run", "--config", make_config(), "--run-dir", run, "agent.llm=openai:fake-model",
                             f"agent.base_url={srv.url}")
        assert srv.model_lookups, "the key was not checked"
    assert code == 2 and "refused the API key" in err and "OPENAI_API_KEY" in err, err
    assert bad not in out + err and not run.exists() and not srv.requests
