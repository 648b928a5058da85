"""Label maps with a disc around every atom.

Pixel ``(i, j)`` has its centre at ``(row, col) = (i, j)``.  A pixel belongs to
an atom's disc when its centre lies within ``radius_px`` of the atom (sub-pixel
positions are used as they are, not rounded).  Atoms near or beyond the image
edge draw the visible part of their disc.  Work is vectorised over atoms: the
arrays span atoms x the small stencil of pixel offsets a disc can reach.
"""

from __future__ import annotations

import numpy as np

__all__ = ["disc_masks", "label_map"]


def _disc_candidates(positions_px, shape, radius_px):
    """Return (flat pixel index, squared distance, atom index) of every pixel inside a disc."""
    positions = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    height, width = int(shape[0]), int(shape[1])
    if radius_px < 0:
        raise ValueError(f"radius_px must be >= 0, got {radius_px}")
    finite = np.all(np.isfinite(positions), axis=1)
    # only atoms whose disc can touch the image
    near = finite & (
        (positions[:, 0] > -radius_px - 1)
        & (positions[:, 0] < height + radius_px)
        & (positions[:, 1] > -radius_px - 1)
        & (positions[:, 1] < width + radius_px)
    )
    atom_index = np.nonzero(near)[0]
    pos = positions[atom_index]
    base = np.rint(pos).astype(np.int64)
    reach = int(np.ceil(radius_px)) + 1
    r2 = float(radius_px) ** 2
    dr, dc = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    near_offset = dr**2 + dc**2 <= (radius_px + 0.75) ** 2  # |pos - base| <= sqrt(2)/2
    dr, dc = dr[near_offset], dc[near_offset]
    rr = base[:, :1] + dr[None, :]  # (n, S)
    cc = base[:, 1:] + dc[None, :]
    d2 = (rr - pos[:, :1]) ** 2 + (cc - pos[:, 1:]) ** 2
    ok = (d2 <= r2) & (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
    flat_parts = [(rr * width + cc)[ok]]
    dist_parts = [d2[ok]]
    atom_parts = [np.broadcast_to(atom_index[:, None], ok.shape)[ok]]
    return flat_parts[0], dist_parts[0], atom_parts[0]


def label_map(positions_px, classes, shape, radius_px: float) -> np.ndarray:
    """Draw a label image with a disc of class ``k + 1`` around every atom of class ``k``.

    Parameters
    ----------
    positions_px : array_like, shape (n, 2)
        Atom positions ``(row, col)`` in pixels (pixel centres are integers).
    classes : array_like of int, shape (n,)
        0-based atom class of each atom (at most 254).
    shape : (int, int)
        Output shape ``(H, W)``.
    radius_px : float
        Disc radius in pixels; a pixel is inside when its centre is within it.

    Returns
    -------
    ndarray of uint8, shape (H, W)
        0 for background, ``class + 1`` inside discs.  Where discs overlap, the
        atom nearest to the pixel centre wins (ties go to the lower atom index).
    """
    height, width = int(shape[0]), int(shape[1])
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    if len(classes) != len(positions):
        raise ValueError(f"{len(positions)} positions but {len(classes)} classes")
    if len(classes) and (classes.min() < 0 or classes.max() > 254):
        raise ValueError("classes must lie in 0..254")
    out = np.zeros(height * width, dtype=np.uint8)
    flat, dist, atom = _disc_candidates(positions, (height, width), radius_px)
    if len(flat) and np.bincount(flat, minlength=height * width).max() <= 1:
        out[flat] = (classes[atom] + 1).astype(np.uint8)  # no overlaps: the common, fast case
    elif len(flat):
        # nearest atom first for each pixel, then keep the first entry per pixel
        order = np.lexsort((atom, dist, flat))
        flat, atom = flat[order], atom[order]
        first = np.ones(len(flat), dtype=bool)
        first[1:] = flat[1:] != flat[:-1]
        out[flat[first]] = (classes[atom[first]] + 1).astype(np.uint8)
    return out.reshape(height, width)


def disc_masks(positions_px, classes, shape, radius_px: float, n_classes: int | None = None) -> np.ndarray:
    """Draw one binary disc mask per class, ``(K, H, W)`` float32.

    Unlike :func:`label_map`, discs of different classes may overlap here: every
    channel holds all discs of its class.

    Parameters
    ----------
    positions_px, classes, shape, radius_px
        As for :func:`label_map`.
    n_classes : int, optional
        Number of channels ``K``; by default ``max(classes) + 1``.
    """
    height, width = int(shape[0]), int(shape[1])
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    if len(classes) != len(positions):
        raise ValueError(f"{len(positions)} positions but {len(classes)} classes")
    k = int(n_classes) if n_classes is not None else (int(classes.max()) + 1 if len(classes) else 1)
    out = np.zeros((k, height * width), dtype=np.float32)
    flat, _, atom = _disc_candidates(positions, (height, width), radius_px)
    if len(flat):
        cls = classes[atom]
        ok = (cls >= 0) & (cls < k)
        out[cls[ok], flat[ok]] = 1.0
    return out.reshape(k, height, width)
