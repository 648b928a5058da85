"""Atoms found in vacuum: detections whose raw intensity is far below the typical atom's.

Networks that see noise in a hole (a few stray counts clustered together)
draw an atom there.  A real atom column scatters about as much as its
neighbours; a noise cluster does not.  :func:`atom_signal` measures every
atom with a matched filter on the raw frame (a Gaussian-weighted sum of the
counts at its position) and :func:`faint_atoms` flags those below a fraction
of their frame's median atom.  On a multislice graphene movie at 2e4 e/A^2
(0.1 A/px) a cut at 0.4 of the median with a 0.45 A filter removed 53 of 55
detections in the hole and 9 of about 3,300 true atoms.  At that dose some
lattice atoms are dim by chance; :func:`in_full_shell` keeps a faint detection
whose neighbours form a complete lattice shell, which a noise cluster in vacuum
(or at a hole's edge) does not have.  At 1e4 e/A^2 a dim lattice atom holds only a
few counts more than a cluster of stray counts in a hole, so some clusters pass the
cut; :func:`lonely_atoms` finds the detections with fewer than two neighbours at the
lattice's neighbour distance (every atom of a lattice, even on a hole's edge, has two
or more), which the pipeline drops when they are also dim (``locate.lonely_fraction``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from elit.data import AtomTable
from elit.errors import InputError

__all__ = ["atom_signal", "faint_atoms", "in_full_shell", "lonely_atoms", "signal_share"]


def atom_signal(raw_frames, atoms: AtomTable, pixel_size_A: float, sigma_A: float = 0.45) -> np.ndarray:
    """Matched-filter signal of every atom: the frame smoothed by a Gaussian of ``sigma_A``, at the atom.

    Parameters
    ----------
    raw_frames : array_like, shape (N, H, W) or (H, W)
        The input frames (linear intensity, not resampled).
    atoms : AtomTable
        Positions in the pixels of ``raw_frames``.
    pixel_size_A : float
        Angstrom per pixel of ``raw_frames``.
    sigma_A : float
        Width of the matched filter (about the atom peak's width).
    """
    frames = _stack(raw_frames)
    out = np.zeros(len(atoms))
    for f, idx, smooth in _smoothed_frames(frames, atoms, pixel_size_A, sigma_A):
        out[idx] = ndimage.map_coordinates(smooth, [atoms.row[idx], atoms.col[idx]], order=1, mode="nearest")
    return out


def _stack(raw_frames) -> np.ndarray:
    frames = np.asarray(raw_frames)  # each frame goes to float64 on its own: a long movie is not copied whole
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3:
        raise InputError(f"raw_frames must be (N, H, W) or (H, W), got shape {frames.shape}")
    return frames


def _smoothed_frames(frames: np.ndarray, atoms: AtomTable, pixel_size_A: float, sigma_A: float):
    """``(frame, atom indices, smoothed frame)`` for every frame that holds atoms."""
    sigma_px = max(0.3, sigma_A / pixel_size_A)
    for f in np.unique(atoms.frame):
        smooth = ndimage.gaussian_filter(frames[int(f)].astype(np.float64), sigma_px, mode="nearest")
        yield int(f), np.flatnonzero(atoms.frame == f), smooth


def signal_share(raw_frames, atoms: AtomTable, pixel_size_A: float, sigma_A: float = 0.45) -> np.ndarray:
    """Every atom's matched-filter signal above its frame's dark level, as a share of the frame's median atom's.

    The dark level is the 1st percentile of the smoothed frame (vacuum or the
    space between atoms), so a constant background does not hide a faint atom.
    A frame whose median atom is not above the dark level gives NaN.
    """
    share = np.full(len(atoms), np.nan)
    for _f, idx, smooth in _smoothed_frames(_stack(raw_frames), atoms, pixel_size_A, sigma_A):
        signal = ndimage.map_coordinates(smooth, [atoms.row[idx], atoms.col[idx]], order=1, mode="nearest")
        dark = float(np.percentile(smooth, 1.0))
        typical = float(np.median(signal)) - dark
        if typical > 0:
            share[idx] = (signal - dark) / typical
    return share


def faint_atoms(raw_frames, atoms: AtomTable, pixel_size_A: float, fraction: float, sigma_A: float = 0.45) -> np.ndarray:
    """Boolean mask of atoms whose :func:`signal_share` is below ``fraction``; ``fraction`` 0 flags nothing."""
    if not 0 <= fraction < 1:
        raise InputError(f"fraction must lie in [0, 1), got {fraction}")
    if fraction == 0 or len(atoms) == 0:
        return np.zeros(len(atoms), dtype=bool)
    return signal_share(raw_frames, atoms, pixel_size_A, sigma_A) < fraction


def _lattice_band(ref: np.ndarray, tol: float) -> tuple[cKDTree, float, float]:
    """A KD-tree of the positions ``ref`` and their neighbour band ``(1 -+ tol) d`` (``d``: median nearest-neighbour distance)."""
    tree = cKDTree(ref)
    d_nn = float(np.median(tree.query(ref, k=2)[0][:, 1]))
    return tree, (1 - tol) * d_nn, (1 + tol) * d_nn


def _ring(tree: cKDTree, query: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """How many points of ``tree`` lie within ``[lo, hi]`` of each of ``query``, and the nearest one's distance.

    A query point that is itself in the tree (distance 0) is not counted in the ring.
    """
    d = tree.query(query, k=13, distance_upper_bound=hi)[0]
    return ((d >= lo) & (d <= hi)).sum(axis=1), d[:, 0]


def in_full_shell(atoms: AtomTable, candidates: np.ndarray, tol: float = 0.2, min_atoms: int = 10) -> np.ndarray:
    """Which ``candidates`` have a complete shell of neighbours among the other atoms of their frame.

    Per frame, the atoms that are not candidates give the lattice's neighbour
    distance ``d`` (their median nearest-neighbour distance) and its coordination
    ``z`` (the median number of them within ``(1 +- tol) d`` of each).  A candidate
    is in a full shell when at least ``z`` (and at least 2) of them lie within
    ``(1 +- tol) d`` of it and none closer: a dim atom inside the lattice, not a
    noise cluster in vacuum or at a hole's edge (which has fewer neighbours).

    Parameters
    ----------
    atoms : AtomTable
        All detections (any pixel size).
    candidates : ndarray of bool
        Which of them to test (e.g. :func:`faint_atoms`'s flags).
    tol : float
        Relative width of the neighbour shell.
    min_atoms : int
        Frames with fewer non-candidate atoms test nothing.

    Returns
    -------
    ndarray of bool
        True for the candidates that have a full shell.
    """
    candidates = np.asarray(candidates, dtype=bool)
    out = np.zeros(len(atoms), dtype=bool)
    pos = atoms.positions()
    for f in np.unique(atoms.frame[candidates]):
        idx = np.flatnonzero(atoms.frame == f)
        sure, test = idx[~candidates[idx]], idx[candidates[idx]]
        if len(sure) < min_atoms:
            continue
        tree, lo, hi = _lattice_band(pos[sure], tol)
        z = int(np.median(_ring(tree, pos[sure], lo, hi)[0]))
        ring, nearest = _ring(tree, pos[test], lo, hi)
        out[test] = (ring >= max(z, 2)) & (nearest >= lo)
    return out


def lonely_atoms(atoms: AtomTable, shape: tuple[int, int], tol: float = 0.2, min_atoms: int = 10) -> np.ndarray:
    """Which atoms have fewer than two neighbours at the lattice's neighbour distance.

    Per frame, the lattice's neighbour distance ``d`` is the median
    nearest-neighbour distance of its atoms; a neighbour lies within
    ``(1 +- tol) d``.  An atom of a lattice has two or more, even on a hole's
    edge; a noise cluster in vacuum, or a site just outside the edge, has at most
    one.  Each frame border closer than ``(1 + tol) d`` may hide one of an atom's
    neighbours, so such an atom needs one neighbour fewer: one near a single
    border is lonely only with none, one in a corner never.  Frames with fewer
    than ``min_atoms`` atoms have no lonely atoms.

    Parameters
    ----------
    atoms : AtomTable
        All detections (any pixel size).
    shape : tuple of int
        ``(H, W)`` of the frames, in the atoms' pixels.

    Returns
    -------
    ndarray of bool
    """
    out = np.zeros(len(atoms), dtype=bool)
    pos = atoms.positions()
    h, w = shape
    for f in np.unique(atoms.frame):
        idx = np.flatnonzero(atoms.frame == f)
        if len(idx) < min_atoms:
            continue
        tree, lo, hi = _lattice_band(pos[idx], tol)
        ring = _ring(tree, pos[idx], lo, hi)[0]
        r, c = pos[idx, 0], pos[idx, 1]
        borders = (r < hi - 0.5).astype(int) + (c < hi - 0.5) + (r > h - 0.5 - hi) + (c > w - 0.5 - hi)
        out[idx] = ring < 2 - borders
    return out
