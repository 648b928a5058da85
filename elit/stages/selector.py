"""Selector: chooses the artifact-free ensemble members."""

from __future__ import annotations

import numpy as np

from elit.data import Selection
from elit.stages.base import Stage


class Selector(Stage):
    """Scores members on the experimental frames and keeps the good ones."""

    kind = "selector"

    def select(self, predictions: np.ndarray, frames: np.ndarray, pixel_size: float) -> Selection:
        """Choose members.

        Parameters
        ----------
        predictions : ndarray, shape (M, N, K, H, W)
            Per-member, per-frame, per-class probability maps.
        frames : ndarray, shape (N, H, W)
            The frames at the working scale.
        pixel_size : float
            Angstrom per pixel of ``frames``.
        """
        raise NotImplementedError
