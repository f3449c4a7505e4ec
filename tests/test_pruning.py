"""Pruning engine: schemes on real diffusers UNets with real torch-pruning."""


import pytest
import torch
from diffusers import UNet2DModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forkserver
from conftest import PYTHON, python_env
from tdc_agent.models.store import load_model
from tdc_agent.core.config import ScheduleConfig
from tdc_agent.core.data import ImageDataset, load_dataset
from tdc_agent.core.config import DataConfig
from tdc_agent.diffusion.process import ForwardProcess
from tdc_agent.diffusion.sampling import sample
from tdc_agent.core.errors import CheckpointError
from tdc_agent.models.unet import build_unet, denoise, unet_config
from tdc_agent.models.backbone import example_inputs, output_tensor
from tdc_agent.pruning.apply import OneUnitPruning, build_pruned, fit_levels
from tdc_agent.core.criteria import BUILTIN_CRITERIA
from tdc_agent.pruning.criteria import get_criterion
from tdc_agent.pruning.importance import select_pruned
from tdc_agent.models.macs import count
from tdc_agent.pruning.pruner import Pruner
from tdc_agent.pruning.scheme import PruningScheme, SchemeError
from tdc_agent.pruning.serialize import save_pruned

SCHED = ScheduleConfig(timesteps=100)


@pytest.fixture(scope="module")
def tiny_pruner():
    torch.manual_seed(0)
    return Pruner(build_unet(unet_config("tiny")))


def _roundtrip(result, tmp_path, name="m"):
    save_pruned(tmp_path / name, result, {"schedule": SCHED.model_dump(), "image_shape": [1, 8, 8]})
    back, meta = load_model(tmp_path / name)
    return back, meta


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), fraction=st.floats(0.35, 1.0))
def test_random_schemes_build_meet_budget_and_reload_exactly(tiny_pruner, tmp_path_factory, data, fraction):
    p = tiny_pruner
    levels = {}
    for u in p.graph.units:
        if data.draw(st.booleans()):
            levels[u.name] = data.draw(st.sampled_from(u.levels))
    limit = p.limit(fraction)
    r = p.prune(PruningScheme(levels=levels), limit, "magnitude")
    assert r.macs.thop <= limit
    assert r.macs.thop == count(r.model).thop
    # within 5 % of the limit unless even one more quantum anywhere would overshoot it
    if r.macs.thop < 0.95 * limit:
        for u in p.graph.units:
            lv = r.scheme.full(p.graph)
            if lv[u.name] < 1:
                lv[u.name] = min(1.0, lv[u.name] + 1 / u.n_levels)
                assert p.graph.predict_macs(lv) > limit
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3, 70])
    model = r.model.train()
    out = denoise(model, x, t)
    out.pow(2).mean().backward()
    assert all(q.grad is not None for q in model.parameters())
    back, _ = _roundtrip(r, tmp_path_factory.mktemp("rt"))
    model.eval()
    assert torch.equal(denoise(model, x, t), denoise(back.eval(), x, t))


def test_one_unit_pruning_equals_the_full_build(tiny_pruner):
    """The sensitivity measurement's fast path (one traced graph, one unit pruned per copy) builds,
    for every unit, the model and record that build_pruned builds: same weights, history, output."""
    p = tiny_pruner
    scores = p.scores("magnitude")
    one = OneUnitPruning(p.base, p.graph, scores)
    x, t = example_inputs(p.base)
    for u in p.graph.units:
        level = u.floor(0.5)
        if level >= 1:
            continue
        a, history_a = build_pruned(p.base, p.graph, {u.name: level}, scores)
        b, history_b = one.build(u.name, level)
        assert history_a == history_b, u.name
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), u.name
        with torch.no_grad():
            assert torch.equal(output_tensor(a(x, t)), output_tensor(b(x, t)))
    assert one.build(p.graph.units[0].name, 1.0)[1] == []  # nothing pruned, nothing recorded


