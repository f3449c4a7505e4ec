"""The agent's prompt templates: LangChain ``PromptTemplate`` files.

The defaults ship inside the package (``tdc_agent/agent/templates/``, read with
:mod:`importlib.resources`; the repository's ``prompts/`` links there); ``tdc-agent prompts init DIR``
copies them out for editing.

Four templates: ``system``, ``round`` (the round's proposal request), ``memory`` (memory summary)
and ``architecture`` (architecture summary). ``--prompt-dir`` (config ``agent.prompt_dir``) may
override any subset: a file there replaces the default of the same name. Templates use Python
format placeholders (``{limit_macs}``; literal braces are doubled). At load time every template is
checked: a placeholder we do not supply, or a required one that is missing, is an error listing
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from langchain_core.prompts import PromptTemplate

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# package data (a Traversable: a real directory only when installed unzipped)
DEFAULT_PROMPT_DIR = files("tdc_agent.agent") / "templates"

VARIABLES: dict[str, tuple[set[str], set[str]]] = {
    # name: (required, optional)
    "system": ({"candidates"}, {"rounds"}),
    "architecture": ({"units_table"}, {"n_units", "base_macs", "base_params"}),
    "memory": ({"best_this_group"}, {"best_neighbours", "last_round", "n_records", "other_bases", "base_loss"}),
    "round": ({"candidates", "limit_macs"}, {"round", "rounds", "group", "t_start", "t_end", "snr_min",
                                             "snr_max", "limit_fraction", "architecture", "memory", "base_loss"}),
}


@dataclass
class PromptSet:
    templates: dict[str, PromptTemplate]
    sources: dict[str, Path | Traversable]

    def render(self, name: str, **values: object) -> str:
        t = self.templates[name]
        return t.format(**{k: v for k, v in values.items() if k in t.input_variables})


def _problems(name: str, template: PromptTemplate) -> list[str]:
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
                if (Path(prompt_dir) / f"{name}{ext}").is_file():
                    path = Path(prompt_dir) / f"{name}{ext}"
        path = path or DEFAULT_PROMPT_DIR / f"{name}.md"
        if not path.is_file():
            raise ConfigError(f"Prompt template {path} is missing. Run `tdc-agent prompts init DIR` for a fresh set.")
        try:
            t = PromptTemplate.from_template(path.read_text(encoding="utf-8"))
        except (ValueError, KeyError) as e:
            raise ConfigError(f"Prompt template {path} does not parse ({e}). Double literal braces: {{{{ }}}}.") from None
        templates[name], sources[name] = t, path
        problems += [f"{p} in {path}" for p in _problems(name, t)]
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
