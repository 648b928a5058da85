"""Built-in architectures: a compact AtomAI-like U-Net and segmentation-models-pytorch's Unet.

Every network maps ``(B, in, H, W)`` to ``(B, out, H, W)`` logits for any
``H, W``: the input is padded (reflect) to a multiple of the network's total
down-sampling factor and the output cropped back.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from elit.errors import ConfigError
from elit.stages import Architecture, StageConfig


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the last two axes of ``x`` at the bottom/right up to a multiple of ``multiple``.

    Returns the padded tensor and the original ``(H, W)``.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


class PaddedNet(nn.Module):
    """Wraps a network that needs sizes divisible by ``multiple``: pad, run, crop."""

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net = net
        self.size_multiple = int(multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.size_multiple)
        return self.net(x)[..., :h, :w]


def conv_block(in_ch: int, out_ch: int, n_layers: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    """``n_layers`` x (3x3 conv, batch norm, leaky ReLU), then optional dropout."""
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers.append(nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.LeakyReLU(0.01, inplace=True))
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class Upsample(nn.Module):
    """Up-sample by 2 (interpolation), then a 1x1 conv to ``out_ch`` (AtomAI's UpsampleBlock)."""

    def __init__(self, in_ch: int, out_ch: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=False)
        return self.conv(x)


class CompactUNet(nn.Module):
    """An AtomAI-like U-Net.

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels and output logits.
    base_filters : int
        Filters at full resolution; doubled at each pooling.
    blocks : tuple of int
        Conv layers per level, ``depth + 1`` entries (the last is the bottleneck);
        the decoder mirrors the encoder.
    batch_norm : bool
        Batch normalisation after each conv.
    dropout : float
        Dropout2d probability after the bottleneck and the deepest encoder/decoder blocks.
    upsampling : str
        ``"bilinear"`` or ``"nearest"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_filters: int = 16,
        blocks: tuple[int, ...] = (1, 2, 2, 3),
        batch_norm: bool = True,
        dropout: float = 0.0,
        upsampling: str = "bilinear",
    ) -> None:
        super().__init__()
        depth = len(blocks) - 1
        self.depth = depth
        self.size_multiple = 2**depth
        widths = [base_filters * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList()
        ch = in_channels
        for level in range(depth):
            drop = dropout if level == depth - 1 else 0.0
            self.encoder.append(conv_block(ch, widths[level], blocks[level], batch_norm, drop))
            ch = widths[level]
        self.bottleneck = conv_block(ch, widths[depth], blocks[depth], batch_norm, dropout)
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(depth)):
            drop = dropout if level == depth - 1 else 0.0
            self.upsample.append(Upsample(widths[level + 1], widths[level], upsampling))
            self.decoder.append(conv_block(2 * widths[level], widths[level], blocks[level], batch_norm, drop))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.size_multiple)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, block in zip(self.upsample, self.decoder):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)[..., :h, :w]


class CompactUNetArchitecture(Architecture):
    """AtomAI-like U-Net sized for CPUs (the default architecture)."""

    name = "compact-unet"
    version = "1"
    description = "AtomAI-like U-Net (conv-BN-LeakyReLU blocks, max-pool, bilinear up-sampling), sized for CPUs"

    class Config(StageConfig):
        base_filters: int = Field(
            8, ge=1, le=256,
            description="filters at full resolution, doubled at each pooling (AtomAI: 16; 8 trains ~3x faster on a CPU "
            "and is as accurate at 0.2 A/px)",
        )
        depth: int = Field(3, ge=1, le=6, description="number of 2x poolings; inputs are padded to a multiple of 2**depth")
        blocks: tuple[int, ...] | None = Field(
            None,
            description="conv layers per level, depth+1 entries (last = bottleneck); default: AtomAI's [1,2,2,3] "
            "for depth 3, else 1,2,2,...,3",
        )
        batch_norm: bool = Field(True, description="batch normalisation after every convolution")
        dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout2d probability in the deepest blocks")
        upsampling: Literal["bilinear", "nearest"] = Field("bilinear", description="interpolation of the decoder's up-sampling")

        @model_validator(mode="after")
        def _check_blocks(self):
            if self.blocks is not None:
                if len(self.blocks) != self.depth + 1:
                    raise ValueError(f"blocks needs depth+1 = {self.depth + 1} entries, got {len(self.blocks)}")
                if any(b < 1 for b in self.blocks):
                    raise ValueError("every entry of blocks must be >= 1")
            return self

    def layer_counts(self) -> tuple[int, ...]:
        """Conv layers per level, resolved from the config."""
        if self.config.blocks is not None:
            return tuple(self.config.blocks)
        d = self.config.depth
        return tuple([1] + [2] * (d - 1) + [3]) if d > 1 else (1, 3)

    def build(self, in_channels: int, out_channels: int) -> nn.Module:
        c = self.config
        return CompactUNet(in_channels, out_channels, c.base_filters, self.layer_counts(), c.batch_norm, c.dropout, c.upsampling)


class SmpUnetArchitecture(Architecture):
    """segmentation-models-pytorch ``Unet`` with a randomly initialised encoder (no model hub)."""

    name = "unet"
    version = "1"
    description = "segmentation-models-pytorch Unet (encoder_weights=None: never downloads)"

    class Config(StageConfig):
        encoder_name: str = Field("resnet18", min_length=1, description="smp encoder name, e.g. resnet18, resnet34")
        encoder_depth: int = Field(5, ge=3, le=5, description="encoder stages (each halves the size)")
        decoder_channels: tuple[int, ...] | None = Field(
            None, description="decoder channels, encoder_depth entries; default: the last entries of (256,128,64,32,16)"
        )

        @model_validator(mode="after")
        def _check_decoder(self):
            if self.decoder_channels is not None and len(self.decoder_channels) != self.encoder_depth:
                raise ValueError(
                    f"decoder_channels needs encoder_depth = {self.encoder_depth} entries, got {len(self.decoder_channels)}"
                )
            return self

    def build(self, in_channels: int, out_channels: int) -> nn.Module:
        import segmentation_models_pytorch as smp

        c = self.config
        names = smp.encoders.get_encoder_names()
        if c.encoder_name not in names:
            close = [n for n in names if n.startswith(c.encoder_name[:4])][:8]
            raise ConfigError(
                f"unknown smp encoder {c.encoder_name!r}; e.g. {', '.join(close or names[:8])} "
                "(see segmentation_models_pytorch.encoders.get_encoder_names())"
            )
        decoder = c.decoder_channels or (256, 128, 64, 32, 16)[-c.encoder_depth:]
        net = smp.Unet(
            encoder_name=c.encoder_name,
            encoder_depth=c.encoder_depth,
            encoder_weights=None,
            decoder_channels=list(decoder),
            in_channels=in_channels,
            classes=out_channels,
        )
        return PaddedNet(net, 2**c.encoder_depth)


STAGES = [CompactUNetArchitecture, SmpUnetArchitecture]
