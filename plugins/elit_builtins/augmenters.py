"""Built-in augmenter: random crops and geometric transforms, blur, contrast, background and noise.

Geometric transforms (crop, zoom, scale jitter, drift shear, 90-degree
rotations, flips) are applied to the image, to the label map (nearest
neighbour) and to the true atoms when the set has them; intensity transforms
(blur, resolution loss, gamma, background gradient, Poisson and Gaussian
noise, scan-line jitter) to the image only.  Crop, zoom, jitter, drift and
scan-line jitter are one resampling of the source image.  Every transform has
a probability and a range in the Config; all randomness comes from the
generator passed to :meth:`StandardAugmenter.augment`.  Images come out
normalised with :func:`elit.scale.normalize`.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import ndimage

from typing import Literal

from elit.conditions import atom_contrast, shot_noise
from elit.data import AtomTable, TrainingSet
from elit.scale import normalize, resample
from elit.stages import Augmenter
from elit_builtins.simulators import NonNegativePair, RangeConfig, bounded_pair, smooth_field

__all__ = ["StandardAugmenter"]

ZoomPair = bounded_pair(ge=0.25, le=8.0)
GammaPair = bounded_pair(gt=0.0, le=10.0)
DosePair = bounded_pair(gt=0.0, le=1e9)


def _uniform(rng: np.random.Generator, bounds) -> float:
    low, high = bounds
    return float(low) if high == low else float(rng.uniform(low, high))


def _log_uniform(rng: np.random.Generator, bounds) -> float:
    low, high = bounds
    return float(low) if high == low else float(np.exp(rng.uniform(np.log(low), np.log(high))))


class StandardAugmenter(Augmenter):
    """The paper's augmentation for simulated data, plus scan artefacts and background gradients."""

    name = "standard"
    version = "1"
    description = "Random crops, zoom, scale jitter, drift, 90-degree rotations, flips, blur, gamma, gradients, Poisson/Gaussian noise, scan-line jitter"

    class Config(RangeConfig):
        crop_size: int = Field(96, ge=8, le=4096, description="Height and width of the output images in pixels.")
        copies: int = Field(1, ge=1, le=1000, description="Augmented copies made of every input image.")
        rotate90: bool = Field(True, description="Rotate by a random multiple of 90 degrees.")
        flip: bool = Field(True, description="Flip left-right with probability 1/2.")
        zoom_probability: float = Field(0.2, ge=0.0, le=1.0, description="Probability of a zoom.")
        zoom_range: ZoomPair = Field(
            (1.0, 2.0), description="Zoom factor range (output pixels per input pixel); atoms grow with it, so keep it small at a fixed working scale."
        )
        scale_jitter_probability: float = Field(0.5, ge=0.0, le=1.0, description="Probability of a small random rescaling.")
        scale_jitter: float = Field(0.05, ge=0.0, le=0.5, description="Largest relative change of the small random rescaling (+/-).")
        drift_probability: float = Field(0.2, ge=0.0, le=1.0, description="Probability of a drift shear (rows shifted progressively).")
        drift_range: NonNegativePair = Field((0.0, 0.04), description="Shear range: column shift per row, in pixels.")
        scanline_probability: float = Field(0.3, ge=0.0, le=1.0, description="Probability of scan-line jitter.")
        scanline_range: NonNegativePair = Field(
            (0.0, 0.4), description="Standard deviation of random per-row horizontal shifts in pixels (image only)."
        )
        blur_probability: float = Field(0.4, ge=0.0, le=1.0, description="Probability of a Gaussian blur.")
        blur_range: NonNegativePair = Field((0.3, 1.5), description="Blur sigma range in pixels.")
        resize_probability: float = Field(0.2, ge=0.0, le=1.0, description="Probability of a resolution loss (shrink, then enlarge back).")
        resize_range: bounded_pair(gt=0.05, le=1.0) = Field((0.5, 0.9), description="Shrink factor range of the resolution loss.")
        gamma_probability: float = Field(0.5, ge=0.0, le=1.0, description="Probability of a contrast change (image ** gamma).")
        gamma_range: GammaPair = Field((0.5, 2.0), description="Gamma range (drawn log-uniformly).")
        gradient_probability: float = Field(0.3, ge=0.0, le=1.0, description="Probability of a background gradient.")
        gradient_range: NonNegativePair = Field((0.0, 0.4), description="Background gradient amplitude range (relative to the image range).")
        poisson_probability: float = Field(0.7, ge=0.0, le=1.0, description="Probability of Poisson (shot) noise.")
        dose_range: DosePair = Field(
            (10.0, 1000.0), description="Counts per unit of normalised intensity for the Poisson noise (drawn log-uniformly)."
        )
        dose_reference: Literal["range", "atoms"] = Field(
            "range",
            description="What one unit of dose_range counts: the image's normalised range, or its typical atom's "
            "level above the background (the same atom signal-to-noise whatever else the image holds).",
        )
        poisson_background_range: NonNegativePair = Field(
            (0.2, 2.0), description="Background level (in normalised intensity) added before the Poisson noise, so empty areas are noisy too."
        )
        gaussian_probability: float = Field(0.7, ge=0.0, le=1.0, description="Probability of Gaussian noise.")
        gaussian_range: NonNegativePair = Field((0.0, 0.1), description="Gaussian noise sigma range (relative to the image range).")

    def augment(self, training_set: TrainingSet, rng: np.random.Generator) -> TrainingSet:
        """Return ``copies * len(training_set)`` augmented ``crop_size`` images with their labels (and atoms)."""
        cfg = self.config
        n_in = len(training_set)
        sources = np.repeat(np.arange(n_in), cfg.copies)
        size = cfg.crop_size
        images = np.empty((len(sources), size, size), dtype=np.float32)
        labels = np.empty((len(sources), size, size), dtype=np.uint8)
        tables = []
        by_frame = _split_by_frame(training_set.atoms, n_in) if training_set.atoms is not None else None
        for out_index, src in enumerate(sources):
            atoms = by_frame[src] if by_frame is not None else None
            image, label, moved = self._geometry(rng, training_set.images[src], training_set.labels[src], atoms)
            images[out_index] = self._degrade(rng, image)
            labels[out_index] = label
            if moved is not None:
                moved.frame = np.full(len(moved), out_index)
                tables.append(moved)
        images = self._intensity(rng, images, labels)
        atoms_out = None
        if training_set.atoms is not None:
            atoms_out = AtomTable.concatenate(tables, class_names=training_set.atoms.class_names)
        meta = dict(training_set.metadata)
        meta["augmenter"] = self.name
        return TrainingSet(images, labels, training_set.class_names, training_set.pixel_size, atoms_out, meta)

    # ------------------------------------------------------------------ geometry (image, labels, atoms)
    def _geometry(self, rng, image, label, atoms):
        cfg = self.config
        size = cfg.crop_size
        height, width = image.shape
        zoom = _uniform(rng, cfg.zoom_range) if rng.random() < cfg.zoom_probability else 1.0
        jittered = cfg.scale_jitter > 0 and rng.random() < cfg.scale_jitter_probability
        jitter = 1.0 + rng.uniform(-cfg.scale_jitter, cfg.scale_jitter) if jittered else 1.0
        scale = zoom * jitter  # output pixels per input pixel
        shear = _uniform(rng, cfg.drift_range) * rng.choice([-1.0, 1.0]) if rng.random() < cfg.drift_probability else 0.0
        scan = _uniform(rng, cfg.scanline_range) if rng.random() < cfg.scanline_probability else 0.0
        span = size / scale  # input pixels covered
        sheared = abs(shear) * size / scale
        simple = scale == 1.0 and shear == 0.0
        room_r = height - span
        room_c = width - span - sheared
        if simple and room_r >= 0 and room_c >= 0:
            r0 = float(rng.integers(0, int(room_r) + 1))
            c0 = float(rng.integers(0, int(room_c) + 1))
        else:
            r0 = rng.uniform(0, room_r) if room_r > 0 else room_r / 2
            c0 = rng.uniform(0, room_c) if room_c > 0 else room_c / 2
            c0 += sheared / 2  # the shear moves rows by up to +/- sheared / 2
        k = int(rng.integers(0, 4)) if cfg.rotate90 else 0
        flip = bool(rng.random() < 0.5) if cfg.flip else False
        row_shift = rng.normal(0.0, scan, size) if scan > 0 else None

        if simple and room_r >= 0 and room_c >= 0:
            ri, ci = int(r0), int(c0)
            out_image = image[ri : ri + size, ci : ci + size].astype(np.float32)
            out_label = label[ri : ri + size, ci : ci + size].copy()
            if row_shift is not None:
                out_image = _shift_rows(out_image, row_shift)
        else:
            # input (row, col) = matrix @ output (row, col) + offset
            matrix = np.array([[1.0 / scale, 0.0], [shear / scale, 1.0 / scale]])
            if shear == 0.0:
                matrix = np.diag(matrix)  # a diagonal matrix takes scipy's much faster zoom path
            offset = np.array([r0 + 0.5 / scale - 0.5, c0 + 0.5 / scale - 0.5 - shear * (size / 2) / scale])
            out_label = ndimage.affine_transform(label, matrix, offset, output_shape=(size, size), order=0, mode="mirror")
            out_image = ndimage.affine_transform(
                image.astype(np.float32), matrix, offset, output_shape=(size, size), order=1, mode="mirror", prefilter=False
            )
            if row_shift is not None:
                out_image = _shift_rows(out_image, row_shift / scale)
        moved = None
        if atoms is not None:
            # invert the map: output row i <- input row r0 + (i + 0.5) / scale - 0.5
            out_r = (atoms.row - r0 + 0.5) * scale - 0.5
            out_c = (atoms.col - c0 - shear * (out_r - size / 2) / scale + 0.5) * scale - 0.5
            moved = atoms.select(slice(None))
            moved.row, moved.col = _rotate_flip_points(out_r, out_c, size, k, flip)
            inside = (moved.row >= -0.5) & (moved.row < size - 0.5) & (moved.col >= -0.5) & (moved.col < size - 0.5)
            moved = moved.select(inside)
        out_image = _rotate_flip(out_image, k, flip)
        out_label = _rotate_flip(out_label, k, flip)
        return out_image, out_label, moved

    # ------------------------------------------------------------------ per-image intensity (image only)
    def _degrade(self, rng, image):
        cfg = self.config
        out = image.astype(np.float32, copy=True)
        if rng.random() < cfg.blur_probability:
            sigma = _uniform(rng, cfg.blur_range)
            if sigma > 0:
                out = ndimage.gaussian_filter(out, sigma, mode="reflect", truncate=3.0)
        if rng.random() < cfg.resize_probability:
            factor = _uniform(rng, cfg.resize_range)
            if factor < 1.0:
                small = resample(out, factor)
                back = resample(small, 1.0 / factor)
                out = _fit(back, out.shape)
        return out

    # ------------------------------------------------------------------ batch intensity (image only)
    def _intensity(self, rng, images, labels):
        cfg = self.config
        n, height, width = images.shape
        x = normalize(images)
        for i in range(n):
            if rng.random() < cfg.gamma_probability:
                x[i] **= np.float32(_log_uniform(rng, cfg.gamma_range))
            if rng.random() < cfg.gradient_probability:
                amplitude = _uniform(rng, cfg.gradient_range)
                angle = rng.uniform(0, 2 * np.pi)
                rr = (np.arange(height)[:, None] - height / 2) / max(height, width)
                cc = (np.arange(width)[None, :] - width / 2) / max(height, width)
                ramp = np.cos(angle) * rr + np.sin(angle) * cc
                ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-12)
                x[i] += (amplitude * (0.5 * ramp + 0.5 * smooth_field(rng, (height, width), 3))).astype(np.float32)
            if rng.random() < cfg.poisson_probability:
                dose = _log_uniform(rng, cfg.dose_range)
                level = _uniform(rng, cfg.poisson_background_range)
                contrast = atom_contrast(x[i], labels[i]) if cfg.dose_reference == "atoms" else 1.0
                x[i] = shot_noise(x[i], dose, level, rng, contrast).astype(np.float32)
            if rng.random() < cfg.gaussian_probability:
                sigma = _uniform(rng, cfg.gaussian_range)
                span = float(x[i].max() - x[i].min()) or 1.0
                x[i] += rng.standard_normal((height, width), dtype=np.float32) * np.float32(sigma * span)
        return normalize(x)


