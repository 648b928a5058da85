"""Tests for the standard augmenter."""

import numpy as np
import pytest

from elit.data import AtomTable, TrainingSet
from elit.masks import label_map
from elit.scale import normalize
from elit.testing import check_stage
from elit_builtins.augmenters import StandardAugmenter, _rotate_flip, _rotate_flip_points

NO_INTENSITY = dict(
    blur_probability=0.0,
    resize_probability=0.0,
    gamma_probability=0.0,
    gradient_probability=0.0,
    poisson_probability=0.0,
    gaussian_probability=0.0,
    scanline_probability=0.0,
)
NO_GEOMETRY = dict(rotate90=False, flip=False, zoom_probability=0.0, scale_jitter_probability=0.0, drift_probability=0.0)


def _atoms_set(n=3, size=80, seed=0, radius=2.5):
    """Gaussian atoms with labels drawn from the same positions, plus their AtomTable."""
    from elit.lattices import render_atoms

    rng = np.random.default_rng(seed)
    images, labels, frames, rows, cols = [], [], [], [], []
    for f in range(n):
        pos = rng.uniform(2, size - 3, (40, 2))
        images.append(render_atoms(pos, 1.0, (size, size), 1.6))
        labels.append(label_map(pos, np.zeros(40, int), (size, size), radius))
        frames.append(np.full(40, f))
        rows.append(pos[:, 0])
        cols.append(pos[:, 1])
    k = 40 * n
    atoms = AtomTable(np.concatenate(frames), np.concatenate(rows), np.concatenate(cols), np.zeros(k), np.ones(k), np.zeros(k))
    return TrainingSet(normalize(np.stack(images)), np.stack(labels), ("atom",), 0.2, atoms)


def test_conformance():
    check_stage(StandardAugmenter, {"crop_size": 32})


def test_shapes_copies_and_seeds():
    ts = _atoms_set()
    aug = StandardAugmenter(crop_size=48, copies=2)
    a = aug.augment(ts, np.random.default_rng(1))
    b = aug.augment(ts, np.random.default_rng(1))
    c = aug.augment(ts, np.random.default_rng(2))
    assert a.images.shape == (6, 48, 48) and a.labels.shape == (6, 48, 48)
    assert a.images.dtype == np.float32 and a.images.min() >= 0 and a.images.max() <= 1
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.class_names == ts.class_names and a.pixel_size == ts.pixel_size
    assert set(np.unique(a.atoms.frame)) <= set(range(6))


def test_crop_rotation_flip_exact():
    ts = _atoms_set(n=3)
    ts.images = ts.labels.astype(np.float32)  # an image equal to its labels (normalising keeps 0/1)
    aug = StandardAugmenter(crop_size=40, **NO_INTENSITY, scale_jitter_probability=0.0, zoom_probability=0.0, drift_probability=0.0)
    out = aug.augment(ts, np.random.default_rng(3))
    np.testing.assert_array_equal(out.labels, out.images.astype(np.uint8))
    assert out.labels.sum() > 0


@pytest.mark.parametrize("seed", range(4))
def test_geometry_moves_labels_and_atoms_together(seed):
    ts = _atoms_set(n=4, seed=seed)
    aug = StandardAugmenter(
        crop_size=56, **NO_INTENSITY, zoom_probability=0.5, zoom_range=(1.0, 1.6), scale_jitter=0.08, scale_jitter_probability=0.5, drift_probability=0.5, drift_range=(0.02, 0.04)
    )
    out = aug.augment(ts, np.random.default_rng(seed))
    assert len(out.atoms) > 0
    for f in range(len(out)):
        t = out.atoms.in_frame(f)
        inner = (t.row > 1) & (t.row < 54) & (t.col > 1) & (t.col < 54)
        r = np.rint(t.row[inner]).astype(int)
        c = np.rint(t.col[inner]).astype(int)
        # every moved atom sits in a label disc and on a bright image peak
        assert (out.labels[f][r, c] > 0).mean() > 0.97
        assert out.images[f][r, c].mean() > 0.5


def test_intensity_only_keeps_labels():
    ts = _atoms_set(n=2)
    out = StandardAugmenter(crop_size=80, **NO_GEOMETRY, blur_probability=1.0, gamma_probability=1.0, poisson_probability=1.0, gaussian_probability=1.0, scanline_probability=1.0).augment(
        ts, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(out.labels, ts.labels)
    np.testing.assert_allclose(out.atoms.row, ts.atoms.row)
    assert not np.allclose(out.images, ts.images, atol=0.05)
    # the images still correlate with the clean ones (noise did not wipe them out)
    assert np.corrcoef(out.images.ravel(), ts.images.ravel())[0, 1] > 0.3


def test_identity_when_everything_is_off():
    ts = _atoms_set(n=2)
    out = StandardAugmenter(crop_size=80, **NO_GEOMETRY, **NO_INTENSITY).augment(ts, np.random.default_rng(0))
    np.testing.assert_allclose(out.images, ts.images, atol=0.01)  # only renormalised
    np.testing.assert_array_equal(out.labels, ts.labels)


def test_crop_larger_than_image_and_no_atoms():
    ts = _atoms_set(n=1, size=30)
    ts = TrainingSet(ts.images, ts.labels, ts.class_names, ts.pixel_size, None)
    out = StandardAugmenter(crop_size=48).augment(ts, np.random.default_rng(0))
    assert out.images.shape == (1, 48, 48) and out.atoms is None
    assert np.isfinite(out.images).all()


@pytest.mark.parametrize("k,flip", [(0, True), (1, False), (2, True), (3, False), (3, True)])
def test_rotate_flip_points_match_arrays(k, flip):
    a = np.zeros((9, 9), np.uint8)
    a[2, 7] = 1
    moved = _rotate_flip(a, k, flip)
    r, c = _rotate_flip_points([2.0], [7.0], 9, k, flip)
    assert moved[int(r[0]), int(c[0])] == 1


def test_config_validation():
    with pytest.raises(Exception):
        StandardAugmenter(gamma_range=(2.0, 0.5))
    with pytest.raises(Exception):
        StandardAugmenter(dose_range=(0.0, 10.0))
    with pytest.raises(Exception):
        StandardAugmenter(crop_size=4)
