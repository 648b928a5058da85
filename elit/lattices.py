"""Projected atom positions of simple crystal lattices (Angstrom), and their rendering as Gaussians.

Every function returns positions ``(row, col)`` in Angstrom that cover the
rectangle ``[0, H) x [0, W)`` (``shape_A = (H, W)``) plus ``margin`` Angstrom
beyond every edge, so that atoms just outside an image still contribute their
tails to it.  The lattice is rotated by ``rotation`` radians (counter-clockwise
in the ``(row, col)`` plane) about its origin, and the origin is then moved to
``offset`` (Angstrom).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "render_atoms",
    "GRAPHENE_A",
    "PEROVSKITE_A",
    "graphene_positions",
    "lattice_points",
    "perovskite_positions",
    "square_positions",
]

GRAPHENE_A = 2.46
"""Graphene lattice constant in Angstrom (C-C bond 1.42 Angstrom)."""

PEROVSKITE_A = 3.905
"""SrTiO3 cubic lattice constant in Angstrom."""


def _rotation(rotation: float) -> np.ndarray:
    c, s = np.cos(rotation), np.sin(rotation)
    return np.array([[c, -s], [s, c]])


def lattice_points(
    shape_A,
    vectors,
    basis,
    rotation: float = 0.0,
    offset=(0.0, 0.0),
    margin: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the points of a 2-D Bravais lattice with a basis inside a padded rectangle.

    Parameters
    ----------
    shape_A : (float, float)
        Rectangle height and width in Angstrom.
    vectors : array_like, shape (2, 2)
        Lattice vectors as rows, ``(row, col)`` in Angstrom, before rotation.
    basis : array_like, shape (B, 2)
        Basis positions in Angstrom (``(row, col)``), before rotation.
    rotation : float
        Rotation in radians.
    offset : (float, float)
        Position of the lattice origin in Angstrom.
    margin : float
        Extra Angstrom covered beyond every edge.

    Returns
    -------
    positions : ndarray, shape (n, 2)
        ``(row, col)`` in Angstrom.
    sublattice : ndarray, shape (n,), int64
        Index of the basis site of each position.
    """
    height, width = (float(v) for v in shape_A)
    if height <= 0 or width <= 0:
        raise ValueError(f"shape_A must be positive, got {shape_A}")
    vectors = np.asarray(vectors, dtype=np.float64).reshape(2, 2)
    basis = np.asarray(basis, dtype=np.float64).reshape(-1, 2)
    rot = _rotation(rotation)
    cell = vectors @ rot.T  # rotated lattice vectors as rows
    rotated_basis = basis @ rot.T
    offset = np.asarray(offset, dtype=np.float64).reshape(2)
    lo = np.array([-margin, -margin])
    hi = np.array([height + margin, width + margin])
    corners = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], lo[1]], [hi[0], hi[1]]]) - offset
    # fractional coordinates of the corners (minus every basis shift) bound the index range
    frac = np.concatenate([(corners - b) @ np.linalg.inv(cell) for b in rotated_basis])
    i0, j0 = np.floor(frac.min(axis=0)).astype(int) - 1
    i1, j1 = np.ceil(frac.max(axis=0)).astype(int) + 1
    ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
    grid = np.stack([ii.ravel(), jj.ravel()], axis=1) @ cell + offset
    positions = (grid[:, None, :] + rotated_basis[None, :, :]).reshape(-1, 2)
    sublattice = np.tile(np.arange(len(basis)), len(grid))
    keep = np.all((positions >= lo) & (positions < hi), axis=1)
    return positions[keep], sublattice[keep].astype(np.int64)


def graphene_positions(
    shape_A: tuple[float, float],
    rotation: float = 0.0,
    offset=(0.0, 0.0),
    a: float = GRAPHENE_A,
    margin: float = 3.0,
) -> np.ndarray:
    """Return the atoms of a graphene honeycomb, ``(n, 2)`` ``(row, col)`` in Angstrom.

    Parameters
    ----------
    shape_A : (float, float)
        Height and width to cover, in Angstrom.
    rotation : float
        Lattice rotation in radians.
    offset : (float, float)
        Position of a lattice atom in Angstrom.
    a : float
        Lattice constant (C-C bond is ``a / sqrt(3)``).
    margin : float
        Extra Angstrom covered beyond every edge.
    """
    vectors = a * np.array([[0.0, 1.0], [np.sqrt(3) / 2, 0.5]])
    basis = np.array([[0.0, 0.0], (vectors[0] + vectors[1]) / 3])
    positions, _ = lattice_points(shape_A, vectors, basis, rotation, offset, margin)
    return positions