def _split_by_frame(atoms: AtomTable, n_frames: int) -> list[AtomTable]:
    """Split a table into one table per frame (one sort instead of a scan per frame)."""
    order = np.argsort(atoms.frame, kind="stable")
    bounds = np.searchsorted(atoms.frame[order], np.arange(n_frames + 1))
    return [atoms.select(order[bounds[i] : bounds[i + 1]]) for i in range(n_frames)]


def _rotate_flip(array, k, flip):
    out = np.rot90(array, k) if k else array
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _rotate_flip_points(rows, cols, size, k, flip):
    """Where points go under ``np.rot90(a, k)`` then a left-right flip of a ``size x size`` array."""
    r, c = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
    for _ in range(k % 4):
        r, c = size - 1 - c, r  # np.rot90: new[i, j] = old[j, size - 1 - i]
    if flip:
        c = size - 1 - c
    return r, c


def _shift_rows(image, shifts):
    """Shift every row horizontally by a sub-pixel amount (linear interpolation, edges repeated)."""
    height, width = image.shape
    cols = np.arange(width)[None, :] + np.asarray(shifts)[:, None]
    cols = np.clip(cols, 0, width - 1)
    left = np.floor(cols).astype(np.int64)
    right = np.minimum(left + 1, width - 1)
    frac = cols - left
    rows = np.arange(height)[:, None]
    return ((1 - frac) * image[rows, left] + frac * image[rows, right]).astype(np.float32)


def _fit(image, shape):
    """Crop or edge-pad ``image`` to ``shape``."""
    out = image[: shape[0], : shape[1]]
    pad = (shape[0] - out.shape[0], shape[1] - out.shape[1])
    if pad[0] > 0 or pad[1] > 0:
        out = np.pad(out, ((0, max(pad[0], 0)), (0, max(pad[1], 0))), mode="edge")
    return out


STAGES = [StandardAugmenter]
