"""Averaging an atom's position over the frames of a movie (elit.temporal)."""

import numpy as np
import pytest

from elit.data import AtomTable
from elit.errors import InputError
from elit.lattices import graphene_positions
from elit.scale import positions_to_working
from elit.temporal import average_over_frames

PX = 0.1  # Angstrom per pixel
SIZE_A = 30.0


def movie_atoms(n_frames=5, drift_A=(0.35, -0.2), noise_A=0.05, seed=0):
    """A drifting graphene sheet seen in ``n_frames`` frames, each position with its own noise.

    Returns the table (pixels) and each row's true position and site index.
    """
    rng = np.random.default_rng(seed)
    sites = graphene_positions((SIZE_A, SIZE_A), rotation=0.2, margin=0.0)
    sites = sites[(sites > 2.0).all(axis=1) & (sites < SIZE_A - 2.0).all(axis=1)]
    frames, true, site_index = [], [], []
    for f in range(n_frames):
        pos = sites + np.asarray(drift_A) * f
        frames.append(np.full(len(sites), f))
        true.append(pos)
        site_index.append(np.arange(len(sites)))
    true = np.concatenate(true)
    seen = true + rng.normal(0.0, noise_A, true.shape)
    n = len(true)
    atoms = AtomTable(np.concatenate(frames), seen[:, 0] / PX, seen[:, 1] / PX, np.zeros(n), np.ones(n), np.zeros(n))
    return atoms, true / PX, np.concatenate(site_index)


def rmse_A(rows_cols, true):
    return float(np.sqrt(np.mean(np.sum((rows_cols - true) ** 2, axis=1))) * PX)


def test_static_atoms_are_averaged_and_frame_positions_kept():
    atoms, true, _ = movie_atoms()
    out, record = average_over_frames(atoms, PX, window=3)
    before, after = rmse_A(atoms.positions(), true), rmse_A(out.positions(), true)
    assert after < 0.55 * before  # 4-5 frames each: ~1/sqrt(4.5) of the error
    assert np.array_equal(out.row_frame, atoms.row) and np.array_equal(out.col_frame, atoms.col)
    assert out.n_averaged.min() >= 4 and out.n_averaged.max() == 5
    assert 0.1 < record["gate_A"] <= 0.3 and record["linked"] == len(atoms)


def test_an_atom_that_moved_or_vanished_is_not_averaged_with_where_it_was():
    atoms, true, site = movie_atoms()
    mover = (site == 40) & (atoms.frame >= 2)  # jumps 0.6 A from frame 2 on
    atoms.row[mover] += 0.6 / PX
    true[mover, 0] += 0.6 / PX
    gone = np.flatnonzero((site == 80) & (atoms.frame == 3))
    keep = np.ones(len(atoms), bool)
    keep[gone] = False
    atoms, true, site = atoms.select(keep), true[keep], site[keep]
    out, _ = average_over_frames(atoms, PX, window=3)
    before = np.hypot(*(atoms.positions()[site == 40] - true[site == 40]).T)
    after = np.hypot(*(out.positions()[site == 40] - true[site == 40]).T)
    assert after.max() < 0.12 / PX  # never pulled towards its old or new place (0.6 A away)
    assert out.n_averaged[site == 40].tolist() == [2, 2, 3, 3, 3]  # frames 0-1, then 2-4, among themselves
    assert after.mean() < before.mean()
    assert out.n_averaged[site == 80].tolist() == [3, 4, 4, 3]  # frame 3 lost it; frames 0, 1, 2, 4 combine within 3


def test_single_frames_and_window_zero_are_left_alone():
    atoms, _, _ = movie_atoms(n_frames=1)
    out, record = average_over_frames(atoms, PX)
    assert np.array_equal(out.positions(), atoms.positions()) and (out.n_averaged == 1).all()
    atoms, _, _ = movie_atoms()
    out, record = average_over_frames(atoms, PX, window=0)
    assert np.array_equal(out.positions(), atoms.positions()) and record["linked"] == 0
    with pytest.raises(InputError):
        average_over_frames(atoms, PX, window=-1)


