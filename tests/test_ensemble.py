"""Tests for elit.ensemble: prediction paths, tiling, statistics and array round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from elit.ensemble import Ensemble, Member, fuse_batch_norm, load_state, state_to_arrays, tile_spans
from elit.errors import InputError
from elit.plugins import default_registry, with_architecture

TINY = {"base_filters": 4, "depth": 2, "blocks": [1, 1, 1]}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_members(n, out_channels, params=TINY, seed=0):
    """Members with random weights and non-trivial batch-norm statistics."""
    arch = default_registry().get_stage("architecture", "compact-unet")(params)
    members = []
    for i in range(n):
        torch.manual_seed(seed + i)
        net = arch.build(1, out_channels)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
        members.append(Member(state=state_to_arrays(net), seed=seed + i, history={"step": [1.0, 2.0]}, metrics={"iou/atom": 0.5}))
    return members


def make_ensemble(n=3, classes=("atom",), activation="sigmoid", params=TINY):
    out = len(classes) + (1 if activation == "softmax" else 0)
    return with_architecture(Ensemble("compact-unet", params, 1, out, classes, random_members(n, out, params), 0.2, activation))


def frames(n=2, h=40, w=52, seed=1):
    return np.random.default_rng(seed).random((n, h, w)).astype(np.float32)


def test_predict_shape_dtype_and_range():
    ens = make_ensemble(3)
    p = ens.predict(frames(2))
    assert p.shape == (3, 2, 1, 40, 52)
    assert p.dtype == np.float32
    assert 0.0 <= p.min() and p.max() <= 1.0
    single = ens.predict(frames(1)[0])
    assert single.shape == (3, 1, 1, 40, 52)
    np.testing.assert_allclose(single[:, 0], p[:, 0], atol=1e-6)


def test_members_differ_and_member_order_is_kept():
    ens = make_ensemble(3)
    p = ens.predict(frames(1))
    assert not np.allclose(p[0], p[1])
    q = ens.predict(frames(1), members=[2, 0])
    np.testing.assert_allclose(q[0], p[2], atol=1e-6)
    np.testing.assert_allclose(q[1], p[0], atol=1e-6)


def test_any_numeric_dtype_is_accepted():
    ens = make_ensemble(1)
    x = (frames(1) * 200).astype(np.uint8)
    a = ens.predict(x)
    b = ens.predict(x.astype(np.float64))
    np.testing.assert_array_equal(a, b)


def test_fast_path_matches_plain_module():
    """Fused batch norm + channels-last give the plain eval-mode module's output."""
    ens = make_ensemble(2)
    x = frames(2)
    fast = ens.predict(x)
    net = ens.build_member(1)
    assert not net.training
    with torch.no_grad():
        plain = torch.sigmoid(net(torch.from_numpy(x)[:, None])).numpy()
    np.testing.assert_allclose(fast[1], plain, atol=1e-5)
    no_cl = ens.predict(x, channels_last=False)
    np.testing.assert_allclose(no_cl, fast, atol=1e-5)


def test_fuse_batch_norm_keeps_outputs():
    ens = make_ensemble(1)
    net = ens.build_member(0)
    x = torch.from_numpy(frames(1))[:, None]
    with torch.no_grad():
        ref = net(x)
        fused = fuse_batch_norm(ens.build_member(0))(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fuse_batch_norm(ens.build_member(0)).modules())
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-4)


def test_batched_members_path_equals_loop():
    ens = make_ensemble(3)
    x = frames(2)
    loop = ens.predict(x, batched=False)
    batched = ens.predict(x, batched=True)
    np.testing.assert_allclose(batched, loop, atol=1e-5)


def test_tile_spans_cover_once_and_align():
    for size, tile, overlap, mult in [(100, 32, 8, 4), (257, 64, 16, 8), (64, 64, 16, 8), (65, 64, 16, 8)]:
        spans = tile_spans(size, tile, overlap, mult)
        cover = np.zeros(size, int)
        for start, stop, k0, k1 in spans:
            assert start % mult == 0
            assert start <= k0 < k1 <= stop
            cover[k0:k1] += 1
        assert (cover == 1).all()


def test_tiling_equals_whole_frame_away_from_seams():
    """Tiles start on the pooling grid and seams sit mid-overlap: with an overlap wider than the
    receptive field the tiled result equals the whole-frame pass; without overlap it does not."""
    ens = make_ensemble(1)
    x = frames(1, 160, 144, seed=3)
    whole = ens.predict(x, tile=0)
    tiled = ens.predict(x, tile=64, overlap=48, batch_size=3)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    seams = ens.predict(x, tile=64, overlap=0)
    assert np.abs(seams - whole).max() > 1e-3