def test_prediction_equals_measurement(tiny_pruner):
    for f in (0.5, 0.7, 0.9):
        r = tiny_pruner.prune(None, tiny_pruner.limit(f))
        assert r.predicted_macs == pytest.approx(r.macs.thop, rel=1e-6)
        assert 0.95 * r.limit_macs <= r.macs.thop <= r.limit_macs


def test_scheme_validation_messages(tiny_pruner):
    g = tiny_pruner.graph
    name = g.units[0].name
    with pytest.raises(SchemeError, match="did you mean"):
        PruningScheme(levels={name + "x": 0.5}).validated(g)
    with pytest.raises(SchemeError, match="out of range"):
        PruningScheme(levels={name: 1.5}).validated(g)
    with pytest.raises(SchemeError, match="out of range"):
        PruningScheme(levels={name: 0.0}).validated(g)
    snapped, notes = PruningScheme(levels={name: 0.3}).validated(g)
    assert snapped.levels[name] in g.unit(name).levels and "snapped" in notes[0]


def test_over_tight_limit_is_a_clear_error(tiny_pruner):
    with pytest.raises(SchemeError, match="below what"):
        tiny_pruner.prune(None, tiny_pruner.limit(0.01))


def test_fit_keeps_shape_and_unprunes_an_over_pruned_scheme(tiny_pruner):
    g = tiny_pruner.graph
    big = max(g.units, key=lambda u: u.macs_share)
    levels = fit_levels(g, {big.name: big.levels[0]}, tiny_pruner.limit(0.95))
    assert levels[big.name] < 1.0  # only the unit the scheme names is pruned
    assert all(v == 1.0 for n, v in levels.items() if n != big.name)
    # a scheme cheaper than the limit is relaxed toward the dense model
    loose = fit_levels(g, {u.name: u.levels[0] for u in g.units}, tiny_pruner.limit(0.9))
    assert g.predict_macs(loose) >= 0.9 * tiny_pruner.limit(0.9)


def test_global_pruning_is_one_threshold_capped_and_fills_the_limit(tiny_pruner):
    """torch-pruning's global rule: one threshold over every unit's step importance, so units prune
    unequally; no unit loses more than max_pruning_ratio of its channels; the limit is met and filled."""
    from tdc_agent.pruning.global_pruning import global_levels, levels_at, quantum_importance

    g = tiny_pruner.graph
    scores = tiny_pruner.scores("magnitude")
    imp = quantum_importance(g, scores)
    # ties at the threshold aside, exactly the n least important steps over all units go
    caps = {u.name: u.n_levels - 1 for u in g.units}
    lv = levels_at(g, imp, 10, caps)
    assert sum(round((1 - v) * g.unit(n).n_levels) for n, v in lv.items()) == 10
    limit = tiny_pruner.limit(0.6)
    levels = global_levels(g, scores, limit, max_pruning_ratio=0.5)
    assert len(set(levels.values())) > 1  # not a per-layer ratio
    assert all(v >= 0.5 - 1e-9 for v in levels.values())  # the cap: no unit below half its channels
    assert 0.99 * limit <= g.predict_macs(levels) <= limit
    r = tiny_pruner.prune_global(limit, "magnitude", max_pruning_ratio=0.5)
    assert r.macs.thop <= limit and r.scheme.levels == {k: v for k, v in levels.items() if v < 1}
    with pytest.raises(SchemeError, match="global pruning can reach"):
        tiny_pruner.prune_global(tiny_pruner.limit(0.1), "magnitude", max_pruning_ratio=0.5)


def test_select_pruned_removes_equally_per_block():
    scores = torch.arange(16.0).flip(0)  # 4 blocks of 4; the last channels of each block are least important
    idx = select_pruned(scores, n_levels=4, keep=3)
    assert idx == [3, 7, 11, 15]
    assert select_pruned(scores, 4, 4) == []