def perovskite_positions(
    shape_A,
    rotation: float = 0.0,
    offset=(0.0, 0.0),
    a: float = PEROVSKITE_A,
    margin: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the cation columns of a cubic perovskite ABO3 seen along [001].

    Oxygen columns are left out (faint in HAADF).

    Returns
    -------
    positions : ndarray, shape (n, 2)
        ``(row, col)`` in Angstrom.
    sublattice : ndarray, shape (n,), int64
        0 for A-site columns (cell corners), 1 for B-site columns (cell centre).
    """
    vectors = a * np.eye(2)
    basis = np.array([[0.0, 0.0], [a / 2, a / 2]])
    return lattice_points(shape_A, vectors, basis, rotation, offset, margin)


def square_positions(
    shape_A,
    a: float,
    rotation: float = 0.0,
    offset=(0.0, 0.0),
    margin: float = 3.0,
) -> np.ndarray:
    """Return the points of a square lattice of constant ``a`` Angstrom, ``(n, 2)`` in Angstrom."""
    if a <= 0:
        raise ValueError(f"lattice constant must be positive, got {a}")
    positions, _ = lattice_points(shape_A, a * np.eye(2), np.zeros((1, 2)), rotation, offset, margin)
    return positions


def render_atoms(positions_px, intensities, shape, sigma_px, truncate: float = 4.0) -> np.ndarray:
    """Draw a sum of 2-D Gaussians, one per atom, sampled at the pixel centres.

    Each Gaussian is separable: with ``R`` (atoms x rows) and ``C`` (atoms x
    cols) holding every atom's 1-D profiles within ``truncate * sigma``, the
    image is the sparse product ``R.T @ C`` (no Python loop over atoms).

    Parameters
    ----------
    positions_px : array_like, shape (n, 2)
        ``(row, col)`` in pixels (pixel centres are integers); atoms outside the
        image add the tails that reach into it.
    intensities : array_like, shape (n,) or scalar
        Peak height of each Gaussian.
    shape : (int, int)
        Output ``(H, W)``.
    sigma_px : float or array_like, shape (n,)
        Standard deviation in pixels (one value or one per atom).
    truncate : float
        Each Gaussian is cut at ``truncate * sigma``.

    Returns
    -------
    ndarray of float32, shape (H, W)
    """
    from scipy import sparse

    height, width = int(shape[0]), int(shape[1])
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    amp = np.broadcast_to(np.asarray(intensities, dtype=np.float64), (len(pos),))
    sigma = np.broadcast_to(np.asarray(sigma_px, dtype=np.float64), (len(pos),))
    if len(pos) == 0:
        return np.zeros((height, width), dtype=np.float32)
    if np.any(sigma <= 0):
        raise ValueError("sigma_px must be positive")
    reach = int(np.ceil(truncate * sigma.max()))
    keep = (
        np.isfinite(pos).all(axis=1)
        & (amp != 0)
        & (pos[:, 0] > -reach - 1)
        & (pos[:, 0] < height + reach)
        & (pos[:, 1] > -reach - 1)
        & (pos[:, 1] < width + reach)
    )
    pos, amp, sigma = pos[keep], amp[keep], sigma[keep]
    n = len(pos)
    if n == 0:
        return np.zeros((height, width), dtype=np.float32)
    base = np.rint(pos).astype(np.int64)
    offsets = np.arange(-reach, reach + 1)
    size = len(offsets)
    rows = base[:, :1] + offsets  # (n, S)
    cols = base[:, 1:] + offsets
    inv = 1.0 / (2.0 * sigma[:, None] ** 2)
    weight_r = np.exp(-((rows - pos[:, :1]) ** 2) * inv) * amp[:, None]
    weight_c = np.exp(-((cols - pos[:, 1:]) ** 2) * inv)
    weight_r[(rows < 0) | (rows >= height)] = 0.0
    weight_c[(cols < 0) | (cols >= width)] = 0.0
    indptr = np.arange(0, n * size + 1, size)
    profile_r = sparse.csr_matrix((weight_r.ravel(), np.clip(rows, 0, height - 1).ravel(), indptr), shape=(n, height))
    profile_c = sparse.csr_matrix((weight_c.ravel(), np.clip(cols, 0, width - 1).ravel(), indptr), shape=(n, width))
    image = (profile_r.T @ profile_c).toarray()
    return image.astype(np.float32)
