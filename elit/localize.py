"""Atom positions at the data's own resolution: a 2-D Gaussian fitted to the raw intensity.

The networks place atoms on a coarse working grid; this module refines each
position on the input frame at its own pixel size, much as Atomap does.  For
every atom a round Gaussian on a flat local background,

    I(r, c) = b + A * exp(-((r - r0)**2 + (c - c0)**2) / (2 * s**2)),

is fitted by least squares to the pixels within a disc of radius about half
the distance to the nearest other atom (so neighbours barely enter), with a
few damped Gauss-Newton steps.  The disc follows the estimate from step to
step, so it ends centred on the atom.  The start is a background-subtracted
centre of mass around the predicted position.  All atoms of a frame are
fitted at once (arrays of shape ``(atoms, pixels)``), so thousands of atoms
cost a fraction of a second.

Before the later passes, the other atoms' fitted Gaussians are subtracted
(a block-wise fit of all overlapping Gaussians) and each scan line's offset
is estimated from the residual and removed; so is the background's slow
variation.  The local background is a plane.

A fit fails when it does not converge to a peak (amplitude below 3 standard
errors or 0.1 % of the image's range, width outside
a sane range, a move of more than the disc radius, a position outside the
image or a non-finite value); such an atom keeps its predicted position, and
the table says so.  Positions always lie between the first and last pixel
centres (an atom cut by the edge is put on its edge pixel).

:func:`refine_on_frames` is the entry point for the pipeline:
raw frames and atoms in input pixels in, an :class:`~elit.data.AtomTable` with
refined ``row``, ``col`` and the predicted ones in ``row_network``,
``col_network`` out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from elit.data import AtomTable
from elit.errors import InputError

__all__ = ["GaussianFit", "fit_gaussians", "recentre_network", "refine_on_frames", "window_radius"]

SIGMA_A = 0.35
"""Default start width (Gaussian sigma, Angstrom) of an atom's image: a typical 60-300 kV ADF probe."""


@dataclass
class GaussianFit:
    """Result of :func:`fit_gaussians`, one entry per atom.

    Attributes
    ----------
    row, col : ndarray
        Fitted centre (pixels); the start position where the fit failed.
    amplitude, sigma, background : ndarray
        Peak height above background, Gaussian width (pixels) and local background.
    volume : ndarray
        Integrated intensity of the Gaussian, ``2 * pi * amplitude * sigma**2`` (0 where the fit failed).
    residual : ndarray
        RMS residual of the fit divided by the amplitude (lower is better; NaN where it failed).
    ok : ndarray of bool
        True where the fit converged to a peak inside the image.
    """

    row: np.ndarray
    col: np.ndarray
    amplitude: np.ndarray
    sigma: np.ndarray
    background: np.ndarray
    volume: np.ndarray
    residual: np.ndarray
    ok: np.ndarray


def window_radius(row, col, pixel_size: float, fraction: float = 0.5, max_A: float = 1.2,
                  min_px: float = 2.0) -> np.ndarray:
    """Fit-window radius of each atom (pixels): ``fraction`` of the distance to its nearest neighbour.

    Clipped to ``[min_px, max_A / pixel_size]`` (an isolated atom gets ``max_A``).
    """
    row = np.asarray(row, dtype=np.float64)
    col = np.asarray(col, dtype=np.float64)
    hi = max(float(max_A) / float(pixel_size), float(min_px))
    if len(row) < 2:
        return np.full(len(row), hi)
    d, _ = cKDTree(np.stack([row, col], axis=1)).query(np.stack([row, col], axis=1), k=2)
    return np.clip(fraction * d[:, 1], min_px, hi)


