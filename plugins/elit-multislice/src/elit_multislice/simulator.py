"""The ``multislice`` simulator: HAADF STEM images computed with abTEM's PRISM algorithm."""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Literal

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from pydantic import Field, field_validator, model_validator

from elit.data import AtomTable, TrainingSet
from elit.errors import ConfigError
from elit.stages import Simulator, StageConfig
from elit_multislice import structures
from elit_multislice.resample import fourier_resample

ANTIALIAS_FRACTION = 2.0 / 3.0
"""Fraction of the potential's Nyquist frequency abTEM keeps (its default antialias aperture)."""

MIN_PRISM_WINDOW_A = 8.0
"""Smallest probe window (cell extent / interpolation) accepted when interpolating, in Angstrom."""


def electron_wavelength(energy: float) -> float:
    """Relativistic electron wavelength in Angstrom for an accelerating voltage in kV."""
    volts = energy * 1e3
    return 12.264259 / np.sqrt(volts * (1.0 + 0.97847574e-6 * volts))


class MultisliceSimulator(Simulator):
    """HAADF STEM images of a periodic specimen from first principles (abTEM, PRISM).

    Each image is one period of the specimen cell: the structure is repeated,
    given random dopants and vacancies, shifted by a random in-plane offset,
    then the scattering matrix is computed with the multislice algorithm and
    reduced at each probe position (PRISM).  The scan, sampled at the probe's
    Nyquist rate, is Fourier-resampled to exactly the requested pixel size.
    Pixel ``(i, j)`` is centred at ``y = i * pixel_size``, ``x = j * pixel_size``
    in the (shifted) cell, so atom ``(x, y)`` sits at ``(row, col) = (y, x) / pixel_size``.
    Labels and ``TrainingSet.atoms`` list projected atom columns (atoms within
    ``column_tolerance`` merge; the heaviest names the class), periodic images
    at the edges included.

    Exception to "stages never open files", as for the built-in ``coordinates``
    simulator: a ``structure`` path is this simulator's model, so it reads the
    file itself (with ASE, once per file version).

    abTEM runs single-threaded (one FFTW thread, one numba thread, the dask
    synchronous scheduler) while :meth:`simulate` runs: with several threads it
    has been seen to drop atoms from an image without any error.
    """

    name = "multislice"
    version = "0.1.0"
    description = "HAADF STEM images simulated with abTEM (PRISM multislice) from graphene or an ASE structure"

    class Config(StageConfig):
        structure: str = Field(
            "graphene",
            description="'graphene' (the rectangular 4-atom cell, a = 2.46 Angstrom) or the path of a structure file ASE "
            "reads (CIF, POSCAR, extxyz, ...); the beam runs along z.",
        )
        repeats: tuple[int, int] = Field(
            (16, 9), description="Repetitions of the structure cell along x and y (graphene 16 x 9: 39 x 38 Angstrom)."
        )
        vacuum: float = Field(
            2.0, ge=0.5, le=50.0, description="Vacuum above and below the atoms along the beam in Angstrom."
        )
        energy: float = Field(60.0, ge=10.0, le=1000.0, description="Accelerating voltage in kV (60, not 60000).")
        semiangle_cutoff: float = Field(30.0, gt=0.0, le=100.0, description="Probe-forming aperture semi-angle in mrad.")
        detector_inner: float = Field(
            80.0, ge=0.0, le=1000.0, description="Inner angle of the annular (HAADF) detector in mrad."
        )
        detector_outer: float = Field(
            200.0, gt=0.0, le=1000.0, description="Outer angle of the annular (HAADF) detector in mrad."
        )
        prism_interpolation: int = Field(
            4,
            ge=1,
            le=32,
            description="PRISM interpolation factor: 1 is exact; the probe window is the cell extent / factor.",
        )
        sampling: float = Field(
            0.05,
            gt=0.0,
            le=0.5,
            description="Sampling of the potential and wave functions in Angstrom (limits the detector angle).",
        )
        slice_thickness: float = Field(1.0, gt=0.0, le=10.0, description="Multislice slice thickness in Angstrom.")
        scan_sampling: float | None = Field(
            None,
            gt=0.0,
            le=2.0,
            description="Probe step in Angstrom; None: the Nyquist step lambda / (4 alpha), which is exact.",
        )
        host_element: str = Field("C", description="Element that dopants replace and vacancies remove.")
        dopant_element: str = Field("Si", description="Element substituted for host atoms.")
        dopant_fraction: float = Field(
            0.0, ge=0.0, le=1.0, description="Fraction of host atoms replaced by the dopant (per image)."
        )
        vacancy_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of host atoms removed (per image).")
        random_shift: bool = Field(True, description="Shift the specimen by a random in-plane offset in each image.")
        frozen_phonons: int = Field(
            0,
            ge=0,
            le=64,
            description="Frozen-phonon configurations averaged per image; 0: a static lattice (cost grows linearly).",
        )
        phonon_sigma: float = Field(
            0.08, ge=0.0, le=0.5, description="Thermal displacement (standard deviation per direction) in Angstrom."
        )
        classes: Literal["element", "single"] = Field(
            "element", description="element: one class per element, by atomic number; single: one class 'atom'."
        )
        column_tolerance: float = Field(
            0.3,
            ge=0.0,
            le=2.0,
            description="Atoms closer than this in projection (Angstrom) form one column, labelled by its heaviest atom.",
        )
        mask_radius: float = Field(0.5, gt=0.0, le=5.0, description="Label disc radius in Angstrom.")

        @field_validator("host_element", "dopant_element")
        @classmethod
        def _known_element(cls, value: str) -> str:
            if value not in atomic_numbers or value == "X":
                raise ValueError(f"unknown chemical element {value!r}")
            return value

        @field_validator("repeats")
        @classmethod
        def _positive_repeats(cls, value: tuple[int, int]) -> tuple[int, int]:
            if min(value) < 1:
                raise ValueError(f"repeats must be >= 1, got {value}")
            return value

        @model_validator(mode="after")
        def _detector_fits(self):
            if self.detector_inner >= self.detector_outer:
                raise ValueError(
                    f"detector_inner ({self.detector_inner}) must be below detector_outer ({self.detector_outer})"
                )
            if self.dopant_fraction > 0 and self.dopant_element == self.host_element:
                raise ValueError(f"dopant_element and host_element are both {self.host_element!r}")
            limit = max_scattering_angle_mrad(self.energy, self.sampling)
            if self.detector_outer > limit:
                raise ValueError(
                    f"detector_outer {self.detector_outer} exceeds the {limit:.0f} mrad the simulation resolves "
                    f"at sampling {self.sampling} Angstrom and {self.energy} kV; use a sampling of at most "
                    f"{self.sampling * limit / self.detector_outer:.3f}"
                )
            return self

    # ------------------------------------------------------------------ public

    @property
    def class_names(self) -> tuple[str, ...]:
        """Atom class names of the images this simulator makes (fixed by the config)."""
        if self.config.classes == "single":
            return ("atom",)
        return self._element_classes(self._base_structure())

    def simulate(self, n: int, rng: np.random.Generator, pixel_size: float) -> TrainingSet:
        """Return ``n`` HAADF images at ``pixel_size`` Angstrom/px with their label maps and true atoms.

        Parameters
        ----------
        n : int
            Number of images (each a fresh random specimen).
        rng : numpy.random.Generator
            Source of every random choice (dopants, vacancies, shift, phonons).
        pixel_size : float
            Angstrom per output pixel.
        """
        from elit.masks import label_map
        from elit.scale import normalize

        if n < 1:
            raise ConfigError(f"a simulator must make at least one image, asked for {n}")
        if not pixel_size > 0:
            raise ConfigError(f"pixel_size must be positive, got {pixel_size}")
        rng = np.random.default_rng(rng)
        base = self._base_structure()
        classes = self.class_names
        lx, ly = base.cell.lengths()[:2]
        shape = (int(np.floor(ly / pixel_size + 1e-6)), int(np.floor(lx / pixel_size + 1e-6)))
        if min(shape) < 8:
            raise ConfigError(
                f"the {lx:.1f} x {ly:.1f} A cell gives only {shape[0]} x {shape[1]} px at {pixel_size} A/px; raise repeats"
            )
        self._check_prism_window(lx, ly)

        radius_px = self.config.mask_radius / pixel_size
        images, labels, tables = [], [], []
        for frame in range(n):
            atoms = self._draw_specimen(base, rng)
            phonon_seed = int(rng.integers(2**31 - 1))
            haadf = self._haadf(atoms, phonon_seed)  # (rows = y, cols = x), one period
            images.append(fourier_resample(haadf, (ly, lx), pixel_size, shape))
            rows, cols, cls = self._columns_in_pixels(atoms, classes, pixel_size)
            copies = _periodic_copies(rows, cols, cls, ly / pixel_size, lx / pixel_size, shape, radius_px)
            labels.append(label_map(copies[:, :2], copies[:, 2].astype(np.int64), shape, radius_px))
            inside = np.all((copies[:, :2] >= -0.5) & (copies[:, :2] < np.array(shape) - 0.5), axis=1)
            r, c, k = copies[inside, 0], copies[inside, 1], copies[inside, 2].astype(np.int64)
            tables.append(AtomTable(np.full(len(k), frame), r, c, k, np.ones(len(k)), np.zeros(len(k)), classes))

        metadata = {
            "simulator": self.name,
            "abtem_version": _abtem_version(),
            "cell_extent_A": [float(ly), float(lx)],
            "mask_radius_px": radius_px,
        }
        return TrainingSet(
            images=normalize(np.stack(images).astype(np.float32)),
            labels=np.stack(labels),
            class_names=classes,
            pixel_size=float(pixel_size),
            atoms=AtomTable.concatenate(tables, class_names=classes),
            metadata=metadata,
        )

    # ----------------------------------------------------------------- helpers

    def _base_structure(self) -> Atoms:
        cfg = self.config
        if cfg.structure == "graphene":
            atoms = structures.graphene_cell()
        else:
            atoms = structures.read_structure(cfg.structure)
        return structures.prepare_structure(atoms, cfg.repeats, cfg.vacuum)

    def _element_classes(self, atoms: Atoms) -> tuple[str, ...]:
        numbers = set(int(z) for z in atoms.numbers)
        if self.config.dopant_fraction > 0:
            numbers.add(atomic_numbers[self.config.dopant_element])
        return tuple(chemical_symbols[z] for z in sorted(numbers))

    def _check_prism_window(self, lx: float, ly: float) -> None:
        f = self.config.prism_interpolation
        if f > 1 and min(lx, ly) / f < MIN_PRISM_WINDOW_A:
            raise ConfigError(
                f"prism_interpolation {f} leaves a {min(lx, ly) / f:.1f} A probe window in the {lx:.1f} x {ly:.1f} A cell "
                f"(needs >= {MIN_PRISM_WINDOW_A} A); lower prism_interpolation or raise repeats"
            )

    def _draw_specimen(self, base: Atoms, rng: np.random.Generator) -> Atoms:
        cfg = self.config
        atoms = base.copy()
        structures.substitute(atoms, cfg.host_element, cfg.dopant_element, cfg.dopant_fraction, rng)
        atoms = structures.remove_vacancies(atoms, cfg.host_element, cfg.vacancy_fraction, rng)
        if cfg.random_shift:
            atoms = structures.shift_periodic(atoms, rng)
        return atoms

    def _columns_in_pixels(self, atoms: Atoms, classes: tuple[str, ...], pixel_size: float):
        """Atom columns as ``(row, col, class)``: atoms closer than ``column_tolerance`` in projection merge."""
        xy, numbers = structures.projected_columns(atoms, self.config.column_tolerance)
        if self.config.classes == "single":
            cls = np.zeros(len(xy), dtype=np.int64)
        else:
            index = {name: i for i, name in enumerate(classes)}
            cls = np.array([index[chemical_symbols[z]] for z in numbers], dtype=np.int64)
        return xy[:, 1] / pixel_size, xy[:, 0] / pixel_size, cls

    def _haadf(self, atoms: Atoms, phonon_seed: int) -> np.ndarray:
        """One period of the HAADF image, shape (n_y, n_x), sampled at the scan step."""
        import abtem

        cfg = self.config
        lx, ly = atoms.cell.lengths()[:2]
        step = cfg.scan_sampling or nyquist_scan_step(cfg.energy, cfg.semiangle_cutoff)
        gpts = (int(np.ceil(lx / step)), int(np.ceil(ly / step)))
        with single_threaded_abtem():
            specimen = atoms
            if cfg.frozen_phonons > 0:
                specimen = abtem.FrozenPhonons(
                    atoms, num_configs=cfg.frozen_phonons, sigmas=cfg.phonon_sigma, seed=phonon_seed
                )
            f = cfg.prism_interpolation
            # grid points: at least as fine as sampling and divisible by the interpolation factor
            potential_gpts = tuple(int(np.ceil(length / cfg.sampling / f)) * f for length in (lx, ly))
            potential = abtem.Potential(
                specimen,
                gpts=potential_gpts,
                slice_thickness=cfg.slice_thickness,
                projection="infinite",
                parametrization=_lobato_parametrization(),
            )
            s_matrix = abtem.SMatrix(
                potential=potential,
                energy=cfg.energy * 1e3,
                semiangle_cutoff=cfg.semiangle_cutoff,
                interpolation=cfg.prism_interpolation,
            )
            scan = abtem.GridScan(start=(0.0, 0.0), end=(lx, ly), gpts=gpts, endpoint=False)
            detector = abtem.AnnularDetector(inner=cfg.detector_inner, outer=cfg.detector_outer)
            measurement = s_matrix.scan(scan=scan, detectors=detector, lazy=False)
        image = np.asarray(measurement.array, dtype=np.float64)
        if image.shape != gpts:
            raise RuntimeError(f"abTEM returned a {image.shape} scan, expected {gpts}")
        return image.T  # abTEM indexes (x, y); elit indexes (row = y, col = x)


