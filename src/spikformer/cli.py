"""The ``spikformer`` command. Thin: each subcommand lives in ``spikformer.commands.<name>`` and delegates to
the library.

Usage: ``spikformer train --config configs/digits.yaml train.epochs=1``; ``spikformer --help``.

Exit codes: 0 success; 2 bad input (argument, config, dataset or checkpoint; one line on stderr naming the
fix); 1 a failure during the run (non-finite loss, an I/O error such as a full disk); 128 + N when signal N
(SIGINT 130, SIGTERM 143) stopped training after saving ``last.safetensors``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import SpikformerError

MAX_MESSAGE_CHARS = 2000  # an error quoting a huge value (a 70 MB line) is cut to this


def shorten(error: BaseException | str) -> str:
    """The message of ``error``, cut to ``MAX_MESSAGE_CHARS`` characters (saying how much was cut)."""
    text = str(error)
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return f"{text[:MAX_MESSAGE_CHARS]} ... ({len(text) - MAX_MESSAGE_CHARS} more characters cut)"

# Each module defines ``register(subparsers)`` (adds its parser with ``set_defaults(func=run)``).
COMMANDS = ("train", "pretrain", "eval", "reconstruct", "models", "demo", "analyze", "energy_table", "frames",
            "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikformer", description="Spiking Transformers (Spikformer V1/V2).")
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
    from .train import NonFiniteLossError, TrainingInterrupted

    try:
        return int(args.func(args) or 0)
    except SpikformerError as error:
        print(f"spikformer {args.command}: error: {shorten(error)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"spikformer {args.command}: {shorten(stop)}", file=sys.stderr)
        return 128 + stop.signum
    except NonFiniteLossError as error:
        print(f"spikformer {args.command}: error: {shorten(error)}", file=sys.stderr)
        return 1
    except OSError as error:  # the machine, not the input: a full disk, a vanished file, a permission
        print(f"spikformer {args.command}: error: {shorten(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"spikformer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
