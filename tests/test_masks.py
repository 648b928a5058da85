"""Tests for elit.masks: disc label maps."""

import numpy as np
import pytest

from elit.masks import disc_masks, label_map


def brute_force(pos, classes, shape, radius):
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    out = np.zeros(shape, np.uint8)
    best = np.full(shape, np.inf)
    for (r, c), k in zip(pos, classes):
        d2 = (rr - r) ** 2 + (cc - c) ** 2
        win = (d2 <= radius**2) & (d2 < best)
        out[win] = k + 1
        best[win] = d2[win]
    return out


@pytest.mark.parametrize("seed,radius", [(0, 2.5), (1, 3.2), (2, 0.7), (3, 6.0)])
def test_matches_brute_force_with_edges_and_overlaps(seed, radius):
    rng = np.random.default_rng(seed)
    shape = (37, 53)
    pos = rng.uniform(-8, 60, (120, 2))  # many outside or near the edges, many overlapping
    classes = rng.integers(0, 3, 120)
    got = label_map(pos, classes, shape, radius)
    assert got.dtype == np.uint8 and got.shape == shape
    np.testing.assert_array_equal(got, brute_force(pos, classes, shape, radius))


def test_disc_area_subpixel():
    # a disc's area follows pi r^2 on average over sub-pixel positions
    rng = np.random.default_rng(5)
    pos = rng.uniform(10, 90, (200, 2))
    areas = [int((label_map(p[None], [0], (100, 100), 3.0) > 0).sum()) for p in pos[:50]]
    assert np.mean(areas) == pytest.approx(np.pi * 9, rel=0.05)
    # the disc follows the sub-pixel position: centroid within 0.15 px
    lm = label_map([[20.4, 30.7]], [1], (50, 50), 4.0)
    rr, cc = np.nonzero(lm)
    assert lm.max() == 2
    assert rr.mean() == pytest.approx(20.4, abs=0.15) and cc.mean() == pytest.approx(30.7, abs=0.15)


def test_partial_disc_at_edge():
    lm = label_map([[-1.0, 10.0]], [0], (20, 20), 3.0)
    # the visible part: rows 0..2 only, with the width of the chord
    assert set(np.nonzero(lm)[0]) == {0, 1, 2}
    assert (lm[0] > 0).sum() == 2 * int(np.floor(np.sqrt(9 - 1))) + 1
    assert not label_map([[-10.0, 10.0], [np.nan, 3.0]], [0, 0], (20, 20), 3.0).any()


def test_nearer_atom_wins():
    lm = label_map([[10.0, 10.0], [10.0, 13.0]], [0, 1], (21, 25), 3.0)
    assert lm[10, 11] == 1 and lm[10, 12] == 2
    assert lm[10, 9] == 1 and lm[10, 15] == 2


def test_input_checks_and_empty():
    assert not label_map(np.zeros((0, 2)), [], (5, 6), 2.0).any()
    with pytest.raises(ValueError):
        label_map([[1.0, 1.0]], [0, 1], (5, 5), 2.0)
    with pytest.raises(ValueError):
        label_map([[1.0, 1.0]], [300], (5, 5), 2.0)


def test_disc_masks_channels_overlap():
    m = disc_masks([[10.0, 10.0], [10.0, 12.0]], [0, 1], (20, 20), 2.5)
    assert m.shape == (2, 20, 20) and m.dtype == np.float32
    assert m[0, 10, 11] == 1 and m[1, 10, 11] == 1
    assert disc_masks([[5.0, 5.0]], [0], (10, 10), 2.0, n_classes=3).shape == (3, 10, 10)


def test_thousands_of_atoms_on_a_large_image():
    rng = np.random.default_rng(0)
    pos = rng.uniform(-5, 1029, (20000, 2))
    lm = label_map(pos, rng.integers(0, 2, len(pos)), (1024, 1024), 3.0)
    covered = (lm > 0).mean()
    expected = 1 - np.exp(-len(pos) * np.pi * 9 / 1034**2)  # random discs: Poisson coverage
    assert covered == pytest.approx(expected, rel=0.03)
    assert set(np.unique(lm)) == {0, 1, 2}
