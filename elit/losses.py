"""Segmentation losses for ensemble members.

Two families:

* **sigmoid** losses (``"bce"``, ``"dice"``, ``"focal"``, ``"bce+dice"``): the
  network has one output channel per atom class; targets are one-hot masks
  ``(B, K, H, W)`` float.
* **softmax** losses (``"ce"``, ``"ce+dice"``): the network has ``K + 1`` output
  channels, channel 0 the background; targets are label maps ``(B, H, W)``
  int64 with 0 = background and ``k + 1`` = atom class ``k``.

Dice terms are computed over the atom classes only (never the background).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from elit.errors import ConfigError

SIGMOID_LOSSES = ("bce", "dice", "focal", "bce+dice")
SOFTMAX_LOSSES = ("ce", "ce+dice")
LOSSES = ("auto",) + SIGMOID_LOSSES + SOFTMAX_LOSSES

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Return 1 - soft Dice, averaged over channels (sums over batch and pixels).

    Parameters
    ----------
    probabilities, target : Tensor, shape (B, K, H, W)
        Predicted probabilities and one-hot targets of the atom classes.
    eps : float
        Smoothing that keeps an empty channel finite.
    """
    dims = (0, 2, 3)
    inter = (probabilities * target).sum(dims)
    total = probabilities.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + eps) / (total + eps)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Return the sigmoid focal loss (Lin et al. 2017) without class weighting."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1.0 - p) * (1.0 - target)
    return ((1.0 - p_t) ** gamma * bce).mean()


def resolve_loss(name: str, n_classes: int) -> str:
    """Return the concrete loss name for ``name`` (``"auto"`` resolved).

    ``"auto"`` is ``"bce+dice"`` for one atom class and ``"ce"`` for several.
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if name == "auto":
        return "bce+dice" if n_classes == 1 else "ce"
    return name


def activation_for(loss: str) -> str:
    """Return ``"sigmoid"`` or ``"softmax"``: the output activation a loss implies."""
    return "softmax" if loss in SOFTMAX_LOSSES else "sigmoid"


def output_channels(loss: str, n_classes: int) -> int:
    """Return the number of network outputs for ``n_classes`` atom classes and ``loss``."""
    return n_classes + 1 if activation_for(loss) == "softmax" else n_classes


def make_loss(name: str, n_classes: int, focal_gamma: float = 2.0) -> LossFn:
    """Return ``loss(logits, target) -> scalar`` for a concrete loss name.

    Parameters
    ----------
    name : str
        One of :data:`SIGMOID_LOSSES` or :data:`SOFTMAX_LOSSES` (or ``"auto"``).
    n_classes : int
        Number of atom classes (background excluded).
    focal_gamma : float
        Focusing parameter of the focal loss.
    """
    name = resolve_loss(name, n_classes)
    if name == "bce":
        return lambda z, t: F.binary_cross_entropy_with_logits(z, t)
    if name == "dice":
        return lambda z, t: soft_dice_loss(torch.sigmoid(z), t)
    if name == "focal":
        return lambda z, t: focal_loss(z, t, focal_gamma)
    if name == "bce+dice":
        return lambda z, t: F.binary_cross_entropy_with_logits(z, t) + soft_dice_loss(torch.sigmoid(z), t)
    if name == "ce":
        return lambda z, t: F.cross_entropy(z, t)

    def ce_dice(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(z, dim=1)[:, 1:]
        onehot = F.one_hot(t, n_classes + 1).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
        return F.cross_entropy(z, t) + soft_dice_loss(probs, onehot)

    return ce_dice
