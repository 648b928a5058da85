"""Per-frame drift and quality indicators of live frames (see :data:`DRIFT_INDICATORS`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DRIFT_INDICATORS = (
    "mean_intensity",
    "contrast",
    "noise",
    "sharpness",
    "spectral_change",
    "mean_uncertainty",
    "best_score",
    "score_drop",
)
"""Per-frame drift indicators, in the order they are stored.

``mean_intensity``
    Mean of the raw frame (follows the dose and the detector gain).
``contrast``
    Robust Michelson contrast of the raw frame, ``(p99 - p1) / (|p99| + |p1|)``.
``noise``
    Noise standard deviation of the normalised working-scale frame (Immerkaer's
    estimate; the frame spans ~[0, 1]).
``sharpness``
    Power at 0.6-1.2 1/Angstrom over power at 0.2-0.6 1/Angstrom of the working
    frame, both above the noise floor; drops when the probe blurs.
``spectral_change``
    Mean absolute difference (decades) between the frame's normalised radial
    power spectrum and that of the first ``reference_frames`` frames; shift
    invariant, so stage drift does not count, but dose, focus and
    contamination do.
``mean_uncertainty``
    Mean ensemble uncertainty of the atoms found (0 with one member in use).
``best_score``
    The best member's score on this frame.
``score_drop``
    Mean best score of the reference frames minus this frame's best score.
"""


def _immerkaer_noise(image: np.ndarray) -> float:
    """Gaussian noise sigma of an image by Immerkaer's Laplacian-difference estimate."""
    from scipy import ndimage

    h, w = image.shape
    if h < 3 or w < 3:
        return float("nan")
    kernel = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    response = ndimage.convolve(image.astype(np.float64, copy=False), kernel, mode="reflect")[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2.0) * np.abs(response).sum() / (6.0 * (w - 2) * (h - 2)))


class _Spectrum:
    """Radial power spectra of working-scale frames in fixed physical frequency bins."""

    def __init__(self, pixel_size: float) -> None:
        self.pixel_size = float(pixel_size)
        self.nyquist = 0.5 / self.pixel_size  # 1/Angstrom
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.edges: np.ndarray | None = None

    def _grid(self, shape: tuple[int, int]):
        g = self._cache.get(shape)
        if g is None:
            h, w = shape
            fr = np.fft.fftfreq(h, d=self.pixel_size)[:, None]
            fc = np.fft.rfftfreq(w, d=self.pixel_size)[None, :]
            radius = np.sqrt(fr**2 + fc**2)
            window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
            if self.edges is None:  # fixed by the first frame, so spectra of all frames compare bin by bin
                step = max(0.05, 1.5 / (min(h, w) * self.pixel_size))
                self.edges = np.arange(0.1, 0.8 * self.nyquist + 1e-9, step)
            g = (radius, window, self.edges)
            self._cache[shape] = g
        return g

    def __call__(self, frame: np.ndarray) -> dict[str, Any]:
        """Return the binned log spectrum and the sharpness of one working frame."""
        from scipy import fft as sp_fft

        radius, window, edges = self._grid(frame.shape)
        x = frame.astype(np.float32) - np.float32(frame.mean())
        power = np.abs(sp_fft.rfft2(x * window)) ** 2
        power = power.astype(np.float64)

        def band(lo, hi):
            sel = (radius >= lo) & (radius < hi)
            return float(power[sel].mean()) if sel.any() else float("nan")

        floor = float(np.median(power[(radius >= 0.85 * self.nyquist) & (radius <= self.nyquist)])) if self.nyquist > 0 else 0.0
        high_top = min(1.2, 0.8 * self.nyquist)
        low = band(0.2, 0.6) - floor
        high = band(0.6, high_top) - floor if high_top > 0.6 else float("nan")
        sharpness = max(high, 0.0) / low if low > 0 and math.isfinite(high) else float("nan")
        idx = np.digitize(radius.ravel(), edges) - 1
        ok = (idx >= 0) & (idx < len(edges) - 1)
        sums = np.bincount(idx[ok], weights=power.ravel()[ok], minlength=len(edges) - 1)
        counts = np.bincount(idx[ok], minlength=len(edges) - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            profile = sums / counts
            total = np.nansum(profile)
            log_profile = np.log10(profile / total) if total > 0 else np.full(len(profile), np.nan)
        log_profile[~np.isfinite(log_profile)] = np.nan
        return {"sharpness": float(sharpness), "log_spectrum": log_profile}


def frame_indicators(raw: np.ndarray, working: np.ndarray, pixel_size: float) -> dict[str, float]:
    """Image-only drift indicators of one frame (see :data:`DRIFT_INDICATORS`).

    Parameters
    ----------
    raw : ndarray (H, W)
        The frame as acquired (any numeric dtype).
    working : ndarray (H', W')
        The same frame resampled to the working scale and normalised.
    pixel_size : float
        Angstrom per pixel of ``working``.

    Returns
    -------
    dict
        ``mean_intensity``, ``contrast``, ``noise``, ``sharpness``.
    """
    values, _ = _image_indicators(raw, working, _Spectrum(pixel_size))
    return values


def _image_indicators(raw: np.ndarray, working: np.ndarray, spectrum: _Spectrum) -> tuple[dict[str, float], np.ndarray]:
    rawf = np.asarray(raw, dtype=np.float64)
    p1, p99 = np.percentile(rawf, [1.0, 99.0])
    denom = abs(p99) + abs(p1)
    spec = spectrum(np.asarray(working, dtype=np.float32))
    values = {
        "mean_intensity": float(rawf.mean()),
        "contrast": float((p99 - p1) / denom) if denom > 0 else 0.0,
        "noise": _immerkaer_noise(np.asarray(working)),
        "sharpness": spec["sharpness"],
    }
    return values, spec["log_spectrum"]
