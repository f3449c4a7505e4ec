"""The criteria registry: a user's criterion, registered from code or by an entry point, is accepted
by config validation, ``tdc-agent prune --method`` and the pruner without editing the package."""

from __future__ import annotations

import json

import pytest
import torch
import torch_pruning as tp

from tdc_agent.core.config import DataConfig, ScheduleConfig, load_config
from tdc_agent.core.criteria import BUILTIN_CRITERIA, criterion_names
from tdc_agent.core.data import ImageDataset, load_dataset
from tdc_agent.core.errors import ConfigError
from tdc_agent.diffusion.process import ForwardProcess
from tdc_agent.models.unet import build_unet, unet_config
from tdc_agent.pruning.criteria import Criterion, get_criterion, register_criterion, unregister_criterion
from tdc_agent.pruning.pruner import Pruner

CALLS: list[int] = []  # how many channel groups the test importance scored (it must really be used)


class FirstChannelsGo(tp.importance.Importance):
    """A user's criterion: a channel's score is its index, so the first channels of every block go."""

    def __call__(self, group, **kwargs) -> torch.Tensor:
        CALLS.append(1)
        dep, idxs = group[0]
        return torch.arange(len(idxs), dtype=torch.float32)


@pytest.fixture
def registered():
    """Register criteria for one test and remove them after it (the registry is per process)."""
    names: list[str] = []

    def _register(name: str, *args, **kwargs) -> Criterion:
        names.append(name)
        return register_criterion(name, *args, **kwargs)

    yield _register
    for name in names:
        unregister_criterion(name)


def test_builtin_names_are_the_registry_s():
    assert all(get_criterion(n).name == n for n in BUILTIN_CRITERIA)
    assert criterion_names()[: len(BUILTIN_CRITERIA)] == BUILTIN_CRITERIA
    assert {n for n in BUILTIN_CRITERIA if get_criterion(n).gradients} == {"taylor", "diff-pruning", "group-taylor"}


def test_a_registered_criterion_is_accepted_by_config_and_prune_method(registered, cli, make_config, tmp_path):
    with pytest.raises(ConfigError, match="agent.criterion"):
        load_config(None, ["agent.criterion=first-channels"])
    with pytest.raises(ConfigError, match="stage2.mode"):
        load_config(None, ["stage2.mode=first-channels"])
    registered("first-channels", FirstChannelsGo, description="the first channels of each block go")
    cfg = load_config(None, ["agent.criterion=first-channels", "stage2.mode=first-channels"])
    assert cfg.agent.criterion == cfg.stage2.mode == "first-channels"
    assert "first-channels" in criterion_names()

    CALLS.clear()
    code, out, err = cli("prune", "--preset", "tiny", "--method", "first-channels", "--macs-fraction", "0.6",
                         "--out", tmp_path / "p", "--json", "--config", make_config())
    assert code == 0, err
    assert json.loads(out)["method"] == "first-channels" and CALLS
    history = json.loads((tmp_path / "p" / "model" / "pruning.json").read_text())["history"]
    assert history and all(0 in idxs for _, _, idxs in history), "the criterion's scores chose the channels"

    unregister_criterion("first-channels")
    code, _, err = cli("prune", "--preset", "tiny", "--method", "first-channels", "--macs-fraction", "0.6",
                       "--out", tmp_path / "q", "--config", make_config("c2.yaml"))
    assert code == 2 and "first-channels" in err and "magnitude" in err


def test_a_registered_gradient_criterion_scores_on_the_group_s_timesteps(registered):
    registered("taylor-mv", lambda: tp.importance.GroupTaylorImportance(multivariable=True), gradients="group")
    torch.manual_seed(0)
    data = ImageDataset(load_dataset(DataConfig(name="digits", split="all")).images[:32], "digits")
    p = Pruner(build_unet(unet_config("tiny")), data, ForwardProcess(ScheduleConfig(timesteps=100)), seed=0)
    a = p.prune(None, p.limit(0.6), "taylor-mv", list(range(10, 30)))
    assert a.macs.thop <= p.limit(0.6)
    assert list(p._scores) == [("taylor-mv", tuple(range(10, 30)))], "scored on (and kept for) the group's timesteps"
    with pytest.raises(ConfigError, match="timesteps"):
        p.prune(None, p.limit(0.6), "taylor-mv", None)


def test_criterion_names_are_checked(registered):
    for bad in ("agent", "tdc", "Magic Name", ""):
        with pytest.raises(ValueError):
            register_criterion(bad, FirstChannelsGo)
    with pytest.raises(ValueError, match="built-in"):
        register_criterion("magnitude", FirstChannelsGo)
    registered("mine", FirstChannelsGo)
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("mine", FirstChannelsGo)
    assert register_criterion("mine", FirstChannelsGo, replace_existing=True).name == "mine"
    with pytest.raises(ValueError, match="gradients"):
        register_criterion("mine-2", FirstChannelsGo, gradients="sometimes")


def test_an_entry_point_criterion_works_without_registering(installed_package, cli, make_config, tmp_path):
    installed_package("tdc_test_criteria", (
        "import torch_pruning as tp\n"
        "from tdc_agent.pruning.criteria import Criterion\n"
        "def l_inf():\n"
        "    return tp.importance.GroupMagnitudeImportance(p=float('inf'))\n"
        "TAYLOR_MV = Criterion('ignored', lambda: tp.importance.GroupTaylorImportance(multivariable=True), 'uniform')\n"),
        "[tdc_agent.criteria]\n"
        "ep-linf = tdc_test_criteria:l_inf\n"
        "ep-taylor-mv = tdc_test_criteria:TAYLOR_MV\n"
        "ep-broken = tdc_test_criteria_missing:nothing\n")
    try:
        assert {"ep-linf", "ep-taylor-mv"} <= set(criterion_names())
        assert load_config(None, ["agent.criterion=ep-taylor-mv"]).agent.criterion == "ep-taylor-mv"
        crit = get_criterion("ep-taylor-mv")
        assert crit.name == "ep-taylor-mv" and crit.gradients == "uniform"
        code, out, err = cli("prune", "--preset", "tiny", "--method", "ep-linf", "--macs-fraction", "0.7",
                             "--out", tmp_path / "p", "--json", "--config", make_config())
        assert code == 0, err
        assert json.loads(out)["macs_thop"] <= json.loads(out)["limit_macs"]
        code, _, err = cli("prune", "--preset", "tiny", "--method", "ep-broken", "--macs-fraction", "0.7",
                           "--out", tmp_path / "q", "--config", make_config("c2.yaml"))
        assert code == 2 and "could not be loaded" in err
    finally:
        for name in ("ep-linf", "ep-taylor-mv"):
            unregister_criterion(name)