def test_drift_up_to_a_third_of_a_lattice_vector_per_frame_is_registered():
    atoms, true, _ = movie_atoms(drift_A=(0.8, 0.5))
    out, _ = average_over_frames(atoms, PX, window=2)
    assert rmse_A(out.positions(), true) < 0.6 * rmse_A(atoms.positions(), true)


def test_scaling_keeps_the_frame_positions_with_the_averaged_ones():
    atoms, _, _ = movie_atoms(n_frames=2)
    out, _ = average_over_frames(atoms, PX)
    half = out.scaled(0.5)
    rows, cols = positions_to_working(out.row_frame, out.col_frame, 0.5)
    assert np.array_equal(half.row_frame, rows) and np.array_equal(half.col_frame, cols)
    assert np.allclose(half.row - half.row_frame, (out.row - out.row_frame) * 0.5)


def rendered(atoms, true, shape=(300, 300), dark=()):
    """Noise-free frames of the true positions (rows ``dark`` left out of the image)."""
    from elit.lattices import render_atoms

    show = np.ones(len(true), bool)
    show[list(dark)] = False
    frames = []
    for f in range(int(atoms.frame.max()) + 1):
        mine = show & (atoms.frame == f)
        frames.append(render_atoms(true[mine], np.ones(mine.sum()), shape, 3.0) + 0.05)
    return np.stack(frames)


def test_an_atom_a_frame_missed_is_filled_in_from_the_frames_around_it():
    from elit.temporal import fill_gaps, link_frames

    atoms, true, site = movie_atoms()
    raw = rendered(atoms, true)
    missed = np.flatnonzero((site == 50) & (atoms.frame == 2))[0]
    dark = np.flatnonzero((site == 90) & (atoms.frame == 2))[0]  # gone from the image of frame 2 only
    keep = np.ones(len(atoms), bool)
    keep[[missed, dark]] = False
    raw = rendered(atoms, true, dark=[dark])
    seen = atoms.select(keep)
    links = link_frames(seen, PX, window=3)
    out, record = fill_gaps(seen, links, raw, PX, window=3)
    assert record["filled"] == 1 and len(out) == len(seen) + 1 and np.all(np.diff(out.frame) >= 0)
    new = out.select(out.filled == 1)
    assert new.frame[0] == 2 and np.hypot(*(new.positions()[0] - true[missed])) < 0.05 / PX
    assert new.n_averaged[0] == 4  # frames 0, 1, 3, 4
    assert (out.filled == 0).sum() == len(seen)  # the atom dark in frame 2 (site 90) is not filled


def test_nothing_is_filled_past_the_last_sighting_or_on_an_atom_already_there():
    from elit.temporal import fill_gaps, link_frames

    atoms, true, site = movie_atoms()
    raw = rendered(atoms, true)
    gone = (site == 50) & (atoms.frame >= 3)  # removed for good from frame 3 (a growing hole)
    seen = atoms.select(~gone)
    out, record = fill_gaps(seen, link_frames(seen, PX, window=3), raw, PX, window=3)
    assert record["filled"] == 0 and len(out) == len(seen)


def test_the_first_frame_is_filled_from_frames_1_and_2_and_the_last_frame_is_not():
    from elit.temporal import fill_gaps, link_frames

    atoms, true, site = movie_atoms()
    first = np.flatnonzero((site == 50) & (atoms.frame == 0))[0]  # missed by frame 0, seen in 1 and 2
    once = np.flatnonzero((site == 60) & (atoms.frame <= 1))  # seen again in frame 2 only
    dark = np.flatnonzero((site == 90) & (atoms.frame == 0))[0]  # gone from the image of frame 0
    last = np.flatnonzero((site == 70) & (atoms.frame == 4))[0]  # the last frame has no frame after it
    keep = np.ones(len(atoms), bool)
    keep[[first, *once, dark, last]] = False
    raw = rendered(atoms, true, dark=[dark])
    seen = atoms.select(keep)
    links = link_frames(seen, PX, window=3)
    out, record = fill_gaps(seen, links, raw, PX, window=3)
    new = out.select(out.filled == 1)
    assert record["filled"] == 1 and new.frame[0] == 0
    assert np.hypot(*(new.positions()[0] - true[first])) < 0.05 / PX
    assert new.n_averaged[0] == 3  # frames 1, 2, 3
    off, record = fill_gaps(seen, links, raw, PX, window=3, first_frame=False)
    assert record["filled"] == 0 and len(off) == len(seen)


