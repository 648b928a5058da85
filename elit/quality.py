"""Label-free checks of a result: what a microscopist looks at when there is no truth.

* the distribution of nearest-neighbour distances (one sharp peak at the
  bond length for a clean crystal; a shoulder at short distances means
  duplicates, a tail at long ones missed atoms);
* for graphene, the share of atoms (away from the image edge) with exactly
  three neighbours at 1.42 A +- 15 % (:func:`elit.metrics.neighbour_stats`);
* the positions of the dopants (atoms of any class but the most common one);
* atoms in vacuum: an atom with no other atom within ``vacuum_factor`` times
  the typical nearest-neighbour distance of its frame (the median of all
  nearest-neighbour distances, or the given bond length).  Lattice atoms,
  even at an edge or a vacancy, have a neighbour at about one bond; an
  isolated detection far from all others is almost always noise or
  contamination.

:func:`quality_summary` computes all of it per run; the report draws it.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from elit.data import AtomTable
from elit.errors import InputError

__all__ = ["nearest_neighbour_distances", "quality_summary", "vacuum_atoms"]


def nearest_neighbour_distances(atoms: AtomTable, pixel_size_A: float) -> np.ndarray:
    """Distance (Angstrom) from each atom to the nearest other atom of its frame (NaN when alone)."""
    out = np.full(len(atoms), np.nan)
    for f in np.unique(atoms.frame):
        idx = np.flatnonzero(atoms.frame == f)
        if len(idx) < 2:
            continue
        pos = atoms.positions()[idx] * pixel_size_A
        d, _ = cKDTree(pos).query(pos, k=2)
        out[idx] = d[:, 1]
    return out


def vacuum_atoms(atoms: AtomTable, pixel_size_A: float, bond_A: float | None = None,
                 vacuum_factor: float = 1.6) -> np.ndarray:
    """Boolean mask of atoms with no other atom within ``vacuum_factor`` times the typical neighbour distance."""
    d = nearest_neighbour_distances(atoms, pixel_size_A)
    out = np.zeros(len(atoms), dtype=bool)
    for f in np.unique(atoms.frame):
        idx = np.flatnonzero(atoms.frame == f)
        typical = bond_A if bond_A else (float(np.nanmedian(d[idx])) if np.isfinite(d[idx]).any() else np.nan)
        if not np.isfinite(typical):
            out[idx] = len(idx) == 1  # one atom alone in a frame is in vacuum
            continue
        out[idx] = ~(d[idx] <= vacuum_factor * typical)
    return out


def quality_summary(
    atoms: AtomTable,
    pixel_size_A: float,
    bond_A: float | None = 1.42,
    tol: float = 0.15,
    edge_margin_A: float = 2.0,
    vacuum_factor: float = 1.6,
    bins: int = 60,
) -> dict:
    """Label-free figures of one atom table.

    Parameters
    ----------
    atoms : AtomTable
        Positions in the pixels of the input frames.
    pixel_size_A : float
        Angstrom per pixel of those frames.
    bond_A : float or None
        Expected neighbour distance for the three-neighbour check (graphene:
        1.42); None skips it and uses the median neighbour distance for the
        vacuum check.
    tol : float
        Relative tolerance of a bond.
    edge_margin_A : float
        Atoms nearer than this to the edge of their frame's atoms are not counted in the share.
    vacuum_factor : float
        See :func:`vacuum_atoms`.
    bins : int
        Bins of the neighbour-distance histogram (0 to 3 times the median).

    Returns
    -------
    dict
        ``n_atoms``, ``nn_median_A``, ``nn_histogram`` (``edges``, ``counts``),
        ``three_neighbour_share`` (mean over frames; None without ``bond_A``),
        ``three_neighbour_share_per_frame``, ``majority_class``, ``dopants``
        (list of ``frame, x, y, class_name, probability``), ``n_vacuum`` and
        ``vacuum`` (list of ``frame, x, y``), ``n_filled`` and ``filled`` (the atoms
        added where a frame missed them, :func:`elit.temporal.fill_gaps`) and
        ``mean_averaged`` (frames per position, 1 when not averaged over frames).
        Positions are input pixels (x = column).
    """
    from elit.metrics import neighbour_stats

    if not np.isfinite(pixel_size_A) or pixel_size_A <= 0:
        raise InputError(f"pixel_size_A must be positive, got {pixel_size_A}")
    d = nearest_neighbour_distances(atoms, pixel_size_A)
    finite = d[np.isfinite(d)]
    median = float(np.median(finite)) if len(finite) else float("nan")
    top = 3 * median if np.isfinite(median) and median > 0 else 1.0
    counts, edges = np.histogram(finite, bins=int(bins), range=(0.0, top))
    per_frame = []
    if bond_A:
        for f in np.unique(atoms.frame):
            a = atoms.in_frame(f)
            share = neighbour_stats(a.positions() * pixel_size_A, bond=bond_A, tol=tol * bond_A,
                                    edge_margin_A=edge_margin_A)
            per_frame.append(share)
    shares = [s for s in per_frame if np.isfinite(s)]
    names = atoms.class_names
    majority = int(np.bincount(atoms.class_index, minlength=len(names)).argmax()) if len(atoms) else 0
    dop = np.flatnonzero(atoms.class_index != majority)
    cprob = atoms.class_probability
    dopants = [
        {
            "frame": int(atoms.frame[i]), "x": round(float(atoms.col[i]), 2), "y": round(float(atoms.row[i]), 2),
            "class_name": names[atoms.class_index[i]] if atoms.class_index[i] < len(names) else str(atoms.class_index[i]),
            "probability": round(float(cprob[i] if cprob is not None and np.isfinite(cprob[i]) else atoms.probability[i]), 4),
        }
        for i in dop
    ]
    vac = vacuum_atoms(atoms, pixel_size_A, bond_A, vacuum_factor)
    filled = np.nan_to_num(atoms.filled) > 0 if atoms.filled is not None else np.zeros(len(atoms), dtype=bool)
    n_avg = np.nan_to_num(atoms.n_averaged, nan=1.0) if atoms.n_averaged is not None else np.ones(len(atoms))
    return {
        "n_atoms": int(len(atoms)),
        "nn_median_A": median,
        "nn_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "three_neighbour_share": float(np.mean(shares)) if shares else None,
        "three_neighbour_share_per_frame": [None if not np.isfinite(s) else float(s) for s in per_frame],
        "majority_class": names[majority] if majority < len(names) else str(majority),
        "dopants": dopants,
        "n_vacuum": int(vac.sum()),
        "vacuum": _places(atoms, vac),
        "n_filled": int(filled.sum()),
        "filled": _places(atoms, filled),
        "mean_averaged": float(n_avg.mean()) if len(atoms) else 1.0,
    }


def _places(atoms: AtomTable, which: np.ndarray) -> list[dict]:
    """``frame, x, y`` (input pixels, x = column) of the atoms ``which`` picks."""
    return [{"frame": int(atoms.frame[i]), "x": round(float(atoms.col[i]), 2), "y": round(float(atoms.row[i]), 2)}
            for i in np.flatnonzero(which)]
