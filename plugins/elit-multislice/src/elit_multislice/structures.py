"""Specimen models: the atoms one simulated image is made from.

Every function takes and returns :class:`ase.Atoms` with an orthogonal cell
whose third axis is the beam direction.  Random choices take a
:class:`numpy.random.Generator`.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from ase import Atoms

from elit.errors import ConfigError, InputError

GRAPHENE_A = 2.46
"""Graphene lattice constant in Angstrom (C-C bond 1.42 Angstrom)."""


def graphene_cell(a: float = GRAPHENE_A) -> Atoms:
    """Return the rectangular 4-atom graphene cell (``a`` by ``a * sqrt(3)``, armchair along y).

    Parameters
    ----------
    a : float
        Lattice constant in Angstrom.
    """
    b = a * np.sqrt(3.0)
    d = a / np.sqrt(3.0)  # C-C bond length
    xy = [(0.0, 0.0), (a / 2, d / 2), (a / 2, 1.5 * d), (0.0, 2.0 * d)]
    return Atoms("C4", positions=[(x, y, 0.0) for x, y in xy], cell=[a, b, 0.0], pbc=True)


def read_structure(path: str) -> Atoms:
    """Read the (last) structure in ``path`` with ASE, once per file version.

    The cache is keyed by path, modification time and size, so a changed file
    is read again.  Returns a copy the caller may change.
    """
    path = os.path.abspath(os.path.expanduser(path))
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputError(f"structure file not found: {path}") from exc
    return _read_structure(path, info.st_mtime_ns, info.st_size).copy()


@lru_cache(maxsize=8)
def _read_structure(path: str, mtime_ns: int, size: int) -> Atoms:
    import ase.io

    try:
        atoms = ase.io.read(path)
    except Exception as exc:
        raise InputError(f"ASE cannot read the structure file {path}: {exc}") from exc
    if isinstance(atoms, list):  # pragma: no cover - ase.io.read returns the last frame by default
        atoms = atoms[-1]
    return atoms


def prepare_structure(atoms: Atoms, repeats: tuple[int, int], vacuum: float) -> Atoms:
    """Make ``atoms`` fit for a periodic simulation: orthogonal cell, repeated, centred in z.

    Parameters
    ----------
    atoms : ase.Atoms
        Any periodic-in-plane structure; a non-orthogonal cell is orthogonalised.
    repeats : (int, int)
        Repetitions along x and y.
    vacuum : float
        Empty space added above and below the atoms along z, in Angstrom.
    """
    if len(atoms) == 0:
        raise InputError("the structure holds no atoms")
    atoms = atoms.copy()
    if not np.all(atoms.cell.lengths()[:2] > 0):
        raise InputError("the structure needs an in-plane cell (its a and b cell vectors are zero)")
    atoms.center(vacuum=vacuum, axis=2)
    atoms.pbc = True
    cell = np.array(atoms.cell)
    if not np.allclose(cell[:2], np.diag(np.diag(cell))[:2], atol=1e-6):
        from abtem import orthogonalize_cell

        try:
            atoms = orthogonalize_cell(atoms)
        except Exception as exc:  # abTEM raises a bare RuntimeError when it cannot
            raise InputError(f"cannot make an orthogonal in-plane cell from the structure: {exc}") from exc
    atoms = atoms * (int(repeats[0]), int(repeats[1]), 1)
    atoms.wrap()
    atoms.center(vacuum=vacuum, axis=2)
    return atoms


def substitute(atoms: Atoms, host: str, dopant: str, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Replace ``round(fraction * n_host)`` randomly chosen ``host`` atoms by ``dopant``, in place.

    Returns
    -------
    ndarray of int
        Indices of the substituted atoms.
    """
    sites = np.flatnonzero(np.array(atoms.get_chemical_symbols()) == host)
    count = int(round(fraction * len(sites)))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = np.sort(rng.choice(sites, size=count, replace=False))
    symbols = atoms.get_chemical_symbols()
    for i in chosen:
        symbols[i] = dopant
    atoms.set_chemical_symbols(symbols)
    return chosen


def remove_vacancies(atoms: Atoms, host: str, fraction: float, rng: np.random.Generator) -> Atoms:
    """Return ``atoms`` without ``round(fraction * n_host)`` randomly chosen ``host`` atoms."""
    sites = np.flatnonzero(np.array(atoms.get_chemical_symbols()) == host)
    count = int(round(fraction * len(sites)))
    if count == 0:
        return atoms
    if count >= len(atoms):
        raise ConfigError(f"vacancy_fraction {fraction} would remove every atom; lower it")
    chosen = rng.choice(sites, size=count, replace=False)
    keep = np.ones(len(atoms), dtype=bool)
    keep[chosen] = False
    return atoms[keep]


def shift_periodic(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    """Return ``atoms`` moved by a random in-plane offset and wrapped into the cell."""
    atoms = atoms.copy()
    lx, ly = atoms.cell.lengths()[:2]
    atoms.positions[:, 0] += rng.uniform(0.0, lx)
    atoms.positions[:, 1] += rng.uniform(0.0, ly)
    atoms.wrap()
    return atoms


def projected_columns(atoms: Atoms, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge atoms whose projections along z lie within ``tolerance`` into columns.

    The in-plane cell is periodic: atoms on opposite edges can share a column.

    Parameters
    ----------
    atoms : ase.Atoms
        Atoms in an orthogonal cell, wrapped into it.
    tolerance : float
        Largest in-plane distance (Angstrom) between atoms of one column.

    Returns
    -------
    xy : ndarray, shape (m, 2)
        Column positions ``(x, y)`` in Angstrom, in ``[0, L)``.
    numbers : ndarray of int, shape (m,)
        Atomic number of each column's heaviest atom.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    box = np.asarray(atoms.cell.lengths()[:2], dtype=np.float64)
    xy = np.mod(atoms.positions[:, :2], box)
    xy = np.where(xy >= box, 0.0, xy)  # np.mod can round up to the period itself
    numbers = np.asarray(atoms.numbers, dtype=np.int64)
    if tolerance <= 0 or len(xy) < 2:
        return xy, numbers
    pairs = cKDTree(xy, boxsize=box).query_pairs(tolerance, output_type="ndarray")
    if len(pairs) == 0:
        return xy, numbers
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(xy), len(xy)))
    n_columns, label = connected_components(graph, directed=False)
    # mean position by the minimum-image offset from each column's first atom
    first = np.full(n_columns, -1)
    first[label[::-1]] = np.arange(len(xy))[::-1]
    offset = xy - xy[first[label]]
    offset -= box * np.round(offset / box)
    counts = np.bincount(label, minlength=n_columns)[:, None]
    mean = xy[first] + np.stack([np.bincount(label, offset[:, k], n_columns) for k in range(2)], axis=1) / counts
    heaviest = np.zeros(n_columns, dtype=np.int64)
    np.maximum.at(heaviest, label, numbers)
    return np.mod(mean, box), heaviest
