"""Tests for the built-in refiners (gmm-patches, uncertainty) on synthetic graphene."""

import numpy as np
import pytest
from pydantic import ValidationError

from elit.atoms import locate_atoms
from elit.data import IGNORE, AtomTable, Selection
from elit.errors import InputError
from elit.lattices import graphene_positions
from elit.masks import disc_masks
from elit.testing import check_stage
from elit_builtins.refiners import GmmPatchRefiner, UncertaintyRefiner

PX = 0.2
SHAPE = (112, 112)
CORNER = 64  # atoms with row and col beyond this are amorphous


def haadf(pos, rng, sigma_A=0.35, noise=0.05):
    rr, cc = np.mgrid[: SHAPE[0], : SHAPE[1]]
    img = np.zeros(SHAPE)
    s = sigma_A / PX
    for r, c in pos:
        img += np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * s * s))
    return img + rng.normal(0, noise, SHAPE)


@pytest.fixture(scope="module")
def scene():
    """Two frames of graphene whose bottom-right corner is an amorphous carbon patch."""
    rng = np.random.default_rng(0)
    lattice = graphene_positions((SHAPE[0] * PX, SHAPE[1] * PX), margin=0.0, offset=(0.3, 0.2)) / PX
    corner = (lattice[:, 0] > CORNER) & (lattice[:, 1] > CORNER)
    amorphous = []
    while len(amorphous) < corner.sum():
        p = rng.uniform(CORNER + 2, SHAPE[0] - 1, 2)
        if all(np.hypot(*(p - q)) > 5.5 for q in amorphous):
            amorphous.append(p)
    pos = np.r_[lattice[~corner], np.array(amorphous)]
    frames = np.stack([haadf(pos, rng) for _ in range(2)])
    prob = disc_masks(pos, np.zeros(len(pos), int), SHAPE, 0.5 / PX, n_classes=1)
    preds = np.repeat(prob[None, None], 2, axis=1).astype(np.float32)  # (M=1, N=2, K=1, H, W)
    atoms = locate_atoms(preds[0])
    return frames, preds, atoms


def in_corner(t, margin=0.0):
    return (t.row > CORNER + margin) & (t.col > CORNER + margin)


@pytest.mark.parametrize("fit_atoms", [20_000, 100], ids=["all-atoms", "fitted-on-a-draw"])
def test_gmm_patches_drops_amorphous_keeps_lattice(scene, fit_atoms):
    """Fitted on every atom, or (a long movie's way) on a draw of 100 with every atom assigned after."""
    frames, preds, atoms = scene
    assert len(atoms) > 4 * 100
    ref = GmmPatchRefiner(n_samples=4, crop_A=8.0, fit_atoms=fit_atoms).refine(
        frames, preds, Selection([0], np.ones(1)), atoms, np.random.default_rng(0), PX
    )
    assert any(("fitted on 100 of" in r) == (fit_atoms == 100) for r in ref.reasons if "clustered" in r)
    assert len(ref.kept) + len(ref.dropped) == len(atoms)
    deep = in_corner(atoms, margin=6)  # well inside the amorphous patch
    lattice = (atoms.row < CORNER - 12) | (atoms.col < CORNER - 12)  # well outside it
    kept_keys = set(zip(ref.kept.frame, np.round(ref.kept.row, 3), np.round(ref.kept.col, 3)))
    kept = np.array([(f, round(r, 3), round(c, 3)) in kept_keys for f, r, c in zip(atoms.frame, atoms.row, atoms.col)])
    assert kept[lattice].mean() > 0.95
    assert kept[deep].mean() < 0.05
    assert ref.frames_used == [0, 1]
    assert any("clustered" in r for r in ref.reasons)


def test_cluster_order_is_the_same_a_chunk_of_patches_at_a_time():
    from elit_builtins.refiners import _cluster_order

    rng = np.random.default_rng(1)
    patches = rng.normal(size=(503, 9, 9)).astype(np.float32)
    patches[:250, 4, 6] += 3.0  # group 0's mean patch has a neighbour
    groups = (np.arange(503) >= 250).astype(int)
    whole = _cluster_order(patches, groups, 2, 1.5)
    np.testing.assert_allclose(_cluster_order(patches, groups, 2, 1.5, chunk=64), whole, rtol=1e-12)
    assert whole[0] > 3 * whole[1]