def test_predict_chunks_stream_all_frames():
    ens = make_ensemble(2)
    x = frames(5, 32, 32)
    full = ens.predict(x)
    got = list(ens.predict_chunks(x, chunk=2))
    assert [s for s, _ in got] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    np.testing.assert_allclose(np.concatenate([p for _, p in got], axis=1), full, atol=1e-6)


def test_mean_std_over_members():
    rng = np.random.default_rng(0)
    p = rng.random((4, 2, 1, 8, 8)).astype(np.float32)
    mean, std = Ensemble.mean_std(p)
    assert mean.shape == std.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(mean, p.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, p.std(0), atol=1e-6)
    m2, s2 = Ensemble.mean_std(p, members=[1, 3])
    np.testing.assert_allclose(m2, p[[1, 3]].mean(0), atol=1e-6)
    with pytest.raises(InputError):
        Ensemble.mean_std(p[0])


def test_softmax_drops_background():
    ens = make_ensemble(2, classes=("C", "Si"), activation="softmax")
    p = ens.predict(frames(1))
    assert p.shape == (2, 1, 2, 40, 52)
    assert (p.sum(axis=2) < 1.0 + 1e-5).all()
    assert (p.sum(axis=2) > 0.0).all()


def test_round_trip_through_arrays_gives_identical_predictions():
    ens = make_ensemble(3, classes=("C", "Si"), activation="softmax")
    ens.members[1].metrics["iou/Si"] = float("nan")
    spec, arrays = ens.to_arrays()
    assert set(k.split("/")[0] for k in arrays) == {"member_000", "member_001", "member_002"}
    text = json.dumps(spec, allow_nan=False)  # strictly JSON-able
    copied = {k: np.array(v, copy=True) for k, v in arrays.items()}
    back = Ensemble.from_arrays(json.loads(text), copied, stage=ens.stage)
    assert len(back) == 3 and back.class_names == ("C", "Si") and back.activation == "softmax"
    assert back.members[1].seed == ens.members[1].seed
    assert back.members[1].history == ens.members[1].history
    assert np.isnan(back.members[1].metrics["iou/Si"])
    for key, value in ens.members[2].state.items():
        assert back.members[2].state[key].dtype == value.dtype
    x = frames(2)
    np.testing.assert_array_equal(back.predict(x), ens.predict(x))


def test_subset_keeps_chosen_members():
    ens = make_ensemble(3)
    sub = ens.subset([2, 0])
    assert len(sub) == 2
    x = frames(1)
    np.testing.assert_allclose(sub.predict(x), ens.predict(x, members=[2, 0]), atol=1e-6)
    with pytest.raises(InputError):
        ens.subset([5])


def test_bad_inputs_raise_input_error():
    ens = make_ensemble(1)
    with pytest.raises(InputError):
        ens.predict(np.zeros((1, 2, 8, 8)))
    with pytest.raises(InputError):
        ens.predict(np.full((8, 8), np.nan))
    with pytest.raises(InputError):
        ens.predict(frames(1), members=[3])
    with pytest.raises(InputError):
        Ensemble("compact-unet", TINY, 1, 2, ("atom",), [], 0.2, "sigmoid")
    spec, arrays = ens.to_arrays()
    arrays.pop(next(iter(arrays)))
    with pytest.raises(InputError):
        Ensemble.from_arrays(spec, arrays)


def test_load_state_refuses_wrong_shapes():
    ens = make_ensemble(1)
    net = default_registry().get_stage("architecture", "compact-unet")({**TINY, "base_filters": 8}).build(1, 1)
    with pytest.raises(InputError):
        load_state(net, ens.members[0].state)


def test_the_architecture_comes_from_the_given_stage_or_registry_never_a_global_one():
    from elit.registry import Registry

    compact = default_registry().get_stage("architecture", "compact-unet")
    spec, arrays = make_ensemble(2).to_arrays()
    bare = Ensemble.from_arrays(spec, arrays)
    with pytest.raises(InputError, match="no architecture stage"):
        bare.predict(frames(1))

    class Renamed(compact):  # the same network under a name only this registry knows
        name = "renamed-unet"

    own = Registry()
    own.add_stage(Renamed, "test")
    spec["architecture"] = "renamed-unet"
    found = with_architecture(Ensemble.from_arrays(spec, arrays), own)
    assert isinstance(found.architecture_stage(), Renamed)
    np.testing.assert_array_equal(found.predict(frames(1)), make_ensemble(2).predict(frames(1)))
    missing = with_architecture(Ensemble.from_arrays(spec, arrays))  # read fine; the name is looked up when needed
    assert len(missing) == 2
    with pytest.raises(Exception, match="renamed-unet"):
        missing.predict(frames(1))
