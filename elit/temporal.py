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

The same links find the atoms a noisy frame missed: an atom seen at one place in the frames
before and after a frame, but not in it, is added there (:func:`fill_gaps`, ``filled`` 1)
when the raw frame is not dark at that place; so is an atom that the first frame missed
and frames 1 and 2 saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from elit.data import AtomTable
from elit.errors import InputError

log = logging.getLogger("elit")

RAYLEIGH_999 = 3.72
"""The 99.9th percentile of a 2-D Gaussian's radius in units of its per-axis sigma."""

FILL_MIN_SIGNAL = 0.1
"""Share of the frame's median atom signal that :func:`fill_gaps` asks of the raw frame at a new atom.

Low on purpose: the atoms a noisy frame misses are there (the frames around it saw them) but
dim by chance, 0.2-0.4 of the median atom at 2e4 e/A^2 where the noise-free frame shows
them at 0.9-1.1; vacuum shows about 0.  On multislice graphene (tuning seed, 1e4 e/A^2)
0.1 added 42 atoms and no false one, 0.3 only 31, and 0 one atom in the hole."""


MISS_TOLERANCE = (3, 0.005)
"""A candidate drift that leaves at most ``max(3, 0.005 n)`` more of its ``n`` points without a partner than the best
candidate's share would is as good as the best.

On 85 pairs of consecutive frames of multislice graphene movies (1e4-8e4 e/A^2, drift up to 1.44 A per frame;
tuning seed 0 and spent seeds 117-121) the true drift was then always chosen; the earlier rule, the smallest shift
within 2 % of the best count, took one a lattice vector off on the two pairs that drifted more than 1.23 A
(half a lattice vector).  The tolerance keeps a perfect lattice, where only noise tells the candidates apart,
on the smallest."""


def _consensus_shift(p: np.ndarray, q: np.ndarray, tol: float, max_shift: float) -> np.ndarray:
    """The translation ``t`` that maps the most points ``p`` onto points ``q`` (within ``tol``), smallest first.

    Every displacement from up to 200 points of ``p`` to the points of ``q`` within
    ``max_shift`` votes in a histogram of bin width ``tol / 2``; each bin's votes are summed
    with its eight neighbours', so a shift on the corner of a bin is not split four ways and
    outvoted by a lattice translation that happens to fall in a bin's middle.  The local
    maxima with at least half the best sum are refined (the mean displacement of the points
    they match).  A lattice maps onto itself under its own translations, so these candidates
    differ by lattice vectors, and the count of matched points hardly tells them apart: it
    favours the smallest shift only because a smaller shift leaves more of the frames
    overlapping.  What does tell them apart is the share of the points that land inside ``q``'s
    extent and find a partner there (:func:`_landing`): the true shift lines up the holes,
    edges and patches too, a lattice vector off does not.  Among the shifts within
    :data:`MISS_TOLERANCE` of the best share, the smallest wins (a perfect lattice, or a frame
    pair with nothing but lattice in common: the drift is then taken to be less than half a
    lattice vector).
    """
    if len(p) == 0 or len(q) == 0:
        return np.zeros(2)
    rng = np.random.default_rng(0)
    sample = p if len(p) <= 200 else p[rng.choice(len(p), 200, replace=False)]
    tree_q = cKDTree(q)
    votes = [q[nbrs] - sample[i] for i, nbrs in enumerate(tree_q.query_ball_point(sample, max_shift)) if nbrs]
    if not votes:
        return np.zeros(2)
    width = tol / 2
    n = int(np.ceil(max_shift / width)) + 1
    edges = (np.arange(-n, n + 2) - 0.5) * width  # bin k is centred on (k - n) * width
    disp = np.concatenate(votes)
    hist = np.histogram2d(disp[:, 0], disp[:, 1], bins=[edges, edges])[0]
    summed = ndimage.correlate(hist, np.ones((3, 3)), mode="constant")
    peaks = (summed == ndimage.maximum_filter(summed, size=3, mode="constant")) & (summed >= 0.5 * summed.max())

    shifts = [_refine_shift(sample, q, tree_q, (k - n) * width, tol, 3) for k in np.argwhere(peaks).astype(np.float64)]
    shifts = np.array([_refine_shift(p, q, tree_q, t, tol, 1) for t in shifts])
    inside, matched = _landing(p, q, tree_q, shifts, tol)
    n = np.maximum(inside.sum(axis=1), 1)
    missed = (inside & ~matched).sum(axis=1)
    best = (missed / n).min()
    good = missed <= best * n + np.maximum(MISS_TOLERANCE[0], MISS_TOLERANCE[1] * n)
    return shifts[good][np.argmin(np.hypot(shifts[good, 0], shifts[good, 1]))]


