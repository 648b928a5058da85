"""Synthetic "experiments" with known ground truth, made with different physics than the simulators.

The training simulators draw atoms as Gaussians blurred by a Gaussian probe.
The experiments here are deliberately made another way, so that a network
trained on simulated images meets a real sim-to-real gap:

* the probe is computed from an aperture and lens aberrations (defocus,
  spherical aberration, two-fold astigmatism): an Airy-like core with rings,
  plus a source-size blur and a long-tailed (2-D Cauchy) skirt;
* the scan is distorted: drift between and within frames (shear), fly-back
  compression at the start of every line, a mains-frequency wobble, random
  sub-pixel line jitter and per-line offsets;
* the counts are Poisson at a set dose with read noise and a smooth background;
* the specimen has things the simulators may not draw: dopants, a growing
  hole and an amorphous-carbon patch (graphene), or a second phase with other
  spacing and brightness (perovskite with a rock-salt island).

The exact truth is kept aside in :class:`SyntheticExperiment`.  Nothing is
downloaded; everything is seeded.  Truth positions are where the atoms sit in
each frame's own pixels (pixel centres are integers), after drift, thermal
motion and the smooth scan distortion; the random line jitter is noise and is
not in the truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage
from scipy.spatial import cKDTree

from elit.data import AtomTable
from elit.errors import ConfigError
from elit.lattices import graphene_positions, perovskite_positions, square_positions

__all__ = [
    "Probe",
    "ScanModel",
    "SyntheticExperiment",
    "graphene_movie",
    "perovskite_image",
    "probe_kernel",
]

Z_EXPONENT = 1.7
"""HAADF intensity grows as Z**Z_EXPONENT."""


@dataclass(frozen=True)
class Probe:
    """An aberrated STEM probe (intensity is what the image is convolved with).

    Attributes
    ----------
    voltage_kv : float
        Accelerating voltage (sets the electron wavelength).
    convergence_mrad : float
        Probe-forming aperture semi-angle.
    defocus : float
        Defocus C1 in Angstrom.
    cs : float
        Spherical aberration C3 in Angstrom.
    astigmatism : float
        Two-fold astigmatism A1 in Angstrom (makes atoms slightly elliptical).
    astigmatism_angle : float
        Direction of A1 in radians.
    source_size : float
        Gaussian sigma (Angstrom) of the incoherent source-size blur.
    tail_fraction : float
        Fraction of the intensity in a long-tailed 2-D Cauchy skirt.
    tail_width : float
        Width (Angstrom) of that skirt.
    """

    voltage_kv: float = 60.0
    convergence_mrad: float = 30.0
    defocus: float = 20.0
    cs: float = 1.0e4
    astigmatism: float = 8.0
    astigmatism_angle: float = 0.5
    source_size: float = 0.3
    tail_fraction: float = 0.35
    tail_width: float = 1.5

    @property
    def wavelength(self) -> float:
        """Relativistic electron wavelength in Angstrom."""
        volts = self.voltage_kv * 1e3
        return 12.2643 / np.sqrt(volts * (1.0 + 0.978476e-6 * volts))


@dataclass(frozen=True)
class ScanModel:
    """How the scan and detector spoil the image.

    Distances are in Angstrom, intensities are fractions of the mean signal.

    Attributes
    ----------
    drift_speed : float
        Mean specimen drift per frame time.
    drift_walk : float
        Random-walk change of the drift velocity from frame to frame.
    flyback_amplitude, flyback_length : float
        Column displacement at the start of a line, decaying over
        ``flyback_length`` pixels.
    mains_amplitude, mains_period : float
        Sinusoidal column wobble (mains hum) and its period in lines.
    line_jitter : float
        Random column shift of each line (standard deviation); noise.
    line_noise : float
        Random offset of each line (fraction of the mean signal); noise.
    read_noise : float
        Gaussian detector noise in counts; noise.
    background : float
        Constant background level.
    background_gradient : float
        Peak-to-peak size of a smooth background ramp across the frame.
    beam_fluctuation : float
        Relative frame-to-frame change of the beam current.
    """

    drift_speed: float = 0.25
    drift_walk: float = 0.1
    flyback_amplitude: float = 0.2
    flyback_length: float = 25.0
    mains_amplitude: float = 0.04
    mains_period: float = 33.3
    line_jitter: float = 0.02
    line_noise: float = 0.04
    read_noise: float = 0.5
    background: float = 0.4
    background_gradient: float = 0.35
    beam_fluctuation: float = 0.03


@dataclass
class SyntheticExperiment:
    """A synthetic dataset with its exact truth.

    Attributes
    ----------
    frames : ndarray, shape (N, H, W), float32
        Raw counts-like frames (not normalised).
    pixel_size : float
        Angstrom per pixel.
    truth : AtomTable
        Lattice atoms per frame, in the frames' own pixels.
    amorphous : AtomTable
        Non-lattice atoms (not part of the crystal), same coordinates.
    hole_masks : ndarray, shape (N, H, W), bool, or None
        Pixels of each frame inside the hole (no atoms there).
    description : dict
        Every parameter and random choice that made the data (JSON-friendly).
    name : str
        Short name of the experiment.
    """

    frames: np.ndarray
    pixel_size: float
    truth: AtomTable
    amorphous: AtomTable
    hole_masks: np.ndarray | None = None
    description: dict = field(default_factory=dict)
    name: str = "synthetic"

    def __post_init__(self) -> None:
        self.frames = np.ascontiguousarray(self.frames, dtype=np.float32)
        if self.frames.ndim != 3:
            raise ValueError(f"frames must be (N, H, W), got shape {self.frames.shape}")
        if self.hole_masks is not None:
            self.hole_masks = np.ascontiguousarray(self.hole_masks, dtype=bool)
            if self.hole_masks.shape != self.frames.shape:
                raise ValueError(f"hole_masks shape {self.hole_masks.shape} differs from frames {self.frames.shape}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the lattice atom classes."""
        return self.truth.class_names


