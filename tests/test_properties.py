"""Property-based tests (hypothesis) of the input boundary and two core algorithms.

* readers: random 2-D / 3-D shapes and dtypes written as ``.npy`` and ``.tif``
  and read back: either the documented clear error, or ``(N, H, W)`` finite
  float32 frames equal to the data (channel-last stacks transposed);
* masks from coordinates (:func:`elit.masks.label_map`, :func:`~elit.masks.disc_masks`):
  random atoms, also outside the image, random radius;
* atom location (:func:`elit.atoms.locate_atoms`): random probability maps.

Hypothesis runs derandomized (a fixed sequence of examples, so CI is
deterministic), with modest example counts and no deadline (the machine is shared).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from elit.atoms import locate_atoms
from elit.errors import InputError
from elit.masks import disc_masks, label_map
from elit.readers import MAX_CHANNELS_LAST, MIN_SIZE, read_image

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
"""Shared by every property: the same examples on every run."""

DTYPES = [np.uint8, np.uint16, np.int32, np.float16, np.float32, np.float64]


# ---------------------------------------------------------------------- readers
def _expected_frames(arr: np.ndarray) -> np.ndarray | None:
    """What :func:`read_image` should return for ``arr`` (None: a clear InputError is expected).

    Mirrors the documented rules: axes of length 1 dropped, uint8 with a last axis
    of 3/4 is colour, a small last axis after two large ones is frames stored last,
    frames need at least MIN_SIZE pixels a side and must not be constant.
    """
    a = arr
    if a.ndim > 2 and 1 in a.shape and a.squeeze().ndim >= 2:
        a = a.squeeze()
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8:
        return None  # colour: converted to luminance, checked by tests/test_readers.py; not modelled here
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3:
        n0, n1, n2 = a.shape
        if n2 <= MAX_CHANNELS_LAST and n0 >= MIN_SIZE and n1 >= MIN_SIZE and n0 > n2 and n1 > n2:
            a = np.moveaxis(a, -1, 0)
    else:
        return None
    if a.shape[1] < MIN_SIZE or a.shape[2] < MIN_SIZE:
        return None
    out = a.astype(np.float32)
    flat = out.reshape(len(out), -1)
    if (flat.max(axis=1) == flat.min(axis=1)).any():
        return None
    return out


@st.composite
def image_arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    layout = draw(st.sampled_from(["2d", "stack", "channel-last"]))
    side = st.integers(1, 40)
    if layout == "2d":
        shape = (draw(side), draw(side))
    elif layout == "stack":
        shape = (draw(st.integers(1, 4)), draw(side), draw(side))
    else:
        shape = (draw(st.integers(12, 40)), draw(st.integers(12, 40)), draw(st.integers(2, 5)))
    if dtype.kind == "f":
        elements = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=dtype.itemsize * 8)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    # a few distinct values, placed at random: cheap to draw, and constant frames do happen
    values = draw(st.lists(elements, min_size=1, max_size=4))
    picks = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, len(values) - 1)))
    return np.asarray(values, dtype=dtype)[picks]


@settings(max_examples=60, **SETTINGS)
@given(image_arrays())
def test_npy_round_trip(arr):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "img.npy"
        np.save(path, arr, allow_pickle=False)
        expected = _expected_frames(arr)
        if expected is None:
            if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8:
                try:  # colour: gray frames or a clear error, never a crash
                    got = read_image(path)
                except InputError as err:
                    assert "img.npy" in str(err)
                else:
                    assert got.frames.dtype == np.float32 and np.isfinite(got.frames).all()
                return
            with pytest.raises(InputError, match="img.npy"):
                read_image(path)
            return
        got = read_image(path)
        assert got.frames.dtype == np.float32 and got.frames.flags.c_contiguous
        assert np.isfinite(got.frames).all()
        np.testing.assert_array_equal(got.frames, expected)
        assert got.dtype == str(arr.dtype)


@settings(max_examples=30, **SETTINGS)
@given(image_arrays().filter(lambda a: not (a.ndim == 3 and a.shape[-1] <= MAX_CHANNELS_LAST)))
def test_tiff_round_trip(arr):
    import tifffile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "img.tif"
        tifffile.imwrite(path, arr, photometric="minisblack")
        expected = _expected_frames(arr)
        if expected is None:
            with pytest.raises(InputError, match="img.tif"):
                read_image(path)
            return
        got = read_image(path)
        assert got.frames.dtype == np.float32 and np.isfinite(got.frames).all()
        np.testing.assert_array_equal(got.frames, expected)


@settings(max_examples=40, **SETTINGS)
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(16, 24), st.integers(16, 24)),
               elements=st.floats(0, 100, width=32)),
    st.data(),
)
def test_nan_fill_leaves_finite_frames_and_keeps_good_pixels(frames, data):
    bad = data.draw(hnp.arrays(bool, frames.shape))
    kind = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    dirty = np.where(bad, np.float32(kind), frames)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dirty.npy"
        np.save(path, dirty, allow_pickle=False)
        if bad.any():
            with pytest.raises(InputError, match="NaN/Inf"):
                read_image(path)  # refused by default
        try:
            got = read_image(path, nan_policy="fill")
        except InputError as err:
            # only a frame with no finite pixel, or one that is constant after filling, may be refused
            assert "no finite pixels" in str(err) or "constant" in str(err)
            return
        assert np.isfinite(got.frames).all()
        np.testing.assert_array_equal(got.frames[~bad], frames[~bad])


# ---------------------------------------------------------------------- masks from coordinates
@st.composite
def atoms_on_a_grid(draw):
    h, w = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    n = draw(st.integers(0, 25))
    coord = st.floats(-8, 38, allow_nan=False, width=64)
    positions = np.array(draw(st.lists(st.tuples(coord, coord), min_size=n, max_size=n)), dtype=np.float64).reshape(-1, 2)
    classes = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int64)
    radius = draw(st.floats(0, 6, allow_nan=False))
    return positions, classes, (h, w), radius


def _distances(positions, shape):
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (rr[None] - positions[:, 0, None, None]) ** 2 + (cc[None] - positions[:, 1, None, None]) ** 2


@settings(max_examples=80, **SETTINGS)
@given(atoms_on_a_grid())
def test_label_map_invariants(case):
    positions, classes, shape, radius = case
    labels = label_map(positions, classes, shape, radius)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0} | set((classes + 1).tolist())
    if not len(positions):
        assert not labels.any()
        return
    d2 = _distances(positions, shape)  # (n, H, W)
    inside = d2 <= radius**2
    in_image = (positions[:, 0] >= -0.5) & (positions[:, 0] < shape[0] - 0.5) & (
        positions[:, 1] >= -0.5) & (positions[:, 1] < shape[1] - 0.5)
    # every pixel within the radius of an atom whose centre lies in the image is labelled
    assert labels[inside[in_image].any(axis=0)].all()
    # ... and more generally every pixel within the radius of any atom; nothing else
    np.testing.assert_array_equal(labels > 0, inside.any(axis=0))
    # a labelled pixel carries the class of an atom nearest to it
    nearest = np.where(inside, d2, np.inf).min(axis=0)
    for r, c in zip(*np.nonzero(labels)):
        owners = np.nonzero(inside[:, r, c] & (d2[:, r, c] == nearest[r, c]))[0]
        assert labels[r, c] in set((classes[owners] + 1).tolist())


@settings(max_examples=50, **SETTINGS)
@given(atoms_on_a_grid())
def test_disc_masks_hold_every_disc_of_their_class(case):
    positions, classes, shape, radius = case
    masks = disc_masks(positions, classes, shape, radius, n_classes=4)
    assert masks.shape == (4,) + shape and masks.dtype == np.float32
    assert set(np.unique(masks)) <= {0.0, 1.0}
    d2 = _distances(positions, shape) if len(positions) else np.zeros((0,) + shape)
    for k in range(4):
        want = (d2[classes == k] <= radius**2).any(axis=0) if (classes == k).any() else np.zeros(shape, bool)
        np.testing.assert_array_equal(masks[k] > 0, want)


def test_label_map_ignores_non_finite_positions():
    labels = label_map([[np.nan, 3.0], [np.inf, -np.inf], [4.0, 4.0]], [0, 1, 2], (9, 9), 1.0)
    assert set(np.unique(labels)) == {0, 3}


# ---------------------------------------------------------------------- atom location
@st.composite
def probability_maps(draw):
    n, k = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    style = draw(st.sampled_from(["uniform", "sparse", "blobs"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if style == "uniform":
        prob = rng.random((n, k, h, w))
    elif style == "sparse":
        prob = (rng.random((n, k, h, w)) < 0.1) * rng.random((n, k, h, w))
    else:
        rr, cc = np.mgrid[0:h, 0:w]
        prob = np.zeros((n, k, h, w))
        for _ in range(draw(st.integers(0, 6))):
            f, c = rng.integers(n), rng.integers(k)
            r0, c0, s = rng.uniform(-2, h + 1), rng.uniform(-2, w + 1), rng.uniform(0.5, 3)
            prob[f, c] = np.maximum(prob[f, c], np.exp(-((rr - r0) ** 2 + (cc - c0) ** 2) / (2 * s**2)))
    members = np.clip(prob[None] + rng.normal(0, 0.05, (draw(st.integers(1, 3)),) + prob.shape), 0, 1)
    threshold = draw(st.floats(0.05, 0.95))
    return prob.astype(np.float32), members.astype(np.float32), threshold


def _check_atoms(atoms, shape, prob, threshold):
    n, k, h, w = shape
    assert len(atoms.row) == len(atoms.col) == len(atoms.frame) == len(atoms.probability)
    if len(atoms) == 0:
        return
    assert np.isfinite(atoms.row).all() and np.isfinite(atoms.col).all()
    # a centroid of pixel centres lies between the first and last pixel centre (up to rounding: 15.000000000000002)
    eps = 1e-9
    assert (atoms.row >= -eps).all() and (atoms.row <= h - 1 + eps).all()
    assert (atoms.col >= -eps).all() and (atoms.col <= w - 1 + eps).all()
    assert ((atoms.frame >= 0) & (atoms.frame < n)).all()
    assert ((atoms.class_index >= 0) & (atoms.class_index < k)).all()
    assert ((atoms.probability >= threshold) & (atoms.probability <= 1)).all()
    assert (np.isfinite(atoms.uncertainty) & (atoms.uncertainty >= 0)).all()
    # the reported probability is the map's value somewhere (the blob's peak)
    for f, c, p in zip(atoms.frame[:20], atoms.class_index[:20], atoms.probability[:20]):
        assert np.isclose(prob[f, c], p).any()


@settings(max_examples=60, **SETTINGS)
@given(probability_maps(), st.integers(1, 4))
def test_locate_atoms_invariants(case, min_area):
    prob, members, threshold = case
    names = tuple(f"c{i}" for i in range(prob.shape[1]))
    atoms = locate_atoms(prob, threshold=threshold, min_area=min_area, member_probabilities=members, class_names=names)
    _check_atoms(atoms, prob.shape, prob, threshold)
    assert atoms.class_names == names


@settings(max_examples=60, **SETTINGS)
@given(probability_maps())
def test_locate_atoms_refined_positions_stay_in_the_image(case):
    prob, members, threshold = case
    atoms = locate_atoms(prob, threshold=threshold, refine=True, class_names=tuple(f"c{i}" for i in range(prob.shape[1])))
    _check_atoms(atoms, prob.shape, prob, threshold)


@settings(max_examples=20, **SETTINGS)
@given(st.floats(-10, 10).filter(lambda t: not 0 < t <= 1))
def test_locate_atoms_refuses_thresholds_outside_0_1(threshold):
    with pytest.raises(InputError, match="threshold"):
        locate_atoms(np.zeros((1, 8, 8)), threshold=threshold)
