"""Label-free quality checks on constructed atom tables (elit.quality)."""

import numpy as np
import pytest

from elit.data import AtomTable
from elit.lattices import graphene_positions
from elit.quality import nearest_neighbour_distances, quality_summary, vacuum_atoms

PX = 0.1


def _graphene(size_A=30.0, frame=0):
    pos = graphene_positions((size_A, size_A), margin=0.0) / PX
    n = len(pos)
    return AtomTable(np.full(n, frame), pos[:, 0], pos[:, 1], np.zeros(n), np.ones(n), np.zeros(n),
                     class_names=("C", "Si"))


def test_clean_graphene_passes_and_damage_shows():
    atoms = _graphene()
    q = quality_summary(atoms, PX)
    assert q["nn_median_A"] == pytest.approx(1.42, abs=0.01)
    assert q["three_neighbour_share"] == pytest.approx(1.0)
    assert q["n_vacuum"] == 0 and q["dopants"] == []
    assert sum(q["nn_histogram"]["counts"]) == len(atoms)
    # remove a tenth of the atoms at random and add a duplicate: the share falls
    rng = np.random.default_rng(0)
    keep = rng.uniform(size=len(atoms)) > 0.1
    damaged = AtomTable.concatenate([atoms.select(keep), atoms.select([5])])
    damaged.row[-1] += 2.0  # 0.2 A from atom 5: a duplicate detection
    assert quality_summary(damaged, PX)["three_neighbour_share"] < 0.8


def test_dopants_and_vacuum_atoms_are_listed():
    atoms = _graphene(20.0)
    atoms.class_index[7] = 1
    lone = AtomTable([0], [1000.0], [1000.0], [0], [0.6], [0.0], class_names=("C", "Si"))
    both = AtomTable.concatenate([atoms, lone])
    q = quality_summary(both, PX)
    assert q["majority_class"] == "C"
    assert [(d["class_name"], d["x"], d["y"]) for d in q["dopants"]] == [("Si", round(atoms.col[7], 2), round(atoms.row[7], 2))]
    assert q["n_vacuum"] == 1 and q["vacuum"][0]["x"] == 1000.0
    assert vacuum_atoms(both, PX, bond_A=None).sum() == 1  # with the median distance instead of the bond


def test_frames_are_checked_separately():
    a, b = _graphene(15.0, 0), _graphene(15.0, 1)
    b.col += 0.3 / PX  # shifted: would make false neighbours if frames were mixed
    both = AtomTable.concatenate([a, b])
    assert np.allclose(nearest_neighbour_distances(both, PX), 1.42, atol=0.01)
    assert len(quality_summary(both, PX)["three_neighbour_share_per_frame"]) == 2
    assert quality_summary(AtomTable.empty(), PX)["three_neighbour_share"] is None


def test_report_draws_the_label_free_checks(tmp_path):
    """`elit report` writes quality_last.png: neighbour distances, dopants, atoms in vacuum."""
    from elit.experiments import graphene_movie
    from elit.pipeline import Pipeline
    from elit.report import write_report

    movie = graphene_movie(n_frames=1, size=64, pixel_size=0.2, seed=1)
    from elit.testing import tiny_config

    cfg = tiny_config(seed=0, max_iterations=0)
    Pipeline(cfg).run(movie.frames, pixel_size=0.2, store=tmp_path / "run.h5")
    paths = write_report(tmp_path / "run.h5", tmp_path / "report")
    assert tmp_path / "report" / "quality_last.png" in paths
    assert (tmp_path / "report" / "quality_last.png").stat().st_size > 10_000


def test_filled_atoms_and_frame_averaging_are_reported():
    atoms = _graphene(20.0)
    q = quality_summary(atoms, PX)
    assert q["n_filled"] == 0 and q["filled"] == [] and q["mean_averaged"] == 1.0
    atoms.filled = np.zeros(len(atoms))
    atoms.filled[3] = 1
    atoms.n_averaged = np.full(len(atoms), 3.0)
    q = quality_summary(atoms, PX)
    assert q["n_filled"] == 1 and q["filled"][0]["x"] == round(atoms.col[3], 2) and q["mean_averaged"] == 3.0
