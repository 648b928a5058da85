"""Architecture: builds the network each ensemble member uses."""

from __future__ import annotations

from elit.stages.base import Stage


class Architecture(Stage):
    """Builds a segmentation network mapping ``(B, in, H, W)`` to ``(B, out, H, W)`` logits.

    Networks must accept any ``H, W`` (pad and crop internally).
    """

    kind = "architecture"

    def build(self, in_channels: int, out_channels: int):
        """Return a new ``torch.nn.Module`` (weights initialised from torch's global RNG)."""
        raise NotImplementedError
