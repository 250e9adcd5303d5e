"""``python -m spikformer`` (also what ``torchrun -m spikformer`` runs)."""

import sys

from .cli import main

sys.exit(main())
