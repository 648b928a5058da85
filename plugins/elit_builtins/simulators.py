"""Built-in simulators: graphene, simple lattices, and atoms from coordinate files.

Every simulator draws ``n`` images at the pixel size it is given.  An image is
a sum of 2-D Gaussians, one per atom (peak height ``Z ** gamma``, relative to
carbon for graphene), whose width combines the atom's own width with a probe
blur, plus an optional broad probe tail and a smooth background; it is then
normalised with :func:`elit.scale.normalize`.  Labels are discs of
``mask_radius`` Angstrom around the true positions (:func:`elit.masks.label_map`),
and the true atoms inside each image are returned in ``TrainingSet.atoms``.
Noise is left to the augmenter (``noise_sigma`` adds a little, if wanted).
All randomness comes from the generator passed to ``simulate``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Annotated, Literal

import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from elit.data import AtomTable, TrainingSet
from elit.errors import ConfigError, InputError
from elit.lattices import graphene_positions, lattice_points, perovskite_positions, render_atoms, square_positions
from elit.masks import label_map
from elit.scale import normalize
from elit.stages import Simulator, StageConfig

__all__ = [
    "CoordinatesSimulator",
    "GrapheneSimulator",
    "LatticeSimulator",
    "RangeConfig",
    "RenderConfig",
    "atomic_number",
    "load_structures",
    "render_pair",
    "render_probe",
    "smooth_field",
]


def bounded_pair(**bounds):
    """The type of a ``(low, high)`` config field whose two values obey ``bounds`` (ge, gt, le, lt)."""
    item = Annotated[float, Field(**bounds)]
    return tuple[item, item]


NonNegativePair = bounded_pair(ge=0.0)
PositivePair = bounded_pair(gt=0.0)
FractionPair = bounded_pair(ge=0.0, le=1.0)
TailPair = bounded_pair(ge=0.0, le=0.9)
BrightnessPair = bounded_pair(ge=0.0, le=10.0)
LengthPair = bounded_pair(gt=0.5, le=20.0)


class RangeConfig(StageConfig):
    """A stage config whose ``*_range`` fields are ``(low, high)`` pairs with ``low <= high``."""

    @model_validator(mode="after")
    def _ordered_ranges(self):
        for name in type(self).model_fields:
            if name.endswith("_range"):
                low, high = getattr(self, name)
                if low > high:
                    raise ValueError(f"{name} must be (low, high) with low <= high, got ({low}, {high})")
        return self


class RenderConfig(RangeConfig):
    """The rendering settings every built-in simulator shares (image, atoms, probe, background, masks, noise).

    A simulator whose defaults differ overrides them with :func:`rendering_default`,
    which keeps the bounds and the description given here.
    """

    image_size: int = Field(128, ge=16, le=4096, description="Image height and width in pixels.")
    atom_sigma_range: PositivePair = Field((0.25, 0.35), description="Gaussian width of an atom (column) in Angstrom.")
    probe_sigma_range: NonNegativePair = Field((0.3, 0.5), description="Gaussian probe blur in Angstrom.")
    probe_tail_range: TailPair = Field(
        (0.0, 0.3), description="Fraction of the probe current in a broad tail (4x the probe width)."
    )
    background_range: NonNegativePair = Field(
        (0.0, 0.3), description="Amplitude of a smooth random background, relative to the brightest atom."
    )
    mask_radius: float = Field(0.5, gt=0.0, le=5.0, description="Label disc radius in Angstrom.")
    noise_sigma: float = Field(0.0, ge=0.0, le=1.0, description="Additive Gaussian noise (relative to the image range); 0: none.")


def rendering_default(name: str, default):
    """``RenderConfig``'s field ``name`` with another default (same bounds and description)."""
    return FieldInfo.merge_field_infos(RenderConfig.model_fields[name], default=default)


def atomic_number(element: str) -> int:
    """Return the atomic number of a chemical symbol such as ``"Si"``."""
    if element not in atomic_numbers or atomic_numbers[element] == 0:
        raise ConfigError(f"unknown chemical element {element!r}; use a symbol such as 'Si' or 'N'")
    return int(atomic_numbers[element])


def _uniform(rng: np.random.Generator, bounds) -> float:
    low, high = bounds
    return float(low) if high == low else float(rng.uniform(low, high))


def smooth_field(rng: np.random.Generator, shape, n_nodes: int = 4) -> np.ndarray:
    """A smooth random field in [0, 1]: ``n_nodes x n_nodes`` random values joined by Gaussian bumps."""
    height, width = int(shape[0]), int(shape[1])

    def basis(size):
        nodes = (np.arange(n_nodes) + 0.5) * size / n_nodes
        x = np.arange(size)[:, None]
        return np.exp(-0.5 * ((x - nodes[None, :]) / (size / n_nodes)) ** 2)

    field = basis(height) @ rng.normal(0.0, 1.0, (n_nodes, n_nodes)) @ basis(width).T
    return (field - field.min()) / max(float(np.ptp(field)), 1e-12)


