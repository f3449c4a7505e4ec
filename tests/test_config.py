import pytest
import yaml

from tdc_agent.core.config import DEFAULT_CONFIG, apply_overrides, load_config
from tdc_agent.core.errors import ConfigError


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


@pytest.mark.parametrize(
    "override,needle",
    [
        ("plan.snr_clip=[20, -20]", "low < high"),
        ("plan.snr_clip=[5, 5]", "low < high"),
        ("plan.snr_clip=[.nan, .nan]", "finite"),
        ("plan.snr_clip=[nan, 20]", "finite"),
        ("plan.snr_clip=[-20, inf]", "finite"),
        ("plan.snr_clip=[-.inf, 20]", "finite"),
        ("schedule.timesteps=10000000000", "2..100000"),
        ("schedule.timesteps=1", "2..100000"),
        ("run.seed=1000000000000000000000000000000", "0 <= seed < 2**63"),
        ("run.seed=-1", "0 <= seed < 2**63"),
        ("run.seed=9223372036854775808", "0 <= seed < 2**63"),
    ],
)
def test_out_of_range_values_are_config_errors_naming_the_range(override, needle):
    field = override.split("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert field in str(e.value) and needle in str(e.value)


def test_range_edges_are_accepted():
    cfg = load_config(None, ["schedule.timesteps=100000", "run.seed=9223372036854775807", "plan.snr_clip=[-20, 20]"])
    assert cfg.schedule.timesteps == 100000 and cfg.run.seed == 2**63 - 1 and cfg.plan.snr_clip == (-20, 20)


def test_duplicate_yaml_key_is_refused_with_key_and_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("plan:\n  groups: 4\n  k: 0.5\n  groups: 8\nrun:\n  seed: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "'groups'" in msg and "line 4" in msg and "line 2" in msg
    # a duplicate section is caught too
    path.write_text("plan:\n  groups: 4\nplan:\n  groups: 8\n")
    with pytest.raises(ConfigError, match="'plan' on line 3"):
        load_config(path)
    path.write_text("plan:\n  groups: 4\n")
    assert load_config(path).plan.groups == 4


def test_yaml_merge_keys_may_be_overridden():
    from tdc_agent.core.config import load_yaml

    assert load_yaml("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\n") == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}}


def test_stored_run_config_with_duplicate_key_is_refused(make_config, tmp_path):
    from tdc_agent.core.errors import CheckpointError
    from tdc_agent.workflow.rundir import RunDir

    cfg = load_config(make_config())
    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    # hand-edited stored config: the second seed would silently win over the one the run used
    run.config_path.write_text(run.config_path.read_text().replace("  seed: 0\n", "  seed: 0\n  seed: 0\n"))
    with pytest.raises(CheckpointError, match="duplicate key 'seed'"):
        run.prepare(cfg)
