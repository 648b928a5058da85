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

    def select_chunks(self, chunks, pixel_size: float) -> Selection:
        """Choose members from ``(predictions, frames)`` chunks of consecutive frames.

        Long movies are scored a chunk at a time by selectors that override this
        (``auto`` does); this default puts the chunks together and calls
        :meth:`select`, so every selector works, with the whole stack in memory.
        """
        chunks = list(chunks)
        predictions = np.concatenate([np.asarray(p, dtype=np.float32) for p, _ in chunks], axis=1)
        frames = np.concatenate([np.asarray(f) for _, f in chunks], axis=0)
        return self.select(predictions, frames, pixel_size)
