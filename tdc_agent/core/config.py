"""Run configuration: YAML files validated by pydantic, with ``key.sub=value`` overrides.

The embedded default ships inside the package (``tdc_agent/configs/digits.yaml``; the repository's
``examples/digits.yaml`` links to it). Every section has defaults, so a config file only
needs what differs. Invalid values become a :class:`~tdc_agent.core.errors.ConfigError` that names the
field and says how to fix it.

:func:`load_config` (and :func:`config_from_dict`) also *resolve* the config: what its sources imply
is filled in before anyone plans with it (:func:`resolve_config`: a pretrained ``stage1.init``
brings its noise schedule). What resolution changed or assumed is reported as a :class:`ConfigNote`
warning, which ``tdc-agent`` prints as a note.
"""

from __future__ import annotations

import math
import re
import warnings
from importlib.resources import files
from urllib.parse import urlsplit
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .backbones import DEFAULT_BACKBONE, backbone_names, backbone_presets, check_backbone, check_preset
from .criteria import check_criterion
from .errors import ConfigError, ResourceError
from .pretrained import read_scheduler_config, schedule_from_scheduler_config
from .redaction import redact_url, register_url_secrets

# package data, read with importlib.resources (a Traversable: a real path only when installed unzipped)
DEFAULT_CONFIG = files("tdc_agent") / "configs" / "digits.yaml"

# Far beyond any diffusion schedule in use (DDPM: 1000, some 4000), yet small enough that the
# per-timestep arrays stay cheap: a typo like 10**10 must not allocate gigabytes.
MAX_TIMESTEPS = 100_000
# torch.manual_seed and our step generators take a signed 64-bit seed
MAX_SEED = 2**63
# Bounds on what allocates: far above any real use (the paper's largest images are 256 px; LDM latents
# are smaller), far below what turns a typo (image_size=4096, batch_size=2e9) into an allocator crash.
MAX_IMAGE_SIZE = 1024
MAX_BATCH_SIZE = 65_536
# A config file is a few KB; YAML aliases can make a 1 KB file expand to gigabytes ("billion laughs").
MAX_CONFIG_BYTES = 1_000_000
MAX_YAML_ALIASES = 100  # alias uses (*name) per document: configs need a handful for shared values
MAX_YAML_NODES = 100_000  # nodes after expansion
# Too few samples make a Fréchet distance meaningless (a covariance from 2 points is rank 1).
MIN_FD_SAMPLES = 8
# The names of the agent's tools (tdc_agent.agent.tools builds exactly these): what agent.tool_choice may name.
TOOL_NAMES = ("inspect_architecture", "group_context", "query_memory", "unit_sensitivity", "count_macs",
              "evaluate_scheme", "submit_candidates")
