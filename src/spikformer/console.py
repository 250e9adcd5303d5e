"""Where the library's messages reach a person: the ``spikformer`` logger, and the console handler the CLI installs.

Library code never prints: it logs to ``logging.getLogger("spikformer...")``. The ``spikformer`` command installs
``console_logging()`` for the length of one command, which writes each message as is (no level, no time stamp:
the console output the command always had), INFO and below on stdout, warnings and errors on stderr. A Python
user sees the messages after ``logging.basicConfig(level=logging.INFO)``, or routes them like any library's.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

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