def max_scattering_angle_mrad(energy: float, sampling: float) -> float:
    """Largest scattering angle (mrad) abTEM resolves at ``sampling`` after its antialias aperture."""
    return 1e3 * ANTIALIAS_FRACTION * electron_wavelength(energy) / (2.0 * sampling)


def nyquist_scan_step(energy: float, semiangle_mrad: float) -> float:
    """Probe step (Angstrom) at which an incoherent STEM image is sampled at Nyquist: lambda / (4 alpha)."""
    return electron_wavelength(energy) / (4.0 * semiangle_mrad * 1e-3)


def _periodic_copies(rows, cols, cls, period_rows, period_cols, shape, margin) -> np.ndarray:
    """Return ``(m, 3)`` rows ``(row, col, class)`` of the columns and their periodic images near the image."""
    out = []
    for dr in (-period_rows, 0.0, period_rows):
        for dc in (-period_cols, 0.0, period_cols):
            r, c = rows + dr, cols + dc
            near = (r > -0.5 - margin) & (r < shape[0] - 0.5 + margin) & (c > -0.5 - margin) & (c < shape[1] - 0.5 + margin)
            out.append(np.stack([r[near], c[near], cls[near].astype(np.float64)], axis=1))
    return np.concatenate(out, axis=0)


def _abtem_version() -> str:
    import abtem

    return str(abtem.__version__)


