"""Tests for the multi-swa ensemble trainer, the losses and the device helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from elit.data import TrainingSet
from elit.devices import cuda_available, resolve_device, set_threads
from elit.ensemble import Ensemble, load_state
from elit.errors import ConfigError
from elit.losses import LOSSES, activation_for, make_loss, output_channels, resolve_loss
from elit.plugins import default_registry
from elit_builtins.architectures import CompactUNetArchitecture
from elit_builtins.trainers import MultiSWATrainer, PatchSampler, member_seeds, split_held_out

ARCH = CompactUNetArchitecture(base_filters=4, depth=2, blocks=(1, 1, 1))
FAST = dict(steps=8, batch_size=4, patch_size=32, eval_every=4, val_patches=4, bn_batches=3, progress=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blob_set(n=6, size=40, n_classes=1, seed=0) -> TrainingSet:
    """Gaussian blobs on a jittered grid, discs as labels; class k is brighter with k."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size), np.float32)
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        off = rng.uniform(0, 7, 2)
        for r in np.arange(off[0], size, 7.0):
            for c in np.arange(off[1], size, 7.0):
                if rng.random() < 0.85:
                    r2, c2 = r + rng.normal(0, 0.6), c + rng.normal(0, 0.6)
                    k = int(rng.integers(n_classes))
                    d2 = (yy - r2) ** 2 + (xx - c2) ** 2
                    images[i] += (1.0 + 1.5 * k) * np.exp(-d2 / 4.5)
                    labels[i][d2 <= 6.25] = k + 1
        images[i] += rng.normal(0, 0.05, (size, size))
        images[i] = (images[i] - images[i].min()) / np.ptp(images[i])
    return TrainingSet(images, labels, tuple(f"c{k}" for k in range(n_classes)), 0.2)


def states_equal(a, b) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- trainer


def test_fit_returns_ensemble_with_distinct_seeded_members():
    ts = blob_set()
    trainer = MultiSWATrainer(n_members=2, **FAST)
    ens = trainer.fit(ts, ARCH, seed=7)
    assert isinstance(ens, Ensemble) and len(ens) == 2
    assert ens.architecture == "compact-unet" and ens.activation == "sigmoid"
    assert ens.pixel_size == 0.2 and ens.class_names == ("c0",)
    m0, m1 = ens.members
    assert [m0.seed, m1.seed] == member_seeds(7, 2)
    assert m0.seed != m1.seed
    assert not states_equal(m0.state, m1.state)
    for key in ("iou/c0", "iou", "val_loss", "steps", "seconds", "swa_samples"):
        assert key in m0.metrics
    assert m0.metrics["steps"] == 8
    assert m0.history["step"] == [4.0, 8.0]
    assert len(m0.history["val_loss"]) == 2 and len(m0.history["train_loss"]) == 2
    assert ens.predict(ts.images[:1]).shape == (2, 1, 1, 40, 40)
    assert ens.metadata["trainer"] == "multi-swa" and ens.metadata["seed"] == 7


def test_same_root_seed_reproduces_weights():
    ts = blob_set()
    a = MultiSWATrainer(n_members=1, **FAST).fit(ts, ARCH, seed=3)
    b = MultiSWATrainer(n_members=1, **FAST).fit(ts, ARCH, seed=3)
    c = MultiSWATrainer(n_members=1, **FAST).fit(ts, ARCH, seed=4)
    assert states_equal(a.members[0].state, b.members[0].state)
    assert not states_equal(a.members[0].state, c.members[0].state)


def test_member_seeds_extend_with_ensemble_size():
    assert member_seeds(5, 3) == member_seeds(5, 6)[:3]
    assert len(set(member_seeds(5, 6))) == 6


