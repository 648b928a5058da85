"""EnsembleTrainer: trains an ensemble of networks on a training set."""

from __future__ import annotations

from typing import Callable

from elit.data import TrainingSet
from elit.stages.architecture import Architecture
from elit.stages.base import Stage


class EnsembleTrainer(Stage):
    """Trains N members, each with its own seed and shuffling."""

    kind = "trainer"

    def fit(
        self,
        training_set: TrainingSet,
        architecture: Architecture,
        seed: int,
        *,
        init=None,
        device: str = "cpu",
        completed: dict | None = None,
        on_member: Callable | None = None,
        executor=None,
    ):
        """Train and return an :class:`elit.ensemble.Ensemble`.

        Parameters
        ----------
        training_set : TrainingSet
            Images and labels to train on.
        architecture : Architecture
            Builds each member's network.
        seed : int
            Root seed; member seeds are derived from it.
        init : Ensemble, optional
            Warm start: every member starts from these weights (member ``i`` from
            ``init`` member ``i % len(init)``).
        device : str
            ``"cpu"`` or ``"cuda"``.
        completed : dict of int to Member, optional
            Members already trained (resume); they are not trained again.
        on_member : callable, optional
            Called as ``on_member(index, member)`` when a member finishes, so the
            caller can make it durable.  It runs in the calling process (the
            driver), which alone writes the result file.
        executor : elit.executors.Executor, optional
            Where members train (``executor.map_members``); None: one after another
            in this process.  Members sent elsewhere must come back as plain arrays
            and give the same weights as a local run for the same seed.
        """
        raise NotImplementedError
