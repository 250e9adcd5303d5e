"""The reference of every config key (section, key, type, default, meaning), read from the dataclasses of
``spikformer.config``: the meaning of a key is the comment written above its field (or after it, on the same
line), so the reference cannot drift from the code. ``docs/config.md`` is :func:`reference_markdown`'s text and
``spikformer configs --keys`` prints :func:`reference_text`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Any

from . import config as config_module

_FIELD = re.compile(r"^\s{4}(\w+)\s*:")


@dataclass(frozen=True)
class ConfigKey:
    """One key of the run configuration, as the reference lists it."""

    section: str
    key: str
    type: str
    default: str
    meaning: str

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


def _field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the class's source: the ``#`` lines right above a field (section headers
    ``# --- ... ---`` excluded) followed by the comment at the end of its own line."""
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("# ---"):
            above = []
        elif stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
        elif match := _FIELD.match(line):
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            comments[match.group(1)] = " ".join([*above, trailing]).strip()
            above = []
        else:
            above = []
    return comments


def _default_text(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:
        value: Any = field.default_factory()
    else:
        value = field.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        value = list(value)
    return str(value)


def _type_text(section: str, field: dataclasses.Field) -> str:
    text = str(field.type).replace("typing.", "")
    choices = config_module._CHOICES.get((section, field.name))
    return f"{text}: {' / '.join(choices)}" if choices else text


def config_keys() -> list[ConfigKey]:
    """Every key of every section, in the order of the dataclasses."""
    keys = []
    for section in dataclasses.fields(config_module.Config):
        cls = section.default_factory
        comments = _field_comments(cls)
        for field in dataclasses.fields(cls):
            keys.append(
                ConfigKey(
                    section.name,
                    field.name,
                    _type_text(section.name, field),
                    _default_text(field),
                    comments.get(field.name, ""),
                )
            )
    return keys


def section_descriptions() -> dict[str, str]:
    """``{section: the first paragraph of its dataclass's docstring}``."""
    descriptions = {}
    for section in dataclasses.fields(config_module.Config):
        doc = inspect.cleandoc(section.default_factory.__doc__ or "").split("\n\n")[0]
        descriptions[section.name] = doc.replace("\n", " ").replace("``", "`")
    return descriptions


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The text of ``docs/config.md``."""
    lines = [
        "# Config reference",
        "",
        "Every key of a run configuration, generated from the dataclasses of `src/spikformer/config.py` (the",
        "meaning is the comment above each field). `spikformer configs --keys` prints the same list;",
        "`tests/test_config_reference.py` fails when this page and the code disagree, and",
        "`spikformer configs --keys --markdown > docs/config.md` rewrites it.",
        "",
        "A key is set in a YAML file (`section:` then `key: value`) or on the command line as `section.key=value`",
        "(`train.epochs=5`, `data.mean=[0.5,0.5,0.5]`, `model.neuron=mypkg.neurons:MyNeuron`). A type `X | None`",
        "accepts `null`; values after a colon are the only ones accepted.",
    ]
    descriptions = section_descriptions()
    section = None
    for key in config_keys():
        if key.section != section:
            section = key.section
            lines += ["", f"## {section}", ""]
            if descriptions[section]:
                lines += [descriptions[section], ""]
            lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        lines.append(f"| `{key.key}` | `{_cell(key.type)}` | `{_cell(key.default)}` | {_cell(key.meaning)} |")
    return "\n".join(lines) + "\n"


def reference_text() -> str:
    """The keys as plain aligned lines for a terminal: ``section.key  type  default  meaning``."""
    keys = config_keys()
    name_width = max(len(k.name) for k in keys) + 2
    type_width = max(len(k.type) for k in keys) + 2
    default_width = max(len(k.default) for k in keys) + 2
    lines = [f"{'key':<{name_width}}{'type':<{type_width}}{'default':<{default_width}}meaning"]
    for key in keys:
        lines.append(f"{key.name:<{name_width}}{key.type:<{type_width}}{key.default:<{default_width}}{key.meaning}")
    return "\n".join(lines)
