"""Where the library's messages reach a person: the ``spikformer`` logger, and the console handler the CLI installs.

Library code never prints: it logs to ``logging.getLogger("spikformer...")``. The ``spikformer`` command installs
``console_logging()`` for the length of one command, which writes each message as is (no level, no time stamp:
the console output the command always had), INFO and below on stdout, warnings and errors on stderr. A Python
user sees the messages after ``logging.basicConfig(level=logging.INFO)``, or routes them like any library's.

Progress is a tqdm bar only on a terminal (``progress_bar``); where the output is a file or a pipe the run loop
writes plain lines instead. A run also writes its messages into its folder's ``train.log`` (``run_log_file``),
whatever the console shows.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGER = "spikformer"


class ConsoleHandler(logging.Handler):
    """Writes the bare message to the *current* ``sys.stdout``/``sys.stderr`` (looked up at each record, so a
    redirected or captured stream is honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except BrokenPipeError:
            raise  # the reader went away (``spikformer configs | head``): the CLI stops quietly, as print would
        except Exception:  # logging must never take the run down; report as the logging module does
            self.handleError(record)


@contextmanager
def console_logging(level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Show the ``spikformer`` messages at ``level`` and above on the console while the block runs.

    The logger's own settings are restored afterwards, and records do not also reach the root logger's
    handlers meanwhile (a host program that configured logging would otherwise see each message twice).
    """
    logger = logging.getLogger(LOGGER)
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# --- progress: a bar on a terminal, plain lines elsewhere ----------------------------------------------------


def is_terminal() -> bool:
    """Whether a progress bar can be drawn: standard error (where tqdm draws) is a terminal. Redirected to a
    file or a pipe (``> log.txt 2>&1``, a cluster job, a notebook), a bar's carriage-return updates would pile
    up as hundreds of lines; the run loop writes a plain line every ``train.log_interval`` batches instead."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def progress_bar(iterable=None, *, enabled: bool = True, **options):
    """A tqdm bar over ``iterable`` when ``enabled`` and on a terminal, otherwise a silent pass-through (same
    interface). ``options`` go to tqdm (``total``, ``desc``, ``initial`` ...)."""
    from tqdm.auto import tqdm

    options.setdefault("leave", False)
    options.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not (enabled and is_terminal()), **options)


# --- the run's own log file ----------------------------------------------------------------------------------


class RunLogFormatter(logging.Formatter):
    """``YYYY-MM-DD HH:MM:SS message``, one time stamp per line; the blank lines a console message starts with
    (to step past a progress bar) are dropped."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%Y-%m-%d %H:%M:%S")
        lines = record.getMessage().strip("\n").splitlines() or [""]
        return "\n".join(f"{stamp} {line}".rstrip() for line in lines)


class _ForwardToRoot(logging.Handler):
    """Hands records at or above its level to the root logger's handlers: what propagation did before the
    ``spikformer`` logger was opened to INFO for a log file (see ``routed_to``)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


@contextmanager
def routed_to(handler: logging.Handler) -> Iterator[None]:
    """Also send the ``spikformer`` records of INFO and above to ``handler`` while the block runs.

    When the logger is closed to INFO (a Python user who configured nothing sees warnings only), it is opened
    to INFO for the block and its records reach the root logger's handlers only at the level they reached
    them before, so that opening a log file does not change what the console shows.
    """
    logger = logging.getLogger(LOGGER)
    saved = logger.level, logger.propagate
    threshold = logger.getEffectiveLevel()
    forward = None
    handler.setLevel(logging.INFO)
    logger.addHandler(handler)
    if threshold > logging.INFO:
        logger.setLevel(logging.INFO)
        if logger.propagate:
            forward = _ForwardToRoot(threshold)
            logger.addHandler(forward)
            logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        if forward is not None:
            logger.removeHandler(forward)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _Collector(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def collect_records(records: list[logging.LogRecord]) -> Iterator[list[logging.LogRecord]]:
    """Append the ``spikformer`` records of the block (INFO and above) to ``records``, for a log file opened
    later: a run's set-up speaks before its folder may be written."""
    with routed_to(_Collector(records)):
        yield records


@contextmanager
def run_log_file(path: str | Path, earlier: list[logging.LogRecord] = (), enabled: bool = True) -> Iterator[None]:
    """Append the ``spikformer`` messages of the block to the text file ``path`` (plain lines, each with its
    time), after the ``earlier`` records collected before the file could be opened. An exception that ends
    the block is written as its last line. ``enabled=False``: do nothing (ranks > 0)."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(RunLogFormatter())
    try:
        for record in earlier:
            handler.handle(record)
        with routed_to(handler):
            try:
                yield
            except BaseException as error:
                message = str(error).strip().splitlines()[0] if str(error).strip() else ""
                stop = logging.makeLogRecord({"msg": f"stopped: {type(error).__name__}: {message}".rstrip(": "),
                                              "levelno": logging.ERROR, "levelname": "ERROR"})
                handler.handle(stop)
                raise
    finally:
        handler.close()