# ---------------------------------------------------------------------------------------------
# checks and small helpers


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_common(size: int, pixel_size: float, dose, probe: Probe, n_frames: int = 1) -> None:
    _check(int(size) == size and size >= 32, f"size must be an integer >= 32, got {size}")
    _check(int(n_frames) == n_frames and n_frames >= 1, f"n_frames must be a positive integer, got {n_frames}")
    _check(0.02 <= pixel_size <= 0.4,
           f"pixel_size must be within 0.02-0.4 Angstrom/px to resolve atoms, got {pixel_size}")
    _check(dose is None or dose > 0, f"dose must be positive (electrons per pixel) or None for no noise, got {dose}")
    _check(probe.voltage_kv > 0 and probe.convergence_mrad > 0,
           "probe voltage_kv and convergence_mrad must be positive")
    _check(0.0 <= probe.tail_fraction < 1.0, f"probe tail_fraction must be in [0, 1), got {probe.tail_fraction}")
    _check(probe.source_size >= 0 and probe.tail_width > 0, "probe source_size must be >= 0 and tail_width > 0")


def _reach(probe: Probe) -> float:
    """Distance (Angstrom) beyond which the probe's tails are left out of the rendering canvas."""
    return max(4.0, 3.0 * probe.tail_width)


def _specimen_margin(probe: Probe, pixel_size: float) -> float:
    """Atoms are placed this far (Angstrom) beyond the scanned area, so the canvas is full of them."""
    return _reach(probe) + 10 * pixel_size + 2.0


