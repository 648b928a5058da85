"""Classifier: assigns each located atom a class (e.g. carbon vs silicon)."""

from __future__ import annotations

import numpy as np

from elit.data import AtomTable
from elit.stages.base import Stage


class Classifier(Stage):
    """Splits atoms into classes from the image around them."""

    kind = "classifier"

    def classify(self, frames: np.ndarray, atoms: AtomTable, pixel_size: float) -> AtomTable:
        """Return ``atoms`` with ``class_index`` and ``class_names`` set."""
        raise NotImplementedError
