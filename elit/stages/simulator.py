"""Simulator: draws synthetic training images with their label maps."""

from __future__ import annotations

import numpy as np

from elit.data import TrainingSet
from elit.stages.base import Stage


class Simulator(Stage):
    """Makes training pairs from a model of the specimen and the microscope."""

    kind = "simulator"

    def simulate(self, n: int, rng: np.random.Generator, pixel_size: float) -> TrainingSet:
        """Return ``n`` images drawn at ``pixel_size`` (Angstrom/px) with true atoms."""
        raise NotImplementedError
