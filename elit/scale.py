"""Intensity normalisation, resampling to the working scale, and pixel-size estimation.

Coordinate convention
---------------------
Pixel ``i`` of an image has its centre at coordinate ``i`` and covers
``[i - 0.5, i + 0.5)``.  Resampling by ``factor`` maps an input coordinate
``x`` to the output coordinate ``(x + 0.5) * factor - 0.5``: the outer pixel
edges (``-0.5`` and ``H - 0.5``) stay in place, exactly as
:meth:`elit.data.AtomTable.scaled` assumes.  :func:`resample` uses the given
``factor`` itself for this mapping (not the rounded ratio of the output and
input sizes), so that :func:`positions_to_input` and
:func:`positions_to_working` are exact inverses of it.
"""

from __future__ import annotations

import numpy as np

from elit.errors import InputError

__all__ = [
    "LATTICE_REFLECTIONS",
    "estimate_pixel_size",
    "normalize",
    "positions_to_input",
    "positions_to_working",
    "resample",
    "to_working",
    "to_working_scale",
]

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.9

WORKING_MIN_SIGMA = 0.5
"""Least smoothing (input pixels) of a shrink to the working scale.  The usual anti-aliasing
sigma ``(1 / factor - 1) / 2`` falls towards 0 as the factor nears 1, where linear
interpolation leaves the noise's variance swinging from pixel to pixel with the sample
points' phase and a count that lands on a sample point stays a one-pixel spike."""


def normalize(frames, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE) -> np.ndarray:
    """Scale each frame robustly to [0, 1].

    ``(x - p_low) / (p_high - p_low)`` clipped to ``[0, 1]``, where ``p_low`` and
    ``p_high`` are the frame's ``low`` and ``high`` percentiles (defaults 0.5 and
    99.9: a few bright dopant pixels keep their contrast, hot pixels do not
    set the scale).  NaN pixels are ignored and become 0; a constant frame
    becomes all zeros.

    Parameters
    ----------
    frames : array_like, shape (H, W) or (N, H, W)
        Any numeric dtype.
    low, high : float
        Percentiles mapped to 0 and 1.

    Returns
    -------
    ndarray of float32, same shape as ``frames``.
    """
    x = np.asarray(frames)
    if x.ndim not in (2, 3):
        raise InputError(f"normalize expects (H, W) or (N, H, W) frames, got shape {x.shape}")
    if x.size == 0:
        return np.zeros(x.shape, dtype=np.float32)
    stack = x.reshape((-1,) + x.shape[-2:]).astype(np.float32, copy=False)
    flat = stack.reshape(len(stack), -1)
    nan = ~np.isfinite(flat)
    if nan.any():
        flat = np.where(nan, np.nan, flat)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = np.nanpercentile(flat, [low, high], axis=1)
    else:
        lo, hi = np.percentile(flat, [low, high], axis=1)
    lo = np.nan_to_num(lo).astype(np.float32)
    hi = np.nan_to_num(hi).astype(np.float32)
    span = hi - lo
    constant = ~(span > 0)
    scale = np.where(constant, 0.0, 1.0 / np.where(constant, 1.0, span)).astype(np.float32)
    out = (flat - lo[:, None]) * scale[:, None]
    np.clip(out, 0.0, 1.0, out=out)
    if nan.any():
        out[nan] = 0.0
    return out.reshape(x.shape).astype(np.float32, copy=False)


def _output_shape(shape, factor):
    return tuple(max(1, int(round(s * factor))) for s in shape)