def _window(img: np.ndarray, valid: np.ndarray, pad: int, r: np.ndarray, c: np.ndarray, reach: float):
    """Pixel values, coordinates and in-image mask of the disc of radius ``reach`` around the nearest pixels of ``r, c``."""
    h, w = img.shape[0] - 2 * pad, img.shape[1] - 2 * pad
    off = np.arange(-int(np.ceil(reach)), int(np.ceil(reach)) + 1)
    dr, dc = np.meshgrid(off, off, indexing="ij")
    disc = dr**2 + dc**2 <= reach**2
    dr, dc = dr[disc], dc[disc]
    r0 = np.clip(np.rint(r).astype(np.int64), 0, h - 1)
    c0 = np.clip(np.rint(c).astype(np.int64), 0, w - 1)
    rr = r0[:, None] + dr[None, :]
    cc = c0[:, None] + dc[None, :]
    vals = img[rr + pad, cc + pad]
    inside = valid[rr + pad, cc + pad]
    return vals, rr.astype(np.float64), cc.astype(np.float64), inside


class _Peaks:
    """The sum of fixed Gaussians rendered on the padded grid, to subtract an atom's neighbours."""

    def __init__(self, shape, pad: int, r, c, amp, s):
        self.pad, self.width = pad, shape[1]
        self.r, self.c = r.copy(), c.copy()
        self.amp, self.s = amp.copy(), s.copy()
        self.reach = min(int(np.ceil(4.0 * float(np.max(s)))) if len(s) else 1, pad - 1)
        rr, cc, val = self._render(self.r, self.c)
        self.total = np.bincount(self._flat(rr, cc).ravel(), weights=val.ravel(), minlength=shape[0] * shape[1])

    def _flat(self, rr, cc):
        return (rr + self.pad) * self.width + cc + self.pad

    def _render(self, r, c):
        off = np.arange(-self.reach, self.reach + 1)
        dr, dc = np.meshgrid(off, off, indexing="ij")
        rr = np.rint(r).astype(np.int64)[:, None] + dr.ravel()[None, :]
        cc = np.rint(c).astype(np.int64)[:, None] + dc.ravel()[None, :]
        val = self._own(rr, cc)
        return rr, cc, val

    def _own(self, rr, cc):
        d2 = (rr - self.r[:, None]) ** 2 + (cc - self.c[:, None]) ** 2
        inside = (np.abs(rr - np.rint(self.r)[:, None]) <= self.reach) & (np.abs(cc - np.rint(self.c)[:, None]) <= self.reach)
        return np.where(inside, self.amp[:, None] * np.exp(-d2 / (2 * self.s[:, None] ** 2)), 0.0)

    def others(self, rr, cc) -> np.ndarray:
        """The other atoms' Gaussians at each atom's window pixels (``rr, cc`` of shape (atoms, pixels))."""
        ri, ci = rr.astype(np.int64), cc.astype(np.int64)
        return self.total[self._flat(ri, ci)] - self._own(ri, ci)