def test_swa_differs_from_last_iterate_and_batch_norm_is_recomputed():
    ts = blob_set(n=4)
    trainer = MultiSWATrainer(n_members=1, **{**FAST, "steps": 12, "swa_fraction": 0.5})
    ens = trainer.fit(ts, ARCH, seed=1)
    state, last = ens.members[0].state, trainer.last_iterate_
    assert ens.members[0].metrics["swa_samples"] == 6
    assert not np.allclose(state["head.weight"], last["head.weight"])
    # update_bn resets the statistics, then counts exactly the bn_batches it used
    counts = {k: int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    assert counts and set(counts.values()) == {FAST["bn_batches"]}
    assert {int(v) for k, v in last.items() if k.endswith("num_batches_tracked")} == {12}
    # the first batch norm's running mean is the mean of the first conv's output for the SWA weights
    net = ens.build_member(0)
    with torch.no_grad():
        conv = net.encoder[0][0](torch.from_numpy(ts.images)[:, None])
    expected = conv.mean(dim=(0, 2, 3)).numpy()
    got = state["encoder.0.1.running_mean"]
    np.testing.assert_allclose(got, expected, rtol=0.1, atol=0.02)
    assert not np.allclose(got, last["encoder.0.1.running_mean"], rtol=1e-4, atol=1e-5)


def test_early_stopping_runs_swa_over_last_fraction():
    ts = blob_set()
    cfg = {**FAST, "steps": 40, "eval_every": 2, "patience": 1, "min_steps": 0, "min_delta": 0.99}
    member = MultiSWATrainer(n_members=1, **cfg).fit(ts, ARCH, seed=0).members[0]
    # plateau declared at step 4; SWA then covers the last quarter: 4 + ceil(4 * 0.25 / 0.75) = 6 steps
    assert member.metrics["stopped_early"] == 1.0
    assert member.metrics["steps"] == 6
    assert member.metrics["swa_samples"] == 2


@pytest.mark.parametrize("loss", ["bce", "dice", "focal", "bce+dice", "ce", "ce+dice"])
def test_every_loss_trains_one_class(loss):
    ts = blob_set(n=3)
    ens = MultiSWATrainer(n_members=1, loss=loss, **{**FAST, "steps": 2, "eval_every": 2}).fit(ts, ARCH, seed=0)
    assert ens.activation == activation_for(loss)
    assert ens.out_channels == (2 if loss.startswith("ce") else 1)
    p = ens.predict(ts.images[:1])
    assert p.shape == (1, 1, 1, 40, 40) and np.isfinite(p).all()
    assert np.isfinite(ens.members[0].metrics["val_loss"])


def test_two_class_cross_entropy_learns_both_classes():
    ts = blob_set(n=6, n_classes=2, seed=2)
    arch = CompactUNetArchitecture(base_filters=8, depth=2, blocks=(1, 1, 1))
    ens = MultiSWATrainer(n_members=1, **{**FAST, "steps": 80, "eval_every": 20, "learning_rate": 5e-3}).fit(ts, arch, seed=0)
    assert ens.activation == "softmax" and ens.out_channels == 3
    m = ens.members[0].metrics
    assert set(k for k in m if k.startswith("iou/")) == {"iou/c0", "iou/c1"}
    assert m["iou/c0"] > 0.7 and m["iou/c1"] > 0.7  # both atom classes found, background excluded
    p = ens.predict(ts.images[:2])
    assert p.shape == (1, 2, 2, 40, 40)


def test_warm_start_begins_from_init_members():
    ts = blob_set()
    init = MultiSWATrainer(n_members=2, **FAST).fit(ts, ARCH, seed=0)
    still = {**FAST, "learning_rate": 1e-9, "steps": 2, "eval_every": 2}
    warm = MultiSWATrainer(n_members=3, **still).fit(ts, ARCH, seed=9, init=init)
    for i in range(3):
        ref = init.members[i % 2].state
        np.testing.assert_allclose(warm.members[i].state["head.weight"], ref["head.weight"], atol=1e-5)
        assert warm.members[i].metrics["warm_start"] == 1.0
    cold = MultiSWATrainer(n_members=1, **still).fit(ts, ARCH, seed=9)
    assert not np.allclose(cold.members[0].state["head.weight"], init.members[0].state["head.weight"], atol=1e-3)


def test_warm_start_across_class_count_loads_matching_tensors():
    init = MultiSWATrainer(n_members=1, **FAST).fit(blob_set(), ARCH, seed=0)
    ts2 = blob_set(n_classes=2)
    still = {**FAST, "learning_rate": 1e-9, "steps": 2, "eval_every": 2}
    ens = MultiSWATrainer(n_members=1, **still).fit(ts2, ARCH, seed=0, init=init)
    s, ref = ens.members[0].state, init.members[0].state
    assert s["head.weight"].shape[0] == 3 and ref["head.weight"].shape[0] == 1
    np.testing.assert_allclose(s["encoder.0.0.weight"], ref["encoder.0.0.weight"], atol=1e-5)
    other = CompactUNetArchitecture(base_filters=6, depth=2, blocks=(1, 1, 1))
    with pytest.raises(ConfigError, match="warm start"):
        MultiSWATrainer(n_members=1, **still).fit(ts2, other, seed=0, init=init)


def test_resume_skips_completed_members():
    ts = blob_set()
    full = MultiSWATrainer(n_members=3, **FAST).fit(ts, ARCH, seed=5)
    seen = []
    resumed = MultiSWATrainer(n_members=3, **FAST).fit(
        ts, ARCH, seed=5, completed={0: full.members[0], 2: full.members[2]}, on_member=lambda i, m: seen.append(i)
    )
    assert seen == [1]
    assert resumed.members[0] is full.members[0] and resumed.members[2] is full.members[2]
    assert states_equal(resumed.members[1].state, full.members[1].state)
    with pytest.raises(ConfigError):
        MultiSWATrainer(n_members=2, **FAST).fit(ts, ARCH, seed=5, completed={4: full.members[0]})


def test_on_member_called_in_order():
    seen = []
    MultiSWATrainer(n_members=2, **{**FAST, "steps": 2, "eval_every": 2}).fit(
        blob_set(n=3), ARCH, seed=0, on_member=lambda i, m: seen.append((i, m.seed))
    )
    assert [i for i, _ in seen] == [0, 1]
    assert [s for _, s in seen] == member_seeds(0, 2)


def test_training_images_larger_than_patches_and_single_image_split():
    big = blob_set(n=1, size=96)
    (tr, _), (va, _), held = split_held_out(big, 0.25, 16, np.random.default_rng(0))
    assert held and tr.shape == (1, 72, 96) and va.shape == (1, 24, 96)
    ens = MultiSWATrainer(n_members=1, **{**FAST, "steps": 2, "eval_every": 2, "val_fraction": 0.4}).fit(big, ARCH, seed=0)
    assert ens.members[0].metrics["held_out"] == 1.0
    sampler = PatchSampler(big.images, big.labels, 32, 5, np.random.default_rng(0), flips=True)
    x, y = sampler.sample()
    assert x.shape == (5, 32, 32) and y.shape == (5, 32, 32)


def test_trainer_config_is_strict_and_registered():
    assert default_registry().get_stage("trainer", "multi-swa") is MultiSWATrainer
    with pytest.raises(ValidationError):
        MultiSWATrainer(n_member=3)
    with pytest.raises(ValidationError):
        MultiSWATrainer(loss="hinge")
    with pytest.raises(ValidationError):
        MultiSWATrainer(swa_fraction=1.0)


def test_trained_member_reloads_exactly():
    ens = MultiSWATrainer(n_members=1, **FAST).fit(blob_set(), ARCH, seed=0)
    net = ARCH.build(1, 1)
    load_state(net, ens.members[0].state)
    assert all(np.array_equal(v.numpy(), ens.members[0].state[k]) for k, v in net.state_dict().items())


# ----------------------------------------------------------------------------- losses and devices


def test_losses_resolve_and_score():
    assert resolve_loss("auto", 1) == "bce+dice" and resolve_loss("auto", 2) == "ce"
    assert output_channels("ce", 1) == 2 and output_channels("bce", 3) == 3
    with pytest.raises(ConfigError):
        resolve_loss("hinge", 1)
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:5, 2:5] = 1
    good, bad = (target * 20 - 10), -(target * 20 - 10)
    for name in ("bce", "dice", "focal", "bce+dice"):
        fn = make_loss(name, 1)
        assert float(fn(good, target)) < 0.05 < float(fn(bad, target))
    labels = target[:, 0].long()
    logits = torch.stack([-(target[:, 0] * 20 - 10), target[:, 0] * 20 - 10], dim=1)
    for name in ("ce", "ce+dice"):
        fn = make_loss(name, 1)
        assert float(fn(logits, labels)) < 0.05 < float(fn(-logits, labels))
    assert set(LOSSES) >= {"bce", "dice", "focal", "bce+dice", "ce"}


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if cuda_available() else "cpu")
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if not cuda_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    before = torch.get_num_threads()
    assert set_threads(None) == before
    assert set_threads(1) == 1
    set_threads(before)


