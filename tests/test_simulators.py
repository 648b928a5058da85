"""Tests for the built-in simulators (graphene, lattice, coordinates) and the training gallery."""

import numpy as np
import pytest

from elit.errors import ConfigError, InputError
from elit.masks import label_map
from elit.testing import check_stage
from elit_builtins.simulators import CoordinatesSimulator, GrapheneSimulator, LatticeSimulator


def _fast_graphene(**params):
    return GrapheneSimulator(image_size=64, **params)


def _same(a, b):
    return np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


@pytest.fixture(scope="module")
def xyz_path(tmp_path_factory):
    from ase.build import graphene
    from ase.io import write

    sheet = graphene(a=2.46, size=(6, 6, 1), vacuum=5.0)
    sheet[7].symbol = "Si"
    del sheet[[20, 21]]
    moved = sheet.copy()
    moved.positions[:, 0] += 0.3
    path = tmp_path_factory.mktemp("coords") / "sheet.extxyz"
    write(str(path), [sheet, moved], format="extxyz")
    return str(path)


def test_conformance_graphene_and_lattice():
    check_stage(GrapheneSimulator, {"image_size": 48})
    check_stage(GrapheneSimulator, {"image_size": 48, "mode": "removal", "removal_steps": 2})
    check_stage(LatticeSimulator, {"image_size": 48, "labels": "sublattice"})


def test_conformance_coordinates(xyz_path):
    CoordinatesSimulator(path=xyz_path).simulate(1, np.random.default_rng(0), 0.2)  # read once, outside no_file_io
    check_stage(CoordinatesSimulator, {"path": xyz_path, "image_size": 48})


@pytest.mark.parametrize(
    "make",
    [
        lambda: _fast_graphene(multiclass=True),
        lambda: _fast_graphene(mode="removal", removal_steps=3),
        lambda: LatticeSimulator(image_size=64, labels="sublattice"),
    ],
)
def test_seeded(make):
    a = make().simulate(3, np.random.default_rng(7), 0.2)
    b = make().simulate(3, np.random.default_rng(7), 0.2)
    c = make().simulate(3, np.random.default_rng(8), 0.2)
    assert _same(a, b) and not _same(a, c)
    assert a.images.shape == (3, 64, 64) and a.images.dtype == np.float32
    assert a.images.min() >= 0.0 and a.images.max() <= 1.0


def _interior(atoms, frame, size, margin):
    t = atoms.in_frame(frame)
    keep = (t.row > margin) & (t.row < size - 1 - margin) & (t.col > margin) & (t.col < size - 1 - margin)
    return t.select(keep)


@pytest.mark.parametrize("pixel_size", [0.1, 0.2, 0.31])
def test_graphene_labels_and_image_on_true_atoms(pixel_size):
    sim = GrapheneSimulator(image_size=96, amorphous_probability=0.0, hole_probability=0.0, multiclass=True, dopant_fraction_range=(0.01, 0.02))
    ts = sim.simulate(2, np.random.default_rng(3), pixel_size)
    radius_px = 0.5 / pixel_size
    assert ts.pixel_size == pixel_size and ts.class_names == ("C", "Si")
    for frame in range(2):
        atoms = ts.atoms.in_frame(frame)
        assert len(atoms) > 0.8 * 0.382 * (96 * pixel_size) ** 2  # graphene density, minus vacancies
        # labels are exactly the discs at the true sub-pixel positions, away from the edges
        redrawn = label_map(atoms.positions(), atoms.class_index, (96, 96), radius_px)
        inner = slice(int(radius_px) + 3, 96 - int(radius_px) - 3)
        np.testing.assert_array_equal(redrawn[inner, inner], ts.labels[frame][inner, inner])
        # the image peaks on the atoms: intensity centroid around isolated interior atoms
        image = ts.images[frame]
        rr, cc = np.mgrid[0:96, 0:96]
        t = _interior(ts.atoms, frame, 96, 6)
        errors = []
        for r, c in zip(t.row[:20], t.col[:20]):
            win = (rr - r) ** 2 + (cc - c) ** 2 <= (0.45 / pixel_size) ** 2
            w = image * win
            errors.append(np.hypot((w * rr).sum() / w.sum() - r, (w * cc).sum() / w.sum() - c))
        assert np.median(errors) < 0.25


def test_dopants_brighter_and_single_class_default():
    sim = GrapheneSimulator(image_size=96, dopant_fraction_range=(0.03, 0.03), multiclass=True, amorphous_probability=0.0)
    ts = sim.simulate(2, np.random.default_rng(0), 0.2)
    t = ts.atoms
    peak = ts.images[t.frame, np.rint(t.row).clip(0, 95).astype(int), np.rint(t.col).clip(0, 95).astype(int)]
    assert (t.class_index == 1).sum() > 3
    assert peak[t.class_index == 1].mean() > 2 * peak[t.class_index == 0].mean()
    single = GrapheneSimulator(image_size=48).simulate(1, np.random.default_rng(0), 0.2)
    assert single.class_names == ("C",) and set(np.unique(single.labels)) <= {0, 1}


def test_edges_and_small_images():
    ts = GrapheneSimulator(image_size=16).simulate(2, np.random.default_rng(1), 0.5)
    assert ts.images.shape == (2, 16, 16)
    t = ts.atoms
    assert t.row.min() >= -0.5 and t.row.max() < 15.5
    # atoms near the border still have (partial) discs
    near = (t.row < 0.5) | (t.col < 0.5)
    for f, r, c in zip(t.frame[near], t.row[near], t.col[near]):
        assert ts.labels[f, int(np.clip(np.rint(r), 0, 15)), int(np.clip(np.rint(c), 0, 15))] > 0


