"""Realistic benchmark movies: abTEM multislice frames with exact truth, cached outside the repository.

The elit-multislice plugin computes one noise-free HAADF period of each frame's
specimen (PRISM, static lattice).  Everything after that is applied when a
movie is loaded, so one simulation serves every dose and regime:

* drift between frames: an exact shift of the periodic, band-limited image
  (the same as shifting the specimen in its periodic cell and wrapping the atoms);
* scan-line jitter: every scan row is shifted along the fast axis by its own
  sub-pixel amount (exact Fourier evaluation); it is noise, the truth stays put;
* a small smooth background, then Poisson counts
  ``Poisson(dose * pixel_area * (haadf + background))`` where the HAADF value is
  the fraction of the probe scattered into the detector.

Materials
---------
graphene
    6 frames of a 16 x 9 graphene cell (39.4 x 38.4 A, 383 x 393 px at 0.1 A/px), 60 kV,
    30 mrad, HAADF 80-200 mrad, PRISM interpolation 4.  3 substitutional Si sites (fixed, so
    18 Si over the movie), a hole that grows frame by frame (irregular radius, 0 in frame 0),
    an amorphous carbon patch (lattice removed, random C at least 1.2 A apart).  Truth: the
    lattice columns, classes ("C", "Si"); the amorphous atoms separately; hole and amorphous
    masks per frame.  The amorphous mask is the patch's outline plus 0.5 A, and scoring leaves
    it out.
perovskite
    2 frames of SrTiO3 [001] (a = 3.905 A, 10 x 10 x 5 cells: 39.05 x 39.05 x 19.5 A,
    390 x 390 px at 0.1 A/px), 200 kV, 20 mrad, HAADF 80-200 mrad, PRISM interpolation 4,
    slices of a/2.  Truth: the cation columns, classes ("A", "B") = (Sr, Ti-O).  Pure O
    columns are dim in HAADF and are **not** detection truth (elit's perovskite model, like most
    HAADF atom finders, has only cation columns); they are listed in ``.oxygen`` and
    :mod:`realistic` treats detections on them as neither true nor false.

Seeds: tuning 0 (both materials); held out 100-122 (graphene) and 100-108 (perovskite), only
with ``--final`` / ``final=True``.

Use
---
    python bench/realistic_data.py --make [--final]          # fill the cache (2 processes, nice 10)
    python bench/realistic_data.py --save-npy DIR --material graphene --seed 0 --dose 8e4
    from realistic_data import load_movie                   # with bench/ on sys.path
    movie = load_movie("graphene", 0, 8e4, regime="normal")

Cache: ``$ELIT_BENCH_CACHE`` or ``~/.cache/elit-bench``.  A finished movie writes
``READY-<material>-<seed>`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "elit-multislice" / "src"))

from elit.data import AtomTable  # noqa: E402

VERSION = 1
"""Bump when the specimens or the simulation change: cached movies of another version are ignored."""

TUNING_SEEDS = {"graphene": (0,), "perovskite": (0,)}
HELDOUT_SEEDS = {"graphene": (100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122), "perovskite": (100, 101, 102, 103, 104, 105, 106, 107, 108)}
DOSES = (1e4, 2e4, 8e4, 3e5, 5e5)
"""Doses the benchmark uses, electrons per square Angstrom."""

PIXEL_SIZE = 0.1
"""Angstrom per pixel of every movie."""


@dataclass(frozen=True)
class Regime:
    """What happens to the noise-free frames before the counts (one per regime name).

    Attributes
    ----------
    drift_px : float
        Mean drift per frame (pixels of :data:`PIXEL_SIZE`), along a direction fixed per movie.
    drift_walk_px : float
        Standard deviation of a random-walk term added to the drift per frame (pixels of :data:`PIXEL_SIZE`).
    jitter_px : float
        Standard deviation of the per-row scan-line shift (pixels); half of it is
        white from row to row, half follows a slow random walk.
    background : float
        Smooth background as a fraction of the mean noise-free signal.
    """

    drift_px: float
    drift_walk_px: float
    jitter_px: float
    background: float


REGIMES = {
    "normal": Regime(drift_px=3.0, drift_walk_px=1.0, jitter_px=0.25, background=0.15),
    "low-dose": Regime(drift_px=8.0, drift_walk_px=3.0, jitter_px=0.6, background=0.15),
}


@dataclass(frozen=True)
class MaterialSpec:
    """Fixed settings of one material's movies (microscope, cell, frame count)."""

    n_frames: int
    simulator: dict
    class_names: tuple[str, ...]