TOOL_CHOICE_WORDS = ("auto", "any", "required", "none")


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping names the same key twice (plain YAML loaders silently keep the last)."""


class YamlBombError(yaml.constructor.ConstructorError):
    """A YAML document expands far beyond any config (aliases of aliases: "billion laughs")."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a duplicate key, naming the key and its lines,
    and a document whose aliases expand it beyond :data:`MAX_YAML_NODES` nodes."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        self._check_expansion(node)
        return node

    def _check_expansion(self, root: yaml.Node) -> None:
        # Count the nodes the constructed document would have (an alias counts its whole target
        # again); composing is cheap (aliases share nodes), constructing is what explodes.
        sizes: dict[int, int] = {}
        aliases = 0

        def size(node: yaml.Node, depth: int = 0) -> int:
            nonlocal aliases
            if depth > 200:
                raise YamlBombError(None, None, "the document nests deeper than 200 levels", node.start_mark)
            key = id(node)
            if key in sizes:
                aliases += 1
                if aliases > MAX_YAML_ALIASES:
                    raise YamlBombError(None, None, f"the document uses more than {MAX_YAML_ALIASES} aliases",
                                        node.start_mark)
                return sizes[key]
            n = 1
            if isinstance(node, yaml.SequenceNode):
                n += sum(size(c, depth + 1) for c in node.value)
            elif isinstance(node, yaml.MappingNode):
                n += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
            sizes[key] = n
            if n > MAX_YAML_NODES:
                raise YamlBombError(None, None, f"the document expands to more than {MAX_YAML_NODES:,} values "
                                    "through its aliases", node.start_mark)
            return n

        if root is not None:
            size(root)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges may be overridden by explicit keys, as YAML intends
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first != key_node.start_mark.line + 1:
                raise DuplicateKeyError(
                    problem=f"duplicate key {key!r} on line {key_node.start_mark.line + 1} "
                            f"(first on line {first})")
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML safely, refusing duplicate keys (:class:`DuplicateKeyError`, a ``yaml.YAMLError``)."""
    # what yaml.load does, spelled out: the loader is a SafeLoader, and the package keeps no
    # yaml.load call at all (tests/test_security.py checks that)
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _Section(BaseModel):
    # allow_inf_nan=False: inf/nan in a float field (eta, lr...) is a typo that silently ruins a run
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_int(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 for an int field: `stage1.steps=true` must not mean one step
        if isinstance(v, bool) and info.field_name:
            ann = str(cls.model_fields[info.field_name].annotation)
            if ("int" in ann or "float" in ann) and "bool" not in ann:
                raise ValueError(f"expects a number, not {str(v).lower()}")
        return v


class RunConfig(_Section):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    device: str = "auto"

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v < MAX_SEED:
            raise ValueError(f"the seed must be in 0 <= seed < 2**63 ({MAX_SEED})")
        return v

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        # the run directory is output_dir/name: a name must not climb out of output_dir
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", v) or ".." in v:
            raise ValueError(f"{v!r} is not a plain name (letters, digits, '.', '_', '-'; no '/' or '..'); "
                             "use run.output_dir to choose where runs go")
        return v


class DataConfig(_Section):
    name: Literal["digits", "cifar10", "imagefolder", "npz"] = "digits"
    root: Optional[str] = None
    download: bool = False
    image_size: Optional[int] = Field(default=None, ge=4, le=MAX_IMAGE_SIZE)
    channels: Optional[int] = Field(default=None, ge=1, le=4)
    # train: what stages 1 and 2 learn from; val: the agent's quick evaluation; test: benchmarks'
    # scoring of chosen schemes; heldout = val + test; all = everything (see data.split_indices)
    split: Literal["train", "val", "test", "heldout", "all"] = "train"


class ModelConfig(_Section):
    """The base architecture: a backbone's preset sized to the data; ``stage1.init`` starts from a
    pretrained one (of that backbone)."""

    # a backbone's name, built-in or registered (core/backbones.py), so not a Literal; declared before
    # ``preset``, whose validator reads it
    backbone: str = DEFAULT_BACKBONE
    # one of the backbone's presets; left out, the backbone's first (``tiny`` for unet2d)
    preset: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _default_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and "preset" not in data:
            name = data.get("backbone", DEFAULT_BACKBONE)
            if isinstance(name, str) and name in backbone_names():
                data = {**data, "preset": backbone_presets(name)[0]}
        return data

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        return check_backbone(v)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        backbone = info.data.get("backbone")
        if v is not None and backbone is not None:  # an unknown backbone is reported by its own field
            check_preset(backbone, v)
        return v


class LatentConfig(_Section):
    """Latent diffusion: train and prune the UNet on an autoencoder's latents (the paper's LDM setting)."""

    vae: Optional[str] = None  # diffusers AutoencoderKL / VQModel folder (or pipeline folder) or hub id
    scaling_factor: Optional[float] = Field(default=None, gt=0)  # default: the autoencoder config's
    batch_size: int = Field(default=64, ge=1, le=MAX_BATCH_SIZE)  # images per encoder/decoder call


class ScheduleConfig(_Section):
    name: Literal["linear", "cosine"] = "linear"
    timesteps: int = 1000
    beta_start: float = Field(default=1e-4, gt=0, lt=1)
    beta_end: float = Field(default=0.02, gt=0, lt=1)

    @field_validator("timesteps")
    @classmethod
    def _timesteps_range(cls, v: int) -> int:
        if not 2 <= v <= MAX_TIMESTEPS:
            raise ValueError(f"timesteps must be in 2..{MAX_TIMESTEPS}")
        return v


class PlanConfig(_Section):
    groups: int = Field(default=10, ge=1)
    k: float = Field(default=0.5, gt=0, le=1)
    shape: Literal["paper", "constant", "increasing", "decreasing"] = "paper"
    direction: Literal["noisy-hard", "clean-hard"] = "noisy-hard"
    budget_rule: Literal["upper", "mean"] = "upper"
    snr_clip: Optional[tuple[float, float]] = None

    @field_validator("snr_clip")
    @classmethod
    def _snr_clip_range(cls, v: Optional[tuple[float, float]]) -> Optional[tuple[float, float]]:
        if v is None:
            return v
        # np.clip with nan bounds turns every SNR into nan, and low > high silently maps all to high
        if not all(math.isfinite(x) for x in v):
            raise ValueError("snr_clip must be finite numbers [low, high] in dB, e.g. [-20, 20]")
        if not v[0] < v[1]:
            raise ValueError("snr_clip must be [low, high] with low < high (dB), e.g. [-20, 20]")
        return v


class TrainConfig(_Section):
    steps: int = Field(default=2000, ge=1)
    batch_size: int = Field(default=64, ge=1, le=MAX_BATCH_SIZE)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup: int = Field(default=100, ge=0)
    grad_clip: Optional[float] = Field(default=1.0, gt=0)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    # steps over which the EMA window grows to 1/(1-ema_decay); 0 = the full decay from step 0
    ema_warmup: int = Field(default=500, ge=0)
    # average only the weights this run trains (Adam-style bias correction): see training.ema
    ema_bias_correction: bool = False
    ckpt_every: int = Field(default=500, ge=1)
    log_every: int = Field(default=25, ge=1)
    amp: bool = True

    @model_validator(mode="after")
    def _one_ema_start(self) -> "TrainConfig":
        if self.ema_bias_correction and self.ema_warmup > 0:
            raise ValueError("ema_bias_correction and ema_warmup > 0 both shape the EMA's start; set ema_warmup=0 "
                             "with bias correction (it already gives the starting weights no share)")
        return self


class Stage1Config(TrainConfig):
    """Stage 1: the base model, trained from scratch or started from a pretrained diffusers UNet."""

    steps: int = Field(default=2000, ge=0)  # 0 only with init: use the pretrained model as the base
    init: Optional[str] = None  # diffusers UNet2DModel / pipeline folder or hub id (weights + scheduler)


class Stage2Config(TrainConfig):
    """Stage 2: each group's model, pruned (or not) and fine-tuned on the group's timesteps (Eq. 8).

    ``steps`` is per group with ``steps_rule: equal``; with ``proportional`` it is the total,
    shared out by the groups' sizes, with ``need`` the total shared by what each group needs (its
    part of the base's held-out ε-loss: ``workflow/stage2.py:group_needs``). Either way every group
    gets at least ``min_steps`` (default: the lr warm-up plus one EMA window), so a group with few
    timesteps is not left inside its warm-up. ``optimizer: fresh`` starts AdamW anew for every group (what worked in our
    measurements); ``carried`` starts from the base's AdamW state (only possible when the group
    model keeps the base architecture, i.e. mode tdc-no-prune).

    After its steps each member's held-out loss on its timesteps is checked against the base's:
    above ``max_loss_ratio`` x the base's it trains on, ``min_steps`` at a time, for at most
    ``extra_steps`` more; a member still worse then is flagged in the console and the report.
    """

    # tdc (the agent prunes) | tdc-no-prune | a pruning criterion's name (core/criteria.py: built-in or registered)
    mode: str = "tdc"
    steps: int = Field(default=250, ge=0)
    lr: float = Field(default=5e-4, gt=0)
    warmup: int = Field(default=25, ge=0)
    ckpt_every: int = Field(default=100, ge=1)
    steps_rule: Literal["equal", "proportional", "need"] = "equal"
    optimizer: Literal["fresh", "carried"] = "fresh"
    ema_decay: float = Field(default=0.99, ge=0, lt=1)
    ema_warmup: int = Field(default=0, ge=0)
    ema_bias_correction: bool = True
    distill: float = Field(default=0.0, ge=0)
    min_steps: Optional[int] = Field(default=None, ge=0)  # None: warmup + 1/(1 - ema_decay)
    max_loss_ratio: float = Field(default=1.02, gt=0)
    extra_steps: int = Field(default=500, ge=0)

    @property
    def floor_steps(self) -> int:
        """Steps every group gets at least: ``min_steps``, or the warm-up plus one EMA window."""
        if self.min_steps is not None:
            return self.min_steps
        return self.warmup + round(1.0 / (1.0 - self.ema_decay))


class SampleConfig(_Section):
    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: int = Field(default=100, ge=1)
    num: int = Field(default=64, ge=1)
    batch_size: int = Field(default=500, ge=1, le=MAX_BATCH_SIZE)
    eta: float = Field(default=0.0, ge=0)


class EvaluationConfig(_Section):
    """The pinned evaluation protocol: samples per model (sampler and steps come from ``sample``)."""

    samples: int = Field(default=1000, ge=MIN_FD_SAMPLES)
    compare_no_prune: bool = False  # also train TDC without pruning (Table I's middle row) for the report
    # also train the base on for TDC's stage-2 compute, from stage 1's checkpoint (the fair comparison)
    compare_equal_compute: bool = True
    # auto: the digits-classifier FD for 8x8 digits, Inception FID/KID for every other dataset
    metric: Literal["auto", "digits-fd", "fid", "none"] = "auto"
    inception_weights: Optional[str] = None  # .pth or .safetensors; default: downloaded once into the cache
    reference_samples: Optional[int] = Field(default=None, ge=MIN_FD_SAMPLES)  # real images for FID (default: all)

    def resolved_metric(self, data: "DataConfig", shape: tuple[int, ...]) -> str:
        if self.metric != "auto":
            return self.metric
        return "digits-fd" if data.name == "digits" and tuple(shape) == (1, 8, 8) else "fid"


class AgentConfig(_Section):
    """The pruning agent: which LLM, how many rounds and candidates, caps, memory, prompts."""

    llm: str = "builtin"
    base_url: Optional[str] = None
    api_key_env: Optional[str] = None  # env var holding the key (default: the provider's usual one)
    temperature: float = Field(default=0.2, ge=0, le=2)
    # 2, not the paper's 5: the builtin's round 1 (its sensitivity allocation) holds nearly all of the
    # gain; rounds 2-5 lower the val loss by 0.5 % on average and the held-out loss by nothing measurable
    # (README, Agent quality); one search round is kept so the memory's seeds and an LLM's reading of
    # round 1 still get a turn
    rounds: int = Field(default=2, ge=1)
    candidates: int = Field(default=3, ge=1)
    # extra candidates per group for shapes copied from other bases' records in the memory: they never
    # take one of a round's K slots, so a shared memory adds to the search and cannot displace it; at
    # most 4, what the builtin over-fetches its memory query by to set them aside (builtin.MAX_TRANSFERRED)
    transfer_candidates: int = Field(default=2, ge=0, le=4)
    # which channels go inside a unit when a scheme is built (the agent decides how many): a pruning
    # criterion's name, built-in or registered (core/criteria.py), so not a Literal
    criterion: str = "group-taylor"
    prompt_dir: Optional[str] = None
    memory_dir: Optional[str] = None
    memory_url: Optional[str] = None
    max_llm_calls_per_round: int = Field(default=12, ge=1)
    max_tool_calls_per_round: int = Field(default=30, ge=1)
    max_llm_calls_per_group: int = Field(default=100, ge=1)
    max_tool_calls_per_group: int = Field(default=300, ge=1)
    # input + output tokens of one group's LLM calls (provider-reported, else estimated): a batching
    # model needs ~41k for a ddpm-cifar10 group; null lifts the cap. Not counted for builtin/replay.
    max_tokens_per_group: Optional[int] = Field(default=150_000, ge=1)
    max_round_retries: int = Field(default=2, ge=0)
    max_retries: int = Field(default=3, ge=0)  # HTTP retries with backoff (429, 5xx, timeouts)
    timeout_s: float = Field(default=60.0, gt=0)
    eval_timesteps: int = Field(default=8, ge=1)
    eval_batch_size: int = Field(default=128, ge=1, le=MAX_BATCH_SIZE)
    recovery_steps: int = Field(default=0, ge=0)  # fine-tuning steps of each candidate before its quick loss
    recovery_batch_size: int = Field(default=32, ge=1, le=MAX_BATCH_SIZE)  # images per recovery step
    sensitivity_images: int = Field(default=32, ge=1)  # images per unit_sensitivity measurement
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict)  # model -> $/1M tokens (in, out)
    # tools: the LLM calls our tools (native tool calling); json: for models without tool calling, it
    # answers with schemes as JSON text, which our code validates, evaluates and submits itself
    protocol: Literal["tools", "json"] = "tools"
    # passed to bind_tools where the model takes it: auto, any (= required), none, or a tool's name
    tool_choice: Optional[str] = None

    @field_validator("base_url", "memory_url")
    @classmethod
    def _http_url(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        register_url_secrets(v)  # its password is scrubbed from every sink from now on
        try:
            u = urlsplit(v)
            port = u.port  # raises ValueError for a port out of 0-65535 or not a number
        except ValueError as e:
            raise ValueError(f"{redact_url(v)!r} is not a valid URL ({e}); write http://host:port/path "
                             "(IPv6 hosts in brackets: http://[::1]:8000/v1)") from None
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"{redact_url(v)!r} is not an http(s) URL; write http://host:port/path")
        if port == 0:
            raise ValueError(f"{redact_url(v)!r} has port 0; use the server's port (1-65535)")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _known_tool(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in TOOL_CHOICE_WORDS + TOOL_NAMES:
            raise ValueError(f"must be one of {', '.join(TOOL_CHOICE_WORDS)} or a tool's name "
                             f"({', '.join(TOOL_NAMES)})")
        return v

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, v: str) -> str:
        return check_criterion(v, "agent.criterion")


class Config(_Section):
    """The whole run configuration."""

    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    latent: LatentConfig = LatentConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    plan: PlanConfig = PlanConfig()
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    sample: SampleConfig = SampleConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    agent: AgentConfig = AgentConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        if self.plan.groups > self.schedule.timesteps:
            raise ValueError(
                f"plan.groups={self.plan.groups} exceeds schedule.timesteps="
                f"{self.schedule.timesteps}; use at most one group per timestep"
            )
        if self.schedule.beta_end <= self.schedule.beta_start:
            raise ValueError("schedule.beta_end must be larger than schedule.beta_start")
        if self.stage2.mode not in ("tdc", "tdc-no-prune"):
            check_criterion(self.stage2.mode, "stage2.mode (tdc, tdc-no-prune, or pruning by a criterion)")
        if self.stage2.optimizer == "carried" and self.stage2.mode != "tdc-no-prune":
            raise ValueError("stage2.optimizer=carried needs stage2.mode=tdc-no-prune (a pruned model has other "
                             "parameter shapes than the base's optimizer state)")
        if self.model.preset is None and self.stage1.init is None:
            raise ValueError(f"set model.preset ({', '.join(backbone_presets(self.model.backbone))}) or stage1.init")
        if self.sample.steps > self.schedule.timesteps:
            raise ValueError(f"sample.steps={self.sample.steps} exceeds schedule.timesteps="
                             f"{self.schedule.timesteps}: a sampler takes at most one step per timestep")
        if self.stage1.steps == 0 and self.stage1.init is None:
            raise ValueError("stage1.steps=0 needs stage1.init (a pretrained model to use as the base)")
        return self


def _parse_value(text: str) -> Any:
    # YAML parsing gives numbers, booleans, null and lists for free: key=0.3, key=[a,b], key=null.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} is not of the form key.sub=value (e.g. plan.groups=4)."
            )
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key.")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section.")
        node[parts[-1]] = _parse_value(value)
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling against examples/digits.yaml)"
        got = e.get("input")
        got = redact_url(got) if isinstance(got, str) else got  # a URL's password is not echoed
        # the whole config is no useful "got" for a cross-check of the top level
        lines.append(f"  {loc}: {msg} (got {got!r})" if e["type"] != "extra_forbidden" and e["loc"]
                     else f"  {loc}: {msg}")
    return (
        f"Invalid configuration in {source}:\n" + "\n".join(lines)
        + "\nFix the value in the YAML file or override it, e.g. `plan.groups=4`."
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (default: the packaged ``digits.yaml``), apply overrides, validate."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist. Pass --config with an existing YAML "
                          "file, or leave --config out for the packaged default (digits).")
    if isinstance(path, Path) and path.stat().st_size > MAX_CONFIG_BYTES:
        raise ResourceError(f"Config file {path} is {path.stat().st_size:,} bytes; a config is a few KB "
                            f"(at most {MAX_CONFIG_BYTES:,}). Pass the YAML config, not a data file.")
    try:
        data = load_yaml(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not UTF-8 text. Pass a YAML file.") from None
    except DuplicateKeyError as e:
        raise ConfigError(f"Config file {path} has a {e.problem}; YAML would silently keep the last one. "
                          "Remove or merge the repeated key.") from None
    except YamlBombError as e:
        raise ResourceError(f"Config file {path} is refused: {e.problem} (line {e.problem_mark.line + 1}). "
                            "Write the values out instead of nesting aliases.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML: {e}. Fix the syntax.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must contain a mapping of sections (run, data, ...).")
    apply_overrides(data, overrides or [])
    return config_from_dict(data, str(path))


def config_from_dict(data: dict, source: str = "config") -> Config:
    """Validate a plain dict into a :class:`Config` and resolve it (:func:`resolve_config`)."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    return resolve_config(cfg)