def resample(frames, factor: float, order: int = 1, min_sigma: float = 0.0) -> np.ndarray:
    """Resize ``(H, W)`` or ``(N, H, W)`` frames by ``factor``.

    The output has ``round(H * factor) x round(W * factor)`` pixels; output pixel
    ``j`` samples input coordinate ``(j + 0.5) / factor - 0.5`` (see the module
    docstring).  When shrinking, frames are first smoothed with a Gaussian of
    sigma ``(1 / factor - 1) / 2`` input pixels against aliasing, or ``min_sigma``
    if that is larger.  Edges are extended with the nearest value.

    Parameters
    ----------
    frames : array_like
        Any numeric dtype.
    factor : float
        Output pixels per input pixel (> 1 enlarges).
    order : int
        Spline order of the interpolation (1 = linear, 3 = cubic).
    min_sigma : float
        Least Gaussian smoothing of a shrink, input pixels (an enlargement is not smoothed).

    Returns
    -------
    ndarray of float32
    """
    from scipy import ndimage

    x = np.asarray(frames, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise InputError(f"resample expects (H, W) or (N, H, W) frames, got shape {x.shape}")
    factor = float(factor)
    if not np.isfinite(factor) or factor <= 0:
        raise InputError(f"resample factor must be a positive number, got {factor}")
    if factor == 1.0:
        return x.copy()
    stack = x.reshape((-1,) + x.shape[-2:])
    if factor < 1.0:
        sigma = max((1.0 / factor - 1.0) / 2.0, float(min_sigma))
        stack = ndimage.gaussian_filter(stack, sigma=(0, sigma, sigma), mode="nearest", truncate=3.0)
    out_hw = _output_shape(stack.shape[1:], factor)
    inv = 1.0 / factor
    shift = 0.5 * inv - 0.5
    out = np.empty((len(stack),) + out_hw, dtype=np.float32)
    for i, frame in enumerate(stack):
        ndimage.affine_transform(
            frame,
            np.array([inv, inv]),
            offset=(shift, shift),
            output_shape=out_hw,
            output=out[i],
            order=order,
            mode="nearest",
            prefilter=order > 1,
        )
    return out.reshape(x.shape[:-2] + out_hw)


def to_working(frames, factor: float) -> np.ndarray:
    """Resample input frames to the working scale by ``factor`` (working pixels per input pixel).

    A shrink is smoothed by at least :data:`WORKING_MIN_SIGMA` input pixels; this is the one
    resampling that every input frame goes through (training images use :func:`resample`).
    """
    return resample(frames, factor, min_sigma=WORKING_MIN_SIGMA)


def to_working_scale(frames, pixel_size: float, working_pixel_size: float = 0.2) -> tuple[np.ndarray, float]:
    """Resample frames from ``pixel_size`` to ``working_pixel_size`` (both Angstrom/px).

    Returns
    -------
    frames : ndarray of float32
        The resampled frames.
    factor : float
        ``pixel_size / working_pixel_size``, the factor used (map positions back
        with :func:`positions_to_input`).
    """
    if not (pixel_size > 0 and working_pixel_size > 0):
        raise InputError(
            f"pixel sizes must be positive, got {pixel_size} and {working_pixel_size} Angstrom/px"
        )
    factor = float(pixel_size) / float(working_pixel_size)
    return to_working(frames, factor), factor


def positions_to_input(rows, cols, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Map positions found in a frame resampled by ``factor`` back to the input frame's pixels."""
    rows = (np.asarray(rows, dtype=np.float64) + 0.5) / factor - 0.5
    cols = (np.asarray(cols, dtype=np.float64) + 0.5) / factor - 0.5
    return rows, cols


def positions_to_working(rows, cols, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Map input-frame positions to the frame resampled by ``factor`` (inverse of :func:`positions_to_input`)."""
    rows = (np.asarray(rows, dtype=np.float64) + 0.5) * factor - 0.5
    cols = (np.asarray(cols, dtype=np.float64) + 0.5) * factor - 0.5
    return rows, cols


# --------------------------------------------------------------------------- pixel size from the FFT

#: For each lattice: (default lattice constant in Angstrom, spacing of the first-order
#: reflection as a fraction of it, ratios of the higher orders to the first, their weights,
#: rotational symmetry of the spot pattern).
LATTICE_REFLECTIONS = {
    # honeycomb: {10-10} at d = a*sqrt(3)/2; {11-20} at sqrt(3) x; {20-20} at 2 x
    "graphene": (2.46, np.sqrt(3) / 2, (1.0, np.sqrt(3), 2.0), (1.0, 0.5, 0.25), 6),
    # cubic perovskite [001]: {100} at a, {110} at sqrt(2) x, {200}, {210}
    "perovskite": (3.905, 1.0, (1.0, np.sqrt(2), 2.0, np.sqrt(5)), (1.0, 0.75, 0.4, 0.3), 4),
    "square": (None, 1.0, (1.0, np.sqrt(2), 2.0), (1.0, 0.5, 0.25), 4),
}


def _power_spectrum(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Return the fftshifted power spectrum (summed over frames) of the Hann-windowed, zero-padded frames."""
    stack = image.reshape((-1,) + image.shape[-2:]).astype(np.float64)
    height, width = stack.shape[1:]
    limit = 2048
    if height > limit or width > limit:
        r0, c0 = (height - min(height, limit)) // 2, (width - min(width, limit)) // 2
        stack = stack[:, r0 : r0 + limit, c0 : c0 + limit]
        height, width = stack.shape[1:]
    size = max(height, width)
    pad = 1 << int(np.ceil(np.log2(2 * size))) if size <= 1024 else 1 << int(np.ceil(np.log2(size)))
    window = np.hanning(height)[:, None] * np.hanning(width)[None, :]
    power = np.zeros((pad, pad))
    for frame in stack:
        good = np.isfinite(frame)
        if not good.all():
            frame = np.where(good, frame, np.median(frame[good]) if good.any() else 0.0)
        frame = (frame - frame.mean()) * window
        power += np.abs(np.fft.fft2(frame, s=(pad, pad))) ** 2
    return np.fft.fftshift(power), pad


def _radial_profile(power: np.ndarray) -> np.ndarray:
    pad = power.shape[0]
    k = np.arange(pad) - pad // 2
    radius = np.rint(np.hypot(k[:, None], k[None, :])).astype(np.int64).ravel()
    total = np.bincount(radius, weights=power.ravel())
    count = np.bincount(radius)
    profile = total / np.maximum(count, 1)
    return profile[: pad // 2]


def _baseline(log_profile: np.ndarray, lo: int, hi: int, width: int) -> np.ndarray:
    """Estimate the smooth background under the peaks of a log radial profile.

    A grey opening (running minimum, then running maximum) over ``width``
    samples removes peaks narrower than ``width``; a running mean of the same
    width smooths the result.
    """
    from scipy import ndimage

    base = np.full(len(log_profile), np.nan)
    segment = log_profile[lo:hi]
    opened = ndimage.grey_opening(segment, size=width, mode="nearest")
    base[lo:hi] = ndimage.uniform_filter1d(opened, size=max(1, width // 2), mode="nearest")
    return base


def _symmetry_profile(power: np.ndarray, fold: int, n_theta: int = 360) -> np.ndarray:
    """Per integer radius: correlation of the log power around the ring with itself turned by ``360 / fold`` degrees.

    Lattice spots repeat under the lattice's rotation (graphene: 60 degrees); a
    ring of amorphous material or noise has no such order (about 0).
    """
    from scipy import ndimage

    centre = power.shape[0] // 2
    radii = np.arange(power.shape[0] // 2, dtype=np.float64)
    theta = np.arange(n_theta) * (2 * np.pi / n_theta)
    log_power = np.log(np.maximum(power, 1e-300))
    coords = [centre + radii[:, None] * np.sin(theta)[None, :], centre + radii[:, None] * np.cos(theta)[None, :]]
    rings = ndimage.map_coordinates(log_power, coords, order=1, mode="nearest")
    rings = ndimage.uniform_filter(rings, size=(3, 3), mode=("nearest", "wrap"))
    z = rings - rings.mean(axis=1, keepdims=True)
    norm = np.sum(z * z, axis=1)
    corr = np.sum(z * np.roll(z, n_theta // fold, axis=1), axis=1)
    return np.where(norm > 0, corr / np.where(norm > 0, norm, 1.0), 0.0)


def _parabolic_peak(values: np.ndarray, i: int) -> float:
    """Sub-sample position of the maximum at index ``i`` from a parabola through 3 points."""
    if i <= 0 or i >= len(values) - 1:
        return float(i)
    a, b, c = values[i - 1], values[i], values[i + 1]
    denom = a - 2 * b + c
    if not np.isfinite(denom) or denom >= 0:
        return float(i)
    return float(i + 0.5 * (a - c) / denom)


def estimate_pixel_size(
    image,
    lattice: str = "graphene",
    spacing_A: float | None = None,
    search_range: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Estimate the pixel size (Angstrom/px) of a lattice image from its Fourier transform.

    The radial power spectrum of the Hann-windowed, zero-padded image is
    detrended (a grey opening of the log profile removes the narrow peaks and
    keeps the broad background) and searched for
    the first-order ring of the lattice: each candidate radius scores the
    excess power at the lattice's reflection orders (graphene: 1, sqrt(3), 2
    times the first) minus any excess at the sub-harmonics a true first order
    cannot have.  The best ring's radius is refined with a parabola through
    the peak of every clearly visible order, weighted by strength and order.

    Parameters
    ----------
    image : array_like, shape (H, W) or (N, H, W)
        One frame or a stack (power spectra are summed).
    lattice : {"graphene", "perovskite", "square"}
        Which reflections to look for.
    spacing_A : float, optional
        Lattice constant in Angstrom (graphene 2.46, perovskite 3.905 by
        default; required for "square").
    search_range : (float, float), optional
        Smallest and largest pixel size (Angstrom/px) to consider.

    Returns
    -------
    pixel_size : float
        Angstrom per pixel.
    confidence : float
        In [0, 1]: ``1 - background / peak`` power at the first-order ring,
        after discounting 2.5 times the expected scatter of the radial mean
        (about 0 for noise, above 0.3 for a clear lattice).
    """
    if lattice not in LATTICE_REFLECTIONS:
        raise InputError(f"unknown lattice {lattice!r}; choose one of {sorted(LATTICE_REFLECTIONS)}")
    default_a, d_fraction, orders, weights, fold = LATTICE_REFLECTIONS[lattice]
    a = spacing_A if spacing_A is not None else default_a
    if a is None or not a > 0:
        raise InputError(f"lattice {lattice!r} needs spacing_A, the lattice constant in Angstrom")
    d1 = float(a) * d_fraction  # first-order plane spacing in Angstrom
    x = np.asarray(image)
    if x.ndim not in (2, 3) or min(x.shape[-2:]) < 16:
        raise InputError(f"estimate_pixel_size needs (H, W) or (N, H, W) frames of at least 16x16, got {x.shape}")
    power, pad = _power_spectrum(x)
    profile = _radial_profile(power)
    size = min(x.shape[-2:])
    scale = pad / size  # padded bins per unpadded frequency bin
    log_profile = np.log(np.maximum(profile, 1e-300))
    lo = max(2, int(np.floor(2.5 * scale)))  # ignore the lowest frequencies (window, background)
    hi = len(profile)
    base = _baseline(log_profile, 1, hi, width=int(round(8 * scale)) | 1)
    excess = np.nan_to_num(log_profile - base, nan=0.0)
    positive = np.clip(excess, 0.0, None)

    # candidate first-order radii (padded bins): at least 4 periods across the image
    r_min = max(lo, int(np.ceil(4.0 * scale)))
    r_max = int(0.98 * (hi - 1))
    if search_range is not None:
        p_lo, p_hi = sorted(float(v) for v in search_range)
        r_min = max(r_min, int(np.floor(p_lo / d1 * pad)))
        r_max = min(r_max, int(np.ceil(p_hi / d1 * pad)))
    if r_max <= r_min:
        raise InputError("no lattice frequency fits this image size and search range")
    # smooth over the peak width (about 2 unpadded bins) before scoring
    kernel = np.hanning(max(3, int(round(2 * scale)) | 1))
    kernel /= kernel.sum()
    smooth = np.convolve(positive, kernel, mode="same")

    # excess power weighted by how lattice-like (rotationally ordered) each ring is
    symmetry = np.clip(_symmetry_profile(power, fold), 0.05, 1.0)[: len(smooth)]
    ordered = smooth * symmetry

    def at(r):
        r = np.asarray(r, dtype=np.float64)
        inside = r < len(ordered) - 1
        return np.where(inside, np.interp(r, np.arange(len(ordered)), ordered), 0.0)

    radii = np.arange(r_min, r_max + 1, dtype=np.float64)
    score = np.zeros(len(radii))
    for m, w in zip(orders, weights):
        score += w * at(radii * m)
    for m in orders[1:]:  # a first order has no lattice ring below it
        score -= 0.75 * at(radii / m)
    best = radii[int(np.argmax(score))]

    # refine: local maximum of the unsmoothed excess near each order, parabola through it
    half = max(1, int(round(1.5 * scale)))
    estimates, estimate_weights = [], []
    first_excess = 0.0
    noise = 1.4826 * np.median(np.abs(excess[lo:hi] - np.median(excess[lo:hi]))) + 1e-12
    for k, (m, w) in enumerate(zip(orders, weights)):
        centre = int(round(best * m))
        if centre + half >= hi - 1:
            continue
        window = np.arange(max(lo, centre - half), centre + half + 1)
        i = int(window[np.argmax(log_profile[window] - base[window])])
        height = excess[i]
        if k == 0:
            first_excess = height
        at_edge = i in (window[0], window[-1])
        if k > 0 and (height < 4 * noise or at_edge):
            continue
        peak = _parabolic_peak(log_profile - np.nan_to_num(base), i)
        if k > 0 and estimates and abs(peak / m - estimates[0]) > 0.02 * estimates[0]:
            continue  # a neighbouring reflection's shoulder, not this order
        estimates.append(peak / m)
        estimate_weights.append(max(height, 1e-6) * m)
    radius = float(np.average(estimates, weights=estimate_weights)) if estimates else float(best)
    pixel_size = d1 * radius / pad
    # the log of a radial mean of ~pi*r independent exponential powers scatters by ~1/sqrt(pi*r)
    scatter = 1.0 / np.sqrt(np.pi * max(radius / scale, 1.0))
    confidence = float(np.clip(1.0 - np.exp(-(first_excess - 2.5 * scatter)), 0.0, 1.0))
    return float(pixel_size), confidence
