import pytest
import yaml

from tdc_agent.config import load_config
from tdc_agent.errors import ConfigError
from tdc_agent.runs import RunDir


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
