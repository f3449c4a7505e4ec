"""Pruning entry points: one each for a classical criterion and for the agent, shared by
``tdc-agent prune``, stage 2 (:mod:`tdc_agent.workflow.stage2`) and ``tools/``.

* :func:`criterion_pruner` and :func:`prune_with_criterion`: a base model pruned to a group's MACs
  limit with a criterion from the registry (:mod:`tdc_agent.pruning.criteria`: random, magnitude, l1,
  taylor, diff-pruning, group-taylor, or one a user registered) and saved with its pruning record.
* :func:`prune_with_agent`: the agent's rounds for one group, the best candidate saved.
* :func:`prune_to_target` / :func:`agent_prune_to_target`: what the CLI verb does with its flags (a
  saved model or preset, ``--group i`` or ``--macs-fraction f``), returning typed results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..core.config import Config
from ..core.data import ImageDataset, load_dataset
from ..core.devices import resolve_device
from ..core.errors import ConfigError
from ..core.io import atomic_write_json, read_json
from ..diffusion.process import ForwardProcess
from ..evaluation.quick import quick_loss
from ..models.latent import held_out, training_data
from ..models.macs import thop_macs
from ..models.store import load_model
from ..models.backbone import build_preset, check_takes
from ..planning.build import build_plan
from ..planning.plan import Group, GroupTask
from ..pruning.apply import PruneResult
from ..pruning.criteria import Criterion, criterion_names, get_criterion
from ..pruning.pruner import Pruner
from ..pruning.scheme import PruningScheme
from ..pruning.serialize import save_pruned
from .sampling import schedule_of


def load_base(model_dir: Path | None, preset: str | None, cfg: Config,
              device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The model to prune or inspect: a saved model directory, or a preset sized by the config."""
    if (model_dir is None) == (preset is None):
        raise ConfigError("Give exactly one of --preset P or --model DIR (--base DIR for prune).")
    if model_dir is not None:
        return load_model(model_dir, device)
    torch.manual_seed(cfg.run.seed)
    # a preset is sized by data.image_size/channels when set, else by its own default (8x8x1, 32x32x3)
    model = build_preset(cfg.model.backbone, preset, cfg.data.image_size, cfg.data.channels)
    return model.to(device), {"schedule": cfg.schedule.model_dump()}


def target_group(cfg: Config, macs_fraction: float | None, group: int | None) -> tuple[Group, int]:
    """The group to prune for: plan group ``group``, or all timesteps at ``macs_fraction`` of the
    base's MACs. Returns (group, number of groups in the plan; 1 for ``macs_fraction``)."""
    if (macs_fraction is None) == (group is None):
        raise ConfigError("Give exactly one of --macs-fraction f or --group i.")
    plan = build_plan(cfg)
    if group is not None:
        if not 0 <= group < len(plan.groups):
            raise ConfigError(f"--group {group} does not exist: the plan has groups 0..{len(plan.groups) - 1}.")
        return plan.groups[group], len(plan.groups)
    if not 0 < macs_fraction <= 1:
        raise ConfigError(f"--macs-fraction must be in (0, 1], got {macs_fraction}.")
    return Group.span(0, 0, cfg.schedule.timesteps - 1, float(plan.snr.min()), float(plan.snr.max()),
                      macs_fraction), 1


def method_criterion(method: str) -> Criterion:
    """The registered criterion that ``--method`` (or ``stage2.mode``) names."""
    if method not in criterion_names():
        raise ConfigError(f"--method {method!r} is unknown; use agent or one of {', '.join(criterion_names())} "
                          "(criteria of your own: README, Pruning criteria).")
    return get_criterion(method)  # an entry point's package is imported here, and may fail to load


def criterion_pruner(cfg: Config, base: torch.nn.Module, criterion: str, device: torch.device | str = "cpu",
                     data: Callable[[], ImageDataset] | None = None) -> Pruner:
    """A :class:`Pruner` of ``base`` for ``criterion``. Gradient criteria get the training data:
    ``data()`` when the caller has it (a run loads it once), else loaded here."""
    gradient = method_criterion(criterion).gradients is not None
    if gradient:
        images = data() if data is not None else training_data(cfg)
    return Pruner(base, images if gradient else None,
                  ForwardProcess(cfg.schedule, device) if gradient else None, cfg.run.seed)


def prune_with_criterion(pruner: Pruner, criterion: str, fraction: float, timesteps: Sequence[int] | None,
                         model_dir: Path, meta: dict, scheme: PruningScheme | None = None) -> PruneResult:
    """Prune ``pruner``'s base to ``fraction`` of its MACs with ``criterion`` (scoring on ``timesteps``
    for group-taylor), fitting ``scheme``'s shape when given; save it (with its record) to ``model_dir``."""
    result = pruner.prune(scheme, pruner.limit(fraction), criterion, timesteps)
    save_pruned(model_dir, result, meta)
    return result


