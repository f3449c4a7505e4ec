import pytest
import yaml

from tdc_agent.config import DEFAULT_CONFIG, apply_overrides, load_config
from tdc_agent.errors import ConfigError


def test_embedded_default_loads():
    cfg = load_config()
    assert cfg.data.name == "digits" and cfg.model.preset == "tiny"
    assert DEFAULT_CONFIG.is_file()


def test_overrides_parse_types():
    cfg = load_config(None, ["plan.groups=6", "plan.k=0.3", "stage1.amp=false", "plan.snr_clip=[-20, 20]",
                             "run.name=abc"])
    assert cfg.plan.groups == 6 and cfg.plan.k == 0.3 and cfg.stage1.amp is False
    assert cfg.plan.snr_clip == (-20, 20) and cfg.run.name == "abc"


@pytest.mark.parametrize(
    "override,field",
    [
        ("plan.k=0", "plan.k"),
        ("plan.k=1.5", "plan.k"),
        ("plan.groups=0", "plan.groups"),
        ("plan.groups=5000", "plan.groups"),
        ("schedule.name=sigmoid", "schedule.name"),
        ("data.name=mnist", "data.name"),
        ("model.preset=huge", "model.preset"),
        ("plan.shpe=paper", "plan.shpe"),
    ],
)
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert field.split(".")[-1] in str(e.value)


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["plan.groups"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_unknown_agent_criterion_is_rejected_at_load():
    with pytest.raises(ConfigError, match="criterion"):
        load_config(None, ["agent.criterion=magic"])