MATERIALS = {
    "graphene": MaterialSpec(
        n_frames=6,
        simulator=dict(
            structure="graphene", repeats=(16, 9), vacuum=2.0, energy=60.0, semiangle_cutoff=30.0,
            detector_inner=80.0, detector_outer=200.0, prism_interpolation=4, sampling=0.05, slice_thickness=1.0,
        ),
        class_names=("C", "Si"),
    ),
    "perovskite": MaterialSpec(
        n_frames=2,
        simulator=dict(
            structure="graphene", repeats=(1, 1), vacuum=2.0, energy=200.0, semiangle_cutoff=20.0,
            detector_inner=80.0, detector_outer=200.0, prism_interpolation=4, sampling=0.04,
            slice_thickness=3.905 / 2,
        ),
        class_names=("A", "B"),
    ),
}

GRAPHENE_HOLE_MAX_A = (7.0, 9.0)
GRAPHENE_PATCH_RADIUS_A = (5.0, 7.0)
AMORPHOUS_MIN_DISTANCE_A = 1.2
AMORPHOUS_DENSITY_PER_A2 = 0.30
AMORPHOUS_MASK_MARGIN_A = 0.5
N_SILICON = 3
SRTIO3_A = 3.905
SRTIO3_CELLS = (10, 10, 5)


# --------------------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """The cache folder: ``$ELIT_BENCH_CACHE`` or ``~/.cache/elit-bench``."""
    return Path(os.environ.get("ELIT_BENCH_CACHE") or Path.home() / ".cache" / "elit-bench")


def movie_dir(material: str, seed: int) -> Path:
    return cache_dir() / f"v{VERSION}" / f"{material}-s{seed}"


def ready_file(material: str, seed: int) -> Path:
    return cache_dir() / f"READY-{material}-{seed}"


def check_seed(material: str, seed: int, final: bool) -> None:
    """Refuse unknown materials, and held-out seeds unless ``final``."""
    if material not in MATERIALS:
        raise ValueError(f"unknown material {material!r}; choose from {sorted(MATERIALS)}")
    if seed in HELDOUT_SEEDS[material] and not final:
        raise ValueError(f"seed {seed} of {material} is held out; use it only for the final figures (final=True, --final)")
    if seed not in HELDOUT_SEEDS[material] + TUNING_SEEDS[material]:
        raise ValueError(f"{material} seed {seed} is not a benchmark seed (tuning {TUNING_SEEDS[material]}, held out {HELDOUT_SEEDS[material]})")


# ----------------------------------------------------------------------------------- specimens


def _irregular_radius(rng: np.random.Generator) -> np.ndarray:
    """Harmonics ``(k, amplitude, phase)`` of an irregular outline r(theta) = R (1 + sum a cos(k theta + phi))."""
    ks = np.array([2.0, 3.0, 4.0, 5.0])
    return np.stack([ks, rng.uniform(0.0, 0.12, len(ks)), rng.uniform(0, 2 * np.pi, len(ks))], axis=1)


def _outline(harmonics: np.ndarray, theta: np.ndarray) -> np.ndarray:
    k, a, phi = harmonics[:, 0], harmonics[:, 1], harmonics[:, 2]
    return 1.0 + np.sum(a[None, :] * np.cos(k[None, :] * theta[:, None] + phi[None, :]), axis=1)


def _min_image(d: np.ndarray, box: np.ndarray) -> np.ndarray:
    return d - box * np.round(d / box)


