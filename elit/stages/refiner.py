"""Refiner: builds a training set from the experiment's own good portion."""

from __future__ import annotations

import numpy as np

from elit.data import AtomTable, Refinement, Selection
from elit.stages.base import Stage


class Refiner(Stage):
    """Keeps the physical atoms found by the selected members and draws fresh masks."""

    kind = "refiner"

    def refine(
        self,
        frames: np.ndarray,
        predictions: np.ndarray,
        selection: Selection,
        atoms: AtomTable,
        rng: np.random.Generator,
        pixel_size: float,
    ) -> Refinement:
        """Return an experimental training set.

        Parameters
        ----------
        frames : ndarray, shape (N, H, W)
            Frames at the working scale.
        predictions : ndarray, shape (M, N, K, H, W)
            Per-member probability maps (all members).
        selection : Selection
            The chosen members; their mean is the prediction to trust.
        atoms : AtomTable
            Atoms located in the selected members' mean prediction, with uncertainty.
        rng : numpy.random.Generator
            Drives every random choice.
        pixel_size : float
            Angstrom per pixel of ``frames``.
        """
        raise NotImplementedError
