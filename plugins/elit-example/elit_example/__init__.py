"""Example elit plugin: registers one Selector through the ``elit`` entry point."""

from __future__ import annotations

import numpy as np
from pydantic import Field

import elit


class MedianAgreementSelector(elit.Selector):
    """Keep the ``k`` members whose probability maps are closest to the ensemble median."""

    name = "median-agreement"
    version = "1"
    description = "Keeps the k members closest (mean absolute difference) to the per-pixel ensemble median."

    class Config(elit.StageConfig):
        k: int = Field(1, ge=1, description="Number of members to keep.")

    def select(self, predictions, frames, pixel_size):
        predictions = np.asarray(predictions, dtype=np.float32)
        median = np.median(predictions, axis=0)
        distance = np.abs(predictions - median).reshape(len(predictions), -1).mean(axis=1)
        scores = 1.0 - distance
        order = np.argsort(-scores, kind="stable")
        keep = order[: min(self.config.k, len(order))].tolist()
        reasons = [f"member {m}: mean |p - median| = {distance[m]:.4f}" for m in keep]
        return elit.Selection(members=keep, scores=scores, criteria={"median_distance": distance}, reasons=reasons)


@elit.hookimpl
def elit_register_stages():
    return [MedianAgreementSelector]