def test_gmm_patches_keeps_a_pure_lattice_whole():
    rng = np.random.default_rng(4)
    pos = graphene_positions((SHAPE[0] * PX, SHAPE[1] * PX), margin=0.0, offset=(0.1, 0.4)) / PX
    frames = np.stack([haadf(pos, rng) for _ in range(2)])
    prob = disc_masks(pos, np.zeros(len(pos), int), SHAPE, 0.5 / PX, n_classes=1)
    preds = np.repeat(prob[None, None], 2, axis=1).astype(np.float32)
    atoms = locate_atoms(preds[0])
    ref = GmmPatchRefiner(n_samples=2, crop_A=8.0).refine(
        frames, preds, Selection([0], np.ones(1)), atoms, np.random.default_rng(0), PX
    )
    # the mixture still splits the atoms, but every group shows the lattice, so none is dropped
    assert len(ref.dropped) == 0 and len(ref.kept) == len(atoms)


def test_training_set_crops_masks_and_positions_agree(scene):
    frames, preds, atoms = scene
    ref = GmmPatchRefiner(n_samples=12, crop_A=9.6, noise_max=0.0, scale_jitter=0.0, avoid_dropped=False).refine(
        frames, preds, Selection([0], np.ones(1)), atoms, np.random.default_rng(1), PX
    )
    ts = ref.training_set
    assert ts.images.shape == (12, 48, 48) and ts.labels.shape == (12, 48, 48)
    assert ts.images.dtype == np.float32 and ts.images.min() >= 0 and ts.images.max() <= 1
    assert set(np.unique(ts.labels)) <= {0, 1, IGNORE}  # IGNORE: around dropped atoms, left out of the loss
    assert (ts.labels == IGNORE).any() == (len(ref.dropped) > 0)
    assert ts.pixel_size == PX and ts.class_names == ("atom",)
    # after rotations and flips, every listed atom sits on its disc and on a bright spot
    for s in range(len(ts)):
        a = ts.atoms.in_frame(s)
        inner = (a.row > 1) & (a.row < 46) & (a.col > 1) & (a.col < 46)
        r, c = np.rint(a.row[inner]).astype(int), np.rint(a.col[inner]).astype(int)
        assert np.all(ts.labels[s, r, c] == 1)
        assert np.mean(ts.images[s, r, c] > np.median(ts.images[s])) > 0.9


def test_crops_keep_the_frames_scale(scene):
    """A crop is not stretched on its own: the network is retrained on what it sees when it predicts a whole frame."""
    frames, preds, atoms = scene
    frames = frames.copy()
    frames[:, :, :40] = frames.min() - 1.0  # a vacuum strip, much darker than the lattice's background
    ref = GmmPatchRefiner(n_samples=24, crop_A=6.4, noise_max=0.0, scale_jitter=0.0, rotate=False, flip=False,
                          avoid_dropped=False).refine(frames, preds, Selection([0], np.ones(1)), atoms,
                                                      np.random.default_rng(4), PX)
    low = np.percentile(ref.training_set.images, 0.5, axis=(1, 2))
    assert low.min() < 0.05  # crops over the vacuum reach the frame's floor
    assert low.max() > 0.2  # crops of lattice alone keep its background above the vacuum (stretched alone: 0)


def test_scale_jitter_and_noise_keep_masks_round(scene):
    frames, preds, atoms = scene
    ref = UncertaintyRefiner(n_samples=6, crop_A=9.6, scale_jitter=0.2, noise_max=0.2).refine(
        frames, preds, Selection([0], np.ones(1)), atoms, np.random.default_rng(2), PX
    )
    ts = ref.training_set
    area = (ts.labels > 0).mean(axis=(1, 2))
    assert np.all(area > 0.05) and np.all(area < 0.5)
    assert np.isfinite(ts.images).all()


def test_avoid_dropped_regions(scene):
    frames, preds, atoms = scene
    sel = Selection([0], np.ones(1))
    drop_corner = atoms.select(slice(None))
    drop_corner.uncertainty = np.where(in_corner(atoms, margin=-8), 1.0, 0.0)
    common = dict(n_samples=30, crop_A=6.4, max_uncertainty=0.5)
    avoid = UncertaintyRefiner(**common).refine(frames, preds, sel, drop_corner, np.random.default_rng(3), PX)
    anywhere = UncertaintyRefiner(**common, avoid_dropped=False).refine(
        frames, preds, sel, drop_corner, np.random.default_rng(3), PX
    )
    assert len(avoid.dropped) == in_corner(atoms, margin=-8).sum()
    empty_avoid = np.mean([((lab == 0) | (lab == IGNORE)).all() for lab in avoid.training_set.labels])
    empty_any = np.mean([((lab == 0) | (lab == IGNORE)).all() for lab in anywhere.training_set.labels])
    assert (anywhere.training_set.labels == IGNORE).any()  # dropped atoms are unsure, not background
    assert empty_avoid == 0 and empty_any > 0