def _inside(xy: np.ndarray, center, radius: float, harmonics: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Which points ``(x, y)`` lie inside the irregular outline (periodic cell)."""
    if radius <= 0 or len(xy) == 0:
        return np.zeros(len(xy), dtype=bool)
    d = _min_image(np.asarray(xy, dtype=np.float64) - np.asarray(center), box)
    r = np.hypot(d[:, 0], d[:, 1])
    return r < radius * _outline(harmonics, np.arctan2(d[:, 1], d[:, 0]))


def graphene_specimen(seed: int) -> dict:
    """The seeded description of a graphene movie (no simulation): lattice, Si, hole, patch."""
    from elit_multislice import structures

    spec = MATERIALS["graphene"]
    rng = np.random.default_rng([VERSION, 1, seed])
    base = structures.prepare_structure(structures.graphene_cell(), spec.simulator["repeats"], spec.simulator["vacuum"])
    box = base.cell.lengths()[:2].copy()
    xy = base.positions[:, :2].copy()
    z0 = float(base.positions[0, 2])
    hole_max = rng.uniform(*GRAPHENE_HOLE_MAX_A)
    patch_r = rng.uniform(*GRAPHENE_PATCH_RADIUS_A)
    while True:
        hole_c, patch_c = rng.uniform(0, 1, 2) * box, rng.uniform(0, 1, 2) * box
        if np.hypot(*_min_image(hole_c - patch_c, box)) > hole_max * 1.15 + patch_r * 1.15 + 3.0:
            break
    hole_h, patch_h = _irregular_radius(rng), _irregular_radius(rng)
    hole_radii = np.linspace(0.0, hole_max, spec.n_frames)
    in_patch = _inside(xy, patch_c, patch_r, patch_h, box)
    far = (np.hypot(*_min_image(xy - hole_c, box).T) > hole_max * 1.2 + 2.0) & (
        np.hypot(*_min_image(xy - patch_c, box).T) > patch_r * 1.2 + 2.0
    )
    silicon = []
    for i in rng.permutation(np.flatnonzero(far)):
        if all(np.hypot(*_min_image(xy[i] - xy[j], box)) > 6.0 for j in silicon):
            silicon.append(int(i))
        if len(silicon) == N_SILICON:
            break
    lattice = xy[~in_patch]
    is_si = np.isin(np.flatnonzero(~in_patch), silicon)
    # amorphous carbon: random sequential addition inside the patch, >= 1.2 A from everything
    area = np.pi * patch_r**2 * (1 + 0.5 * np.sum(patch_h[:, 1] ** 2))
    target = int(round(AMORPHOUS_DENSITY_PER_A2 * area))
    amorphous: list[np.ndarray] = []
    from scipy.spatial import cKDTree

    tree = cKDTree(np.mod(lattice, box), boxsize=box)
    for _ in range(200 * target):
        if len(amorphous) >= target:
            break
        ang, rad = rng.uniform(0, 2 * np.pi), patch_r * np.sqrt(rng.uniform())
        p = np.mod(patch_c + rad * np.array([np.cos(ang), np.sin(ang)]), box)
        if not _inside(p[None], patch_c, patch_r, patch_h, box)[0]:
            continue
        if tree.query(p)[0] < AMORPHOUS_MIN_DISTANCE_A:
            continue
        if amorphous and np.min(np.hypot(*_min_image(np.array(amorphous) - p, box).T)) < AMORPHOUS_MIN_DISTANCE_A:
            continue
        amorphous.append(p)
    return dict(
        box=box.tolist(), z=z0, lattice=lattice.tolist(), lattice_si=is_si.tolist(),
        amorphous=np.array(amorphous).tolist(), amorphous_z=rng.uniform(-0.4, 0.4, len(amorphous)).tolist(),
        hole_center=hole_c.tolist(), hole_radii=hole_radii.tolist(), hole_harmonics=hole_h.tolist(),
        patch_center=patch_c.tolist(), patch_radius=float(patch_r), patch_harmonics=patch_h.tolist(),
        cell=np.array(base.cell).tolist(),
    )


def graphene_frame_atoms(specimen: dict, frame: int):
    """The ase Atoms of one frame (hole of that frame cut out) and its truth columns in Angstrom."""
    from ase import Atoms

    box = np.array(specimen["box"])
    lattice = np.array(specimen["lattice"])
    si = np.array(specimen["lattice_si"], dtype=bool)
    hole = _inside(lattice, specimen["hole_center"], specimen["hole_radii"][frame], np.array(specimen["hole_harmonics"]), box)
    keep = ~hole
    amo = np.array(specimen["amorphous"]).reshape(-1, 2)
    z = specimen["z"]
    positions = np.concatenate([
        np.column_stack([lattice[keep], np.full(keep.sum(), z)]),
        np.column_stack([amo, z + np.array(specimen["amorphous_z"])]),
    ])
    symbols = ["Si" if s else "C" for s in si[keep]] + ["C"] * len(amo)
    atoms = Atoms(symbols, positions=positions, cell=specimen["cell"], pbc=True)
    truth = dict(xy=lattice[keep], cls=si[keep].astype(np.int64), amorphous=amo)
    return atoms, truth


def perovskite_specimen(seed: int) -> dict:
    """SrTiO3 [001]: cation columns (A = Sr, B = Ti-O) and pure-O columns, 10 x 10 x 5 cells."""
    from ase import Atoms

    a = SRTIO3_A
    nx, ny, nz = SRTIO3_CELLS
    unit = Atoms(
        "SrTiO3",
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5)],
        cell=[a, a, a], pbc=True,
    )
    atoms = unit * (nx, ny, nz)
    atoms.center(vacuum=MATERIALS["perovskite"].simulator["vacuum"], axis=2)
    # the same seeded offset for every frame puts the lattice off the pixel grid
    rng = np.random.default_rng([VERSION, 2, seed])
    atoms.positions[:, :2] += rng.uniform(0, a, 2)
    atoms.wrap()
    box = atoms.cell.lengths()[:2]
    ij = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij"), -1).reshape(-1, 2) * a
    off = atoms.positions[0, :2] - 0.0  # Sr of the first cell
    cols = {
        "A": np.mod(ij + off, box),
        "B": np.mod(ij + off + [a / 2, a / 2], box),
        "O": np.mod(np.concatenate([ij + off + [a / 2, 0], ij + off + [0, a / 2]]), box),
    }
    return dict(
        box=box.tolist(), numbers=atoms.numbers.tolist(), positions=atoms.positions.tolist(),
        cell=np.array(atoms.cell).tolist(), columns={k: v.tolist() for k, v in cols.items()},
    )


def perovskite_frame_atoms(specimen: dict, frame: int):
    from ase import Atoms

    atoms = Atoms(numbers=specimen["numbers"], positions=specimen["positions"], cell=specimen["cell"], pbc=True)
    c = specimen["columns"]
    xy = np.concatenate([np.array(c["A"]), np.array(c["B"])])
    cls = np.r_[np.zeros(len(c["A"]), dtype=np.int64), np.ones(len(c["B"]), dtype=np.int64)]
    return atoms, dict(xy=xy, cls=cls, amorphous=np.zeros((0, 2)), oxygen=np.array(c["O"]))


SPECIMENS = {"graphene": (graphene_specimen, graphene_frame_atoms), "perovskite": (perovskite_specimen, perovskite_frame_atoms)}


# ---------------------------------------------------------------------------------- simulation


def _simulate_frame(material: str, seed: int, frame: int) -> tuple[str, int, int, float, float]:
    """Simulate one noise-free HAADF period and save it (runs in a worker process)."""
    try:
        os.nice(max(0, 10 - os.nice(0)))  # niceness 10, not 10 more than a parent already niced
    except OSError:
        pass
    from elit_multislice import MultisliceSimulator

    out = movie_dir(material, seed) / f"frame-{frame:02d}.npz"
    if out.exists():
        return material, seed, frame, 0.0, 0.0
    make_specimen, frame_atoms = SPECIMENS[material]
    specimen = make_specimen(seed)
    atoms, _ = frame_atoms(specimen, frame)
    cfg = dict(MATERIALS[material].simulator)
    sim = MultisliceSimulator(**cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    haadf = sim._haadf(atoms, seed)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, haadf=haadf, n_atoms=len(atoms), wall_s=wall, cpu_s=cpu)
    os.replace(tmp, out)
    return material, seed, frame, wall, cpu


def _finish_movie(material: str, seed: int) -> None:
    """Assemble the frames of a movie into movie.npz + specimen.json and write the READY marker."""
    d = movie_dir(material, seed)
    n = MATERIALS[material].n_frames
    frames = [np.load(d / f"frame-{f:02d}.npz") for f in range(n)]
    haadf = np.stack([fr["haadf"] for fr in frames])
    cpu = [float(fr["cpu_s"]) for fr in frames]
    specimen = SPECIMENS[material][0](seed)
    meta = dict(
        material=material, seed=seed, version=VERSION, simulator=MATERIALS[material].simulator,
        cpu_s_per_frame=cpu, wall_s_per_frame=[float(fr["wall_s"]) for fr in frames],
        abtem_version=_abtem_version(), specimen=specimen,
    )
    np.savez_compressed(d / "movie.npz", haadf=haadf)
    (d / "specimen.json").write_text(json.dumps(meta))
    ready_file(material, seed).write_text(f"{material} seed {seed} v{VERSION}: {d}\n")


def _abtem_version() -> str:
    from importlib.metadata import version

    return version("abtem")


def make(final: bool, workers: int = 2, materials=("graphene", "perovskite")) -> None:
    """Simulate every missing movie: the tuning seeds first, then (``final``) the held-out ones."""
    order = [(m, s) for m in materials for s in TUNING_SEEDS[m]]
    if final:
        order += [(m, s) for m in materials for s in HELDOUT_SEEDS[m]]
    jobs = [(m, s, f) for m, s in order if not (movie_dir(m, s) / "movie.npz").exists() for f in range(MATERIALS[m].n_frames)]
    remaining = {(m, s): MATERIALS[m].n_frames for m, s in order}
    for m, s in order:
        if (movie_dir(m, s) / "movie.npz").exists():
            print(f"{m} seed {s}: cached in {movie_dir(m, s)}", flush=True)
            remaining.pop((m, s))
    t0 = time.perf_counter()
    # submit in order, at most `workers` at a time, so the first movie finishes first
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_simulate_frame, *job) for job in jobs]
        for fut in as_completed(futures):
            m, s, f, wall, cpu = fut.result()
            remaining[(m, s)] -= 1
            print(f"[{time.perf_counter() - t0:7.0f} s] {m} seed {s} frame {f}: {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
            if remaining[(m, s)] == 0:
                _finish_movie(m, s)
                print(f"{m} seed {s}: done -> {movie_dir(m, s)}", flush=True)


# ------------------------------------------------------------------------------------- loading


@dataclass
class Movie:
    """A benchmark movie at one dose: counts, truth in frame pixels, masks.

    Attributes
    ----------
    frames : ndarray of float32, shape (N, H, W)
        Poisson counts.
    pixel_size : float
        Angstrom per pixel.
    truth : AtomTable
        The lattice columns in frame pixels (graphene classes C, Si; perovskite A, B).
    amorphous : AtomTable
        Atoms of the amorphous patch (not scored; graphene only).
    hole_masks, amorphous_masks : ndarray of bool, shape (N, H, W)
        Pixels inside the hole and inside the amorphous patch (outline + 0.5 A).
    oxygen : AtomTable
        Pure-O columns (perovskite; neither true nor false when found).
    clean : ndarray of float32, shape (N, H, W)
        Noise-free expected counts (drift and jitter applied), for reference.
    """

    name: str
    frames: np.ndarray
    pixel_size: float
    truth: AtomTable
    amorphous: AtomTable
    hole_masks: np.ndarray
    amorphous_masks: np.ndarray
    oxygen: AtomTable
    clean: np.ndarray
    info: dict = field(default_factory=dict)


def _fourier_eval_matrix(n_in: int, period: float, positions: np.ndarray) -> np.ndarray:
    freqs = np.fft.fftfreq(n_in, d=1.0 / n_in)
    return np.exp(2j * np.pi * np.outer(positions / period, freqs)) / n_in


def render(haadf: np.ndarray, extent, shape, pixel_size: float, shift_yx, row_shifts_px) -> np.ndarray:
    """Evaluate one periodic band-limited period at the frame's pixel centres.

    Pixel ``(i, j)`` shows the specimen at ``y = i * ps - shift_y``,
    ``x = (j - row_shifts_px[i]) * ps - shift_x``: the specimen drifted by
    ``shift`` Angstrom, each scan row displaced by its jitter.
    """
    ly, lx = extent
    spec = np.fft.fft2(np.asarray(haadf, dtype=np.float64))
    rows = _fourier_eval_matrix(haadf.shape[0], ly, np.arange(shape[0]) * pixel_size - shift_yx[0])
    a = rows @ spec  # (H, nx): each row's 1-D spectrum along x
    fx = np.fft.fftfreq(haadf.shape[1], d=1.0 / haadf.shape[1])
    a = a * np.exp(-2j * np.pi * np.outer(np.asarray(row_shifts_px) * pixel_size, fx) / lx)
    cols = _fourier_eval_matrix(haadf.shape[1], lx, np.arange(shape[1]) * pixel_size - shift_yx[1])
    return np.real(a @ cols.T)


def _frame_points(xy: np.ndarray, cls: np.ndarray, box, shift_yx, shape, pixel_size: float, frame: int, names) -> AtomTable:
    """Columns ``(x, y)`` in Angstrom -> an AtomTable in frame pixels, periodic copies in or at the frame."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    rows = np.mod(xy[:, 1] + shift_yx[0], box[1]) / pixel_size
    cols = np.mod(xy[:, 0] + shift_yx[1], box[0]) / pixel_size
    out_r, out_c, out_k = [], [], []
    for dr in (-box[1] / pixel_size, 0.0):
        for dc in (-box[0] / pixel_size, 0.0):
            r, c = rows + dr, cols + dc
            # up to one pixel beyond the pixel centres: the frame is a little shorter than the period, and
            # an atom in the unsampled strip shows half on each side (listed on both; scoring ignores
            # unmatched atoms at the border)
            ok = (r >= -1.0) & (r < shape[0]) & (c >= -1.0) & (c < shape[1])
            out_r.append(r[ok])
            out_c.append(c[ok])
            out_k.append(np.asarray(cls)[ok])
    r, c, k = np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_k)
    n = len(r)
    return AtomTable(np.full(n, frame), r, c, k, np.ones(n), np.zeros(n), tuple(names))


