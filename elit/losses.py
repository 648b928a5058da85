"""Segmentation losses for ensemble members.

Two families:

* **sigmoid** losses (``"bce"``, ``"dice"``, ``"focal"``, ``"bce+dice"``): the
  network has one output channel per atom class; targets are one-hot masks
  ``(B, K, H, W)`` float.
* **softmax** losses (``"ce"``, ``"ce+dice"``): the network has ``K + 1`` output
  channels, channel 0 the background; targets are label maps ``(B, H, W)``
  int64 with 0 = background and ``k + 1`` = atom class ``k``.

Dice terms are computed over the atom classes only (never the background).

Pixels labelled :data:`elit.data.IGNORE` are left out of every loss: a
sigmoid target marks them with ``-1`` in every channel, a softmax target
keeps the label ``IGNORE``.  Optional weights per label value
(``class_weights``: background first, as :meth:`elit.data.TrainingSet.class_weights`
gives them) balance rare classes such as dopants.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from elit.data import IGNORE
from elit.errors import ConfigError

SIGMOID_LOSSES = ("bce", "dice", "focal", "bce+dice")
SOFTMAX_LOSSES = ("ce", "ce+dice")
LOSSES = ("auto",) + SIGMOID_LOSSES + SOFTMAX_LOSSES

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, eps: float = 1.0,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """Return 1 - soft Dice, averaged over channels (sums over batch and pixels).

    Parameters
    ----------
    probabilities, target : Tensor, shape (B, K, H, W)
        Predicted probabilities and one-hot targets of the atom classes.
    eps : float
        Smoothing that keeps an empty channel finite.
    valid : Tensor, shape (B, 1 or K, H, W), optional
        1 where a pixel counts, 0 where it is ignored.
    """
    if valid is not None:
        probabilities, target = probabilities * valid, target * valid
    dims = (0, 2, 3)
    inter = (probabilities * target).sum(dims)
    total = probabilities.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + eps) / (total + eps)).mean()


def _masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def _sigmoid_weights(target: torch.Tensor, class_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean 0/1 targets and per-pixel weights: 0 where ignored, else the weight of the pixel's label value."""
    valid = (target >= 0).to(target.dtype)
    clean = target.clamp_min(0)
    weight = valid
    if class_weights is not None:
        w = class_weights.to(target.dtype)
        positive = w[1:][None, :, None, None]
        weight = valid * (w[0] + clean * (positive - w[0]))
    return clean, weight


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Return the sigmoid focal loss (Lin et al. 2017) without class weighting; ``-1`` targets are ignored."""
    clean, weight = _sigmoid_weights(target, None)
    bce = F.binary_cross_entropy_with_logits(logits, clean, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * clean + (1.0 - p) * (1.0 - clean)
    return _masked_mean((1.0 - p_t) ** gamma * bce, weight)


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


def make_loss(name: str, n_classes: int, focal_gamma: float = 2.0, class_weights=None) -> LossFn:
    """Return ``loss(logits, target) -> scalar`` for a concrete loss name.

    Parameters
    ----------
    name : str
        One of :data:`SIGMOID_LOSSES` or :data:`SOFTMAX_LOSSES` (or ``"auto"``).
    n_classes : int
        Number of atom classes (background excluded).
    focal_gamma : float
        Focusing parameter of the focal loss.
    class_weights : sequence of float, optional
        Weight of each label value in the cross-entropy terms: background first,
        then one per atom class.
    """
    name = resolve_loss(name, n_classes)
    cw = None
    if class_weights is not None:
        if len(class_weights) != n_classes + 1:
            raise ConfigError(
                f"class_weights needs {n_classes + 1} values (background, then one per atom class), got {len(class_weights)}"
            )
        cw = torch.as_tensor([float(v) for v in class_weights], dtype=torch.float32)

    def bce(z, t):
        clean, weight = _sigmoid_weights(t, None if cw is None else cw.to(z.device))
        return _masked_mean(F.binary_cross_entropy_with_logits(z, clean, reduction="none"), weight)

    def dice(z, t):
        return soft_dice_loss(torch.sigmoid(z), t.clamp_min(0), valid=(t >= 0).to(z.dtype))

    if name == "bce":
        return bce
    if name == "dice":
        return dice
    if name == "focal":
        return lambda z, t: focal_loss(z, t, focal_gamma)
    if name == "bce+dice":
        return lambda z, t: bce(z, t) + dice(z, t)
    ce_weight = cw

    def ce(z, t):
        w = None if ce_weight is None else ce_weight.to(z.device, z.dtype)
        return F.cross_entropy(z, t, weight=w, ignore_index=IGNORE)

    if name == "ce":
        return ce

    def ce_dice(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(z, dim=1)[:, 1:]
        valid = (t != IGNORE)
        onehot = F.one_hot(torch.where(valid, t, 0), n_classes + 1).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
        return ce(z, t) + soft_dice_loss(probs, onehot, valid=valid[:, None].to(probs.dtype))

    return ce_dice