def render_probe(positions_px, intensities, shape, sigma_px, tail_fraction=0.0, tail_sigma_px=0.0) -> np.ndarray:
    """Render atoms as Gaussians of width ``sigma_px`` with a fraction of the probe in a broad tail.

    The tail is the same atoms blurred by a further Gaussian of ``tail_sigma_px``
    (integrated intensity kept), weighted by ``tail_fraction``.
    """
    image = render_atoms(positions_px, intensities, shape, sigma_px).astype(np.float64)
    if tail_fraction > 0 and tail_sigma_px > 0:
        wide = float(np.hypot(sigma_px, tail_sigma_px))
        heights = np.asarray(intensities, dtype=np.float64) * (sigma_px / wide) ** 2
        # the tail is smooth: draw it on a grid `step` times coarser, then interpolate up
        step = max(1, int(wide // 2))
        coarse_shape = (-(-shape[0] // step), -(-shape[1] // step))
        coarse_pos = (np.asarray(positions_px, dtype=np.float64) + 0.5) / step - 0.5
        coarse = render_atoms(coarse_pos, heights, coarse_shape, wide / step)
        tail = ndimage.affine_transform(
            coarse, np.full(2, 1.0 / step), offset=0.5 / step - 0.5, output_shape=tuple(shape), order=1, mode="nearest"
        )
        image = (1 - tail_fraction) * image + tail_fraction * tail
    return image


def _finish(image, rng, background, noise_sigma):
    """Add a smooth background and noise to a rendered image; normalise it."""
    image = np.asarray(image, dtype=np.float64)
    if background > 0:
        field = smooth_field(rng, image.shape)
        image += background * float(np.max(image, initial=0.0)) * field
    if noise_sigma > 0:
        span = float(np.ptp(image)) or 1.0
        image += rng.normal(0.0, noise_sigma * span, image.shape)
    return normalize(image)


def render_pair(
    positions_px: np.ndarray,
    intensities: np.ndarray,
    classes: np.ndarray,
    shape: tuple[int, int],
    sigma_px: float,
    mask_radius_px: float,
    rng: np.random.Generator,
    *,
    tail_fraction: float = 0.0,
    tail_sigma_px: float = 0.0,
    background: float = 0.0,
    noise_sigma: float = 0.0,
    labelled: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one image (normalised) and its label map.

    Parameters
    ----------
    positions_px : ndarray, shape (n, 2)
        ``(row, col)`` in pixels.
    intensities : ndarray, shape (n,)
        Peak height of each atom.
    classes : ndarray of int, shape (n,)
        0-based class of each atom (ignored where ``labelled`` is False).
    shape : (int, int)
        Image shape.
    sigma_px : float
        Gaussian width of every atom (atom and probe combined), in pixels.
    mask_radius_px : float
        Label disc radius in pixels.
    rng : numpy.random.Generator
        Used for the smooth background and the noise.
    tail_fraction, tail_sigma_px : float
        Weight and width of a broad probe tail (a second Gaussian blur).
    background : float
        Amplitude of a smooth random background, relative to the brightest pixel.
    noise_sigma : float
        Standard deviation of additive Gaussian noise (relative to the image's range).
    labelled : ndarray of bool, optional
        Which atoms get a disc in the label map (all by default).

    Returns
    -------
    image : ndarray of float32, shape ``shape``
    labels : ndarray of uint8, shape ``shape``
    """
    image = render_probe(positions_px, intensities, shape, sigma_px, tail_fraction, tail_sigma_px)
    image = _finish(image, rng, background, noise_sigma)
    keep = np.ones(len(positions_px), dtype=bool) if labelled is None else np.asarray(labelled, dtype=bool)
    labels = label_map(positions_px[keep], classes[keep], shape, mask_radius_px)
    return image, labels


def _inside(positions_px: np.ndarray, shape) -> np.ndarray:
    """Atoms whose centre lies on the image (within its outer pixel edges)."""
    return (
        (positions_px[:, 0] >= -0.5)
        & (positions_px[:, 0] < shape[0] - 0.5)
        & (positions_px[:, 1] >= -0.5)
        & (positions_px[:, 1] < shape[1] - 0.5)
    )


def _assemble(images, labels, tables, class_names, pixel_size, metadata) -> TrainingSet:
    frames, rows, cols, classes = [], [], [], []
    for index, (pos, cls) in enumerate(tables):
        frames.append(np.full(len(pos), index))
        rows.append(pos[:, 0])
        cols.append(pos[:, 1])
        classes.append(cls)
    k = int(sum(len(f) for f in frames))
    atoms = AtomTable(
        np.concatenate(frames) if frames else np.zeros(0),
        np.concatenate(rows) if rows else np.zeros(0),
        np.concatenate(cols) if cols else np.zeros(0),
        np.concatenate(classes) if classes else np.zeros(0),
        np.ones(k),
        np.zeros(k),
        class_names=class_names,
    )
    return TrainingSet(np.stack(images), np.stack(labels), class_names, pixel_size, atoms, metadata)


def _random_region(rng: np.random.Generator, centre, radius: float, roughness: float = 0.25, n_harmonics: int = 4):
    """Return a function telling which points lie inside a random blob (a circle with a wavy edge)."""
    amplitudes = rng.normal(0.0, roughness / np.sqrt(n_harmonics), n_harmonics)
    phases = rng.uniform(0, 2 * np.pi, n_harmonics)
    stretch = rng.uniform(0.6, 1.0)
    angle = rng.uniform(0, np.pi)
    c, s = np.cos(angle), np.sin(angle)

    def inside(points: np.ndarray) -> np.ndarray:
        d = points - np.asarray(centre)
        u = d[:, 0] * c + d[:, 1] * s
        v = (-d[:, 0] * s + d[:, 1] * c) / stretch
        theta = np.arctan2(v, u)
        edge = radius * (1 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(zip(amplitudes, phases))))
        return np.hypot(u, v) < edge

    return inside


def _poisson_disc(rng: np.random.Generator, lo, hi, density: float, min_distance: float) -> np.ndarray:
    """Random points in the box ``[lo, hi)`` at ``density`` per square Angstrom, none closer than ``min_distance``."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    area = float(np.prod(hi - lo))
    n = rng.poisson(density * area * 1.6)
    points = lo + rng.random((n, 2)) * (hi - lo)
    if n < 2:
        return points
    pairs = cKDTree(points).query_pairs(min_distance, output_type="ndarray")
    # greedily drop the later point of each close pair (vectorised approximation of dart throwing)
    drop = np.zeros(n, dtype=bool)
    for i, j in pairs:
        if not drop[i] and not drop[j]:
            drop[j] = True
    points = points[~drop]
    keep = int(round(density * area))
    return points[rng.permutation(len(points))[:keep]]


# --------------------------------------------------------------------------------------------- graphene


class GrapheneSimulator(Simulator):
    """Graphene with vacancies, holes, dopants and amorphous patches (random lattices or removal series)."""

    name = "graphene"
    version = "1"
    description = "Graphene honeycomb with vacancies, holes, substitutional dopants and amorphous patches"

    class Config(RenderConfig):
        mode: Literal["random", "removal"] = Field(
            "random",
            description="random: each image a fresh lattice with random defects; removal: series in which atoms "
            "are removed one by one from a lattice (edge atoms first), like the paper's MD route.",
        )
        multiclass: bool = Field(False, description="One class per element (C, then each dopant) instead of a single class.")
        dopants: tuple[str, ...] = Field(("Si",), description="Elements that substitute carbon (chemical symbols).")
        dopant_fraction_range: FractionPair = Field(
            (0.0, 0.01), description="Range of the fraction of atoms replaced by dopants (per image)."
        )
        vacancy_fraction_range: FractionPair = Field((0.0, 0.03), description="Range of the fraction of atoms removed at random.")
        hole_probability: float = Field(0.35, ge=0.0, le=1.0, description="Probability that an image has holes (random mode).")
        max_holes: int = Field(2, ge=1, le=20, description="Most holes in one image.")
        hole_radius_range: NonNegativePair = Field((2.0, 8.0), description="Hole radius range in Angstrom.")
        amorphous_probability: float = Field(0.2, ge=0.0, le=1.0, description="Probability that an image has an amorphous patch.")
        amorphous_radius_range: NonNegativePair = Field((3.0, 9.0), description="Amorphous patch radius range in Angstrom.")
        amorphous_brightness_range: NonNegativePair = Field(
            (0.8, 2.0), description="Peak height of amorphous atoms relative to lattice carbon (stacked layers look brighter)."
        )
        amorphous_label: Literal["background", "class"] = Field(
            "background", description="Label amorphous atoms as background, or as their own class 'amorphous'."
        )
        removal_steps: int = Field(8, ge=1, le=1000, description="Images per removal series (removal mode).")
        removal_max_fraction: float = Field(
            0.4, gt=0.0, lt=1.0, description="Fraction of the atoms on the image removed by the end of a series (removal mode)."
        )
        jitter: float = Field(0.05, ge=0.0, le=1.0, description="Thermal displacement (standard deviation) in Angstrom.")
        background_range: NonNegativePair = rendering_default("background_range", (0.0, 0.2))
        z_gamma: float = Field(1.7, ge=0.5, le=3.0, description="Peak height grows as Z ** z_gamma.")
        z_gamma_spread: float = Field(0.25, ge=0.0, le=1.0, description="Per image, the exponent is drawn from z_gamma +/- this.")
        intensity_jitter: float = Field(0.05, ge=0.0, le=0.5, description="Relative random spread of single atoms' peak heights.")
        lattice_constant: float = Field(2.46, gt=1.0, le=5.0, description="Graphene lattice constant in Angstrom.")

        @field_validator("dopants")
        @classmethod
        def _known_elements(cls, value):
            for element in value:
                if atomic_numbers.get(element, 0) == 0:
                    raise ValueError(f"unknown chemical element {element!r}; use a symbol such as 'Si' or 'N'")
            if len(set(value)) != len(value) or "C" in value:
                raise ValueError("dopants must be distinct elements other than C")
            return tuple(value)

    # ---- class bookkeeping
    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the atom classes the labels use."""
        cfg = self.config
        names = ("C",) + tuple(cfg.dopants) if cfg.multiclass else ("C",)
        if cfg.amorphous_label == "class":
            names = names + ("amorphous",)
        return names

    def simulate(self, n: int, rng: np.random.Generator, pixel_size: float) -> TrainingSet:
        """Return ``n`` graphene images at ``pixel_size`` Angstrom/px with labels and true atoms."""
        if n < 1:
            raise ConfigError(f"number of images must be at least 1, got {n}")
        if not pixel_size > 0:
            raise ConfigError(f"pixel_size must be positive, got {pixel_size}")
        cfg = self.config
        size = cfg.image_size
        extent = size * pixel_size
        images, labels, tables = [], [], []
        series = None
        for index in range(n):
            if cfg.mode == "removal":
                step = index % cfg.removal_steps
                if step == 0:
                    series = self._removal_series(rng, extent)
                base, keeps = series
                lattice = base[keeps[step]]
                atoms = self._decorate(rng, lattice, extent, holes=False)
            else:
                lattice = graphene_positions(
                    (extent, extent),
                    rotation=rng.uniform(0, np.pi / 3),
                    offset=rng.uniform(0, cfg.lattice_constant, 2),
                    a=cfg.lattice_constant,
                    margin=3.0,
                )
                atoms = self._decorate(rng, lattice, extent, holes=rng.random() < cfg.hole_probability)
            image, label, table = self._draw(rng, atoms, pixel_size)
            images.append(image)
            labels.append(label)
            tables.append(table)
        meta = {"simulator": self.name, "mask_radius_px": cfg.mask_radius / pixel_size}
        return _assemble(images, labels, tables, self.class_names, pixel_size, meta)

    def _removal_series(self, rng, extent):
        """A lattice and, per step, which of its atoms remain (atoms removed one by one, edge atoms first)."""
        cfg = self.config
        lattice = graphene_positions(
            (extent, extent), rotation=rng.uniform(0, np.pi / 3), offset=rng.uniform(0, cfg.lattice_constant, 2), a=cfg.lattice_constant
        )
        bond = cfg.lattice_constant / np.sqrt(3)
        tree = cKDTree(lattice)
        neighbours = tree.query_ball_point(lattice, 1.15 * bond)
        full = np.array([len(nb) - 1 for nb in neighbours])
        on_image = np.all((lattice >= 0) & (lattice < extent), axis=1)
        n_remove = int(round(cfg.removal_max_fraction * on_image.sum()))
        alive = np.ones(len(lattice), dtype=bool)
        count = full.copy()
        order = []
        first = rng.choice(np.nonzero(on_image)[0])
        for _ in range(n_remove):
            if not order:
                victim = first
            else:
                missing = full - count
                candidates = np.nonzero(alive & on_image & (missing > 0))[0]
                if len(candidates) == 0:
                    candidates = np.nonzero(alive & on_image)[0]
                    if len(candidates) == 0:
                        break
                # fewer remaining neighbours: more likely to go (dangling atoms first)
                weights = np.exp(-2.0 * count[candidates])
                victim = rng.choice(candidates, p=weights / weights.sum())
            alive[victim] = False
            for j in neighbours[victim]:
                if j != victim:
                    count[j] -= 1
            order.append(victim)
        if cfg.removal_steps > 1:
            removed_per_step = np.linspace(0, len(order), cfg.removal_steps).round().astype(int)
        else:
            removed_per_step = [int(rng.integers(0, len(order) + 1))]
        keeps = []
        for k in removed_per_step:
            keep = np.ones(len(lattice), dtype=bool)
            keep[np.asarray(order[:k], dtype=np.int64)] = False
            keeps.append(keep)
        return lattice, keeps

    def _decorate(self, rng, lattice, extent, holes: bool):
        """Add thermal jitter, holes, vacancies, dopants and amorphous patches; return (positions, element index, kind)."""
        cfg = self.config
        pos = lattice + rng.normal(0.0, cfg.jitter, lattice.shape) if cfg.jitter > 0 else lattice.copy()
        keep = np.ones(len(pos), dtype=bool)
        if holes:
            for _ in range(int(rng.integers(1, cfg.max_holes + 1))):
                inside = _random_region(rng, rng.uniform(0, extent, 2), _uniform(rng, cfg.hole_radius_range))
                keep &= ~inside(pos)
        vacancy = _uniform(rng, cfg.vacancy_fraction_range)
        if vacancy > 0:
            keep &= rng.random(len(pos)) >= vacancy
        pos = pos[keep]
        element = np.zeros(len(pos), dtype=np.int64)  # 0 = C, k = dopant k - 1
        dopant = _uniform(rng, cfg.dopant_fraction_range)
        if cfg.dopants and dopant > 0 and len(pos):
            chosen = rng.random(len(pos)) < dopant
            element[chosen] = rng.integers(1, len(cfg.dopants) + 1, int(chosen.sum()))
        amorphous = np.zeros(len(pos), dtype=bool)
        if rng.random() < cfg.amorphous_probability:
            centre = rng.uniform(0, extent, 2)
            radius = _uniform(rng, cfg.amorphous_radius_range)
            inside = _random_region(rng, centre, radius, roughness=0.3)
            keep = ~inside(pos)
            pos, element, amorphous = pos[keep], element[keep], amorphous[keep]
            lo = np.maximum(centre - 1.6 * radius, -3.0)
            hi = np.minimum(centre + 1.6 * radius, extent + 3.0)
            if np.all(hi > lo):
                points = _poisson_disc(rng, lo, hi, 0.33, 1.25)
                points = points[inside(points)] if len(points) else points
                pos = np.concatenate([pos, points])
                element = np.concatenate([element, np.zeros(len(points), dtype=np.int64)])
                amorphous = np.concatenate([amorphous, np.ones(len(points), dtype=bool)])
        return pos, element, amorphous

    def _draw(self, rng, atoms, pixel_size):
        cfg = self.config
        pos_A, element, amorphous = atoms
        size = cfg.image_size
        gamma = cfg.z_gamma + rng.uniform(-cfg.z_gamma_spread, cfg.z_gamma_spread)
        z = np.array([6] + [atomic_number(e) for e in cfg.dopants], dtype=np.float64)
        heights = (z / 6.0) ** gamma
        intensity = heights[element] * np.clip(1 + cfg.intensity_jitter * rng.standard_normal(len(element)), 0.2, None)
        if amorphous.any():
            intensity[amorphous] *= rng.uniform(*cfg.amorphous_brightness_range, int(amorphous.sum()))
        sigma_A = np.hypot(_uniform(rng, cfg.atom_sigma_range), _uniform(rng, cfg.probe_sigma_range))
        sigma_px = sigma_A / pixel_size
        pos_px = pos_A / pixel_size - 0.5  # Angstrom 0 is the image's outer edge, pixel centres at 0.5 px
        if cfg.multiclass:
            classes = element.copy()
        else:
            classes = np.zeros(len(element), dtype=np.int64)
        labelled = ~amorphous
        if cfg.amorphous_label == "class":
            classes[amorphous] = len(self.class_names) - 1
            labelled = np.ones(len(element), dtype=bool)
        image, label = render_pair(
            pos_px,
            intensity,
            classes,
            (size, size),
            sigma_px,
            cfg.mask_radius / pixel_size,
            rng,
            tail_fraction=_uniform(rng, cfg.probe_tail_range),
            tail_sigma_px=4 * sigma_px,
            background=_uniform(rng, cfg.background_range),
            noise_sigma=cfg.noise_sigma,
            labelled=labelled,
        )
        on = _inside(pos_px, (size, size)) & labelled
        return image, label, (pos_px[on], classes[on])


# --------------------------------------------------------------------------------------------- lattices


class LatticeSimulator(Simulator):
    """Square or cubic-perovskite [001] projections with displacements and an optional second phase."""

    name = "lattice"
    version = "1"
    description = "Square or cubic perovskite [001] lattice with displacements, vacancies and a second-phase island"

    class Config(RenderConfig):
        lattice: Literal["perovskite", "square"] = Field("perovskite", description="Cubic perovskite [001] (A and B sites) or a square lattice.")
        lattice_constant_range: LengthPair = Field((3.85, 3.96), description="Lattice constant range in Angstrom.")
        b_site_ratio_range: BrightnessPair = Field((0.3, 0.7), description="Peak height of B-site columns relative to A-site columns (perovskite)."
        )
        displacement: float = Field(0.08, ge=0.0, le=1.0, description="Random column displacement (standard deviation) in Angstrom.")
        intensity_jitter: float = Field(0.08, ge=0.0, le=0.5, description="Relative random spread of column peak heights.")
        vacancy_fraction_range: FractionPair = Field((0.0, 0.01), description="Range of the fraction of columns left out.")
        second_phase_probability: float = Field(0.5, ge=0.0, le=1.0, description="Probability that an image holds a second-phase island.")
        second_phase_lattice_constant_range: LengthPair = Field((2.9, 3.0), description="Column spacing of the second phase (NiO [001] Ni columns: 2.95 Angstrom)."
        )
        second_phase_brightness_range: BrightnessPair = Field((0.4, 0.9), description="Peak height of second-phase columns relative to A-site columns."
        )
        second_phase_radius_range: PositivePair = Field((0.2, 0.45), description="Island radius as a fraction of the image width."
        )
        labels: Literal["single", "sublattice", "phase"] = Field(
            "single",
            description="single: one class 'atom'; sublattice: the two sublattice names plus 'second-phase'; "
            "phase: 'matrix' and 'second-phase'.",
        )
        sublattice_names: tuple[str, str] = Field(("A", "B"), description="Class names of the A and B sites (labels: sublattice).")
        atom_sigma_range: PositivePair = rendering_default("atom_sigma_range", (0.25, 0.4))
        probe_sigma_range: NonNegativePair = rendering_default("probe_sigma_range", (0.25, 0.45))
        mask_radius: float = rendering_default("mask_radius", 0.6)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the atom classes the labels use."""
        mode = self.config.labels
        if mode == "sublattice":
            if self.config.lattice == "square":
                return (self.config.sublattice_names[0], "second-phase")
            return tuple(self.config.sublattice_names) + ("second-phase",)
        if mode == "phase":
            return ("matrix", "second-phase")
        return ("atom",)

    def simulate(self, n: int, rng: np.random.Generator, pixel_size: float) -> TrainingSet:
        """Return ``n`` lattice images at ``pixel_size`` Angstrom/px with labels and true atoms."""
        if n < 1:
            raise ConfigError(f"number of images must be at least 1, got {n}")
        cfg = self.config
        size = cfg.image_size
        extent = size * pixel_size
        names = self.class_names
        phase_class = len(names) - 1
        images, labels, tables = [], [], []
        for _ in range(n):
            a = _uniform(rng, cfg.lattice_constant_range)
            rotation = rng.uniform(0, np.pi / 2)
            offset = rng.uniform(0, a, 2)
            if cfg.lattice == "perovskite":
                pos, sub = perovskite_positions((extent, extent), rotation, offset, a=a)
                ratio = _uniform(rng, cfg.b_site_ratio_range)
                height = np.where(sub == 0, 1.0, ratio)
            else:
                pos = square_positions((extent, extent), a, rotation, offset)
                sub = np.zeros(len(pos), dtype=np.int64)
                height = np.ones(len(pos))
            phase = np.zeros(len(pos), dtype=bool)
            if rng.random() < cfg.second_phase_probability:
                radius = _uniform(rng, cfg.second_phase_radius_range) * extent
                inside = _random_region(rng, rng.uniform(0.2, 0.8, 2) * extent, radius, roughness=0.2)
                keep = ~inside(pos)
                pos, sub, height, phase = pos[keep], sub[keep], height[keep], phase[keep]
                a2 = _uniform(rng, cfg.second_phase_lattice_constant_range)
                # the island's lattice is aligned with the matrix (epitaxy), with its own origin
                island, _ = lattice_points((extent, extent), a2 * np.eye(2), np.zeros((1, 2)), rotation, rng.uniform(0, a2, 2), 3.0)
                island = island[inside(island)]
                pos = np.concatenate([pos, island])
                sub = np.concatenate([sub, np.zeros(len(island), dtype=np.int64)])
                height = np.concatenate([height, np.full(len(island), _uniform(rng, cfg.second_phase_brightness_range))])
                phase = np.concatenate([phase, np.ones(len(island), dtype=bool)])
            vacancy = _uniform(rng, cfg.vacancy_fraction_range)
            if vacancy > 0:
                keep = rng.random(len(pos)) >= vacancy
                pos, sub, height, phase = pos[keep], sub[keep], height[keep], phase[keep]
            if cfg.displacement > 0:
                pos = pos + rng.normal(0.0, cfg.displacement, pos.shape)
            height = height * np.clip(1 + cfg.intensity_jitter * rng.standard_normal(len(height)), 0.2, None)
            if cfg.labels == "sublattice":
                classes = np.where(phase, phase_class, sub)
            elif cfg.labels == "phase":
                classes = phase.astype(np.int64)
            else:
                classes = np.zeros(len(pos), dtype=np.int64)
            sigma_px = np.hypot(_uniform(rng, cfg.atom_sigma_range), _uniform(rng, cfg.probe_sigma_range)) / pixel_size
            pos_px = pos / pixel_size - 0.5
            image, label = render_pair(
                pos_px,
                height,
                classes,
                (size, size),
                sigma_px,
                cfg.mask_radius / pixel_size,
                rng,
                tail_fraction=_uniform(rng, cfg.probe_tail_range),
                tail_sigma_px=4 * sigma_px,
                background=_uniform(rng, cfg.background_range),
                noise_sigma=cfg.noise_sigma,
            )
            on = _inside(pos_px, (size, size))
            images.append(image)
            labels.append(label)
            tables.append((pos_px[on], classes[on]))
        meta = {"simulator": self.name, "mask_radius_px": cfg.mask_radius / pixel_size}
        return _assemble(images, labels, tables, names, pixel_size, meta)


# --------------------------------------------------------------------------------------------- coordinates


@lru_cache(maxsize=8)
def _read_structures(path: str, index: str, stamp: tuple[int, int]):
    import ase.io

    try:
        structures = ase.io.read(path, index=index)
    except FileNotFoundError as exc:
        raise InputError(f"coordinate file not found: {path}") from exc
    except Exception as exc:  # ase raises many kinds of errors for unreadable files
        raise InputError(f"cannot read atoms from {path} with ASE: {exc}") from exc
    if not isinstance(structures, list):
        structures = [structures]
    if not structures:
        raise InputError(f"no structures selected from {path} with frames={index!r}")
    return tuple(
        (
            np.asarray(s.get_positions(), dtype=np.float64),
            np.asarray(s.get_atomic_numbers(), dtype=np.int64),
            np.asarray(s.get_cell().array, dtype=np.float64),
            np.asarray(s.get_pbc(), dtype=bool),
        )
        for s in structures
    )


def load_structures(path: str, frames: str = ":"):
    """Read structures with ASE, once per file version (cached).

    This is the one place a built-in stage reads a file: the coordinates *are*
    the simulator's model.  The cache is keyed by path, modification time and
    size, so a changed file is read again.

    Parameters
    ----------
    path : str
        Any file ASE reads (xyz/extxyz, POSCAR/XDATCAR, CIF, ...).
    frames : str
        ASE index string: ``":"`` all, ``"-1"`` the last, ``"0:100:10"`` every tenth of the first 100.

    Returns
    -------
    tuple of (positions (n, 3) Angstrom, atomic numbers (n,), cell (3, 3), pbc (3,))
    """
    path = os.path.abspath(os.path.expanduser(path))
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputError(f"coordinate file not found: {path}") from exc
    return _read_structures(path, frames, (info.st_mtime_ns, info.st_size))


def _axis_rotation(direction: np.ndarray) -> np.ndarray:
    """Rotation matrix whose third row is the unit vector ``direction`` (projection axis -> z)."""
    z = direction / np.linalg.norm(direction)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def _projected_columns(positions, numbers, cell, pbc, zone_axis, thickness, window, rng_rotation):
    """Project a structure along a zone axis, tiled to cover a window; return (xy (n, 2), Z (n,))."""
    periodic = bool(np.any(pbc)) and abs(np.linalg.det(cell)) > 1e-6
    direction = np.asarray(zone_axis, dtype=np.float64)
    if periodic:
        direction = direction @ cell  # [uvw] in lattice vectors -> Cartesian
    if np.linalg.norm(direction) < 1e-9:
        raise ConfigError(f"zone_axis {list(zone_axis)} has zero length")
    rot = _axis_rotation(direction)
    local = positions @ rot.T
    z_lo, z_hi = local[:, 2].min(), local[:, 2].max()
    if thickness > 0:
        centre = 0.5 * (z_lo + z_hi)
        z_lo, z_hi = centre - thickness / 2, centre + thickness / 2
    if periodic:
        reach = np.hypot(window / np.sqrt(2) + 3.0, max(z_hi - z_lo, 1.0))
        centre = local.mean(axis=0)
        recip = np.linalg.inv(cell).T  # rows: reciprocal vectors (without 2 pi)
        n_rep = [int(np.ceil(reach * np.linalg.norm(recip[i]))) + 1 if pbc[i] else 0 for i in range(3)]
        shifts = np.stack(
            np.meshgrid(*[np.arange(-k, k + 1) for k in n_rep], indexing="ij"), axis=-1
        ).reshape(-1, 3) @ cell
        local_shifts = shifts @ rot.T
        tiled = (local[None, :, :] + local_shifts[:, None, :]).reshape(-1, 3)
        z_numbers = np.tile(numbers, len(shifts))
        d = tiled[:, :2] - centre[:2]
        keep = (tiled[:, 2] >= z_lo - 1e-6) & (tiled[:, 2] <= z_hi + 1e-6) & (np.abs(d) <= reach).all(axis=1)
        local, numbers = tiled[keep], z_numbers[keep]
    else:
        keep = (local[:, 2] >= z_lo - 1e-6) & (local[:, 2] <= z_hi + 1e-6)
        local, numbers = local[keep], numbers[keep]
    xy = local[:, :2] - local[:, :2].mean(axis=0)
    c, s = np.cos(rng_rotation), np.sin(rng_rotation)
    xy = xy @ np.array([[c, -s], [s, c]]).T
    return xy, numbers


def _merge_columns(xy: np.ndarray, numbers: np.ndarray, tolerance: float):
    """Group atoms within ``tolerance`` Angstrom into columns: mean position, summed weight, dominant Z."""
    if len(xy) == 0:
        return xy, numbers, np.zeros(0, dtype=np.int64)
    pairs = cKDTree(xy).query_pairs(tolerance, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(xy), len(xy)))
    n_col, label = connected_components(graph, directed=False)
    count = np.bincount(label, minlength=n_col)
    centre = np.stack([np.bincount(label, xy[:, k], n_col) / count for k in range(2)], axis=1)
    # the heaviest element of each column names it
    order = np.lexsort((-numbers, label))
    first = np.ones(len(order), dtype=bool)
    first[1:] = label[order][1:] != label[order][:-1]
    dominant = np.zeros(n_col, dtype=np.int64)
    dominant[label[order][first]] = numbers[order][first]
    return centre, dominant, label


class CoordinatesSimulator(Simulator):
    """Images of atoms read from coordinate files (MD trajectories, relaxed cells, CIF) projected along a zone axis.

    Exception to "stages never open files": the structures are this simulator's
    model, so it reads them itself through :func:`load_structures` (ASE, once
    per file version, cached).
    """

    name = "coordinates"
    version = "1"
    description = "Atoms from files ASE reads (xyz, POSCAR/XDATCAR, CIF), projected along a zone axis"

    class Config(RenderConfig):
        path: str = Field("", description="Coordinate file read with ASE (xyz/extxyz, POSCAR, XDATCAR, CIF, ...).")
        frames: str = Field(":", min_length=1, description="ASE index string of the frames to use: ':' all, '0:100:10', '-1'.")
        zone_axis: tuple[float, float, float] = Field(
            (0.0, 0.0, 1.0), description="Projection direction [u, v, w] in lattice vectors (Cartesian when the file has no cell)."
        )
        thickness: float = Field(
            0.0, ge=0.0, le=1000.0, description="Slab thickness along the zone axis in Angstrom; 0: the structure's own extent."
        )
        random_rotation: bool = Field(True, description="Rotate each image by a random angle about the zone axis.")
        classes: Literal["single", "element"] = Field(
            "single", description="single: one class 'atom'; element: one class per element (by the column's heaviest atom)."
        )
        z_gamma: float = Field(1.7, ge=0.5, le=3.0, description="Peak height grows as Z ** z_gamma (summed along a column).")
        column_tolerance: float = Field(0.3, ge=0.0, le=2.0, description="Atoms closer than this (Angstrom, projected) form one column.")
        jitter: float = Field(0.0, ge=0.0, le=1.0, description="Extra random displacement in Angstrom (the file's own positions otherwise).")

    def _structures(self):
        if not self.config.path:
            raise ConfigError("the coordinates simulator needs 'path', a coordinate file ASE can read")
        return load_structures(self.config.path, self.config.frames)

    def elements(self) -> tuple[int, ...]:
        """Atomic numbers present in the selected frames (sorted)."""
        return tuple(sorted({int(z) for _, numbers, _, _ in self._structures() for z in np.unique(numbers)}))

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the atom classes the labels use."""
        if self.config.classes == "single":
            return ("atom",)
        return tuple(chemical_symbols[z] for z in self.elements())

    def simulate(self, n: int, rng: np.random.Generator, pixel_size: float) -> TrainingSet:
        """Return ``n`` images of randomly chosen frames at ``pixel_size`` Angstrom/px."""
        if n < 1:
            raise ConfigError(f"number of images must be at least 1, got {n}")
        cfg = self.config
        structures = self._structures()
        size = cfg.image_size
        extent = size * pixel_size
        element_index = {z: k for k, z in enumerate(self.elements())}
        names = self.class_names
        images, labels, tables = [], [], []
        for _ in range(n):
            positions, numbers, cell, pbc = structures[int(rng.integers(len(structures)))]
            rotation = rng.uniform(0, 2 * np.pi) if cfg.random_rotation else 0.0
            xy, z = _projected_columns(positions, numbers, cell, pbc, cfg.zone_axis, cfg.thickness, extent, rotation)
            if cfg.jitter > 0:
                xy = xy + rng.normal(0.0, cfg.jitter, xy.shape)
            # place the structure's centre at a random point near the image centre; (x, y) -> (col, row)
            shift = extent / 2 + rng.uniform(-0.1, 0.1, 2) * extent
            pos_A = np.stack([xy[:, 1], xy[:, 0]], axis=1) + shift
            gamma_weight = z.astype(np.float64) ** cfg.z_gamma
            sigma_px = np.hypot(_uniform(rng, cfg.atom_sigma_range), _uniform(rng, cfg.probe_sigma_range)) / pixel_size
            pos_px = pos_A / pixel_size - 0.5
            scale = float(np.median(gamma_weight)) if len(gamma_weight) else 1.0
            columns, dominant, _ = _merge_columns(pos_px * pixel_size, z, cfg.column_tolerance)
            columns_px = columns / pixel_size
            if cfg.classes == "element":
                classes = np.array([element_index[int(v)] for v in dominant], dtype=np.int64)
            else:
                classes = np.zeros(len(columns_px), dtype=np.int64)
            label = label_map(columns_px, classes, (size, size), cfg.mask_radius / pixel_size)
            tail = _uniform(rng, cfg.probe_tail_range)
            image = render_probe(pos_px, gamma_weight / scale, (size, size), sigma_px, tail, 4 * sigma_px)
            image = _finish(image, rng, _uniform(rng, cfg.background_range), cfg.noise_sigma)
            on = _inside(columns_px, (size, size))
            images.append(image)
            labels.append(label)
            tables.append((columns_px[on], classes[on]))
        meta = {"simulator": self.name, "mask_radius_px": cfg.mask_radius / pixel_size, "path": cfg.path}
        return _assemble(images, labels, tables, names, pixel_size, meta)


STAGES = [GrapheneSimulator, LatticeSimulator, CoordinatesSimulator]
