"""Output paths of the commands, checked before the work that produces them."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def image_suffixes() -> set[str]:
    """The file suffixes matplotlib can write (``.png``, ``.pdf``, ``.svg`` ...)."""
    from matplotlib.figure import Figure

    return {f".{suffix}" for suffix in Figure().canvas.get_supported_filetypes()}


def check_output_file(path: str | Path, option: str, image: bool = False) -> Path:
    """``path`` as a file this command can write: not a folder, and for a figure a suffix matplotlib writes
    (``ConfigError`` naming ``option`` otherwise), so that a long computation does not end in a traceback."""
    path = Path(path).expanduser()
    if path.is_dir() or str(path).endswith(("/", "\\")):
        raise ConfigError(f"{option} {path} is a folder; name a file in it, e.g. {path / 'out'}"
                          f"{'.png' if image else ''}")
    if image:
        suffixes = image_suffixes()
        if path.suffix.lower() not in suffixes:
            raise ConfigError(f"{option} {path}: matplotlib cannot write {path.suffix or 'a file without a suffix'}"
                              f"; use one of {', '.join(sorted(suffixes))}")
    return path
