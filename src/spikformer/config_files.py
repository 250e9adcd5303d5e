"""The YAML configs that ship inside the package, addressed by name (``digits``) as well as by path.

The files live in the repository's top-level ``configs/``; ``spikformer/configs`` is a link to that folder, so a
wheel carries a copy of them (package data) and a clone or an editable install reads them in place.

Usage: ``config_path("cifar10_4_384")`` -> the packaged ``cifar10_4_384.yaml``; ``config_names()``;
``describe_config("digits")`` (the first sentence of the file's leading comment).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import ConfigError
from .registry import close_matches

SUFFIXES = (".yaml", ".yml")
DESCRIPTION_LENGTH = 100


def packaged_configs_folder() -> Path:
    """The folder of the packaged configs (``spikformer/configs`` of the installed package)."""
    return Path(str(resources.files(__package__).joinpath("configs")))


def config_names() -> list[str]:
    """The names of the packaged configs, sorted: the file names without ``.yaml``."""
    folder = packaged_configs_folder()
    if not folder.is_dir():
        return []
    return sorted(path.stem for path in folder.iterdir() if path.suffix in SUFFIXES and path.is_file())


def packaged_config(name: str) -> Path | None:
    """The packaged file called ``name`` (with or without ``.yaml``), or None."""
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix in SUFFIXES else name
    for suffix in SUFFIXES:
        path = packaged_configs_folder() / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def config_path(config: str | Path) -> Path:
    """The YAML file that a ``--config`` argument means.

    An existing path wins. Otherwise a bare name (no folder) is looked up among the packaged configs, and so is
    ``configs/<name>.yaml`` relative to a folder that has no ``configs/`` (the README's commands, run outside
    a clone). Anything else is returned as given, for ``read_yaml`` to report.
    """
    path = Path(config)
    if path.exists():
        return path
    bare = len(path.parts) == 1
    from_the_readme = len(path.parts) == 2 and path.parts[0] == "configs" and not path.is_absolute()
    if not (bare or from_the_readme):
        return path
    found = packaged_config(path.name)
    if found is not None:
        return found
    if from_the_readme:
        return path
    names = config_names()
    close = close_matches(Path(path.name).stem, names)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"config {str(config)!r} does not exist: it is neither a file nor the name of a packaged "
                      f"config; {hint}`spikformer configs` lists the names")


def describe_config(path: str | Path) -> str:
    """The first sentence of the comment that opens a config file, on one line of at most 100 characters."""
    lines = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if not text or line.startswith("#   "):  # a blank comment line or an indented usage example ends it
            break
        lines.append(text)
    paragraph = " ".join(lines)
    sentence = paragraph.split(". ")[0].rstrip(".:")
    if len(sentence) > DESCRIPTION_LENGTH:
        sentence = sentence[: DESCRIPTION_LENGTH - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return sentence
