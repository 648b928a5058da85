"""Tests for the built-in architectures."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from elit.errors import ConfigError
from elit.plugins import default_registry
from elit_builtins.architectures import CompactUNetArchitecture, SmpUnetArchitecture, pad_to_multiple


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_registered_by_name():
    reg = default_registry()
    assert reg.get_stage("architecture", "compact-unet") is CompactUNetArchitecture
    assert reg.get_stage("architecture", "unet") is SmpUnetArchitecture


@pytest.mark.parametrize("shape", [(37, 50), (8, 8), (64, 48), (5, 3)])
def test_compact_unet_any_size(shape):
    torch.manual_seed(0)
    net = CompactUNetArchitecture(base_filters=4).build(1, 3)
    with torch.no_grad():
        out = net(torch.rand(2, 1, *shape))
    assert out.shape == (2, 3, *shape)
    assert torch.isfinite(out).all()


def test_compact_unet_config_shapes_the_net():
    default = CompactUNetArchitecture()
    assert default.layer_counts() == (1, 2, 2, 3)  # AtomAI's default shape
    net16 = CompactUNetArchitecture(base_filters=16).build(1, 1)
    net8 = CompactUNetArchitecture(base_filters=8).build(1, 1)
    n16 = sum(p.numel() for p in net16.parameters())
    n8 = sum(p.numel() for p in net8.parameters())
    assert 3.5 < n16 / n8 < 4.5
    shallow = CompactUNetArchitecture(depth=2, blocks=(1, 1, 2), batch_norm=False, dropout=0.2, upsampling="nearest").build(1, 1)
    assert shallow.size_multiple == 4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in shallow.modules())
    assert any(isinstance(m, torch.nn.Dropout2d) for m in shallow.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net8.modules())


def test_compact_unet_config_is_strict():
    with pytest.raises(ValidationError):
        CompactUNetArchitecture(depth=3, blocks=(1, 2))
    with pytest.raises(ValidationError):
        CompactUNetArchitecture(base_filter=8)  # typo: extra keys are refused
    with pytest.raises(ValidationError):
        CompactUNetArchitecture(upsampling="cubic")


def test_weights_come_from_torch_seed():
    arch = CompactUNetArchitecture(base_filters=4)
    torch.manual_seed(3)
    a = arch.build(1, 1).state_dict()
    torch.manual_seed(3)
    b = arch.build(1, 1).state_dict()
    torch.manual_seed(4)
    c = arch.build(1, 1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])


def test_pad_to_multiple():
    x = torch.rand(1, 1, 5, 9)
    y, hw = pad_to_multiple(x, 8)
    assert y.shape[-2:] == (8, 16) and hw == (5, 9)
    assert torch.equal(y[..., :5, :9], x)


def test_smp_unet_builds_offline_any_size():
    torch.manual_seed(0)
    net = SmpUnetArchitecture(encoder_depth=3).build(1, 2)
    with torch.no_grad():
        out = net.eval()(torch.rand(1, 1, 37, 50))
    assert out.shape == (1, 2, 37, 50)
    assert net.size_multiple == 8


def test_smp_unet_config_errors():
    with pytest.raises(ValidationError):
        SmpUnetArchitecture(encoder_depth=4, decoder_channels=(32, 16))
    with pytest.raises(ConfigError, match="unknown smp encoder"):
        SmpUnetArchitecture(encoder_name="no-such-encoder").build(1, 1)