def test_frame_choice_by_scores_and_range(scene):
    frames, preds, atoms = scene
    three = np.concatenate([frames, frames[:1]])
    preds3 = np.concatenate([preds, preds[:, :1]], axis=1)
    atoms3 = locate_atoms(preds3[0])
    sel = Selection([1], np.ones(2), frame_scores=np.array([[0.9, 0.9, 0.9], [0.2, 0.8, 0.9]]))
    ref = UncertaintyRefiner(n_samples=2, crop_A=6.4, frame_quantile=0.5).refine(
        three, preds3, sel, atoms3, np.random.default_rng(0), PX
    )
    assert ref.frames_used == [1, 2]
    assert set(ref.kept.frame.tolist()) == {1, 2}
    ref = UncertaintyRefiner(n_samples=2, crop_A=6.4, frame_quantile=0.0, max_frames=1).refine(
        three, preds3, sel, atoms3, np.random.default_rng(0), PX
    )
    assert ref.frames_used == [2]
    ref = UncertaintyRefiner(n_samples=2, crop_A=6.4, frames=[0, 1]).refine(
        three, preds3, sel, atoms3, np.random.default_rng(0), PX
    )
    assert ref.frames_used == [0]
    with pytest.raises(ValidationError):
        UncertaintyRefiner(frames=[2, 1])


def test_uncertainty_refiner_limits_and_quantile(scene):
    frames, preds, atoms = scene
    noisy = atoms.select(slice(None))
    noisy.uncertainty = np.linspace(0, 1, len(atoms))
    sel = Selection([0], np.ones(1))
    ref = UncertaintyRefiner(n_samples=2, crop_A=6.4, max_uncertainty=0.25).refine(
        frames, preds, sel, noisy, np.random.default_rng(0), PX
    )
    assert ref.kept.uncertainty.max() <= 0.25 and ref.dropped.uncertainty.min() > 0.25
    ref = UncertaintyRefiner(n_samples=2, crop_A=6.4, max_uncertainty=None, uncertainty_quantile=0.5).refine(
        frames, preds, sel, noisy, np.random.default_rng(0), PX
    )
    assert abs(len(ref.kept) - len(atoms) / 2) <= 1


def test_uncertainty_from_all_members(scene):
    frames, preds, atoms = scene
    other = preds[0].copy()
    other[:, :, CORNER:, CORNER:] = 0  # a second member that sees nothing in the corner
    both = np.stack([preds[0], other])
    ref = UncertaintyRefiner(n_samples=2, crop_A=6.4, source="all-members", max_uncertainty=0.2).refine(
        frames, both, Selection([0], np.ones(2)), atoms, np.random.default_rng(0), PX
    )
    assert np.all(in_corner(ref.dropped, margin=-1))
    assert in_corner(ref.kept, margin=1).sum() == 0


def test_no_atoms_is_a_clear_error(scene):
    frames, preds, _ = scene
    with pytest.raises(InputError, match="no located atoms"):
        UncertaintyRefiner(n_samples=2).refine(
            frames, preds, Selection([0], np.ones(1)), AtomTable.empty(), np.random.default_rng(0), PX
        )


@pytest.mark.parametrize("cls", [GmmPatchRefiner, UncertaintyRefiner])
def test_conformance(cls):
    check_stage(cls, {"n_samples": 4})


def test_multiclass_atoms_give_multiclass_masks(scene):
    frames, preds, atoms = scene
    classified = atoms.select(slice(None))
    classified.class_names = ("C", "Si")
    classified.class_index = (np.arange(len(atoms)) % 7 == 0).astype(int)
    ref = UncertaintyRefiner(n_samples=6, crop_A=9.6).refine(
        frames, preds, Selection([0], np.ones(1)), classified, np.random.default_rng(0), PX
    )
    ts = ref.training_set
    assert ts.class_names == ("C", "Si") and ts.n_classes == 2
    assert set(np.unique(ts.labels)) == {0, 1, 2}
    assert ts.atoms.class_names == ("C", "Si")
