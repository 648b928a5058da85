"""Acquisition conditions read from the data itself: counting noise (dose) and the width of the atom peaks.

A network trained on simulations only works on an experiment whose noise and
blur it has seen.  Instead of asking the user, elit measures both on the frames
it is given, at the working scale and in the normalised units the networks see:

* **Noise.**  An atom-resolved image is band-limited by the probe: above the
  aperture's cut-off (for STEM at 30 mrad and 60 kV, 1.2 per Angstrom) only noise
  is left.  The frame is split in Fourier space into a low band ``s`` (the
  signal, and a little noise) and a high band ``h`` (noise only).  Shot noise
  has a variance that grows with the local signal, so the mean of ``h**2`` is
  regressed on ``s`` in bins: ``var = slope * s + offset``.  The share of the
  noise power that falls in the high band depends on how the frames were
  resampled to the working scale; it is measured by pushing white noise through
  the same resampling.
* **Dose.**  The augmenter's Poisson noise is ``Poisson((x + level) * dose) / dose``
  on an image ``x`` whose atoms span ``[0, 1]``.  With the atom contrast ``S``
  (typical atom peak minus background, from the local maxima of the smoothed
  frame) the frame's noise becomes ``dose = S / slope`` and
  ``level = (offset / slope + background) / S``: the same signal-to-noise ratio.
* **Peak width.**  The frame is averaged around its brightest well-separated
  local maxima; the Gaussian width of that mean peak is found from its radial
  profile.

Everything is a plain function of arrays; :func:`estimate_conditions` returns a
JSON-friendly :class:`Conditions` that the pipeline stores with provenance and
turns into augmenter and simulator settings (:func:`stage_overrides`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from elit.errors import InputError

log = logging.getLogger("elit")

__all__ = ["Conditions", "FrameNoise", "estimate_conditions", "estimate_noise", "estimate_peak_sigma", "match_stages",
           "poisson_like_augmenter", "shot_noise", "atom_contrast"]

HIGH_BAND = 0.6
"""Radial frequency (fraction of Nyquist) above which a frame is taken to hold noise only."""


@dataclass
class FrameNoise:
    """Noise model of one frame: ``variance = slope * signal + offset`` (the frame's own units).

    Attributes
    ----------
    slope, offset : float
        Signal-dependent (shot) and constant (read) parts of the per-pixel variance.
    contrast : float
        Typical atom peak above the background (``S``).
    background : float
        Level of the darkest areas (between atoms or vacuum).
    dose : float
        Counts per unit of atom contrast, the augmenter's ``dose`` (``S / slope``).
    level : float
        The augmenter's ``level``: the constant variance and the background
        expressed as a signal offset, in units of ``S``.
    """

    slope: float
    offset: float
    contrast: float
    background: float
    dose: float
    level: float


@dataclass
class Conditions:
    """What the frames say about how they were taken (working scale, normalised units).

    Attributes
    ----------
    frames : list of FrameNoise
        One noise model per frame.
    dose : float
        Median of the frames' doses (counts per unit atom contrast).
    dose_range : (float, float)
        Lowest and highest frame dose.
    level : float
        Median of the frames' Poisson levels.
    peak_sigma_A : float or None
        Gaussian width of the mean atom peak in Angstrom (None: too few peaks).
    pixel_size : float
        Working pixel size the estimate was made at (Angstrom/px).
    notes : list of str
        How the estimate went, for the run file.
    """

    frames: list[FrameNoise]
    dose: float
    dose_range: tuple[float, float]
    level: float
    peak_sigma_A: float | None
    pixel_size: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-friendly form."""
        out = asdict(self)
        out["dose_range"] = list(self.dose_range)
        return out


def _radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    """Radial frequency of every ``rfft2`` coefficient, as a fraction of Nyquist (0.5 cycles/px)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return np.sqrt(fy**2 + fx**2) / 0.5


def _split_bands(frame: np.ndarray, cut: float = HIGH_BAND) -> tuple[np.ndarray, np.ndarray]:
    """Low band (signal) and high band (noise) of one frame; they sum to the frame."""
    spectrum = np.fft.rfft2(frame)
    high = _radial_frequency(frame.shape) >= cut
    h = np.fft.irfft2(np.where(high, spectrum, 0), s=frame.shape)
    return frame - h, h


def high_band_share(factor: float, size: int = 192, seed: int = 0) -> float:
    """Share of white noise's per-pixel variance left in the high band after resampling by ``factor``.

    Parameters
    ----------
    factor : float
        Working pixels per input pixel, as given to :func:`elit.scale.to_working`.
    size : int
        Side of the noise image used for the measurement (working pixels).
    """
    from elit.scale import to_working

    rng = np.random.default_rng(seed)
    n_in = max(16, int(round(size / factor)))
    noise = to_working(rng.standard_normal((n_in, n_in)).astype(np.float32), factor).astype(np.float64)
    noise = noise[4:-4, 4:-4]  # resampling extends edges: keep the interior
    _, h = _split_bands(noise - noise.mean())
    return float(np.mean(h**2) / np.var(noise))


def _peak_levels(frame: np.ndarray, min_distance_px: float, smooth_px: float) -> tuple[np.ndarray, float]:
    """Values of the smoothed frame at its well-separated local maxima, and its background level."""
    smooth = ndimage.gaussian_filter(frame, smooth_px, mode="nearest")
    size = max(3, int(2 * round(min_distance_px) + 1))
    peaks = (smooth == ndimage.maximum_filter(smooth, size=size, mode="nearest"))
    border = int(np.ceil(min_distance_px))
    peaks[:border] = peaks[-border:] = False
    peaks[:, :border] = peaks[:, -border:] = False
    background = float(np.percentile(smooth, 5.0))
    return smooth[peaks], background


def estimate_noise(frame: np.ndarray, high_share: float, min_distance_px: float = 3.0, n_bins: int = 16) -> FrameNoise:
    """Fit ``variance = slope * signal + offset`` to one frame's signal-free high band.

    Parameters
    ----------
    frame : ndarray, shape (H, W)
        One frame (any units; the result is in the same units).
    high_share : float
        Share of the noise variance that falls in the high band (see :func:`high_band_share`).
    min_distance_px : float
        Smallest distance between atom peaks in pixels (for the contrast).
    n_bins : int
        Signal bins of the regression.

    Returns
    -------
    FrameNoise
    """
    x = np.asarray(frame, dtype=np.float64)
    if x.ndim != 2 or min(x.shape) < 16:
        raise InputError(f"noise estimate needs a 2-D frame of at least 16 x 16 px, got shape {x.shape}")
    if not 0 < high_share <= 1:
        raise InputError(f"high_share must be in (0, 1], got {high_share}")
    s, h = _split_bands(x)
    m = 4  # the FFT wraps around: leave out the border
    s, h2 = s[m:-m, m:-m].ravel(), (h[m:-m, m:-m] ** 2).ravel() / high_share
    # local mean of h^2 against the local signal (3x3 boxes smooth the estimate without mixing atoms)
    edges = np.quantile(s, np.linspace(0.02, 0.98, n_bins + 1))
    index = np.clip(np.searchsorted(edges, s) - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    ok = counts > 20
    mean_s = np.bincount(index, weights=s, minlength=n_bins)[ok] / counts[ok]
    mean_v = np.bincount(index, weights=h2, minlength=n_bins)[ok] / counts[ok]
    if len(mean_s) >= 3 and np.ptp(mean_s) > 0:
        slope, offset = np.polyfit(mean_s, mean_v, 1, w=np.sqrt(counts[ok]))
    else:
        slope, offset = 0.0, float(np.mean(h2))
    total = float(np.mean(h2))
    slope = float(max(slope, 1e-12))
    offset = float(max(offset, 0.0))
    levels, background = _peak_levels(x, min_distance_px, smooth_px=max(0.5, 0.25 * min_distance_px))
    # atoms are the bright half of the local maxima (noise and vacuum make dim ones)
    contrast = float(np.median(levels[levels >= np.median(levels)]) - background) if len(levels) >= 4 else float(np.ptp(s))
    contrast = max(contrast, 1e-12)
    if slope * max(float(np.mean(s)), 1e-12) < 0.05 * total:
        # no measurable signal dependence (read-noise-like): treat it all as a constant variance
        slope = max(total / max(contrast, 1e-12), 1e-12) * 1e-3
        offset = total
    dose = contrast / slope
    level = (offset / slope + background) / contrast
    return FrameNoise(slope, offset, contrast, background, float(dose), float(level))


def estimate_peak_sigma(frames: np.ndarray, pixel_size: float, min_distance_A: float = 1.0,
                        max_peaks: int = 4000) -> float | None:
    """Gaussian width (Angstrom) of the mean atom peak, from the brightest well-separated maxima.

    Parameters
    ----------
    frames : ndarray, shape (N, H, W)
        Frames at ``pixel_size``.
    pixel_size : float
        Angstrom per pixel.
    min_distance_A : float
        Peaks closer than this are not both used.
    max_peaks : int
        Most peaks averaged.

    Returns
    -------
    float or None
        None when fewer than 20 peaks are found.
    """
    frames = np.asarray(frames, dtype=np.float64)
    d_px = min_distance_A / pixel_size
    half = int(np.ceil(1.2 / pixel_size))
    patches = []
    for frame in frames:
        # peaks are located on a strongly smoothed frame, so that noise spikes do not pick them
        smooth = ndimage.gaussian_filter(frame, max(0.7, 0.35 / pixel_size), mode="nearest")
        size = max(3, int(2 * round(d_px) + 1))
        peaks = (smooth == ndimage.maximum_filter(smooth, size=size, mode="nearest"))
        peaks[:half] = peaks[-half:] = False
        peaks[:, :half] = peaks[:, -half:] = False
        r, c = np.nonzero(peaks)
        if len(r) == 0:
            continue
        v = smooth[r, c]
        bright = v >= np.median(v)
        r, c = r[bright], c[bright]
        off = np.arange(-half, half + 1)
        patches.append(frame[r[:, None, None] + off[None, :, None], c[:, None, None] + off[None, None, :]])
    if not patches:
        return None
    patches = np.concatenate(patches)[:max_peaks]
    if len(patches) < 20:
        return None
    mean = patches.mean(axis=0)
    off = np.arange(-half, half + 1) * pixel_size
    rr = np.hypot(off[:, None], off[None, :])
    # fit A exp(-r^2 / 2 s^2) + B to the core (r < 0.7 A: the next atom is >= 1.4 A away)
    core = rr <= min(0.7, 0.5 * min_distance_A + 0.2)
    best = None
    for sigma in np.linspace(0.15, 1.2, 106):
        g = np.exp(-0.5 * (rr[core] / sigma) ** 2)
        design = np.stack([g, np.ones_like(g)], axis=1)
        coef, *_ = np.linalg.lstsq(design, mean[core], rcond=None)
        resid = float(np.sum((design @ coef - mean[core]) ** 2))
        if coef[0] > 0 and (best is None or resid < best[0]):
            best = (resid, float(sigma))
    return None if best is None else best[1]


def estimate_conditions(frames: np.ndarray, pixel_size: float, factor: float, min_distance_A: float = 1.0) -> Conditions:
    """Estimate every frame's noise model and the atom peak width (see the module docstring).

    Parameters
    ----------
    frames : ndarray, shape (N, H, W)
        Normalised frames at the working scale.
    pixel_size : float
        Working pixel size, Angstrom/px.
    factor : float
        Working pixels per input pixel (how the frames were resampled).
    min_distance_A : float
        Smallest distance between atom columns, Angstrom.
    """
    frames = np.asarray(frames)  # each frame goes to float64 on its own (a long movie is not copied whole)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or len(frames) == 0:
        raise InputError(f"frames must be (N, H, W), got shape {frames.shape}")
    share = high_band_share(factor)
    notes = [f"high band above {HIGH_BAND:.2f} of Nyquist holds {share:.3f} of white noise's variance after resampling"]
    per_frame = [estimate_noise(f.astype(np.float64), share, min_distance_px=min_distance_A / pixel_size) for f in frames]
    doses = np.array([f.dose for f in per_frame])
    sigma = estimate_peak_sigma(frames[: min(len(frames), 8)], pixel_size, min_distance_A)
    if sigma is None:
        notes.append("too few atom peaks to measure their width")
    cond = Conditions(
        frames=per_frame,
        dose=float(np.median(doses)),
        dose_range=(float(doses.min()), float(doses.max())),
        level=float(np.median([f.level for f in per_frame])),
        peak_sigma_A=sigma,
        pixel_size=float(pixel_size),
        notes=notes,
    )
    log.info(
        "estimated noise: dose %.3g (frames %.3g-%.3g) counts per unit atom contrast, level %.2f; atom peak width %s",
        cond.dose, *cond.dose_range, cond.level, "unknown" if sigma is None else f"{sigma:.3f} A",
    )
    return cond


# ---------------------------------------------------------------------------------------------
# matching the training data to the measured conditions

WIDTH_FIELDS = ("atom_sigma_range", "probe_sigma_range")
"""Simulator config fields whose Gaussian widths (Angstrom) are scaled to the measured peak width."""


def atom_contrast(image: np.ndarray, labels: np.ndarray) -> float:
    """Typical atom level above the background of a normalised image, from its label map (majority class)."""
    image = np.asarray(image, dtype=np.float64)
    atoms = np.asarray(labels) == 1
    background = float(np.percentile(image, 5.0))
    if not atoms.any():
        return max(float(np.percentile(image, 99.0)) - background, 1e-3)
    return max(float(np.median(image[atoms])) - background, 1e-3)


def shot_noise(image: np.ndarray, dose: float, level: float, rng: np.random.Generator,
               contrast: float = 1.0) -> np.ndarray:
    """Poisson noise of ``dose`` counts per unit ``contrast``: ``Poisson((x / contrast + level) * dose)``.

    With ``contrast`` the image's typical atom level (:func:`atom_contrast`), the
    signal-to-noise ratio of its atoms is the same whatever else the image holds
    (a bright dopant sets the normalisation, not the carbon).  Not normalised.
    """
    lam = np.clip(np.asarray(image, dtype=np.float64) / contrast + level, 0, None) * dose
    return rng.poisson(lam) / dose


def poisson_like_augmenter(images: np.ndarray, labels: np.ndarray | None, dose: float, level: float,
                           rng: np.random.Generator) -> np.ndarray:
    """The standard augmenter's shot noise (``dose_reference="atoms"`` when labels are given), normalised."""
    from elit.scale import normalize

    out = np.empty(np.shape(images), dtype=np.float64)
    for i, image in enumerate(images):
        contrast = atom_contrast(image, labels[i]) if labels is not None else 1.0
        out[i] = shot_noise(image, dose, level, rng, contrast)
    return normalize(out)


def _measure(images: np.ndarray, pixel_size: float, min_distance_A: float) -> tuple[float, float, float | None]:
    cond = [estimate_noise(im, high_band_share(1.0), min_distance_px=min_distance_A / pixel_size) for im in images]
    sigma = estimate_peak_sigma(images, pixel_size, min_distance_A)
    return float(np.median([c.dose for c in cond])), float(np.median([c.level for c in cond])), sigma


def _invert_dose(clean, labels, target_dose, target_level, pixel_size, min_distance_A, rng):
    """Augmenter ``(dose, level)`` whose noisy images measure like the data.

    The measured level is close to linear in the true level: it is inverted
    from two probes; the dose is then found by fixed-point steps at that level.
    """
    dose = target_dose
    level = 0.3
    for _ in range(2):
        probes = (0.1, 1.0)
        measured = [_measure(poisson_like_augmenter(clean, labels, dose, lv, rng), pixel_size, min_distance_A)[1] for lv in probes]
        gain = (measured[1] - measured[0]) / (probes[1] - probes[0])
        if gain > 1e-6:
            level = float(np.clip(probes[0] + (target_level - measured[0]) / gain, 0.0, 3.0))
        for _ in range(3):
            est_dose = _measure(poisson_like_augmenter(clean, labels, dose, level, rng), pixel_size, min_distance_A)[0]
            dose = float(np.clip(dose * target_dose / max(est_dose, 1e-9), 0.05, 1e7))
    return dose, level


def match_stages(conditions: Conditions, simulator, pixel_size: float, rng: np.random.Generator,
                 min_distance_A: float = 1.0, match_width: bool = True, n_probe: int = 8,
                 dose_spread: float = 1.5) -> tuple[dict, dict, list[str]]:
    """Simulator and augmenter settings under which simulated images measure like the data.

    The estimators of this module are run on a few images of ``simulator``
    with the augmenter's shot noise, and the noise dose and level (and, when
    the simulator has Gaussian width fields, the widths) are adjusted until the
    measurements agree with ``conditions``.  Measuring both sides with the same
    statistic removes the estimators' own biases.

    Parameters
    ----------
    conditions : Conditions
        What the data measured.
    simulator : Simulator
        The iteration-0 simulator (not changed).
    pixel_size : float
        Working pixel size, Angstrom/px.
    rng : numpy.random.Generator
        Source of the probe images and their noise.
    min_distance_A : float
        Smallest distance between atom columns, Angstrom.
    match_width : bool
        Also scale the simulator's width fields.
    n_probe : int
        Probe images simulated for the calibration.
    dose_spread : float
        The augmenter's dose range spans the frames' doses widened by this factor each way.

    Returns
    -------
    simulator_params, augmenter_params : dict
        Settings to merge into the stages' params.
    notes : list of str
    """
    notes: list[str] = []
    sim_params: dict = {}
    params = simulator.get_params()
    probe = simulator.simulate(n_probe, rng, pixel_size)
    clean, labels = probe.images, probe.labels
    dose, level = _invert_dose(clean, labels, conditions.dose, conditions.level, pixel_size, min_distance_A, rng)
    widths = [f for f in WIDTH_FIELDS if f in params]
    if match_width and conditions.peak_sigma_A is not None and len(widths) == len(WIDTH_FIELDS):
        _, _, sim_sigma = _measure(poisson_like_augmenter(clean, labels, dose, level, rng), pixel_size, min_distance_A)
        if sim_sigma:
            scale = float(np.clip(conditions.peak_sigma_A / sim_sigma, 0.6, 1.8))
            if abs(scale - 1.0) > 0.05:
                sim_params = {f: tuple(round(v * scale, 4) for v in params[f]) for f in widths}
                notes.append(
                    f"atom peaks measure {conditions.peak_sigma_A:.3f} A wide against {sim_sigma:.3f} A in the simulation: "
                    f"simulated widths scaled by {scale:.2f}"
                )
                probe = type(simulator)(**{**params, **sim_params}).simulate(n_probe, rng, pixel_size)
                clean, labels = probe.images, probe.labels
                dose, level = _invert_dose(clean, labels, conditions.dose, conditions.level, pixel_size, min_distance_A, rng)
            else:
                notes.append(f"atom peaks measure {conditions.peak_sigma_A:.3f} A wide, as in the simulation ({sim_sigma:.3f} A)")
    low, high = conditions.dose_range
    scale_d = dose / max(conditions.dose, 1e-12)
    dose_range = (max(0.05, low * scale_d / dose_spread), high * scale_d * dose_spread)
    aug_params = {
        "poisson_probability": 1.0,
        "dose_reference": "atoms",
        "dose_range": (round(dose_range[0], 4), round(dose_range[1], 4)),
        "poisson_background_range": (round(max(0.0, level * 0.7), 4), round(level * 1.3 + 1e-3, 4)),
        "gaussian_probability": 0.2,
        "gaussian_range": (0.0, 0.02),
    }
    notes.append(
        f"augmenter shot noise matched to the data: dose {dose_range[0]:.3g}-{dose_range[1]:.3g}, level "
        f"{aug_params['poisson_background_range'][0]:.2f}-{aug_params['poisson_background_range'][1]:.2f}"
    )
    return sim_params, aug_params, notes