@pytest.mark.parametrize("name", ["bce", "dice", "focal", "bce+dice", "ce", "ce+dice"])
def test_ignored_pixels_do_not_count_in_the_loss(name):
    """Whatever the network says where the label is IGNORE, the loss is the same."""
    import torch

    from elit.data import IGNORE
    from elit.losses import activation_for, make_loss, output_channels

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (2, 8, 8), generator=gen)
    labels[:, :, 4:] = IGNORE
    n_out = output_channels(name, 1)
    z1 = torch.randn(2, n_out, 8, 8, generator=gen)
    z2 = z1.clone()
    z2[:, :, :, 4:] = torch.randn(2, n_out, 8, 4, generator=gen) * 10
    if activation_for(name) == "softmax":
        target = labels
    else:
        target = torch.where(labels == IGNORE, -1.0, (labels == 1).float())[:, None]
    loss = make_loss(name, 1)
    assert float(loss(z1, target)) == pytest.approx(float(loss(z2, target)), rel=1e-5)


def test_class_weights_make_a_rare_class_count():
    import torch

    from elit.losses import make_loss

    target = torch.zeros(1, 2, 8, 8)
    target[0, 1, 0, 0] = 1.0  # one pixel of a rare class, predicted wrong
    z = torch.full((1, 2, 8, 8), -4.0)
    plain = make_loss("bce", 2)(z, target)
    weighted = make_loss("bce", 2, class_weights=[1.0, 1.0, 10.0])(z, target)
    assert float(weighted) > 2 * float(plain)