def _landing(p: np.ndarray, q: np.ndarray, tree_q: cKDTree, shifts: np.ndarray, tol: float):
    """Per shift ``t``: which points ``p + t`` land inside ``q``'s extent (less ``tol``), and which have a point of ``q`` within ``tol``."""
    moved = p[None] + shifts[:, None]
    inside = np.all((moved > q.min(axis=0) + tol) & (moved < q.max(axis=0) - tol), axis=2)
    matched = tree_q.query(moved.reshape(-1, 2), distance_upper_bound=tol)[0].reshape(len(shifts), -1) < tol
    return inside, matched


def _refine_shift(p: np.ndarray, q: np.ndarray, tree_q: cKDTree, t: np.ndarray, tol: float, steps: int) -> np.ndarray:
    """``t`` replaced ``steps`` times by the mean displacement of the points ``p + t`` it matches in ``q`` (within ``tol``)."""
    for _ in range(steps):
        d, j = tree_q.query(p + t, distance_upper_bound=tol)
        ok = d < tol
        if not ok.any():
            break
        t = (q[j[ok]] - p[ok]).mean(axis=0)
    return t


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


@dataclass
class FrameLinks:
    """Which atoms of a movie's table are one atom seen in different frames.

    Attributes
    ----------
    maps : dict
        ``(f, g) -> A`` for frames ``f < g``: the affine map (3 x 2, pixels) that takes frame
        ``f``'s positions into frame ``g``'s (``[row, col, 1] @ A``).
    pairs : dict
        ``(f, g) -> (i, j)``: rows ``i`` of frame ``f`` and ``j`` of frame ``g`` of the table that
        are one atom (mutual nearest, within the gate).
    gate_px : float
        The gate, pixels.
    scatter_px : float
        The measured per-axis scatter of one position, pixels.
    """

    maps: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict)
    gate_px: float = 0.0
    scatter_px: float = 0.0

    def to_frame(self, g: int, f: int, positions: np.ndarray) -> np.ndarray:
        """``positions`` of frame ``g`` mapped into frame ``f`` (pixels)."""
        if g == f:
            return positions
        if (f, g) in self.maps:
            return _apply(_invert(self.maps[(f, g)]), positions)
        return _apply(self.maps[(g, f)], positions)


