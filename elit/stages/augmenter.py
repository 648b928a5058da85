"""Augmenter: random transforms of a training set."""

from __future__ import annotations

import numpy as np

from elit.data import TrainingSet
from elit.stages.base import Stage


class Augmenter(Stage):
    """Applies geometric transforms to images and labels, intensity transforms to images only."""

    kind = "augmenter"

    def augment(self, training_set: TrainingSet, rng: np.random.Generator) -> TrainingSet:
        """Return a new, augmented training set drawn with ``rng``."""
        raise NotImplementedError
