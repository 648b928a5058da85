"""The seven stage kinds: one base class each."""

from elit.stages.architecture import Architecture
from elit.stages.augmenter import Augmenter
from elit.stages.base import Stage, StageConfig
from elit.stages.classifier import Classifier
from elit.stages.refiner import Refiner
from elit.stages.selector import Selector
from elit.stages.simulator import Simulator
from elit.stages.trainer import EnsembleTrainer

STAGE_KINDS: dict[str, type[Stage]] = {
    cls.kind: cls
    for cls in (Simulator, Augmenter, Architecture, EnsembleTrainer, Selector, Refiner, Classifier)
}

__all__ = [
    "STAGE_KINDS",
    "Architecture",
    "Augmenter",
    "Classifier",
    "EnsembleTrainer",
    "Refiner",
    "Selector",
    "Simulator",
    "Stage",
    "StageConfig",
]