def link_frames(atoms: AtomTable, pixel_size_A: float, window: int = 3, max_motion_A: float = 0.3,
                max_shift_A: float = 5.0, min_link_share: float = 0.3) -> FrameLinks:
    """Register a movie's frames on their atoms and link the sightings of each atom.

    Parameters
    ----------
    atoms : AtomTable
        Positions in the frames' pixels.
    pixel_size_A : float
        Angstrom per pixel.
    window : int
        Link frames up to this many apart.
    max_motion_A : float
        Largest distance, Angstrom, between an atom and the place another frame's map takes
        it for the two to be one atom; the gate used is the smaller of this and 3.7 times
        the measured per-axis scatter of the matches (99.9 % of a static atom's matches).
    max_shift_A : float
        Largest drift between consecutive frames that the registration looks for, Angstrom.
    min_link_share : float
        A pair of frames whose matched atoms are fewer than this share of the smaller
        frame's atoms is not linked (the registration found no common lattice).

    Returns
    -------
    FrameLinks
        Empty when there is one frame, ``window`` is 0, or no pair of frames registers.
    """
    if window < 0:
        raise InputError(f"window must be >= 0, got {window}")
    links = FrameLinks()
    frames = np.unique(atoms.frame)
    if window == 0 or len(frames) < 2:
        return links
    pos = atoms.positions()
    index = {f: np.flatnonzero(atoms.frame == f) for f in frames}
    tol0 = 0.5 / pixel_size_A
    offset = {frames[0]: np.zeros(2)}  # chained translations between consecutive frames
    for f, g in zip(frames[:-1], frames[1:]):
        offset[g] = offset[f] + _consensus_shift(pos[index[f]], pos[index[g]], tol0, max_shift_A / pixel_size_A)
    found = {}
    for i, f in enumerate(frames):
        for g in frames[i + 1:]:
            if g - f > window:
                break
            pair = _pair_links(pos[index[f]], pos[index[g]], offset[g] - offset[f], tol0)
            if pair is not None and len(pair[1]) >= min_link_share * min(len(index[f]), len(index[g])):
                found[(int(f), int(g))] = pair
    if not found:
        return links
    res = np.concatenate([p[3] for p in found.values()])
    sigma_pair = 1.4826 * np.median(np.abs(res - np.median(res, axis=0)), axis=0).mean()  # per axis, of a difference
    links.gate_px = float(min(max_motion_A / pixel_size_A, RAYLEIGH_999 * sigma_pair))
    links.scatter_px = float(sigma_pair / np.sqrt(2))
    for (f, g), (a, i_f, i_g, r) in found.items():
        ok = np.hypot(r[:, 0], r[:, 1]) < links.gate_px
        links.maps[(f, g)] = a
        links.pairs[(f, g)] = (index[f][i_f[ok]], index[g][i_g[ok]])
    return links


def average_over_frames(atoms: AtomTable, pixel_size_A: float, window: int = 3, max_motion_A: float = 0.3,
                        links: FrameLinks | None = None) -> tuple[AtomTable, dict]:
    """Average each atom's position with the same atom in the frames up to ``window`` away.

    Parameters
    ----------
    atoms : AtomTable
        Positions in the frames' pixels (``row``, ``col`` are averaged).
    pixel_size_A : float
        Angstrom per pixel.
    window, max_motion_A
        As :func:`link_frames` takes them (ignored with ``links``).
    links : FrameLinks, optional
        :func:`link_frames` of ``atoms``, when already made.

    Returns
    -------
    atoms : AtomTable
        A copy whose ``row``, ``col`` are the averages, with ``row_frame``, ``col_frame``
        (the per-frame positions) and ``n_averaged`` (positions combined, 1 where the atom
        was linked to no other frame).
    record : dict
        Gate, scatter and links, for the run file.
    """
    if links is None:
        links = link_frames(atoms, pixel_size_A, window=window, max_motion_A=max_motion_A)
    out = atoms.select(slice(None))
    pos = atoms.positions()
    out.row_frame, out.col_frame = pos[:, 0].copy(), pos[:, 1].copy()
    n_avg = np.ones(len(atoms), dtype=np.int64)
    total = pos.copy()
    for (f, g), (i_f, i_g) in links.pairs.items():
        total[i_f] += links.to_frame(g, f, pos[i_g])  # g's sighting, placed in f
        total[i_g] += links.to_frame(f, g, pos[i_f])
        np.add.at(n_avg, i_f, 1)
        np.add.at(n_avg, i_g, 1)
    mean = total / n_avg[:, None]
    out.row, out.col = mean[:, 0], mean[:, 1]
    out.n_averaged = n_avg.astype(np.float64)
    record = {"frame_pairs": len(links.pairs), "linked": int((n_avg > 1).sum()), "mean_averaged": float(n_avg.mean())}
    if links.pairs:
        record.update(gate_A=links.gate_px * pixel_size_A, scatter_A=links.scatter_px * pixel_size_A)
        log.info("averaged %d of %d atoms over the frames they were seen in (gate %.3f A)", record["linked"],
                 len(atoms), record["gate_A"])
    return out, record


