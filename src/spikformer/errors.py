"""Errors raised at the library's boundaries (config, data, checkpoints). Each message names the fix.

They subclass ``ValueError`` so that callers who catch ``ValueError`` keep working; the CLI turns them into
one line on stderr and exit code 2.
"""


class SpikformerError(ValueError):
    """Base class of the errors a user can fix by changing their input."""


class ConfigError(SpikformerError):
    """A config file or override is wrong."""


class DatasetError(SpikformerError):
    """A dataset path is missing, empty, or not in the expected layout."""


class CheckpointError(SpikformerError):
    """A checkpoint is unreadable, unsafe, or does not fit the model."""


class MissingExtraError(SpikformerError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it. An ``ImportError``
    too, so that code which treats a missing package as optional keeps working."""
