"""The vacuum filter's lattice check (elit.vacuum.in_full_shell) on constructed atom tables."""

import numpy as np

from elit.data import AtomTable
from elit.lattices import graphene_positions
from elit.vacuum import in_full_shell

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