def prune_with_agent(cfg: Config, base: torch.nn.Module, meta: dict, task: GroupTask, out_dir: Path,
                     device: torch.device | str, show: bool = True, model_dir: Path | None = None,
                     memory_path: Path | None = None, llm: Any = None) -> tuple[dict[str, Any], PruneResult, str]:
    """The agent's rounds for ``task`` (transcript and rounds in ``out_dir``; the memory bank in
    ``memory_path``, default ``out_dir/memory``, unless ``agent.memory_dir``/``memory_url`` say
    otherwise); the best candidate is saved to ``model_dir`` (default ``out_dir/model``). ``llm``: a
    :class:`~tdc_agent.agent.llm.ResolvedLLM` already checked (default: ``agent.llm``, resolved here).
    Returns (summary, result, LLM spec)."""
    from ..agent.runner import AgentPruning  # here, so that pruning by a criterion never imports the agent

    ap = AgentPruning(cfg, base, meta, out_dir, llm if llm is not None else cfg.agent.llm, device, show=show,
                      memory_path=memory_path)
    outcome, result = ap.prune_group(task, model_dir=model_dir)
    return outcome.extra["summary"], result, ap.llm_spec


@dataclass
class CriterionPruning:
    """What ``tdc-agent prune --method <criterion>`` did (``summary`` is what ``prune.json`` holds)."""

    method: str
    group: int | None
    fraction: float
    eval_timesteps: int
    result: PruneResult
    model_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class AgentPruningRun:
    """What ``tdc-agent prune --method agent`` did (``summary`` is the agent's ``agent.json``)."""

    llm: str
    task: GroupTask
    result: PruneResult
    out_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


def _base_for(cfg: Config, base_dir: Path | None, preset: str | None):
    dev = resolve_device(cfg.run.device)
    model, meta = load_base(base_dir, preset, cfg, dev)
    if not cfg.latent.vae:  # (latents: the agent checks the base on them once they are encoded)
        # refused before any pruning or LLM call
        check_takes(model, load_dataset(cfg.data).shape, f"--preset {preset}" if preset else f"the model in {base_dir}",
                    cfg.data.name)
    schedule = schedule_of(meta, str(base_dir)) if base_dir is not None else cfg.schedule
    return cfg.model_copy(update={"schedule": schedule}), model, meta, dev


def read_scheme(path: Path) -> PruningScheme:
    """A scheme file: ``{unit: keep level}`` or ``{"levels": {...}}``."""
    raw = read_json(path, "scheme")
    if not isinstance(raw, dict):
        raise ConfigError(f"--scheme {path} must hold a JSON object mapping unit names to keep levels "
                          f"(e.g. {{\"conv_in\": 0.5}}), not a {type(raw).__name__}.")
    return PruningScheme.model_validate({"levels": raw.get("levels", raw), "source": "file"})


def prune_to_target(cfg: Config, method: str, out: Path, base_dir: Path | None = None, preset: str | None = None,
                    macs_fraction: float | None = None, group: int | None = None,
                    scheme_file: Path | None = None) -> CriterionPruning:
    """Prune a saved model or preset with a classical criterion to ``--group``'s limit or
    ``--macs-fraction``; writes ``out/model`` and ``out/prune.json`` (with a quick held-out loss)."""
    method_criterion(method)  # an unknown name fails before any model is loaded
    if (macs_fraction is None) == (group is None):
        raise ConfigError("Give exactly one of --macs-fraction f or --group i.")
    if macs_fraction is not None and not 0 < macs_fraction <= 1:
        raise ConfigError(f"--macs-fraction must be in (0, 1], got {macs_fraction}.")
    cfg, model, meta, dev = _base_for(cfg, base_dir, preset)
    g, _ = target_group(cfg, macs_fraction, group)
    timesteps = g.timesteps if group is not None else None
    scheme = read_scheme(scheme_file) if scheme_file is not None else None
    pruner = criterion_pruner(cfg, model, method, dev)
    meta = {**meta, "schedule": cfg.schedule.model_dump(mode="json")}
    meta.pop("pruning", None)
    result = prune_with_criterion(pruner, method, g.limit_fraction, timesteps, out / "model", meta, scheme)
    eval_ts = timesteps or list(range(cfg.schedule.timesteps))
    loss = quick_loss(result.model, held_out(cfg), pruner.process or ForwardProcess(cfg.schedule, dev), eval_ts,
                      cfg.agent.eval_timesteps, cfg.agent.eval_batch_size, cfg.run.seed)
    summary = {"method": method, "group": group, "quick_loss": loss, **result.summary()}
    atomic_write_json(out / "prune.json", summary)
    return CriterionPruning(method, group, g.limit_fraction, len(eval_ts), result, out / "model", summary)


def agent_prune_to_target(cfg: Config, out: Path, base_dir: Path | None = None, preset: str | None = None,
                          macs_fraction: float | None = None, group: int | None = None,
                          show: bool = True, llm: Any = None) -> AgentPruningRun:
    """The agent prunes a saved model or preset for ``--group`` or ``--macs-fraction``; writes ``out/``.
    ``llm``: the chat model, resolved and checked already (the CLI does it before this module's
    imports, so a missing key or an unreachable server is refused in about a second)."""
    cfg, model, meta, dev = _base_for(cfg, base_dir, preset)
    g, n_groups = target_group(cfg, macs_fraction, group)
    task = GroupTask.of(g, thop_macs(model), n_groups)
    summary, result, llm = prune_with_agent(cfg, model, meta, task, out, dev, show=show, llm=llm)
    return AgentPruningRun(llm, task, result, out, summary)
