"""Positions from several frames of a movie: each atom averaged with itself in the neighbouring frames.

In a movie of a specimen that mostly stays put, the same atom is seen again in every
frame, each time with its own shot noise.  Its position errors from frame to frame are
almost independent, so averaging them lowers the error of a static atom by up to the
square root of the frames combined.  :func:`average_over_frames` does so without moving
what moves:

1. the frames are registered on their atoms: a translation found by consensus between
   consecutive frames (the smallest shift that most atoms agree with), chained, then an
   affine map per pair of frames fitted to the matched atoms (drift, and the shear and
   stretch of drift during a scan);
2. an atom is linked to the atom of another frame that lies where the map takes it,
   within a gate set by the measured scatter of the matches (mutual nearest neighbours),
   so an atom that moved further than its noise, appeared or vanished is not linked;
3. its position is the mean of its own and its linked positions, each mapped into its
   frame.

The per-frame positions stay in the table (``row_frame``, ``col_frame``); the count of
positions averaged is ``n_averaged``.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

from elit.data import AtomTable
from elit.errors import InputError

log = logging.getLogger("elit")

RAYLEIGH_999 = 3.72
"""The 99.9th percentile of a 2-D Gaussian's radius in units of its per-axis sigma."""


def _consensus_shift(p: np.ndarray, q: np.ndarray, tol: float, max_shift: float) -> np.ndarray:
    """The translation ``t`` that maps the most points ``p`` onto points ``q`` (within ``tol``), smallest first.

    Every displacement from up to 200 points of ``p`` to the points of ``q`` within
    ``max_shift`` votes for a bin of width ``tol``; the best-voted bins are tried and the
    count of matched points decides.  Among shifts within 2 % of the best count the smallest
    wins: a lattice maps onto itself under its own translations, and the smallest of them is
    the drift between a movie's consecutive frames.
    """
    if len(p) == 0 or len(q) == 0:
        return np.zeros(2)
    rng = np.random.default_rng(0)
    sample = p if len(p) <= 200 else p[rng.choice(len(p), 200, replace=False)]
    tree_q = cKDTree(q)
    votes = [q[nbrs] - sample[i] for i, nbrs in enumerate(tree_q.query_ball_point(sample, max_shift)) if nbrs]
    if not votes:
        return np.zeros(2)
    bins, counts = np.unique(np.round(np.concatenate(votes) / tol).astype(np.int64), axis=0, return_counts=True)
    top = bins[counts >= 0.5 * counts.max()] * tol
    matched = np.array([(tree_q.query(sample + t, distance_upper_bound=tol)[0] < tol).sum() for t in top])
    good = top[matched >= 0.98 * matched.max()]
    best = good[np.argmin(np.hypot(good[:, 0], good[:, 1]))]
    d, j = tree_q.query(p + best, distance_upper_bound=tol)
    ok = d < tol
    return (q[j[ok]] - p[ok]).mean(axis=0) if ok.any() else best


