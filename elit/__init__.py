"""elit: Ensemble Learning, Iterative Training for atom finding in microscopy images.

The public API for users and plugin authors.
"""

from __future__ import annotations

import os

# Idle OpenMP threads spin by default; on a shared 2-core machine that made training steps
# 5-10x slower (measured).  Set before torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pluggy  # noqa: E402

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("elit")
"""Marker for plugin hook implementations: ``@elit.hookimpl``."""

from elit.data import AtomTable, Refinement, Selection, TrainingSet  # noqa: E402
from elit.errors import ElitError  # noqa: E402
from elit.stages import (  # noqa: E402
    Architecture,
    Augmenter,
    Classifier,
    EnsembleTrainer,
    Refiner,
    Selector,
    Simulator,
    Stage,
    StageConfig,
)

__all__ = [
    "Architecture",
    "AtomTable",
    "Augmenter",
    "Classifier",
    "ElitError",
    "EnsembleTrainer",
    "Refinement",
    "Refiner",
    "Selection",
    "Selector",
    "Simulator",
    "Stage",
    "StageConfig",
    "TrainingSet",
    "__version__",
    "hookimpl",
]