@contextmanager
def single_threaded_abtem():
    """Run abTEM with one FFTW thread, one numba thread, one BLAS thread and dask's synchronous scheduler.

    abTEM with several threads has been seen to drop atoms from an image
    silently; one thread per process is also what a multi-process run wants.
    """
    import abtem
    import dask
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        settings = {
            "device": "cpu",
            "fft": "fftw",
            "fftw.threads": 1,
            "fftw.planning_effort": "FFTW_ESTIMATE",  # deterministic plans, no timing runs
            "mkl.threads": 1,
            "diagnostics.progress_bar": False,
        }
        with _threadpool_controller().limit(limits=1), dask.config.set(scheduler="synchronous"), abtem.config.set(settings):
            yield
    finally:
        numba.set_num_threads(previous)


@lru_cache(maxsize=1)
def _threadpool_controller():
    """The BLAS/OpenMP thread-pool controller, built once (it scans the loaded libraries)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _lobato_parametrization():
    """A fresh Lobato-Van Dyck parametrization from parameters read once per process."""
    from abtem.parametrizations import LobatoParametrization

    return LobatoParametrization(parameters={k: list(v) for k, v in _lobato_parameters().items()})


@lru_cache(maxsize=1)
def _lobato_parameters() -> dict:
    from abtem.parametrizations import validate_parameters

    return validate_parameters("lobato.json")
