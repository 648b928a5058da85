"""Tests for elit.lattices: projected lattice positions and Gaussian rendering."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from elit.lattices import graphene_positions, perovskite_positions, render_atoms, square_positions


def _neighbour_distances(pos, k=3):
    d, _ = cKDTree(pos).query(pos, k=k + 1)
    return d[:, 1:]


@pytest.mark.parametrize("rotation", [0.0, 0.37, 1.2])
def test_graphene_bonds_and_density(rotation):
    pos = graphene_positions((40.0, 50.0), rotation=rotation, offset=(0.3, 1.1), margin=0.0)
    interior = np.all((pos > 3) & (pos < np.array([37.0, 47.0])), axis=1)
    d = _neighbour_distances(pos)[interior]
    np.testing.assert_allclose(d, 2.46 / np.sqrt(3), atol=1e-9)  # three bonds of 1.42 A
    density = len(pos) / (40.0 * 50.0)
    assert density == pytest.approx(0.382, rel=0.03)


def test_graphene_covers_rectangle_plus_margin():
    pos = graphene_positions((20.0, 30.0), rotation=0.5, offset=(7.0, 3.0), margin=3.0)
    assert pos.min(axis=0)[0] >= -3.0 and pos.max(axis=0)[0] < 23.0
    assert pos.min(axis=0)[1] >= -3.0 and pos.max(axis=0)[1] < 33.0
    # no gaps: every point of the padded rectangle is within one bond of an atom
    grid = np.stack(np.meshgrid(np.linspace(-1.5, 21.5, 40), np.linspace(-1.5, 31.5, 50), indexing="ij"), -1).reshape(-1, 2)
    d, _ = cKDTree(pos).query(grid)
    assert d.max() <= 1.43
    # the offset is an atom position
    assert np.min(np.hypot(*(pos - [7.0, 3.0]).T)) < 1e-9


def test_graphene_lattice_constant():
    pos = graphene_positions((30.0, 30.0), a=2.0, margin=0.0)
    d = _neighbour_distances(pos)
    assert np.median(d) == pytest.approx(2.0 / np.sqrt(3))


def test_perovskite_sublattices():
    pos, sub = perovskite_positions((39.05, 39.05), rotation=0.0, offset=(0.0, 0.0), margin=0.0)
    assert set(np.unique(sub)) == {0, 1}
    assert abs((sub == 0).sum() - (sub == 1).sum()) <= 25
    a_sites = pos[sub == 0]
    np.testing.assert_allclose(_neighbour_distances(a_sites, 4)[np.all((a_sites > 5) & (a_sites < 34), axis=1)], 3.905, atol=1e-9)
    d, _ = cKDTree(a_sites).query(pos[sub == 1])
    np.testing.assert_allclose(d, 3.905 / np.sqrt(2), atol=1e-9)


def test_square_positions():
    pos = square_positions((10.0, 10.0), 2.0, rotation=np.pi / 4, margin=1.0)
    d = _neighbour_distances(pos, 4)
    inner = np.all((pos > 2) & (pos < 8), axis=1)
    np.testing.assert_allclose(d[inner], 2.0, atol=1e-9)
    with pytest.raises(ValueError):
        square_positions((10.0, 10.0), 0.0)


def test_render_atoms_subpixel_centroid_and_edges():
    pos = np.array([[10.3, 12.7], [-1.5, 20.0], [30.0, 45.0]])
    image = render_atoms(pos, [1.0, 1.0, 2.0], (32, 40), 1.5)
    assert image.dtype == np.float32 and image.shape == (32, 40)
    rr, cc = np.mgrid[0:32, 0:40]
    window = (np.abs(rr - 10) <= 5) & (np.abs(cc - 13) <= 5)
    w = image * window
    assert (w * rr).sum() / w.sum() == pytest.approx(10.3, abs=0.02)
    assert (w * cc).sum() / w.sum() == pytest.approx(12.7, abs=0.02)
    assert image[10, 13] == pytest.approx(np.exp(-(0.3**2 + 0.3**2) / (2 * 1.5**2)), rel=1e-5)
    # the atom outside the top edge contributes its tail, the one outside the right edge too
    assert image[0, 20] > 0.5 * np.exp(-(1.5**2) / (2 * 1.5**2))
    assert image[31, 39] > 0
    assert np.all(np.isfinite(image))


def test_render_atoms_empty():
    assert not render_atoms(np.zeros((0, 2)), [], (8, 8), 1.0).any()
