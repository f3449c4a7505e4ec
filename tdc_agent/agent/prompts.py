"""The agent's prompt templates: LangChain ``PromptTemplate`` files.

The defaults ship inside the package (``tdc_agent/agent/templates/``, read with
:mod:`importlib.resources`; the repository's ``prompts/`` links there); ``tdc-agent prompts init DIR``
copies them out for editing.

Four templates: ``system``, ``round`` (the round's proposal request), ``memory`` (memory summary)
and ``architecture`` (architecture summary). ``--prompt-dir`` (config ``agent.prompt_dir``) may
override any subset: a file there replaces the default of the same name. Templates use plain
named placeholders (``{limit_macs}``; literal braces are doubled) and nothing else: no format spec
(``{limit_macs:d}``, ``{x:>999999999}``), conversion (``{x!r}``), indexing (``{x[0]}``) or attribute
(``{x.y}``), which could fail or blow up only when a run renders them. Parsing and rendering are one
piece of code (:class:`PlainTemplate`), and loading renders every template once with stand-in
values, so what ``tdc-agent prompts validate`` (and a run's preflight) accepts renders in the run.
At load time a placeholder we do not supply, or a required one that is missing, is an error listing
them.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# package data (a Traversable: a real directory only when installed unzipped)
DEFAULT_PROMPT_DIR = files("tdc_agent.agent") / "templates"

VARIABLES: dict[str, tuple[set[str], set[str]]] = {
    # name: (required, optional)
    "system": ({"candidates"}, {"rounds"}),
    "architecture": ({"units_table"}, {"n_units", "base_macs", "base_params"}),
    "memory": ({"best_this_group"}, {"best_neighbours", "last_round", "n_records", "other_bases", "base_loss",
                                      "transfer_slots"}),
    "round": ({"candidates", "limit_macs"}, {"round", "rounds", "group", "t_start", "t_end", "snr_min",
                                             "snr_max", "limit_fraction", "architecture", "memory", "base_loss"}),
}


# A template file is a page of text; a larger one is not a prompt (and would be sent on every call).
MAX_TEMPLATE_BYTES = 256 * 1024


class TemplateError(ValueError):
    """A template uses more than plain ``{name}`` placeholders, or its braces do not parse."""


@dataclass
class PlainTemplate:
    """A text with plain ``{name}`` placeholders: parsed once, rendered by the same parse."""

    template: str
    parts: list[tuple[str, str | None]] = field(default_factory=list)  # (literal text, placeholder or None)

    def __post_init__(self) -> None:
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as e:
            raise TemplateError(f"{e}; double literal braces: {{{{ }}}}") from None
        for literal, name, spec, conversion in parsed:
            if name is not None:
                shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                if not name.isidentifier():
                    raise TemplateError(f"placeholder {shown} is not a plain name (no positional {{}}, indexing "
                                        "[...] or attribute .x); write {name}")
                if spec or conversion:
                    raise TemplateError(f"placeholder {shown} has a format spec or conversion; only plain {{{name}}} "
                                        "is allowed (values come formatted)")
            self.parts.append((literal, name))

    @property
    def input_variables(self) -> list[str]:
        return sorted({n for _, n in self.parts if n is not None})

    def format(self, **values: Any) -> str:
        """The text with each placeholder replaced by ``format(value, "")`` (the value's own text)."""
        return "".join(literal + (format(values[name], "") if name is not None else "")
                       for literal, name in self.parts)


@dataclass
class PromptSet:
    templates: dict[str, PlainTemplate]
    sources: dict[str, Path | Traversable]

    def render(self, name: str, **values: object) -> str:
        t = self.templates[name]
        return t.format(**{k: v for k, v in values.items() if k in t.input_variables})


def _problems(name: str, template: PlainTemplate) -> list[str]:
    required, optional = VARIABLES[name]
    used = set(template.input_variables)
    out = []
    if required - used:
        out.append(f"{name}: missing required placeholder(s) {sorted(required - used)}")
    if used - required - optional:
        out.append(f"{name}: unknown placeholder(s) {sorted(used - required - optional)} "
                   f"(known: {sorted(required | optional)})")
    return out


def load_prompts(prompt_dir: str | Path | None = None) -> PromptSet:
    """Load the default templates, overridden by any ``<name>.md`` or ``<name>.txt`` in ``prompt_dir``."""
    if prompt_dir is not None and not Path(prompt_dir).is_dir():
        raise ConfigError(f"--prompt-dir {prompt_dir} is not a directory.")
    templates, sources, problems = {}, {}, []
    for name in VARIABLES:
        path = None
        if prompt_dir is not None:
            for ext in (".md", ".txt"):
                candidate = Path(prompt_dir) / f"{name}{ext}"
                if candidate.exists() and not candidate.is_file():
                    # a directory named round.md is a mistake, not "no override": say so
                    raise ConfigError(f"Prompt template {candidate} is not a file (a directory?). Move it away, or "
                                      f"put the template text in it as a file (tdc-agent prompts init DIR).")
                if candidate.is_file():
                    path = candidate
        path = path or DEFAULT_PROMPT_DIR / f"{name}.md"
        if not path.is_file():
            raise ConfigError(f"Prompt template {path} is missing. Run `tdc-agent prompts init DIR` for a fresh set.")
        if isinstance(path, Path) and path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise ConfigError(f"Prompt template {path} is {path.stat().st_size:,} bytes, more than a prompt can "
                              f"be ({MAX_TEMPLATE_BYTES:,}). Pass the template, not another file.")
        try:
            t = PlainTemplate(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"Prompt template {path} is not UTF-8 text.") from None
        except TemplateError as e:
            raise ConfigError(f"Prompt template {path} does not parse: {e}.") from None
        templates[name], sources[name] = t, path
        found = _problems(name, t)
        problems += [f"{p} in {path}" for p in found]
        if not found:
            # rendered once by the code the run uses, with stand-ins for every value we supply
            required, optional = VARIABLES[name]
            PromptSet(templates, sources).render(name, **{v: f"<{v}>" for v in required | optional})
    if problems:
        raise ConfigError("Invalid prompt templates: " + "; ".join(problems) + ".")
    return PromptSet(templates, sources)


def init_prompts(directory: str | Path, force: bool = False) -> list[Path]:
    """Copy the default templates into ``directory`` for editing; return the files written.

    If any of them exists already, nothing is written and a :class:`ConfigError` lists them;
    ``force`` replaces them with the defaults instead.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a directory. Pass a new or existing directory.")
    targets = {name: directory / f"{name}.md" for name in VARIABLES}
    existing = [str(p) for p in targets.values() if p.exists() or p.is_symlink()]
    if any(p.is_dir() for p in targets.values()):
        raise ConfigError(f"{', '.join(str(p) for p in targets.values() if p.is_dir())} is a directory, not a "
                          "template file. Move it away or choose another directory.")
    if existing and not force:
        raise ConfigError(f"Not overwriting existing prompt template(s) {', '.join(existing)}. Pass --force to "
                          "replace them with the defaults, or choose an empty directory.")
    directory.mkdir(parents=True, exist_ok=True)
    for name, dst in targets.items():
        if dst.is_symlink():
            dst.unlink()  # write a file of our own, not through a link
        dst.write_bytes((DEFAULT_PROMPT_DIR / f"{name}.md").read_bytes())
    return list(targets.values())
