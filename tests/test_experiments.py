"""Tests of the synthetic experiments (graphene movie, perovskite with an island)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

from elit.errors import ConfigError
from elit.experiments import Probe, ScanModel, SyntheticExperiment, graphene_movie, perovskite_image

SMALL = dict(n_frames=6, size=128, pixel_size=0.1)


@pytest.fixture(scope="module")
def movie() -> SyntheticExperiment:
    return graphene_movie(seed=3, **SMALL)


@pytest.fixture(scope="module")
def clean_movie() -> SyntheticExperiment:
    return graphene_movie(seed=3, dose=None, **SMALL)


@pytest.fixture(scope="module")
def perovskite() -> SyntheticExperiment:
    return perovskite_image(size=192, seed=1, dose=None)


def peak_offsets(image: np.ndarray, rc: np.ndarray, half: int = 2) -> np.ndarray:
    """Distance (px) from each position to the sub-pixel maximum found within ``half`` px of it."""
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    out = []
    for r, c in rc:
        r0, c0 = int(round(r)), int(round(c))
        if not (half + 1 <= r0 < h - half - 1 and half + 1 <= c0 < w - half - 1):
            continue
        win = image[r0 - half:r0 + half + 1, c0 - half:c0 + half + 1]
        i, j = np.unravel_index(np.argmax(win), win.shape)
        pr, pc = r0 - half + i, c0 - half + j
        if not (1 <= pr < h - 1 and 1 <= pc < w - 1):
            out.append(np.inf)
            continue
        y, x = image[pr - 1:pr + 2, pc], image[pr, pc - 1:pc + 2]
        dr = 0.5 * (y[0] - y[2]) / (y[0] - 2 * y[1] + y[2])
        dc = 0.5 * (x[0] - x[2]) / (x[0] - 2 * x[1] + x[2])
        out.append(np.hypot(pr + dr - r, pc + dc - c))
    return np.asarray(out)


def test_shapes_and_dtypes(movie):
    n, size = SMALL["n_frames"], SMALL["size"]
    assert movie.frames.shape == (n, size, size) and movie.frames.dtype == np.float32
    assert movie.hole_masks.shape == (n, size, size) and movie.hole_masks.dtype == bool
    assert movie.truth.class_names == ("C", "Si") and movie.amorphous.class_names == ("C", "Si")
    assert set(np.unique(movie.truth.frame)) == set(range(n))
    assert set(np.unique(movie.truth.class_index)) == {0, 1}
    for table in (movie.truth, movie.amorphous):
        assert np.all((table.row >= -0.5) & (table.row < size - 0.5))
        assert np.all((table.col >= -0.5) & (table.col < size - 0.5))
    assert len(movie.amorphous) > 0
    assert movie.pixel_size == 0.1 and movie.name == "graphene_movie" and len(movie) == n
    json.dumps(movie.description)  # provenance must be storable as JSON


def test_raw_counts_are_not_normalised(movie, clean_movie):
    # default dose: 10 electrons per pixel on average in the first frame
    assert 8.0 < movie.frames[0].mean() < 12.0
    assert np.all(np.isfinite(movie.frames))
    assert clean_movie.frames[0].mean() == pytest.approx(1.0, rel=1e-5)


def test_graphene_density_is_physical(clean_movie):
    # about 38.2 atoms/nm^2; the amorphous patch and the image edge take a few away
    area_nm2 = (SMALL["size"] * SMALL["pixel_size"] / 10) ** 2
    lattice_plus_amorphous = len(clean_movie.truth.in_frame(0)) + len(clean_movie.amorphous.in_frame(0))
    assert 0.8 * 38.2 * area_nm2 < lattice_plus_amorphous < 1.1 * 38.2 * area_nm2
    # lattice atoms have three neighbours at the C-C distance (1.42 A = 14.2 px, give or take the
    # scan distortion)
    pos = clean_movie.truth.in_frame(0).positions()
    d, _ = cKDTree(pos).query(pos, k=4)
    full = d[:, 3] < 17.0  # atoms with all three neighbours in the image
    assert full.mean() > 0.6
    assert np.median(d[full, 1:]) == pytest.approx(14.2, abs=0.4)


def test_same_seed_same_data_other_seed_other_data():
    a = graphene_movie(n_frames=3, size=96, seed=7)
    b = graphene_movie(n_frames=3, size=96, seed=7)
    c = graphene_movie(n_frames=3, size=96, seed=8)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.truth.positions(), b.truth.positions())
    np.testing.assert_array_equal(a.hole_masks, b.hole_masks)
    assert a.description == b.description
    assert not np.array_equal(a.frames, c.frames)
    g = graphene_movie(n_frames=3, size=96, seed=np.random.default_rng(7))
    h = graphene_movie(n_frames=3, size=96, seed=np.random.default_rng(7))
    np.testing.assert_array_equal(g.frames, h.frames)


def test_geometry_does_not_depend_on_dose(movie, clean_movie):
    np.testing.assert_array_equal(movie.truth.positions(), clean_movie.truth.positions())
    np.testing.assert_array_equal(movie.amorphous.positions(), clean_movie.amorphous.positions())
    np.testing.assert_array_equal(movie.hole_masks, clean_movie.hole_masks)
    # the noisy frames scatter around the clean ones (same physics, same background)
    scale = movie.description["dose"] / 1.0
    assert np.corrcoef(movie.frames[0].ravel(), clean_movie.frames[0].ravel())[0, 1] > 0.6
    assert movie.frames[0].mean() == pytest.approx(scale * clean_movie.frames[0].mean(), rel=0.05)


def test_truth_sits_on_intensity_maxima_without_disturbances():
    # isotropic probe, no thermal motion, no dopants/hole/patch: maxima within 0.2 px of the truth
    movie = graphene_movie(n_frames=2, size=128, seed=3, dose=None, probe=Probe(astigmatism=0.0),
                           thermal_jitter=0.0, hole_radius=0.0, amorphous_radius=0.0, n_dopants=0)
    for f in range(2):
        offsets = peak_offsets(movie.frames[f], movie.truth.in_frame(f).positions())
        assert len(offsets) > 50
        assert offsets.max() < 0.2


def test_truth_sits_on_intensity_maxima_default_physics(clean_movie):
    # astigmatism and neighbours' tails move maxima by a few hundredths of an Angstrom at most,
    # except next to a bright dopant or amorphous atom
    for f in range(SMALL["n_frames"]):
        t, a = clean_movie.truth.in_frame(f), clean_movie.amorphous.in_frame(f)
        bright = np.concatenate([t.positions()[t.class_index == 1], a.positions()])
        far = cKDTree(bright).query(t.positions())[0] > 30 if len(bright) else np.ones(len(t), bool)
        offsets = peak_offsets(clean_movie.frames[f], t.positions()[far])
        assert np.median(offsets) < 0.35
        assert np.quantile(offsets, 0.9) < 0.7


def test_no_atoms_inside_the_hole_and_the_hole_grows(movie):
    areas = movie.hole_masks.sum(axis=(1, 2))
    first = movie.description["hole_first_frame"]
    assert first == SMALL["n_frames"] // 3
    assert np.all(areas[:first] == 0)
    assert np.all(np.diff(areas[first:]) > 0) and areas[-1] > 500
    for table in (movie.truth, movie.amorphous):
        r = np.clip(np.rint(table.row).astype(int), 0, SMALL["size"] - 1)
        c = np.clip(np.rint(table.col).astype(int), 0, SMALL["size"] - 1)
        assert not movie.hole_masks[table.frame, r, c].any()
    # atoms are kept at least ~2 px away from the hole mask
    last = SMALL["n_frames"] - 1
    hole_px = np.argwhere(movie.hole_masks[last])
    d = cKDTree(hole_px).query(movie.truth.in_frame(last).positions())[0]
    assert d.min() > 2.0
    # fewer lattice atoms as the hole grows
    counts = np.bincount(movie.truth.frame)
    assert counts[-1] <= counts[0] - 4


def test_hole_is_dark(clean_movie):
    f = SMALL["n_frames"] - 1
    frame, hole = clean_movie.frames[f], clean_movie.hole_masks[f]
    assert frame[hole].mean() < 0.6 * frame[~hole].mean()


def test_dopants_are_brighter_than_carbon(movie, clean_movie):
    for data, margin in ((clean_movie, 1.5), (movie, 1.5)):
        t = data.truth
        image = data.frames
        # mean of a 3x3 window at each atom (noise averages down a little)
        r = np.clip(np.rint(t.row).astype(int), 1, SMALL["size"] - 2)
        c = np.clip(np.rint(t.col).astype(int), 1, SMALL["size"] - 2)
        values = np.mean([image[t.frame, r + i, c + j] for i in (-1, 0, 1) for j in (-1, 0, 1)], axis=0)
        si, carbon = values[t.class_index == 1], values[t.class_index == 0]
        assert len(si) >= SMALL["n_frames"]  # dopants persist through the movie
        assert si.min() > margin * np.quantile(carbon, 0.99)


def test_amorphous_atoms_are_not_on_the_lattice(clean_movie):
    for f in range(SMALL["n_frames"]):
        lattice = clean_movie.truth.in_frame(f).positions()
        amorphous = clean_movie.amorphous.in_frame(f).positions()
        if len(amorphous) == 0:
            continue
        d = cKDTree(lattice).query(amorphous)[0]
        assert d.min() > 8.0  # 1.1 A apart, less thermal motion

def test_amorphous_patch_is_disordered_at_graphene_density():
    movie = graphene_movie(n_frames=1, size=256, seed=2, dose=None, hole_radius=0.0, amorphous_radius=4.0,
                           thermal_jitter=0.0)
    am = movie.amorphous.positions() * movie.pixel_size
    # ~0.382 atoms per square Angstrom (part of the patch may lie outside the field)
    assert 0.5 * 0.382 * np.pi * 4.0**2 < len(am) < 1.2 * 0.382 * np.pi * 4.0**2
    # random spacings (at least ~1.1 A, less the scan distortion), unlike the lattice's single 1.42 A bond
    nn = cKDTree(am).query(am, k=2)[0][:, 1]
    assert nn.min() > 1.0 and nn.std() > 0.08
    lattice = movie.truth.positions() * movie.pixel_size
    nn_lattice = cKDTree(lattice).query(lattice, k=4)[0][:, 1:]
    nn_lattice = nn_lattice[nn_lattice[:, 2] < 1.7]  # atoms with all three neighbours
    assert np.median(nn_lattice) == pytest.approx(1.42, abs=0.05)
    assert np.quantile(nn_lattice, 0.9) - np.quantile(nn_lattice, 0.1) < 0.15


def test_bad_parameters_raise_config_error():
    with pytest.raises(ConfigError):
        graphene_movie(n_frames=2, size=64, pixel_size=-0.1)
    with pytest.raises(ConfigError):
        graphene_movie(n_frames=2, size=64, dose=0)
    with pytest.raises(ConfigError):
        graphene_movie(n_frames=0, size=64)
    with pytest.raises(ConfigError):
        perovskite_image(size=64, island_fraction=0.95)


def test_noise_free_rendering_has_no_line_noise(clean_movie, movie):
    # row means of the clean frame vary smoothly; the noisy one carries per-line offsets
    def line_roughness(frame):
        m = frame.mean(axis=1)
        return np.abs(np.diff(m, 2)).mean() / m.mean()

    assert line_roughness(movie.frames[0]) > 3 * line_roughness(clean_movie.frames[0])


def test_scan_model_can_switch_distortions_off():
    still = ScanModel(drift_speed=0.0, drift_walk=0.0, flyback_amplitude=0.0, mains_amplitude=0.0)
    movie = graphene_movie(n_frames=3, size=96, seed=1, dose=None, thermal_jitter=0.0, scan=still,
                           hole_radius=0.0, amorphous_radius=0.0)
    # without drift or distortion, every frame shows the same atoms at the same places
    p0, p2 = movie.truth.in_frame(0).positions(), movie.truth.in_frame(2).positions()
    assert len(p0) == len(p2)
    np.testing.assert_allclose(p0, p2, atol=1e-6)


def test_perovskite_truth_and_contrast(perovskite):
    t = perovskite.truth
    assert perovskite.frames.shape == (1, 192, 192) and perovskite.frames.dtype == np.float32
    assert t.class_names == ("A", "B", "island")
    assert perovskite.hole_masks is None and len(perovskite.amorphous) == 0
    counts = np.bincount(t.class_index, minlength=3)
    assert np.all(counts > 10)
    offsets = peak_offsets(perovskite.frames[0], t.positions())
    assert np.quantile(offsets, 0.95) < 0.3
    # A columns brighter than island columns brighter than B columns (defaults 1, 0.45, 0.4)
    r, c = np.rint(t.row).astype(int), np.rint(t.col).astype(int)
    peak = perovskite.frames[0][r, c]
    med = [np.median(peak[t.class_index == k]) for k in range(3)]
    assert med[0] > 1.5 * med[2] and med[0] > 1.5 * med[1]


def test_perovskite_spacings(perovskite):
    t = perovskite.truth
    px = perovskite.pixel_size
    island = t.positions()[t.class_index == 2]
    d = cKDTree(island).query(island, k=2)[0][:, 1]
    assert np.median(d) * px == pytest.approx(2.09, abs=0.1)
    a_sites = t.positions()[t.class_index == 0]
    d = cKDTree(a_sites).query(a_sites, k=2)[0][:, 1]
    assert np.median(d) * px == pytest.approx(3.905, abs=0.15)
    # the island is one compact region: its atoms are far from the centre of the A sites' spread
    everything = cKDTree(t.positions())
    assert np.all(everything.query(island, k=2)[0][:, 1] * px > 1.5)


def test_perovskite_reproducible_and_noisy_by_default():
    a = perovskite_image(size=96, seed=4)
    b = perovskite_image(size=96, seed=4)
    np.testing.assert_array_equal(a.frames, b.frames)
    clean = perovskite_image(size=96, seed=4, dose=None)
    np.testing.assert_array_equal(a.truth.positions(), clean.truth.positions())
    assert a.frames[0].mean() == pytest.approx(30.0, rel=0.1)