@pytest.mark.parametrize("criterion", BUILTIN_CRITERIA)
def test_every_criterion_prunes(criterion):
    torch.manual_seed(0)
    data = ImageDataset(load_dataset(DataConfig(name="digits", split="all")).images[:64], "digits")
    p = Pruner(build_unet(unet_config("tiny")), data, ForwardProcess(SCHED), seed=0)
    ts = list(range(10, 40)) if get_criterion(criterion).gradients == "group" else None
    a = p.prune(None, p.limit(0.6), criterion, ts)
    b = p.prune(None, p.limit(0.6), criterion, ts)
    assert a.macs.thop <= p.limit(0.6)
    assert a.history == b.history, "the same criterion and seed must choose the same channels"


def _multihead():
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=16)


ARCHS = {
    "tiny": lambda tmp: build_unet(unet_config("tiny")),
    "multihead": lambda tmp: _multihead(),
    "save_pretrained": lambda tmp: _via_save_pretrained(tmp),
    "ddpm-cifar10": lambda tmp: build_unet(unet_config("ddpm-cifar10")),
    "iddpm-cifar10": lambda tmp: build_unet(unet_config("iddpm-cifar10")),
}


def _via_save_pretrained(tmp):
    from tdc_agent.models.unet import load_pretrained_unet

    _multihead().save_pretrained(tmp / "hf")
    return load_pretrained_unet(str(tmp / "hf"))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_architectures_prune_at_three_budgets_and_sample_after_reload(arch, tmp_path):
    torch.manual_seed(0)
    base = ARCHS[arch](tmp_path)
    p = Pruner(base)
    c, s = base.config.in_channels, base.config.sample_size
    for f in (0.5, 0.7, 0.9):
        r = p.prune(None, p.limit(f), "magnitude")
        assert r.macs.thop <= p.limit(f)
        assert r.macs.thop >= 0.95 * p.limit(f)
        save_pruned(tmp_path / f"m{f}", r, {"schedule": SCHED.model_dump(), "image_shape": [c, s, s]})
        back, _ = load_model(tmp_path / f"m{f}")
        back.eval()
        x = sample(lambda x, t: denoise(back, x, t), (1, c, s, s), SCHED, "ddim", steps=2, seed=0)
        assert x.shape == (1, c, s, s) and torch.isfinite(x).all()


def test_pruned_reload_in_fresh_process_is_exact(tiny_pruner, tmp_path):
    r = tiny_pruner.prune(None, tiny_pruner.limit(0.6))
    save_pruned(tmp_path / "m", r, {"schedule": SCHED.model_dump(), "image_shape": [1, 8, 8]})
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    want = denoise(r.model.eval(), x, torch.tensor([5, 50]))
    from safetensors.torch import load_file, save_file

    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    code = (
        f"import torch; torch.set_num_threads({torch.get_num_threads()}); from safetensors.torch import load_file, save_file;"
        "from tdc_agent.models.store import load_model; from tdc_agent.models.unet import denoise;"
        f"m,_=load_model(r'{tmp_path / 'm'}'); x=load_file(r'{tmp_path / 'x.safetensors'}')['x'];"
        f"save_file({{'y': denoise(m.eval(), x, torch.tensor([5, 50])).detach()}}, r'{tmp_path / 'y.safetensors'}')"
    )
    forkserver.run([PYTHON, "-c", code], env=python_env(), check=True, timeout=300)
    got = load_file(str(tmp_path / "y.safetensors"))["y"]
    assert (got - want).abs().max().item() == 0.0


def test_tampered_pruning_record_fails_clearly(tiny_pruner, tmp_path):
    import json

    r = tiny_pruner.prune(None, tiny_pruner.limit(0.6))
    save_pruned(tmp_path / "m", r, {"schedule": SCHED.model_dump()})
    rec = json.loads((tmp_path / "m" / "pruning.json").read_text())
    rec["history"] = rec["history"][:-1]  # one pruning step lost
    (tmp_path / "m" / "pruning.json").write_text(json.dumps(rec))
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "m")
    rec["history"] = [["no.such.module", True, [0]]]
    (tmp_path / "m" / "pruning.json").write_text(json.dumps(rec))
    with pytest.raises(CheckpointError, match="does not apply"):
        load_model(tmp_path / "m")