def _fit_affine(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Least-squares ``A`` (3 x 2) with ``[p, 1] @ A ~ q``."""
    design = np.hstack([p, np.ones((len(p), 1))])
    return np.linalg.lstsq(design, q, rcond=None)[0]


def _apply(a: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ a[:2] + a[2]


def _invert(a: np.ndarray) -> np.ndarray:
    lin = np.linalg.inv(a[:2])
    return np.vstack([lin, -a[2] @ lin])


def _pair_links(p: np.ndarray, q: np.ndarray, shift: np.ndarray, tol: float):
    """Affine map ``p -> q`` started from ``shift``, the mutual nearest matches, and their residuals (pixels)."""
    a = np.vstack([np.eye(2), shift])
    tree_q, tree_p = cKDTree(q), cKDTree(p)
    for _ in range(3):
        d, j = tree_q.query(_apply(a, p), distance_upper_bound=tol)
        ok = d < tol
        if ok.sum() < 6:
            return None
        a = _fit_affine(p[ok], q[j[ok]])
    d, j = tree_q.query(_apply(a, p), distance_upper_bound=tol)
    back = tree_p.query(_apply(_invert(a), q), distance_upper_bound=tol)[1]
    ok = d < tol
    idx = np.flatnonzero(ok)
    mutual = back[j[idx]] == idx
    idx = idx[mutual]
    return a, idx, j[idx], _apply(a, p[idx]) - q[j[idx]]


def average_over_frames(atoms: AtomTable, pixel_size_A: float, window: int = 3, max_motion_A: float = 0.3,
                        max_shift_A: float = 5.0, min_link_share: float = 0.3) -> tuple[AtomTable, dict]:
    """Average each atom's position with the same atom in the frames up to ``window`` away.

    Parameters
    ----------
    atoms : AtomTable
        Positions in the frames' pixels (``row``, ``col`` are averaged).
    pixel_size_A : float
        Angstrom per pixel.
    window : int
        Frames on each side to combine (0: none).
    max_motion_A : float
        Largest distance, Angstrom, between an atom and the place another frame's map takes
        it for the two to be one atom; the gate used is the smaller of this and 3.7 times
        the measured per-axis scatter of the matches (99.9 % of a static atom's matches).
        An atom that moved further is not averaged with where it was.
    max_shift_A : float
        Largest drift between consecutive frames that the registration looks for, Angstrom.
    min_link_share : float
        A pair of frames whose matched atoms are fewer than this share of the smaller
        frame's atoms is not combined (the registration found no common lattice).

    Returns
    -------
    atoms : AtomTable
        A copy whose ``row``, ``col`` are the averages, with ``row_frame``, ``col_frame``
        (the per-frame positions) and ``n_averaged`` (positions combined, 1 where the atom
        was linked to no other frame).
    record : dict
        Gate, scatter and links, for the run file.
    """
    if window < 0:
        raise InputError(f"window must be >= 0, got {window}")
    out = atoms.select(slice(None))
    out.row, out.col = atoms.row.copy(), atoms.col.copy()
    out.row_frame, out.col_frame = atoms.row.copy(), atoms.col.copy()
    n_avg = np.ones(len(atoms), dtype=np.int64)
    frames = np.unique(atoms.frame)
    record = {"window": int(window), "frames": int(len(frames)), "linked": 0}
    if window == 0 or len(frames) < 2:
        out.n_averaged = n_avg
        return out, record
    pos = atoms.positions()
    index = {f: np.flatnonzero(atoms.frame == f) for f in frames}
    tol0 = 0.5 / pixel_size_A
    # chained translations between consecutive frames: frame f's atoms + offset[f] ~ frame 0's drift path
    offset = {frames[0]: np.zeros(2)}
    for f, g in zip(frames[:-1], frames[1:]):
        offset[g] = offset[f] + _consensus_shift(pos[index[f]], pos[index[g]], tol0, max_shift_A / pixel_size_A)
    pairs = {}
    for i, f in enumerate(frames):
        for g in frames[i + 1:]:
            if g - f > window:
                break
            links = _pair_links(pos[index[f]], pos[index[g]], offset[g] - offset[f], tol0)
            if links is not None and len(links[1]) >= min_link_share * min(len(index[f]), len(index[g])):
                pairs[(f, g)] = links
    if not pairs:
        out.n_averaged = n_avg
        return out, record
    res = np.concatenate([lk[3] for lk in pairs.values()])
    sigma_pair = 1.4826 * np.median(np.abs(res - np.median(res, axis=0)), axis=0).mean()  # per axis, of a difference
    gate = min(max_motion_A / pixel_size_A, RAYLEIGH_999 * sigma_pair)
    total = pos.copy()
    for (f, g), (a, i_f, i_g, r) in pairs.items():
        ok = np.hypot(r[:, 0], r[:, 1]) < gate
        a_f, a_g = index[f][i_f[ok]], index[g][i_g[ok]]
        total[a_f] += _apply(_invert(a), pos[a_g])  # g's atom, placed in f
        total[a_g] += _apply(a, pos[a_f])  # f's atom, placed in g
        np.add.at(n_avg, a_f, 1)
        np.add.at(n_avg, a_g, 1)
    mean = total / n_avg[:, None]
    out.row, out.col = mean[:, 0], mean[:, 1]
    out.n_averaged = n_avg
    record.update(gate_A=float(gate * pixel_size_A), scatter_A=float(sigma_pair / np.sqrt(2) * pixel_size_A),
                  pairs=len(pairs), linked=int((n_avg > 1).sum()), mean_averaged=float(n_avg.mean()))
    log.info("averaged %d of %d atoms over up to %d frames each side (gate %.3f A)", record["linked"], len(atoms),
             window, record["gate_A"])
    return out, record