def test_removal_series_loses_atoms():
    sim = _fast_graphene(mode="removal", removal_steps=4, removal_max_fraction=0.5, vacancy_fraction_range=(0.0, 0.0), amorphous_probability=0.0)
    ts = sim.simulate(4, np.random.default_rng(2), 0.2)
    counts = np.bincount(ts.atoms.frame, minlength=4)
    assert counts[0] > counts[1] > counts[2] > counts[3]
    assert counts[3] < 0.65 * counts[0]


def test_amorphous_label_options():
    params = dict(image_size=64, amorphous_probability=1.0, amorphous_radius_range=(5.0, 6.0), hole_probability=0.0)
    bg = GrapheneSimulator(**params).simulate(2, np.random.default_rng(4), 0.2)
    own = GrapheneSimulator(amorphous_label="class", **params).simulate(2, np.random.default_rng(4), 0.2)
    assert own.class_names == ("C", "amorphous") and (own.labels == 2).any()
    assert (own.atoms.class_index == 1).any() and set(np.unique(bg.labels)) <= {0, 1}
    assert np.array_equal(bg.images, own.images)
    assert (bg.labels > 0).sum() < (own.labels > 0).sum()


def test_config_errors():
    with pytest.raises(Exception):
        GrapheneSimulator(dopants=("Xx",))
    with pytest.raises(Exception):
        GrapheneSimulator(hole_radius_range=(5.0, 2.0))
    with pytest.raises(ConfigError):
        GrapheneSimulator().simulate(0, np.random.default_rng(0), 0.2)


def test_lattice_sublattices_and_second_phase():
    sim = LatticeSimulator(image_size=96, labels="sublattice", second_phase_probability=1.0, vacancy_fraction_range=(0.0, 0.0))
    ts = sim.simulate(2, np.random.default_rng(5), 0.2)
    assert ts.class_names == ("A", "B", "second-phase")
    t = ts.atoms
    assert set(np.unique(t.class_index)) == {0, 1, 2}
    peak = ts.images[t.frame, np.rint(t.row).clip(0, 95).astype(int), np.rint(t.col).clip(0, 95).astype(int)]
    assert peak[t.class_index == 0].mean() > peak[t.class_index == 1].mean()  # B sites dimmer by default
    square = LatticeSimulator(image_size=48, lattice="square", lattice_constant_range=(3.0, 3.0), second_phase_probability=0.0)
    single = square.simulate(1, np.random.default_rng(0), 0.2)
    assert single.class_names == ("atom",)
    assert len(single.atoms) == pytest.approx((48 * 0.2 / 3.0) ** 2, rel=0.35)


def test_coordinates_simulator(xyz_path, tmp_path):
    sim = CoordinatesSimulator(path=xyz_path, classes="element", random_rotation=False, image_size=64)
    ts = sim.simulate(2, np.random.default_rng(0), 0.2)
    assert ts.class_names == ("C", "Si")
    t = ts.atoms
    assert (t.class_index == 1).any() and len(t) > 50
    peak = ts.images[t.frame, np.rint(t.row).clip(0, 63).astype(int), np.rint(t.col).clip(0, 63).astype(int)]
    assert peak[t.class_index == 1].mean() > 1.5 * peak[t.class_index == 0].mean()
    # periodic in-plane tiling: the 6x6 sheet (~15 A) fills a 12.8 A field of view
    assert (ts.labels[0][:8] > 0).any() and (ts.labels[0][-8:] > 0).any()
    again = CoordinatesSimulator(path=xyz_path, classes="element", random_rotation=False, image_size=64)
    assert _same(ts, again.simulate(2, np.random.default_rng(0), 0.2))
    with pytest.raises(InputError):
        CoordinatesSimulator(path=str(tmp_path / "missing.xyz")).simulate(1, np.random.default_rng(0), 0.2)
    with pytest.raises(ConfigError):
        CoordinatesSimulator().simulate(1, np.random.default_rng(0), 0.2)


def test_coordinates_zone_axis_projection(tmp_path):
    from ase.build import bulk
    from ase.io import write

    path = tmp_path / "cu.cif"
    write(str(path), bulk("Cu", "fcc", a=3.6, cubic=True))
    ts = CoordinatesSimulator(path=str(path), zone_axis=(0, 0, 1), random_rotation=False, image_size=64).simulate(
        1, np.random.default_rng(0), 0.2
    )
    # fcc [001]: columns on a square grid of a/2 = 1.8 A
    from scipy.spatial import cKDTree

    pos = ts.atoms.positions() * 0.2
    d, _ = cKDTree(pos).query(pos, k=2)
    assert np.median(d[:, 1]) == pytest.approx(1.8, abs=0.02)


def test_training_gallery(tmp_path):
    from elit.figures import training_gallery

    ts = _fast_graphene(multiclass=True).simulate(3, np.random.default_rng(0), 0.2)
    out = training_gallery(ts, tmp_path / "sub" / "gallery.png", n=8)
    data = open(out, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.parametrize("pixel_size", [0.1, 0.2, 0.3])
def test_pixel_size_recovered_from_simulated_graphene(pixel_size):
    from elit.scale import estimate_pixel_size

    ts = GrapheneSimulator(image_size=192, hole_probability=0.0).simulate(1, np.random.default_rng(11), pixel_size)
    noisy = ts.images[0] + np.random.default_rng(0).normal(0, 0.15, (192, 192))
    estimate, confidence = estimate_pixel_size(noisy, "graphene")
    assert estimate == pytest.approx(pixel_size, rel=0.03) and confidence > 0.3