def _region_mask(center, radius, harmonics, box, shift_yx, shape, pixel_size, margin=0.0) -> np.ndarray:
    if radius <= 0:
        return np.zeros(shape, dtype=bool)
    yy, xx = np.meshgrid(np.arange(shape[0]) * pixel_size - shift_yx[0], np.arange(shape[1]) * pixel_size - shift_yx[1], indexing="ij")
    d = _min_image(np.stack([xx.ravel(), yy.ravel()], 1) - np.asarray(center), np.asarray(box))
    r = np.hypot(d[:, 0], d[:, 1])
    lim = radius * _outline(np.asarray(harmonics), np.arctan2(d[:, 1], d[:, 0])) + margin
    return (r < lim).reshape(shape)


def _smooth_background(rng, shape) -> np.ndarray:
    """A smooth random field with mean 1 and values within about [0.5, 1.5]."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    field = np.zeros(shape)
    for _ in range(3):
        c, w = rng.uniform(-1, 1, 2), rng.uniform(0.5, 1.2)
        field += rng.uniform(-1, 1) * np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * w**2))
    field += rng.uniform(-0.3, 0.3) * xx + rng.uniform(-0.3, 0.3) * yy
    field = field / max(np.abs(field).max(), 1e-9) * 0.5
    return 1.0 + field


def movie_name(material: str, seed: int, regime: str, dose: float, pixel_size: float = PIXEL_SIZE) -> str:
    """A movie's name, e.g. ``graphene-s107-normal-8e+04`` (the bench's work folders are named by it).

    A pixel size other than :data:`PIXEL_SIZE` is added: ``graphene-s0-normal-2e+04-px0.075``.
    """
    name = f"{material}-s{seed}-{regime}-{dose:.0e}"
    return name if pixel_size == PIXEL_SIZE else f"{name}-px{pixel_size:g}"


def parse_movie_name(name: str) -> tuple[str, int, str, float, float]:
    """``(material, seed, regime, dose, pixel_size)`` of a :func:`movie_name`."""
    material, seed, rest = name.split("-", 2)
    regime = next((r for r in REGIMES if rest.startswith(r + "-")), None)  # a regime's name may hold "-"
    if regime is None:
        raise ValueError(f"{name!r} is not a movie name: no regime of {sorted(REGIMES)} after the seed")
    dose, _, px = rest[len(regime) + 1:].partition("-px")
    return material, int(seed[1:]), regime, float(dose), float(px) if px else PIXEL_SIZE


def load_movie(material: str, seed: int, dose: float, regime: str = "normal", final: bool = False,
               pixel_size: float = PIXEL_SIZE) -> Movie:
    """Load a cached movie and apply drift, jitter, background and Poisson noise for ``dose``.

    Parameters
    ----------
    material : {"graphene", "perovskite"}
    seed : int
        Tuning seed 0, or a held-out seed (100, 101 graphene; 100 perovskite) with ``final=True``.
    dose : float
        Electrons per square Angstrom.
    regime : {"normal", "low-dose"}
        Drift, jitter and background (:data:`REGIMES`).
    final : bool
        Allow the held-out seeds.
    pixel_size : float
        Angstrom per pixel the frames are sampled at (the band-limited period is
        evaluated there; drift is the same in Angstrom, jitter the same in pixels).
    """
    check_seed(material, seed, final)
    if not 0.02 <= pixel_size <= 0.3:
        raise ValueError(f"pixel_size must lie in [0.02, 0.3] A/px, got {pixel_size}")
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose from {sorted(REGIMES)}")
    d = movie_dir(material, seed)
    if not (d / "movie.npz").exists():
        raise FileNotFoundError(f"{material} seed {seed} is not simulated yet: run python bench/realistic_data.py --make{' --final' if final else ''}")
    haadf = np.load(d / "movie.npz")["haadf"]
    meta = json.loads((d / "specimen.json").read_text())
    specimen = meta["specimen"]
    spec = MATERIALS[material]
    reg = REGIMES[regime]
    box = np.array(specimen["box"])  # (lx, ly)
    ps = float(pixel_size)
    shape = (int(np.floor(box[1] / ps + 1e-6)), int(np.floor(box[0] / ps + 1e-6)))
    # drift and jitter depend on the movie and regime only; the counts also on the dose
    geo = np.random.default_rng([VERSION, 3, seed, list(REGIMES).index(regime), list(MATERIALS).index(material)])
    direction = geo.uniform(0, 2 * np.pi)
    steps = reg.drift_px * np.array([np.sin(direction), np.cos(direction)]) + geo.normal(0, reg.drift_walk_px, (spec.n_frames, 2))
    steps[0] = 0.0
    shifts = np.cumsum(steps, axis=0) * PIXEL_SIZE  # (N, 2) Angstrom (y, x), whatever the frames' pixel size
    noise = np.random.default_rng([VERSION, 4, seed, list(REGIMES).index(regime), int(round(dose)), list(MATERIALS).index(material)])
    clean, counts, truth, amo, oxy, holes, patches = [], [], [], [], [], [], []
    frame_atoms = SPECIMENS[material][1]
    for f in range(spec.n_frames):
        white = geo.normal(0, reg.jitter_px / np.sqrt(2), shape[0])
        walk = np.cumsum(geo.normal(0, 1.0, shape[0]))
        walk = (walk - walk.mean()) / max(walk.std(), 1e-9) * reg.jitter_px / np.sqrt(2)
        img = render(haadf[f], (box[1], box[0]), shape, ps, shifts[f], white + walk)
        img = np.clip(img, 0.0, None)
        img = img + reg.background * img.mean() * _smooth_background(geo, shape)
        expected = dose * ps**2 * img
        clean.append(expected.astype(np.float32))
        counts.append(noise.poisson(expected).astype(np.float32))
        _, t = frame_atoms(specimen, f)
        truth.append(_frame_points(t["xy"], t["cls"], box, shifts[f], shape, ps, f, spec.class_names))
        amo.append(_frame_points(t["amorphous"], np.zeros(len(t["amorphous"]), dtype=np.int64), box, shifts[f], shape, ps, f, ("C",)))
        ox = t.get("oxygen", np.zeros((0, 2)))
        oxy.append(_frame_points(ox, np.zeros(len(ox), dtype=np.int64), box, shifts[f], shape, ps, f, ("O",)))
        if material == "graphene":
            holes.append(_region_mask(specimen["hole_center"], specimen["hole_radii"][f], specimen["hole_harmonics"], box, shifts[f], shape, ps))
            patches.append(_region_mask(specimen["patch_center"], specimen["patch_radius"], specimen["patch_harmonics"], box, shifts[f], shape, ps, AMORPHOUS_MASK_MARGIN_A))
        else:
            holes.append(np.zeros(shape, dtype=bool))
            patches.append(np.zeros(shape, dtype=bool))
    info = dict(
        material=material, seed=seed, dose=float(dose), regime=regime, pixel_size=ps, drift_A=shifts.tolist(),
        jitter_px=reg.jitter_px, version=VERSION, simulator=meta["simulator"], cpu_s_per_frame=meta["cpu_s_per_frame"],
    )
    return Movie(
        name=movie_name(material, seed, regime, dose, ps),
        frames=np.stack(counts), pixel_size=ps,
        truth=AtomTable.concatenate(truth, class_names=spec.class_names),
        amorphous=AtomTable.concatenate(amo, class_names=("C",)),
        hole_masks=np.stack(holes), amorphous_masks=np.stack(patches),
        oxygen=AtomTable.concatenate(oxy, class_names=("O",)),
        clean=np.stack(clean), info=info,
    )


def table_to_dict(t: AtomTable) -> dict:
    return dict(frame=t.frame.tolist(), row=t.row.tolist(), col=t.col.tolist(), class_index=t.class_index.tolist(), class_names=list(t.class_names))


def save_npy(movie: Movie, out: Path) -> Path:
    """Write ``frames.npy`` (for ``elit run --data``), ``truth.json`` and the masks (``masks.npz``) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "frames.npy", movie.frames)
    (out / "truth.json").write_text(json.dumps(dict(
        name=movie.name, pixel_size=movie.pixel_size, info=movie.info, truth=table_to_dict(movie.truth),
        amorphous=table_to_dict(movie.amorphous), oxygen=table_to_dict(movie.oxygen),
    )))
    np.savez_compressed(out / "masks.npz", hole=movie.hole_masks, amorphous=movie.amorphous_masks)
    return out / "frames.npy"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Make or export the realistic benchmark movies.")
    p.add_argument("--make", action="store_true", help="simulate every missing movie into the cache")
    p.add_argument("--final", action="store_true", help="also the held-out seeds")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--materials", default="graphene,perovskite")
    p.add_argument("--save-npy", type=Path, metavar="DIR", help="write frames.npy, truth.json, masks.npz of one movie")
    p.add_argument("--material", default="graphene")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dose", type=float, default=8e4)
    p.add_argument("--regime", default="normal", choices=sorted(REGIMES))
    args = p.parse_args(argv)
    if args.make:
        make(args.final, args.workers, tuple(args.materials.split(",")))
    if args.save_npy:
        movie = load_movie(args.material, args.seed, args.dose, args.regime, final=args.final)
        print(save_npy(movie, args.save_npy))
    if not (args.make or args.save_npy):
        p.print_help()


if __name__ == "__main__":
    main()
