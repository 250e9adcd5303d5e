"""The ``spikformer`` command. Thin: each subcommand lives in ``spikformer.commands.<name>`` and delegates to
the library.

Usage: ``spikformer train --config configs/digits.yaml train.epochs=1`` (or ``--config digits``, a packaged
config: ``spikformer configs`` lists them); ``spikformer --help``; ``spikformer --version``.

The commands' messages go through ``logging`` (``spikformer.console``); ``main`` shows them on the console.

Exit codes: 0 success; 2 bad input (argument, config, dataset or checkpoint; one line on stderr naming the
fix); 1 a failure during the run (non-finite loss, an I/O error such as a full disk); 128 + N when signal N
(SIGINT 130, SIGTERM 143) stopped training after saving ``last.safetensors``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata

from . import __version__
from .console import console_logging
from .errors import SpikformerError

MAX_MESSAGE_CHARS = 2000  # an error quoting a huge value (a 70 MB line) is cut to this


def shorten(error: BaseException | str) -> str:
    """The message of ``error``, cut to ``MAX_MESSAGE_CHARS`` characters (saying how much was cut)."""
    text = str(error)
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return f"{text[:MAX_MESSAGE_CHARS]} ... ({len(text) - MAX_MESSAGE_CHARS} more characters cut)"

# Each module defines ``register(subparsers)`` (adds its parser with ``set_defaults(func=run)``).
COMMANDS = ("train", "pretrain", "eval", "reconstruct", "models", "configs", "demo", "analyze", "energy_table",
            "frames", "export", "predict", "doctor", "build_kernels")


def version_text() -> str:
    """``spikformer 0.1.0 (torch 2.6.0, Python 3.11.7)``: what a bug report needs, without importing torch."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return f"spikformer {__version__} (torch {torch}, Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikformer", description="Spiking Transformers (Spikformer V1/V2).",
        epilog="Commands that read a config take --config FILE|NAME and section.key=value overrides: "
               "`spikformer configs` lists the packaged configs, `spikformer configs --keys` every key with its "
               "type, default and meaning (docs/config.md). `spikformer COMMAND --help` describes a command.")
    parser.add_argument("--version", action="version", version=version_text())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"spikformer.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        print(f"spikformer: error: choose a command: {', '.join(COMMANDS)} (spikformer --help says what each "
              f"does)", file=sys.stderr)
        return 2
    from .allocator import keep_freed_memory_unless_disabled

    keep_freed_memory_unless_disabled()  # our own process: no page faults for every step's tensors
    try:
        with console_logging():
            return int(args.func(args) or 0)
    except SpikformerError as error:
        print(f"spikformer {args.command}: error: {shorten(error)}", file=sys.stderr)
        return 2
    except _training_error("TrainingInterrupted") as stop:
        print(f"spikformer {args.command}: {shorten(stop)}", file=sys.stderr)
        return 128 + stop.signum
    except _training_error("NonFiniteLossError") as error:
        print(f"spikformer {args.command}: error: {shorten(error)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # stdout's reader closed early (``| head``): stop without a traceback
        _silence_stdout()
        return 1
    except OSError as error:  # the machine, not the input: a full disk, a vanished file, a permission
        print(f"spikformer {args.command}: error: {shorten(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"spikformer {args.command}: interrupted", file=sys.stderr)
        return 130


def _training_error(name: str) -> type[BaseException] | tuple[()]:
    """The run loop's exception ``name``, or nothing to catch when no command loaded the run loop (which alone
    raises it): ``configs``, ``models`` and a mistyped config answer without importing torch for it."""
    loop = sys.modules.get("spikformer.train.loop")
    return getattr(loop, name) if loop is not None else ()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not report the broken pipe again."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a captured or replaced stdout has no file descriptor
        pass


if __name__ == "__main__":
    sys.exit(main())