class ConfigNote(UserWarning):
    """Something config resolution changed or assumed (e.g. the schedule taken from ``stage1.init``)."""


def resolve_config(cfg: Config) -> Config:
    """``cfg`` with what its sources imply filled in; idempotent (a resolved config comes back as is).

    A pretrained start (``stage1.init``) sets the schedule: a DDPM checkpoint is only meaningful with
    the β schedule it was trained with. This runs inside :func:`load_config`, so ``tdc-agent plan``,
    ``tdc-agent run`` and library callers plan with the same schedule. A change, or a checkpoint
    without a scheduler config, is reported as a :class:`ConfigNote` warning.
    """
    if not cfg.stage1.init:
        return cfg
    sc = read_scheduler_config(cfg.stage1.init)
    if sc is None:
        warnings.warn(ConfigNote(
            f"stage1.init {cfg.stage1.init} has no scheduler config that could be read (for a hub id: none on the "
            "hub, or the hub unreachable); using the config's schedule "
            f"({cfg.schedule.name}, T={cfg.schedule.timesteps}). Make sure it is the one the model was trained with."),
            stacklevel=2)
        return cfg
    sched = ScheduleConfig.model_validate(schedule_from_scheduler_config(sc, cfg.stage1.init))
    if sched == cfg.schedule:
        return cfg
    # validated anew: the cross-checks (e.g. plan.groups <= timesteps) must hold for the new schedule
    try:
        new = Config.model_validate({**cfg.model_dump(), "schedule": sched.model_dump()})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{cfg.stage1.init}'s schedule")) from None
    warnings.warn(ConfigNote(
        f"schedule taken from stage1.init: {sched.name}, T={sched.timesteps}, β {sched.beta_start:g}"
        f"→{sched.beta_end:g} (the config said {cfg.schedule.name}, T={cfg.schedule.timesteps})."), stacklevel=2)
    return new


def stored_config(cfg: Config) -> dict:
    """The config as a run directory stores it: plain JSON types, with credentials in URLs masked.

    A key in ``agent.base_url`` (``?api_key=...``, ``user:pass@``) or ``agent.memory_url`` must not
    sit in ``config.yaml``, which is shared with the run's results.
    """
    data = cfg.model_dump(mode="json")
    for key in ("base_url", "memory_url"):
        data["agent"][key] = redact_url(data["agent"][key])
    return data