def _at(img: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Values of ``img`` at the nearest pixels of ``r, c`` (clipped to the image)."""
    h, w = img.shape
    return img[np.clip(np.rint(r).astype(np.int64), 0, h - 1), np.clip(np.rint(c).astype(np.int64), 0, w - 1)]


def _line_offsets(img: np.ndarray, peaks: _Peaks, pad: int) -> np.ndarray:
    """Offset of each image row: the row's mean residual after the fitted atoms, less its smooth trend."""
    h, w = img.shape
    model = peaks.total.reshape(h + 2 * pad, w + 2 * pad)[pad : pad + h, pad : pad + w]
    means = (img - model).mean(axis=1)
    trend = ndimage.gaussian_filter1d(means, max(2.0 * float(np.median(peaks.s)), 2.0), mode="nearest")
    return means - trend


def _gauss_newton(padded, valid, pad, r, c, b, amp, s, slope, radius, iterations, fixed_sigma, tilt, peaks):
    """Damped Gauss-Newton steps of the Gaussian-on-background model, all atoms at once."""
    reach = float(radius.max()) + 0.75
    n_par = (4 if fixed_sigma else 5) + (2 if tilt else 0)
    res = np.full(len(r), np.nan)
    for _ in range(max(int(iterations), 1)):
        vals, rr, cc, inside = _window(padded, valid, pad, r, c, reach)
        if peaks is not None:
            vals = vals - peaks.others(rr, cc)
        d2 = (rr - r[:, None]) ** 2 + (cc - c[:, None]) ** 2
        m = (inside & (d2 <= radius[:, None] ** 2)).astype(np.float64)
        g = np.exp(-d2 / (2 * s[:, None] ** 2))
        ur, uc = rr - r[:, None], cc - c[:, None]
        e = (vals - b[:, None] - amp[:, None] * g - slope[:, :1] * ur - slope[:, 1:] * uc) * m
        jm = np.empty((len(r), n_par, g.shape[1]))  # (atoms, parameters, pixels), masked
        jm[:, 0] = m
        np.multiply(g, m, out=jm[:, 1])
        ag = amp[:, None] * jm[:, 1] / s[:, None] ** 2
        jm[:, 2] = ag * ur + slope[:, :1] * m
        jm[:, 3] = ag * uc + slope[:, 1:] * m
        if not fixed_sigma:
            jm[:, 4] = ag * d2 / s[:, None]
        if tilt:
            np.multiply(ur, m, out=jm[:, -2])
            np.multiply(uc, m, out=jm[:, -1])
        jtj = jm @ jm.transpose(0, 2, 1)  # the mask is 0 or 1: masking both factors masks once
        jte = (jm @ e[:, :, None])[..., 0]
        diag = np.diagonal(jtj, axis1=1, axis2=2)
        jtj = jtj + (1e-3 * diag + 1e-12)[:, :, None] * np.eye(n_par)[None]
        with np.errstate(all="ignore"):
            step = np.linalg.solve(jtj, jte[..., None])[..., 0]
        step = np.where(np.isfinite(step).all(axis=1)[:, None], step, 0.0)
        # at most half a width per step in position; the width changes by at most half per step
        move = np.hypot(step[:, 2], step[:, 3])
        scale = np.minimum(1.0, 0.5 * s / np.maximum(move, 1e-12))
        b = b + step[:, 0]
        amp = amp + step[:, 1]
        r = r + scale * step[:, 2]
        c = c + scale * step[:, 3]
        if not fixed_sigma:
            s = np.clip(s + np.clip(step[:, 4], -0.5 * s, 0.5 * s), 0.2, None)
        if tilt:
            slope = slope + step[:, -2:]
        res = np.sqrt((e**2).sum(axis=1) / np.maximum(m.sum(axis=1), 1))
        # the amplitude's signal-to-noise ratio: its least-squares standard error is res / |g|
        snr = amp * np.sqrt((g**2 * m).sum(axis=1)) / np.maximum(res, 1e-300)
    return r, c, b, amp, s, slope, res, snr


def fit_gaussians(
    image,
    row,
    col,
    pixel_size: float,
    radius_px=None,
    sigma_px: float | None = None,
    smooth_px: float = 0.0,
    iterations: int = 5,
    fixed_sigma: bool = False,
    neighbour_passes: int = 4,
    line_offsets: bool = True,
    tilt: bool = True,
    min_snr: float = 3.0,
    smooth_background: bool = True,
) -> GaussianFit:
    """Fit a round 2-D Gaussian on a flat background around each start position.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Raw intensity (counts or any linear scale; bright atoms).
    row, col : array_like
        Start positions, pixels of ``image``.
    pixel_size : float
        Angstrom per pixel (sets the default width and window).
    radius_px : float or array_like, optional
        Fit-window radius per atom; default :func:`window_radius` of the start positions.
    sigma_px : float, optional
        Start width; default :data:`SIGMA_A` in pixels, at most 0.6 of the window radius.
    smooth_px : float
        Gaussian smoothing of the image before fitting (pixels); it broadens the
        peaks but does not move them, and steadies fits on very noisy frames.
    iterations : int
        Damped Gauss-Newton steps per pass.
    fixed_sigma : bool
        Keep the width at ``sigma_px`` (fit background, amplitude and centre only).
    neighbour_passes : int
        Further passes in which the other atoms' Gaussians from the previous
        pass are subtracted from the data first (a block-wise fit of the
        overlapping Gaussians): removes most of the pull of a neighbour's tail.
    line_offsets : bool
        After the first pass, estimate a constant offset per image row (scan
        line) from the fit's residual, minus its smooth trend, and subtract it
        before the next passes: scan-line noise otherwise pulls rows.
    tilt : bool
        Fit a plane, not a constant, as the local background: absorbs the
        uphill pull of gradients and of the neighbours' non-Gaussian probe
        tails (halves the error on probes with long tails); on very noisy
        frames of Gaussian-like atoms it costs about 10 %.
    smooth_background : bool
        After the first pass, subtract the slowly varying part of what the
        fitted atoms leave (a wide Gaussian filter of the residual): removes
        background gradients without a per-atom plane.
    min_snr : float
        A fit counts as failed when its amplitude is below this many of its
        standard errors (no significant peak).

    Returns
    -------
    GaussianFit
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise InputError(f"image must be 2-D, got shape {img.shape}")
    row = np.asarray(row, dtype=np.float64).reshape(-1)
    col = np.asarray(col, dtype=np.float64).reshape(-1)
    if row.shape != col.shape:
        raise InputError(f"row and col differ in length: {row.size} and {col.size}")
    if not np.isfinite(pixel_size) or pixel_size <= 0:
        raise InputError(f"pixel_size must be positive, got {pixel_size}")
    n = len(row)
    h, w = img.shape
    if n == 0:
        z = np.zeros(0)
        return GaussianFit(z, z, z, z, z, z, z, np.zeros(0, dtype=bool))
    img = np.nan_to_num(img, nan=float(np.nanmedian(img)) if np.isfinite(img).any() else 0.0)
    if smooth_px > 0:
        img = ndimage.gaussian_filter(img, float(smooth_px), mode="nearest")
    start_r = np.clip(np.nan_to_num(row), 0, h - 1)
    start_c = np.clip(np.nan_to_num(col), 0, w - 1)
    if radius_px is None:
        radius = window_radius(start_r, start_c, pixel_size)
    else:
        radius = np.maximum(np.broadcast_to(np.asarray(radius_px, dtype=np.float64), (n,)).copy(), 1.0)
    s0 = SIGMA_A / pixel_size if sigma_px is None else float(sigma_px)
    s = np.minimum(s0, 0.6 * radius)
    reach = int(np.ceil(radius.max())) + 1
    pad = max(reach, int(np.ceil(4 * s.max())) + 1) + 1
    padded = np.pad(img, pad, mode="constant")
    valid = np.pad(np.ones((h, w), dtype=bool), pad, mode="constant")

    # start: background = low quantile of the disc; amplitude = highest inner pixel above it
    vals, rr, cc, inside = _window(padded, valid, pad, start_r, start_c, reach)
    d2 = (rr - start_r[:, None]) ** 2 + (cc - start_c[:, None]) ** 2
    with np.errstate(all="ignore"):
        b = np.nan_to_num(np.nanpercentile(np.where(inside & (d2 <= radius[:, None] ** 2), vals, np.nan), 10, axis=1))
        inner = inside & (d2 <= (0.5 * radius[:, None]) ** 2 + 0.5)
        amp = np.where(inner, vals, -np.inf).max(axis=1) - b
    amp = np.where(np.isfinite(amp) & (amp > 0), amp, 1e-6)
    amp0, b0 = amp.copy(), b.copy()
    floor = 1e-3 * float(np.ptp(img)) if np.ptp(img) > 0 else np.inf  # a peak is more than 0.1 % of the range
    slope = np.zeros((n, 2))
    r, c = start_r.copy(), start_c.copy()
    peaks = None
    for p in range(1 + max(int(neighbour_passes), 0) * (n > 1)):
        steps = iterations if p == 0 else max(2, (iterations + 1) // 2)  # later passes start close
        r, c, b, amp, s, slope, res, snr = _gauss_newton(padded, valid, pad, r, c, b, amp, s, slope, radius,
                                                    steps, fixed_sigma, tilt, peaks)
        ok = (
            np.isfinite(r) & np.isfinite(c) & np.isfinite(amp) & np.isfinite(s)
            & (amp > floor) & (snr > min_snr) & (s >= 0.25) & (s <= radius)
            & (np.hypot(r - start_r, c - start_c) <= radius)
            & (r >= -0.5) & (r <= h - 0.5) & (c >= -0.5) & (c <= w - 0.5)
        )
        r, c = np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)  # an atom cut by the edge stays on its edge pixel
        if p < neighbour_passes:
            peaks = _Peaks(padded.shape, pad, np.where(ok, r, start_r), np.where(ok, c, start_c),
                           np.where(ok, amp, 0.0), np.where(ok, s, 1.0))
            interior = padded[pad : pad + h, pad : pad + w]
            if smooth_background and p == 0:
                # the background's slow variation (gradients, thickness), under the fitted atoms
                rest = interior - peaks.total.reshape(padded.shape)[pad : pad + h, pad : pad + w]
                level = ndimage.gaussian_filter(rest, 2.0 * float(np.median(radius)), mode="nearest")
                interior -= level - float(np.median(level))
                b = b - _at(level - float(np.median(level)), r, c)
            if line_offsets and p >= 1 and h >= 8:
                interior -= _line_offsets(interior, peaks, pad)[:, None]
            # a failed atom starts the next pass afresh
            r, c = np.where(ok, r, start_r), np.where(ok, c, start_c)
            s = np.where(ok, s, np.minimum(s0, 0.6 * radius))
            amp = np.where(ok, amp, amp0)
            b = np.where(ok, b, b0)
            slope = np.where(ok[:, None], slope, 0.0)
    out_r = np.where(ok, r, start_r)
    out_c = np.where(ok, c, start_c)
    volume = np.where(ok, 2 * np.pi * amp * s**2, 0.0)
    with np.errstate(all="ignore"):
        residual = np.where(ok, res / np.abs(amp), np.nan)
    return GaussianFit(out_r, out_c, np.where(ok, amp, 0.0), np.where(ok, s, np.nan), b, volume, residual, ok)


def refine_on_frames(
    raw_frames,
    atoms: AtomTable,
    pixel_size_A: float,
    window_fraction: float = 0.7,
    smooth_A: float = 0.15,
    iterations: int = 5,
    fixed_sigma: bool = False,
) -> AtomTable:
    """Refine every atom's position by a Gaussian fit on the raw frame at its own pixel size.

    Parameters
    ----------
    raw_frames : array_like, shape (N, H, W) or (H, W)
        The input frames, not resampled (any linear intensity scale).
    atoms : AtomTable
        Predicted positions in the pixels of ``raw_frames`` (``elit``'s ``atoms`` table).
    pixel_size_A : float
        Angstrom per pixel of ``raw_frames``.
    window_fraction : float
        Fit-window radius as a fraction of each atom's nearest-neighbour
        distance (the neighbours' own Gaussians are subtracted, so a window
        wider than half the distance is safe and uses more of the signal).
    smooth_A : float
        Gaussian smoothing of the frames before the fit, Angstrom (0: none);
        a matched filter that steadies fits on noisy frames (it broadens the
        peaks, which does not move them).
    iterations : int
        Gauss-Newton steps.
    fixed_sigma : bool
        Fit a free width per atom first, then refit with every width fixed at
        the frame's median (steadier on noisy frames).

    Returns
    -------
    AtomTable
        A copy of ``atoms`` whose ``row``, ``col`` are the fitted positions
        (the predicted one where a fit failed) and whose ``row_network``,
        ``col_network`` hold the predicted positions; ``fit_residual`` is the
        fit's relative RMS residual (NaN where it failed) and ``intensity`` the
        integrated intensity of the fitted Gaussian (0 where it failed).
    """
    frames = np.asarray(raw_frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3:
        raise InputError(f"raw_frames must have shape (N, H, W) or (H, W), got {frames.shape}")
    if not 0 < window_fraction <= 1:
        raise InputError(f"window_fraction must lie in (0, 1], got {window_fraction}")
    out = atoms.select(slice(None))
    out.row, out.col = out.row.copy(), out.col.copy()  # select(slice) shares memory with ``atoms``
    net_r = atoms.row_network if atoms.row_network is not None else atoms.row.copy()
    net_c = atoms.col_network if atoms.col_network is not None else atoms.col.copy()
    out.row_network, out.col_network = net_r.copy(), net_c.copy()
    n = len(atoms)
    residual = np.full(n, np.nan)
    volume = np.zeros(n)
    if n == 0:
        out.fit_residual, out.intensity = residual, volume
        return out
    if atoms.frame.min() < 0 or atoms.frame.max() >= len(frames):
        raise InputError(f"atoms refer to frame {int(atoms.frame.max())} but only {len(frames)} frames were given")
    smooth_px = float(smooth_A) / float(pixel_size_A)
    for f in np.unique(atoms.frame):
        idx = np.flatnonzero(atoms.frame == f)
        r, c = net_r[idx], net_c[idx]
        radius = window_radius(r, c, pixel_size_A, fraction=window_fraction)
        fit = fit_gaussians(frames[f], r, c, pixel_size_A, radius_px=radius, smooth_px=smooth_px, iterations=iterations)
        if fixed_sigma and fit.ok.any():
            sigma = float(np.nanmedian(fit.sigma[fit.ok]))
            again = fit_gaussians(frames[f], fit.row, fit.col, pixel_size_A, radius_px=radius, sigma_px=sigma,
                                  smooth_px=smooth_px, iterations=iterations, fixed_sigma=True)
            keep = again.ok
            for name in ("row", "col", "volume", "residual"):
                getattr(fit, name)[keep] = getattr(again, name)[keep]
        out.row[idx], out.col[idx] = fit.row, fit.col
        residual[idx], volume[idx] = fit.residual, fit.volume
    out.fit_residual, out.intensity = residual, volume
    return out


def recentre_network(atoms: AtomTable, min_significance: float = 2.0) -> tuple[AtomTable, tuple[float, float]]:
    """Remove the network positions' systematic offset from the Gaussian fits.

    The ensemble places atoms by blob centroids on its working grid, which can carry a
    small offset common to all atoms (a few hundredths of an Angstrom, varying from one
    ensemble to the next); the fits on the raw frame do not share it, but each one is
    noisier.  The mean of ``fit - network`` over every fitted atom (those more than three
    times the median distance away left out) estimates that offset; each axis is shifted
    by it where it exceeds ``min_significance`` standard errors, else left alone.

    Parameters
    ----------
    atoms : AtomTable
        With ``row_network``, ``col_network``, ``row_refined`` and ``col_refined``
        (NaN where a fit failed), as :func:`refine_on_frames` and the pipeline give them.
    min_significance : float
        Shift an axis only when its mean offset is this many standard errors from zero.

    Returns
    -------
    atoms : AtomTable
        A copy with ``row_network``, ``col_network`` shifted.
    shift : tuple of float
        The (row, col) shift applied, pixels.
    """
    out = atoms.select(slice(None))
    if atoms.row_network is None or atoms.row_refined is None:
        return out, (0.0, 0.0)
    d = np.stack([atoms.row_refined - atoms.row_network, atoms.col_refined - atoms.col_network], axis=1)
    d = d[np.isfinite(d).all(axis=1)]
    if len(d) < 30:  # too few fits to tell an offset from noise
        return out, (0.0, 0.0)
    dist = np.hypot(d[:, 0], d[:, 1])
    d = d[dist <= 3.0 * np.median(dist)]
    mean = d.mean(axis=0)
    se = d.std(axis=0, ddof=1) / np.sqrt(len(d))
    shift = np.where(np.abs(mean) > min_significance * se, mean, 0.0)
    out.row_network = atoms.row_network + shift[0]
    out.col_network = atoms.col_network + shift[1]
    return out, (float(shift[0]), float(shift[1]))