def _tracks(n: int, links: FrameLinks) -> np.ndarray:
    """Track number of every row: the connected components of the links."""
    if not links.pairs:
        return np.arange(n)
    i = np.concatenate([p[0] for p in links.pairs.values()])
    j = np.concatenate([p[1] for p in links.pairs.values()])
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def fill_gaps(atoms: AtomTable, links: FrameLinks, raw_frames, pixel_size_A: float, window: int = 3,
              min_signal: float = FILL_MIN_SIGNAL, first_frame: bool = True,
              relink: bool = True) -> tuple[AtomTable, dict]:
    """Add the atoms a frame missed where the frames before and after it saw one atom.

    An atom linked in a frame before frame ``f`` and in one after it (each within
    ``window``), with no sighting in ``f`` itself, is placed in ``f`` at the mean of its
    sightings mapped there, if no atom of ``f`` lies within half the frame's neighbour
    distance of that place and the raw frame shows at least ``min_signal`` of its median
    atom's signal there (:func:`elit.vacuum.faint_atoms`).

    The first frame has no frame before it: with ``first_frame``, an atom that frames 1
    and 2 both saw is placed in frame 0 on the same terms.  The beam removes atoms far
    more often than it puts one on a lattice site, so a site filled in frames 1 and 2 was
    filled in frame 0 too; the last frame gets no such rule, since a site that the frames
    before it saw may have lost its atom there (a growing hole).  On 37 stored runs of
    multislice graphene movies (8 seeds, 1e4 to 5e5 e/A^2) it added up to 14 true atoms
    per movie and no false one; the same rule for the last frame added false atoms in the
    growing hole on every run.

    Where a frame holds a sighting that no link joined to another frame within half the
    neighbour distance of such a place, that sighting is the track's atom, placed off
    by its noise beyond the links' gate: with ``relink`` its position becomes the mean
    of it and the track's sightings mapped there (``n_averaged`` counts them), and no
    atom is added.  On 42 stored runs (seeds 0 and 105-112) this placed 0-21 atoms per
    movie; it removed 1-2 false and 1-2 missed atoms on 7 runs and added none on any.

    Parameters
    ----------
    atoms : AtomTable
        The linked table (positions in the frames' pixels).
    links : FrameLinks
        :func:`link_frames` of ``atoms``.
    raw_frames : ndarray, shape (N, H, W)
        The frames the atoms were found in.
    pixel_size_A : float
        Angstrom per pixel.
    window : int
        Frames on each side a sighting may lie.
    min_signal : float
        Share of the frame's median atom signal the raw frame must show at the new atom.
    first_frame : bool
        Also fill frame 0 from frames 1 and 2.
    relink : bool
        Join an unlinked sighting that lies where a track misses its atom to the track.

    Returns
    -------
    atoms : AtomTable
        ``atoms`` with the new ones (``filled`` 1, the others 0), sorted by frame.
    record : dict
        How many were checked (``candidates``), added (``filled``) and joined to a
        track (``relinked``).
    """
    from elit.vacuum import faint_atoms

    frames = np.asarray(raw_frames)
    n = len(atoms)
    record = {"candidates": 0, "filled": 0, "relinked": 0}
    out = atoms.select(slice(None))
    out.filled = np.zeros(n)
    if not links.pairs or n == 0:
        return out, record
    track = _tracks(n, links)
    pos = atoms.positions()
    cand = []  # (frame, row, col, rows of the sightings)
    order = np.argsort(track, kind="stable")
    starts = np.flatnonzero(np.r_[True, track[order][1:] != track[order][:-1]])
    for members in np.split(order, starts[1:]):
        if len(members) < 2:
            continue
        seen = atoms.frame[members]
        gaps = [f for f in range(int(seen.min()) + 1, int(seen.max())) if f not in seen]
        opening = first_frame and 0 not in seen and 1 in seen and 2 in seen
        for f in gaps + [0] * opening:
            near = members[np.abs(seen - f) <= window]
            near = near[[(min(int(atoms.frame[i]), f), max(int(atoms.frame[i]), f)) in links.maps for i in near]]
            before, after = (atoms.frame[near] < f).any(), (atoms.frame[near] > f).any()
            if not ((before or f == 0) and after and len(near) >= 2):
                continue
            placed = np.array([links.to_frame(int(atoms.frame[i]), f, pos[i:i + 1])[0] for i in near])
            cand.append((f, *placed.mean(axis=0), near))
    record["candidates"] = len(cand)
    if not cand:
        return out, record
    shape = frames.shape[1:]
    keep = []
    moves = {}
    linked = np.bincount(track)[track] > 1  # joined to a sighting in another frame
    for f in sorted({c[0] for c in cand}):
        mine = [k for k, c in enumerate(cand) if c[0] == f]
        rc = np.array([cand[k][1:3] for k in mine])
        inside = (rc >= 0).all(axis=1) & (rc[:, 0] <= shape[0] - 1) & (rc[:, 1] <= shape[1] - 1)
        rows_f = np.flatnonzero(atoms.frame == f)
        here = pos[rows_f]
        if len(here) < 3:
            continue
        tree = cKDTree(here)
        spacing = float(np.median(tree.query(here, k=2)[0][:, 1]))
        dist, nearest = tree.query(rc)
        free = dist > 0.5 * spacing
        if relink:  # a sighting the links left alone, where the track says the atom is: the same atom, misplaced
            for k in np.flatnonzero(~free & inside & ~linked[rows_f[nearest]]):
                moves.setdefault(int(rows_f[nearest[k]]), []).append((dist[k], mine[k]))
        probe = AtomTable.concatenate([atoms.select(rows_f), _rows(f, rc, atoms.class_names)])
        bright = ~faint_atoms(frames, probe, pixel_size_A, min_signal)[len(here):]
        keep += [mine[k] for k in np.flatnonzero(inside & free & bright)]
    record["filled"] = len(keep)
    record["relinked"] = len(moves)
    for i, options in moves.items():
        f, r, c, near = cand[min(options)[1]]
        m = len(near)
        out.row[i], out.col[i] = (r * m + pos[i, 0]) / (m + 1), (c * m + pos[i, 1]) / (m + 1)
        if out.n_averaged is not None:
            out.n_averaged[i] = m + 1
    if not keep:
        return out, record
    new = []
    for k in keep:
        f, r, c, near = cand[k]
        t = _rows(f, np.array([[r, c]]), atoms.class_names)
        t.class_index[:] = np.bincount(atoms.class_index[near]).argmax()
        t.probability[:] = atoms.probability[near].mean()
        t.uncertainty[:] = atoms.uncertainty[near].mean()
        for name in ("row_network", "row_frame"):
            setattr(t, name, np.array([r]))
        for name in ("col_network", "col_frame"):
            setattr(t, name, np.array([c]))
        t.n_averaged = np.array([float(len(near))])
        if atoms.class_probability is not None:
            t.class_probability = np.array([np.nanmean(atoms.class_probability[near])])
        t.filled = np.ones(1)
        new.append(t)
    both = AtomTable.concatenate([out] + new)
    both = both.select(np.argsort(both.frame, kind="stable"))
    log.info("added %d atoms that a frame missed where the frames around it saw them", len(keep))
    return both, record


def _rows(frame: int, rc: np.ndarray, class_names) -> AtomTable:
    n = len(rc)
    return AtomTable(np.full(n, frame), rc[:, 0], rc[:, 1], np.zeros(n), np.zeros(n), np.zeros(n),
                     class_names=class_names)
