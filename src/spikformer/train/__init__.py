"""Training: the run (``Trainer``), its optimizer/schedule, evaluation and distributed helpers."""

from .engine import evaluate, resolve_device
from .trainer import NonFiniteLossError, Trainer, TrainingInterrupted

__all__ = ["NonFiniteLossError", "Trainer", "TrainingInterrupted", "evaluate", "resolve_device"]
