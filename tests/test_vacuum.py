"""The vacuum filter's lattice checks (elit.vacuum.in_full_shell, lonely_atoms) on constructed atom tables."""

import numpy as np

from elit.data import AtomTable
from elit.lattices import graphene_positions
from elit.vacuum import in_full_shell, lonely_atoms, signal_share

PX = 0.1


def _table(pos_px: np.ndarray) -> AtomTable:
    n = len(pos_px)
    return AtomTable(np.zeros(n), pos_px[:, 0], pos_px[:, 1], np.zeros(n), np.ones(n), np.zeros(n), class_names=("C",))


def test_dim_lattice_atoms_are_kept_and_noise_in_a_hole_is_not():
    lattice = graphene_positions((40.0, 40.0), margin=0.0)
    centre = np.array([20.0, 20.0])
    hole = np.hypot(*(lattice - centre).T) < 6.0
    atoms_A = lattice[~hole]
    inner = np.hypot(*(atoms_A - centre).T)
    rng = np.random.default_rng(0)
    # dim lattice atoms, far from the hole and the frame edge (complete shells)
    interior = np.flatnonzero((inner > 10.0) & (np.abs(atoms_A - 20.0).max(axis=1) < 16.0))
    dim = rng.choice(interior, 12, replace=False)
    # noise clusters: in the middle of the hole, and on the hole's missing sites next to its edge
    edge_sites = lattice[hole & (np.hypot(*(lattice - centre).T) > 4.6)][:6]
    noise_A = np.vstack([centre + rng.uniform(-2.0, 2.0, (5, 2)), edge_sites])
    duplicate_A = atoms_A[interior[:3]] + np.array([0.5, 0.0])  # a second detection 0.5 A from an atom
    pos = np.vstack([atoms_A, noise_A, duplicate_A]) / PX
    table = _table(pos)
    candidates = np.zeros(len(pos), dtype=bool)
    candidates[dim] = True
    candidates[len(atoms_A):] = True
    kept = in_full_shell(table, candidates)
    assert kept[dim].all()
    assert not kept[len(atoms_A):].any()
    assert not kept[~candidates].any()


def test_too_few_atoms_or_no_candidates_keep_nothing():
    pos = graphene_positions((4.0, 4.0), margin=0.0) / PX
    table = _table(pos)
    assert not in_full_shell(table, np.ones(len(pos), dtype=bool)).any()
    assert not in_full_shell(table, np.zeros(len(pos), dtype=bool)).any()


def _holey_lattice(radius_A: float = 6.0, size_A: float = 40.0):
    """Graphene with a round hole whose edge atoms all keep two lattice neighbours; also the hole's sites."""
    lattice = graphene_positions((size_A, size_A), margin=0.0)
    centre = np.full(2, size_A / 2)
    hole = np.hypot(*(lattice - centre).T) < radius_A
    atoms_A = lattice[~hole]
    keeps_two = np.array([np.sum(np.abs(np.hypot(*(atoms_A - a).T) - 1.42) < 0.2) >= 2 for a in atoms_A])
    return atoms_A[keeps_two], lattice[hole], centre


def test_lonely_detections_are_those_in_vacuum_or_off_a_holes_edge_and_not_the_edge_atoms():
    atoms_A, sites, centre = _holey_lattice()
    r = np.hypot(*(sites - centre).T)
    off_edge = []  # sites of the hole bonded to one edge atom at most, and not to each other
    for a in sites[r > 4.6]:
        others = np.vstack([atoms_A, *off_edge]) if off_edge else atoms_A
        if np.sum(np.abs(np.hypot(*(others - a).T) - 1.42) < 0.3) <= 1 and len(off_edge) < 4:
            off_edge.append(a[None])
    off_edge = np.vstack(off_edge)
    vacuum = centre + np.array([[0.0, 0.0], [1.0, 2.0], [-2.5, 0.5]])
    pos = np.vstack([atoms_A, off_edge, vacuum]) / PX
    lonely = lonely_atoms(_table(pos), (400, 400))
    n = len(atoms_A)
    edge = (np.hypot(*(atoms_A - centre).T) < 7.5)
    assert edge.sum() > 10 and len(off_edge) >= 1
    assert not lonely[:n].any()  # every lattice atom, the hole's edge included
    assert lonely[n:].all()


def test_the_frame_border_hides_one_neighbour_per_border_and_no_more():
    lattice = graphene_positions((40.0, 40.0), margin=0.0)
    assert not lonely_atoms(_table(lattice / PX), (400, 400)).any()  # the border cuts shells: no atom is lonely
    cleared = lattice[(np.abs(lattice - 20.0).max(axis=1) < 14.0) & (np.hypot(*(lattice - 20.0).T) > 8.0)]
    alone = np.array([[0.3, 20.0], [20.0, 39.6], [20.0, 20.0]])  # on a border with no neighbour, and in the middle
    pair = np.array([[0.5, 8.0], [0.5, 9.42]])  # on a border, a bond apart: one neighbour each
    corner = np.array([[0.4, 39.5]])  # two borders may hide two neighbours
    pos = np.vstack([cleared, alone, pair, corner]) / PX
    lonely = lonely_atoms(_table(pos), (400, 400))
    n = len(cleared)
    assert lonely[n:n + 3].all()
    assert not lonely[n + 3:].any()


def _counts_frame(atoms_A: np.ndarray, shape=(300, 300), sigma_A=0.35, seed=0) -> np.ndarray:
    """Poisson counts of Gaussian atoms (about 9 counts each) on a faint background."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    clean = np.full(shape, 0.004)
    s = sigma_A / PX
    for r, c in atoms_A / PX:
        clean += 9.0 / (2 * np.pi * s * s) * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * s * s))
    return np.random.default_rng(seed).poisson(clean).astype(np.float32)[None]


def test_finishing_drops_a_dim_detection_in_a_hole_and_keeps_the_hole_s_edge():
    from elit.config import LocateConfig
    from elit.pipeline import finish_atoms

    atoms_A, _, centre = _holey_lattice(radius_A=5.0, size_A=30.0)
    stray = centre[None]  # 4 stray counts in the hole: about half a typical atom's signal
    raw = _counts_frame(atoms_A)
    rng = np.random.default_rng(1)
    r, c = np.rint(stray[0] / PX).astype(int)
    np.add.at(raw[0], (r + rng.integers(-2, 3, 4), c + rng.integers(-2, 3, 4)), 1)
    # two detections on no counts a bond away from it: dropped as faint first, so no neighbours of the stray
    empty = stray + 1.42 * np.array([[1.0, 0.0], [-0.5, 0.866]])
    table = _table(np.vstack([atoms_A, empty, stray]) / PX)
    plain = dict(refine=False, average_frames=0, classify=False)
    kept, record = finish_atoms(table, raw, PX, PX, LocateConfig(**plain))
    assert 0.4 < signal_share(raw, table, PX)[-1] < 0.6  # too bright for the faint cut alone
    assert record["lonely_dropped"] == 1  # the faint detections beside it are no neighbours: they do not stay
    assert len(kept) == len(atoms_A) + 2 - record["faint_dropped"]  # the lonely one was the stray counts
    assert np.hypot(kept.row - stray[0, 0] / PX, kept.col - stray[0, 1] / PX).min() > 10
    kept_all, record_all = finish_atoms(table, raw, PX, PX, LocateConfig(lonely_fraction=0, **plain))
    assert "lonely_dropped" not in record_all
    assert np.hypot(kept_all.row - stray[0, 0] / PX, kept_all.col - stray[0, 1] / PX).min() < 1