def _rngs(seed) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent streams: geometry (same whatever the dose) and noise."""
    geometry, noise = np.random.default_rng(seed).spawn(2)
    return geometry, noise


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _blob_radius(rng: np.random.Generator, radius: float) -> dict:
    """An irregular closed shape: radius(theta) = R (1 + sum a_k cos(k theta + phi_k))."""
    k = np.arange(2, 6)
    amp = rng.uniform(0.0, 0.12, size=k.size) / np.sqrt(k - 1)
    phase = rng.uniform(0.0, 2 * np.pi, size=k.size)
    return {"radius": float(radius), "harmonics": k.tolist(), "amplitudes": amp.tolist(), "phases": phase.tolist()}


def _inside_blob(points: np.ndarray, centre, shape: dict, scale: float = 1.0) -> np.ndarray:
    """Whether points ``(..., 2)`` in Angstrom lie inside the blob scaled by ``scale``."""
    d = np.asarray(points, dtype=np.float64) - np.asarray(centre, dtype=np.float64)
    r = np.hypot(d[..., 0], d[..., 1])
    theta = np.arctan2(d[..., 0], d[..., 1])
    factor = np.ones_like(theta)
    for k, a, p in zip(shape["harmonics"], shape["amplitudes"], shape["phases"]):
        factor += a * np.cos(k * theta + p)
    return r < shape["radius"] * scale * factor


def _random_disc_points(rng, n_target: int, inside, bbox, min_distance: float, forbidden: np.ndarray) -> np.ndarray:
    """Random sequential addition: up to ``n_target`` points inside a region, ``min_distance`` apart."""
    (r0, c0), (r1, c1) = bbox
    candidates = rng.uniform((r0, c0), (r1, c1), size=(40 * max(n_target, 1), 2))
    candidates = candidates[inside(candidates)]
    if len(forbidden):
        far = cKDTree(forbidden).query(candidates, k=1)[0] >= min_distance
        candidates = candidates[far]
    kept: list[tuple[float, float]] = []
    cells: dict[tuple[int, int], list[tuple[float, float]]] = {}  # grid of cell size min_distance
    limit = min_distance**2
    for r, c in candidates.tolist():
        if len(kept) >= n_target:
            break
        i, j = int(np.floor(r / min_distance)), int(np.floor(c / min_distance))
        near = [q for di in (-1, 0, 1) for dj in (-1, 0, 1) for q in cells.get((i + di, j + dj), ())]
        if all((r - q[0]) ** 2 + (c - q[1]) ** 2 >= limit for q in near):
            kept.append((r, c))
            cells.setdefault((i, j), []).append((r, c))
    return np.asarray(kept, dtype=np.float64).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------
# optics


def probe_kernel(shape: tuple[int, int], pixel_size: float, probe: Probe, splat_sigma_px: float = 0.0) -> np.ndarray:
    """Return the probe's optical transfer function on an FFT grid (``rfft2`` layout).

    The probe intensity is ``|IFFT(aperture * exp(-i chi))|**2`` with an even
    aberration function (so the intensity is centrosymmetric and atoms stay
    where they are), blurred by the source size, mixed with a 2-D Cauchy skirt
    of weight ``tail_fraction``.  ``splat_sigma_px`` is the Gaussian width
    already given to each atom when it was drawn; it is taken out of the
    source-size blur.

    Returns
    -------
    ndarray, complex128, shape (H, W // 2 + 1)
        Multiply an image's ``rfft2`` by this to convolve it with the probe.
    """
    h, w = shape
    lam = probe.wavelength
    ky = np.fft.fftfreq(h, d=pixel_size)
    kx = np.fft.fftfreq(w, d=pixel_size)
    k_aperture = probe.convergence_mrad * 1e-3 / lam
    step = 1.0 / (max(h, w) * pixel_size)
    # only the aperture's pixels are non-zero: evaluate the aberrations there alone
    rows = np.flatnonzero(np.abs(ky) <= k_aperture + step)
    cols = np.flatnonzero(np.abs(kx) <= k_aperture + step)
    qy, qx = ky[rows][:, None], kx[cols][None, :]
    q2 = qy**2 + qx**2
    aperture = np.clip((k_aperture - np.sqrt(q2)) / step + 0.5, 0.0, 1.0)  # antialiased edge
    phi = np.arctan2(qy, qx)
    chi = (
        np.pi * lam * q2 * (probe.defocus + probe.astigmatism * np.cos(2 * (phi - probe.astigmatism_angle)))
        + 0.5 * np.pi * probe.cs * lam**3 * q2**2
    )
    psi_k = np.zeros((h, w), dtype=np.complex64)
    psi_k[np.ix_(rows, cols)] = aperture * np.exp(-1j * chi)
    intensity = np.abs(sp_fft.ifft2(psi_k)) ** 2
    intensity /= intensity.sum()
    otf = sp_fft.rfft2(intensity).astype(np.complex128)
    kr = np.sqrt(ky[:, None] ** 2 + np.fft.rfftfreq(w, d=pixel_size)[None, :] ** 2)
    extra_sigma = np.sqrt(max(probe.source_size**2 - (splat_sigma_px * pixel_size) ** 2, 0.0))
    otf = otf * np.exp(-2 * np.pi**2 * extra_sigma**2 * kr**2)
    tail = np.exp(-2 * np.pi * probe.tail_width * kr)  # FT of a normalised 2-D Cauchy density
    return (1.0 - probe.tail_fraction) * otf + probe.tail_fraction * tail


def _splat(canvas_shape, frame_index, rc_px, amplitude, sigma_px: float) -> np.ndarray:
    """Sum of normalised Gaussians at sub-pixel positions on ``(N, H, W)`` canvases."""
    n, h, w = canvas_shape
    out = np.zeros(n * h * w)
    if len(rc_px) == 0:
        return out.reshape(canvas_shape)
    half = int(np.ceil(4 * sigma_px))
    offsets = np.arange(-half, half + 1)
    base = np.rint(rc_px).astype(np.int64)
    rows = base[:, 0:1] + offsets[None, :]
    cols = base[:, 1:2] + offsets[None, :]
    gr = np.exp(-0.5 * ((rows - rc_px[:, 0:1]) / sigma_px) ** 2)
    gc = np.exp(-0.5 * ((cols - rc_px[:, 1:2]) / sigma_px) ** 2)
    gr *= (amplitude / (2 * np.pi * sigma_px**2))[:, None]
    weights = gr[:, :, None] * gc[:, None, :]
    ok = (rows[:, :, None] >= 0) & (rows[:, :, None] < h) & (cols[:, None, :] >= 0) & (cols[:, None, :] < w)
    index = (np.asarray(frame_index)[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
    out += np.bincount(index[ok], weights=weights[ok], minlength=n * h * w)
    return out.reshape(canvas_shape)


# ---------------------------------------------------------------------------------------------
# scan geometry


class _Scan:
    """Maps frame pixels to specimen Angstrom and back for every frame."""

    def __init__(self, rng: np.random.Generator, n_frames: int, size: int, pixel_size: float, scan: ScanModel,
                 start_A) -> None:
        self.n, self.size, self.px, self.model = n_frames, size, pixel_size, scan
        angle = rng.uniform(0, 2 * np.pi)
        velocity = scan.drift_speed * np.array([np.sin(angle), np.cos(angle)])
        self.velocity = np.zeros((n_frames, 2))
        self.origin = np.zeros((n_frames, 2))
        origin = np.asarray(start_A, dtype=np.float64)
        for f in range(n_frames):
            self.velocity[f] = velocity
            self.origin[f] = origin
            origin = origin + velocity * 1.05  # 5 % dead time between frames
            velocity = velocity + rng.normal(0.0, scan.drift_walk, size=2)
        self.mains_phase = rng.uniform(0, 2 * np.pi, size=n_frames)
        self._coordinates: dict[int, np.ndarray] = {}

    def distortion(self, f: int, rows, cols) -> np.ndarray:
        """Smooth displacement (Angstrom, ``(..., 2)``) of the scan at frame pixels ``(rows, cols)``."""
        m = self.model
        rows = np.asarray(rows, dtype=np.float64)
        cols = np.asarray(cols, dtype=np.float64)
        t = (rows + cols / self.size) / self.size
        d_row = self.velocity[f, 0] * t
        d_col = self.velocity[f, 1] * t
        d_col = d_col + m.flyback_amplitude * np.exp(-np.clip(cols, -3 * m.flyback_length, None) / m.flyback_length)
        d_col = d_col + m.mains_amplitude * np.sin(2 * np.pi * rows / m.mains_period + self.mains_phase[f])
        return np.stack(np.broadcast_arrays(d_row, d_col), axis=-1)

    def specimen_coordinates(self, f: int) -> np.ndarray:
        """Specimen positions (Angstrom) sampled by every pixel of frame ``f``, ``(H, W, 2)`` (read-only)."""
        if f not in self._coordinates:
            idx = np.arange(self.size, dtype=np.float64)
            rows, cols = np.meshgrid(idx, idx, indexing="ij")
            nominal = self.origin[f] + self.px * np.stack([rows, cols], axis=-1)
            coords = nominal + self.distortion(f, rows, cols)
            coords.setflags(write=False)
            self._coordinates[f] = coords
        return self._coordinates[f]

    def bounds(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest specimen ``(row, col)`` (Angstrom) seen by frame ``f``."""
        coords = self.specimen_coordinates(f)
        rows, cols = coords[..., 0], coords[..., 1]
        return np.array([rows.min(), cols.min()]), np.array([rows.max(), cols.max()])

    def to_pixels(self, f: int, points_A: np.ndarray) -> np.ndarray:
        """Frame pixel ``(row, col)`` where specimen points appear (inverse of the smooth scan map)."""
        points_A = np.asarray(points_A, dtype=np.float64).reshape(-1, 2)
        q = (points_A - self.origin[f]) / self.px
        for _ in range(30):
            new = (points_A - self.origin[f] - self.distortion(f, q[:, 0], q[:, 1])) / self.px
            if np.max(np.abs(new - q), initial=0.0) < 1e-4:
                q = new
                break
            q = new
        return q


def _render(scan: _Scan, positions_per_frame, amplitudes_per_frame, probe: Probe,
            noise_rng: np.random.Generator | None, line_jitter: float) -> np.ndarray:
    """Noise-free signal of every frame: atoms drawn on a canvas, convolved with the probe, scanned."""
    n, size, px = scan.n, scan.size, scan.px
    jitter = np.zeros((n, size, 1))
    if noise_rng is not None and line_jitter > 0:
        jitter = noise_rng.normal(0.0, line_jitter, size=(n, size, 1))
    pad = int(np.ceil(_reach(probe) / px)) + 4
    bounds = [scan.bounds(f) for f in range(n)]
    lo = np.array([np.floor(b[0] / px) for b in bounds]) - 1  # canvas origin in pixels (1 px for the jitter)
    extent = max(int(np.ceil(np.max(b[1] / px - lo[f]))) + 1 for f, b in enumerate(bounds))
    canvas = sp_fft.next_fast_len(extent + 2 * pad + 1, real=True)
    origin_A = (lo - pad) * px
    # atoms are drawn as Gaussians of about 1 px (exact at sub-pixel positions); the rest of the
    # source-size blur is applied with the probe in Fourier space
    sigma_px = float(np.clip(probe.source_size / px, 0.75, 1.0))
    half = int(np.ceil(4 * sigma_px))
    frame_ids, rc, amp = [], [], []
    for f in range(n):
        where = (positions_per_frame[f] - origin_A[f]) / px
        near = np.all((where > -half) & (where < canvas + half), axis=1)
        rc.append(where[near])
        amp.append(amplitudes_per_frame[f][near])
        frame_ids.append(np.full(near.sum(), f))
    image = _splat((n, canvas, canvas), np.concatenate(frame_ids), np.concatenate(rc), np.concatenate(amp), sigma_px)
    otf = probe_kernel((canvas, canvas), px, probe, splat_sigma_px=sigma_px).astype(np.complex64)
    image = sp_fft.irfft2(sp_fft.rfft2(image.astype(np.float32)) * otf, s=(canvas, canvas))
    out = np.empty((n, size, size))
    for f in range(n):
        where = (scan.specimen_coordinates(f) - origin_A[f]) / px
        where = np.stack([where[..., 0], where[..., 1] + jitter[f] / px])
        out[f] = ndimage.map_coordinates(image[f], where, order=3, mode="nearest")
    return np.clip(out, 0.0, None)


def _detect(signal: np.ndarray, scan: ScanModel, dose, geometry: np.random.Generator, rng: np.random.Generator,
            beam: np.ndarray) -> np.ndarray:
    """Add background, scale to the dose and add the noise; ``dose=None`` gives the expectation (mean 1).

    The background's shape is drawn from ``geometry`` (so it does not depend on
    the dose), the noise from ``rng``.
    """
    n, h, w = signal.shape
    level = float(signal[0].mean())
    rows, cols = np.meshgrid(np.linspace(-0.5, 0.5, h), np.linspace(-0.5, 0.5, w), indexing="ij")
    angle = geometry.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * rows + np.sin(angle) * cols
    bump_centre = geometry.uniform(-0.5, 0.5, size=2)
    bump = np.exp(-((rows - bump_centre[0]) ** 2 + (cols - bump_centre[1]) ** 2) / 0.18)
    background = level * (scan.background + scan.background_gradient * (0.7 * ramp + 0.3 * (bump - bump.mean())))
    expected = (signal + np.clip(background, 0.0, None)[None]) * beam[:, None, None]
    scale = (1.0 if dose is None else float(dose)) / float(expected[0].mean())
    expected *= scale
    if dose is None:
        return expected
    counts = rng.poisson(expected).astype(np.float64)
    counts += rng.normal(0.0, scan.line_noise * float(dose), size=(n, h, 1))
    counts += scan.read_noise * rng.standard_normal(size=counts.shape, dtype=np.float32)
    return counts


def _blob_mask(scan: _Scan, f: int, centre, shape: dict, scale: float) -> np.ndarray:
    """Pixels of frame ``f`` whose specimen position lies inside the blob (checked in a window around it)."""
    mask = np.zeros((scan.size, scan.size), dtype=bool)
    reach = (shape["radius"] * scale * (1.0 + sum(shape["amplitudes"])) + 2.0 * scan.model.flyback_amplitude) / scan.px
    reach += 3.0
    c = scan.to_pixels(f, np.asarray(centre)[None])[0]
    r0, c0 = (max(int(np.floor(v - reach)), 0) for v in c)
    r1, c1 = (min(int(np.ceil(v + reach)) + 1, scan.size) for v in c)
    if r1 > r0 and c1 > c0:
        mask[r0:r1, c0:c1] = _inside_blob(scan.specimen_coordinates(f)[r0:r1, c0:c1], centre, shape, scale)
    return mask


def _table(frames, rc, classes, class_names) -> AtomTable:
    frames = np.asarray(frames, dtype=np.int64)
    rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
    return AtomTable(frames, rc[:, 0], rc[:, 1], classes, np.ones(len(frames)), np.zeros(len(frames)), class_names)


def _in_image(rc: np.ndarray, size: int) -> np.ndarray:
    return np.all((rc >= -0.5) & (rc < size - 0.5), axis=1)


# ---------------------------------------------------------------------------------------------
# graphene movie


def graphene_movie(
    n_frames: int = 12,
    size: int = 256,
    pixel_size: float = 0.1,
    seed=0,
    dose: float | None = 10.0,
    n_dopants: int = 3,
    hole_radius: float | None = None,
    amorphous_radius: float | None = None,
    thermal_jitter: float = 0.05,
    probe: Probe | None = None,
    scan: ScanModel | None = None,
) -> SyntheticExperiment:
    """A HAADF-like movie of Si-doped graphene with a growing hole and an amorphous patch.

    Parameters
    ----------
    n_frames : int
        Number of frames.
    size : int
        Frame height and width in pixels.
    pixel_size : float
        Angstrom per pixel.
    seed : int or numpy.random.Generator
        Seed; the geometry does not depend on ``dose``.
    dose : float or None
        Mean detected electrons per pixel in the first frame; ``None`` gives
        the noise-free expectation (first-frame mean 1, no line jitter or
        line offsets).
    n_dopants : int
        Si atoms on lattice sites (persistent through the movie).
    hole_radius : float or None
        Hole radius (Angstrom) in the last frame; the hole appears after the
        first third of the movie and grows linearly.  0 for no hole; None for
        a fifth of the field of view.
    amorphous_radius : float or None
        Radius (Angstrom) of the amorphous-carbon patch; 0 for none; None for
        0.17 of the field of view.
    thermal_jitter : float
        Standard deviation (Angstrom) of each atom's random displacement per frame.
    probe, scan : Probe, ScanModel
        Optics and scan/detector models (defaults: 60 kV, 30 mrad).

    Returns
    -------
    SyntheticExperiment
        Truth classes are ``("C", "Si")``; amorphous carbon atoms are in
        ``amorphous``; ``hole_masks`` marks each frame's hole.
    """
    probe = probe or Probe()
    scan_model = scan or ScanModel()
    _check_common(size, pixel_size, dose, probe, n_frames)
    field_A = size * pixel_size
    hole_radius = 0.2 * field_A if hole_radius is None else float(hole_radius)
    amorphous_radius = 0.17 * field_A if amorphous_radius is None else float(amorphous_radius)
    _check(hole_radius >= 0 and amorphous_radius >= 0, "hole_radius and amorphous_radius must be >= 0")
    _check(int(n_dopants) == n_dopants and n_dopants >= 0, f"n_dopants must be a non-negative integer, got {n_dopants}")
    geo, noise = _rngs(seed)
    scanner = _Scan(geo, n_frames, size, pixel_size, scan_model, start_A=(0.0, 0.0))

    # specimen box covering every frame
    bounds = np.array([scanner.bounds(f) for f in range(n_frames)])  # (n_frames, lo/hi, 2)
    box_lo = bounds[:, 0].min(axis=0) - _specimen_margin(probe, pixel_size)
    box_hi = bounds[:, 1].max(axis=0) + _specimen_margin(probe, pixel_size)
    rotation = float(geo.uniform(0, np.pi / 3))
    lattice = graphene_positions(tuple(box_hi - box_lo), rotation=rotation,
                                 offset=tuple(geo.uniform(0, 2.46, size=2)), margin=1.0) + box_lo

    # hole and amorphous patch, in specimen coordinates inside the common field of view
    common_lo = bounds[:, 0].max(axis=0)
    common_hi = bounds[:, 1].min(axis=0)
    centre = 0.5 * (common_lo + common_hi)
    hole_centre = centre + geo.uniform(-0.15, 0.15, size=2) * field_A
    hole_shape = _blob_radius(geo, hole_radius)
    patch_shape = _blob_radius(geo, amorphous_radius)
    # the patch goes where it stays clear of the hole (it may run off the edge of the field)
    angles = geo.uniform(0, 2 * np.pi, size=32)
    wanted = hole_radius + amorphous_radius + 3.0
    options = hole_centre + wanted * np.stack([np.sin(angles), np.cos(angles)], axis=1)
    options = np.clip(options, common_lo + 0.5 * amorphous_radius, common_hi - 0.5 * amorphous_radius)
    clearance = np.hypot(*(options - hole_centre).T)
    good = np.flatnonzero(clearance >= wanted - 1e-9)
    patch_centre = options[good[0]] if len(good) else options[np.argmax(clearance)]
    if amorphous_radius > 0:
        lattice = lattice[~_inside_blob(lattice, patch_centre, patch_shape)]

    # amorphous carbon: random, ~graphene density, not closer than 1.1 Angstrom to anything
    amorphous_A = np.zeros((0, 2))
    if amorphous_radius > 0:
        r_box = amorphous_radius * 1.6
        area = np.pi * amorphous_radius**2
        amorphous_A = _random_disc_points(
            geo, int(round(0.382 * area)), lambda p: _inside_blob(p, patch_centre, patch_shape),
            (patch_centre - r_box, patch_centre + r_box), 1.1, lattice)
    amorphous_gain = geo.uniform(0.8, 1.6, size=len(amorphous_A))

    # dopants: lattice sites inside the common field, away from the hole, the patch and each other
    classes = np.zeros(len(lattice), dtype=np.int64)
    margin = 1.5
    candidates = np.flatnonzero(
        np.all((lattice > common_lo + margin) & (lattice < common_hi - margin), axis=1)
        & ~_inside_blob(lattice, hole_centre, hole_shape, scale=1.0 + 2.0 / max(hole_radius, 1e-9))
        & ~_inside_blob(lattice, patch_centre, patch_shape, scale=1.0 + 2.0 / max(amorphous_radius, 1e-9)))
    dopants: list[int] = []
    for i in geo.permutation(candidates):
        if len(dopants) >= n_dopants:
            break
        if all(np.hypot(*(lattice[i] - lattice[j])) > 4.0 for j in dopants):
            dopants.append(int(i))
    classes[dopants] = 1
    lattice_gain = 1.0 + 0.03 * geo.standard_normal(len(lattice))

    # the hole grows linearly from the first frame after the first third
    start = n_frames // 3
    scales = np.array([0.0 if f < start else (f - start + 1) / (n_frames - start) for f in range(n_frames)])
    gone = np.zeros(len(lattice), dtype=bool)
    amorphous_gone = np.zeros(len(amorphous_A), dtype=bool)
    z_amp = {0: 6.0**Z_EXPONENT, 1: 14.0**Z_EXPONENT}
    pos_frames, amp_frames = [], []
    truth_f, truth_rc, truth_cls = [], [], []
    am_f, am_rc = [], []
    hole_masks = np.zeros((n_frames, size, size), dtype=bool)
    beam = 1.0 + scan_model.beam_fluctuation * geo.standard_normal(n_frames)
    for f in range(n_frames):
        if hole_radius > 0 and scales[f] > 0:
            # atoms go when within 0.3 Angstrom of the hole's edge, so the mask never touches a kept atom
            gone |= _inside_blob(lattice, hole_centre, hole_shape, scale=scales[f] + 0.3 / hole_radius)
            amorphous_gone |= _inside_blob(amorphous_A, hole_centre, hole_shape, scale=scales[f] + 0.3 / hole_radius)
            hole_masks[f] = _blob_mask(scanner, f, hole_centre, hole_shape, scales[f])
        present = np.flatnonzero(~gone)
        pos = lattice[present] + geo.normal(0.0, thermal_jitter, size=(len(present), 2))
        amp = np.array([z_amp[0], z_amp[1]])[classes[present]] * lattice_gain[present]
        am_pos = amorphous_A + geo.normal(0.0, 2 * thermal_jitter, size=amorphous_A.shape)
        am_pos = am_pos[~amorphous_gone]
        pos_frames.append(np.concatenate([pos, am_pos]))
        amp_frames.append(np.concatenate([amp, z_amp[0] * amorphous_gain[~amorphous_gone]]))
        rc = scanner.to_pixels(f, pos)
        keep = _in_image(rc, size)
        truth_f.append(np.full(keep.sum(), f))
        truth_rc.append(rc[keep])
        truth_cls.append(classes[present][keep])
        rc = scanner.to_pixels(f, am_pos)
        keep = _in_image(rc, size)
        am_f.append(np.full(keep.sum(), f))
        am_rc.append(rc[keep])

    signal = _render(scanner, pos_frames, amp_frames, probe, None if dose is None else noise, scan_model.line_jitter)
    frames = _detect(signal, scan_model, dose, geo, noise, beam)
    names = ("C", "Si")
    truth = _table(np.concatenate(truth_f), np.concatenate(truth_rc), np.concatenate(truth_cls), names)
    amorphous = _table(np.concatenate(am_f), np.concatenate(am_rc), np.zeros(sum(map(len, am_f)), np.int64), names)
    description = _jsonable({
        "kind": "graphene_movie",
        "n_frames": n_frames, "size": size, "pixel_size": pixel_size, "seed": seed if isinstance(seed, int) else None,
        "dose": dose, "n_dopants": n_dopants, "hole_radius": hole_radius, "amorphous_radius": amorphous_radius,
        "thermal_jitter": thermal_jitter, "z_exponent": Z_EXPONENT,
        "probe": asdict(probe), "scan": asdict(scan_model),
        "lattice_rotation_rad": rotation, "hole_centre_A": hole_centre, "hole_shape": hole_shape,
        "hole_first_frame": start if hole_radius > 0 else None, "hole_scale_per_frame": scales,
        "amorphous_centre_A": patch_centre, "amorphous_shape": patch_shape,
        "frame_origin_A": scanner.origin, "drift_velocity_A_per_frame": scanner.velocity, "beam_factor": beam,
        "truth_note": "lattice atoms only; amorphous carbon kept apart; line jitter is noise and not in the truth",
    })
    return SyntheticExperiment(frames, pixel_size, truth, amorphous, hole_masks, description, "graphene_movie")


# ---------------------------------------------------------------------------------------------
# perovskite with a rock-salt island


PEROVSKITE_PROBE = Probe(voltage_kv=200.0, convergence_mrad=20.0, defocus=10.0, cs=2.0e4, astigmatism=5.0,
                         astigmatism_angle=1.1, source_size=0.35, tail_fraction=0.3, tail_width=1.5)
"""Default optics for :func:`perovskite_image` (a 200 kV corrected probe)."""


def perovskite_image(
    size: int = 384,
    pixel_size: float = 0.1,
    seed=0,
    dose: float | None = 30.0,
    a: float = 3.905,
    island_spacing: float = 2.09,
    island_fraction: float = 0.25,
    island_brightness: float = 0.45,
    b_brightness: float = 0.4,
    column_variation: float = 0.08,
    displacement: float = 0.05,
    probe: Probe | None = None,
    scan: ScanModel | None = None,
) -> SyntheticExperiment:
    """One HAADF-like image of an LSMO-like perovskite with a NiO-like rock-salt island.

    Parameters
    ----------
    size : int
        Image height and width in pixels.
    pixel_size : float
        Angstrom per pixel.
    seed : int or numpy.random.Generator
        Seed; the geometry does not depend on ``dose``.
    dose : float or None
        Mean detected electrons per pixel; ``None`` for the noise-free expectation (mean 1).
    a : float
        Perovskite lattice constant (Angstrom).
    island_spacing : float
        Column spacing of the rock-salt island seen along [001] (half its lattice constant).
    island_fraction : float
        Rough fraction of the field covered by the island.
    island_brightness, b_brightness : float
        Island and B-site column intensity relative to the A-site columns.
    column_variation : float
        Relative random intensity spread between columns (composition, thickness).
    displacement : float
        Standard deviation (Angstrom) of static random column displacements.
    probe, scan : Probe, ScanModel
        Optics (default :data:`PEROVSKITE_PROBE`) and scan/detector models.

    Returns
    -------
    SyntheticExperiment
        One frame; truth classes ``("A", "B", "island")``; no amorphous atoms, no hole.
    """
    probe = probe or PEROVSKITE_PROBE
    scan_model = scan or ScanModel()
    _check_common(size, pixel_size, dose, probe)
    _check(a > 1.0 and island_spacing > 1.0, "lattice spacings must exceed 1 Angstrom")
    _check(0.0 <= island_fraction < 0.8, f"island_fraction must be in [0, 0.8), got {island_fraction}")
    _check(island_brightness > 0 and b_brightness > 0, "brightnesses must be positive")
    geo, noise = _rngs(seed)
    field_A = size * pixel_size
    scanner = _Scan(geo, 1, size, pixel_size, scan_model, start_A=(0.0, 0.0))
    field_lo, field_hi = scanner.bounds(0)
    box_lo = field_lo - _specimen_margin(probe, pixel_size)
    box_hi = field_hi + _specimen_margin(probe, pixel_size)
    rotation = float(geo.uniform(-0.1, 0.1))
    matrix, sub = perovskite_positions(tuple(box_hi - box_lo), rotation=rotation,
                                       offset=tuple(geo.uniform(0, a, size=2)), a=a, margin=1.0)
    matrix = matrix + box_lo
    island_rotation = rotation + float(geo.uniform(-0.05, 0.05))
    island = square_positions(tuple(box_hi - box_lo), island_spacing, rotation=island_rotation,
                              offset=tuple(geo.uniform(0, island_spacing, size=2)), margin=1.0) + box_lo
    centre = 0.5 * (field_lo + field_hi) + geo.uniform(-0.15, 0.15, size=2) * field_A
    shape = _blob_radius(geo, np.sqrt(island_fraction / np.pi) * field_A)
    if island_fraction > 0:
        in_island = _inside_blob(matrix, centre, shape)
        matrix, sub = matrix[~in_island], sub[~in_island]
        island = island[_inside_blob(island, centre, shape)]
        if len(matrix) and len(island):
            island = island[cKDTree(matrix).query(island, k=1)[0] > 0.8 * island_spacing]
    else:
        island = np.zeros((0, 2))
    positions = np.concatenate([matrix, island]) + geo.normal(0.0, displacement, size=(len(matrix) + len(island), 2))
    classes = np.concatenate([sub, np.full(len(island), 2)]).astype(np.int64)
    relative = np.array([1.0, b_brightness, island_brightness])[classes]
    amplitude = relative * (1.0 + column_variation * geo.standard_normal(len(classes))).clip(0.3)
    beam = np.ones(1)
    signal = _render(scanner, [positions], [amplitude], probe, None if dose is None else noise, scan_model.line_jitter)
    frames = _detect(signal, scan_model, dose, geo, noise, beam)
    rc = scanner.to_pixels(0, positions)
    keep = _in_image(rc, size)
    names = ("A", "B", "island")
    truth = _table(np.zeros(keep.sum()), rc[keep], classes[keep], names)
    description = _jsonable({
        "kind": "perovskite_image", "size": size, "pixel_size": pixel_size,
        "seed": seed if isinstance(seed, int) else None, "dose": dose, "a": a, "island_spacing": island_spacing,
        "island_fraction": island_fraction, "island_brightness": island_brightness, "b_brightness": b_brightness,
        "column_variation": column_variation, "displacement": displacement,
        "probe": asdict(probe), "scan": asdict(scan_model), "lattice_rotation_rad": rotation,
        "island_rotation_rad": island_rotation, "island_centre_A": centre, "island_shape": shape,
        "frame_origin_A": scanner.origin,
        "drift_velocity_A_per_frame": scanner.velocity,
    })
    return SyntheticExperiment(frames, pixel_size, truth, AtomTable.empty(names), None, description, "perovskite_image")