def test_a_sighting_placed_off_beyond_the_gate_is_joined_to_its_track_not_doubled():
    from elit.temporal import fill_gaps, link_frames

    atoms, true, site = movie_atoms(noise_A=0.02)
    raw = rendered(atoms, true)
    off = np.flatnonzero((site == 50) & (atoms.frame == 2))[0]
    atoms.row[off] += 0.55 / PX  # beyond the gate, within half a bond of where the atom is
    links = link_frames(atoms, PX, window=3)
    assert not any(off in i or off in j for i, j in links.pairs.values())
    atoms, _ = average_over_frames(atoms, PX, links=links)
    out, record = fill_gaps(atoms, links, raw, PX, window=3)
    assert record["filled"] == 0 and record["relinked"] == 1 and len(out) == len(atoms)
    assert out.n_averaged[off] == 5  # its own sighting and frames 0, 1, 3, 4
    assert np.hypot(*(out.positions()[off] - true[off])) < 0.15 / PX  # the mean of five, one 0.55 A off
    kept, record = fill_gaps(atoms, links, raw, PX, window=3, relink=False)
    assert record["relinked"] == 0 and kept.positions()[off][0] == atoms.row[off]


def test_the_drift_is_found_wherever_it_falls_among_the_vote_bins():
    # a lattice maps onto itself under its lattice vectors: a drift that falls on the corner of a vote
    # bin, its votes split four ways, once lost to a lattice vector that fell in a bin's middle
    from elit.temporal import link_frames

    rng = np.random.default_rng(1)
    for k in range(60):
        drift_A = rng.uniform(-1.0, 1.0, 2)
        atoms, _, _ = movie_atoms(n_frames=2, drift_A=tuple(drift_A), noise_A=0.1, seed=k)
        shift_px = link_frames(atoms, PX, window=1).maps[(0, 1)][2]
        assert np.hypot(*(shift_px - drift_A / PX)) < 1.0, (k, drift_A)


def test_a_drift_beyond_half_a_lattice_vector_is_found_from_what_is_not_lattice():
    # a field of view on a larger sheet with a hole: shifted by a lattice vector the lattice still matches
    # itself, and a smaller shift leaves more of the two frames overlapping; only the hole tells them apart
    from elit.temporal import link_frames

    rng = np.random.default_rng(2)
    sites = graphene_positions((50.0, 50.0), rotation=0.2, margin=0.0)
    sites = sites[np.hypot(*(sites - 25.0).T) > 4.0]  # a hole of 4 A radius
    for k, drift_A in enumerate([(1.6, 0.7), (-1.2, 1.3), (0.4, -1.9), (1.9, -0.3)]):
        frames = []
        for f in range(2):
            pos = sites + np.asarray(drift_A) * f - 10.0  # the sheet moves under a 30 A field of view
            pos = pos[((pos > 0.0) & (pos < SIZE_A)).all(axis=1)]
            frames.append(pos + rng.normal(0.0, 0.05, pos.shape))
        n = [len(x) for x in frames]
        pos = np.concatenate(frames) / PX
        atoms = AtomTable(np.repeat([0, 1], n), pos[:, 0], pos[:, 1], np.zeros(sum(n)), np.ones(sum(n)), np.zeros(sum(n)))
        centre = np.full((1, 2), SIZE_A / 2 / PX)
        moved = link_frames(atoms, PX, window=1).to_frame(0, 1, centre)[0]
        assert np.hypot(*(moved - centre[0] - np.asarray(drift_A) / PX)) < 1.0, (k, drift_A, (moved - centre[0]) * PX)
