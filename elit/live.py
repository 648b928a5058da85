"""Automated-experiment mode: analyse frames as the microscope writes them, re-selecting members per frame.

In an automated experiment the imaging conditions drift (dose, focus,
contamination, a growing hole).  Instead of stopping to relabel and retrain,
elit scores every ensemble member on each incoming frame with the ``auto``
selector's label-free criteria and uses, for that frame, the members that
still behave (the paper's answer to drift: switch members, not retrain).
A frame on which no member scores well enough is flagged
(``needs_retraining``): the signal to schedule a retraining on those frames.

Three layers:

:class:`LiveAnalyzer`
    ``process(frame) -> LiveResult`` for acquisition scripts (no file I/O).
:class:`LiveWriter` / :func:`read_live`
    An HDF5 file that grows by one frame at a time and can be read while it
    grows (HDF5 single-writer/multiple-reader, SWMR).  See ``docs/automated-experiments.md``
    for its layout.
:func:`watch`
    Polls a folder for new, completely written image files and runs the two
    above, with one log line per frame (``elit watch``).

:func:`drift_figure` draws per-frame scores, members used, atoms found,
uncertainty and the drift indicators from a live file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elit.data import ATOM_COLUMNS, AtomTable
from elit.errors import ConfigError, InputError, StoreError

__all__ = [
    "DRIFT_INDICATORS",
    "LiveAnalyzer",
    "LiveData",
    "LiveResult",
    "LiveWriter",
    "drift_figure",
    "frame_indicators",
    "model_provenance",
    "read_live",
    "watch",
    "watch_folder",
]

FORMAT = "elit.live"
FORMAT_VERSION = 1

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

STATE_RUNNING, STATE_FINISHED, STATE_INTERRUPTED, STATE_FAILED = 0, 1, 2, 3
STATES = {STATE_RUNNING: "running", STATE_FINISHED: "finished", STATE_INTERRUPTED: "interrupted", STATE_FAILED: "failed"}
SOURCE_BYTES = 512
"""Longest stored source name (bytes, UTF-8); longer names keep their end."""


# ============================================================================ drift indicators


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


# ============================================================================ analyzer


@dataclass
class LiveResult:
    """What :meth:`LiveAnalyzer.process` found in one frame.

    Attributes
    ----------
    index : int
        Frame number in this session (0-based).
    source : str
        Where the frame came from (file name), if given.
    atoms : AtomTable
        Atoms in the input frame's own pixels; ``frame`` = ``index``.
    mean, std : ndarray (K, H, W) float32
        Mean probability and its standard deviation over the members used,
        at the working scale.
    members : list of int
        Members used for this frame, best first.
    scores : ndarray (M,)
        Every member's score on this frame (higher is better).
    criteria : dict of str to ndarray (M,)
        The selector's per-member criteria on this frame.
    needs_retraining : bool
        No member scored well enough (see :class:`LiveAnalyzer`).
    reasons : list of str
        Why members were used or dropped.
    flags : list of str
        Why the frame needs retraining (empty when it does not).
    drift : dict of str to float
        :data:`DRIFT_INDICATORS`.
    latency : float
        Seconds from receiving the frame to the result.
    timings : dict of str to float
        Seconds spent in ``prepare``, ``predict``, ``select``, ``locate``, ``drift``.
    input_pixel_size, working_pixel_size : float
        Angstrom per pixel of the input frame and of the maps.
    input_shape : tuple of int
        Shape of the input frame.
    """

    index: int
    source: str
    atoms: AtomTable
    mean: np.ndarray
    std: np.ndarray
    members: list[int]
    scores: np.ndarray
    criteria: dict[str, np.ndarray]
    needs_retraining: bool
    reasons: list[str]
    drift: dict[str, float]
    latency: float
    flags: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    input_pixel_size: float = float("nan")
    working_pixel_size: float = float("nan")
    input_shape: tuple[int, int] = (0, 0)

    @property
    def n_members(self) -> int:
        """Members in the ensemble."""
        return len(self.scores)

    def summary(self) -> str:
        """One log line: frame, atoms, members in use, drift indicators, latency."""
        d = self.drift
        name = f" {Path(self.source).name}" if self.source else ""
        line = (
            f"frame {self.index}{name}: {len(self.atoms)} atoms, members {self.members} of {self.n_members} "
            f"(best {d['best_score']:.2f}, drop {_fmt(d['score_drop'])}), "
            f"mean {_fmt(d['mean_intensity'], 4)}, contrast {_fmt(d['contrast'])}, noise {_fmt(d['noise'], 2, 'g3')}, "
            f"sharpness {_fmt(d['sharpness'])}, change {_fmt(d['spectral_change'])}, "
            f"uncertainty {_fmt(d['mean_uncertainty'])}, {self.latency:.2f} s"
        )
        if self.needs_retraining:
            line += " | RETRAIN: " + "; ".join(self.flags)
        return line


def _fmt(value: float, digits: int = 2, style: str = "f") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if style == "g3":
        return f"{value:.3g}"
    if digits > 3:
        return f"{value:.4g}"
    return f"{value:.{digits}f}"


class LiveAnalyzer:
    """Analyse single frames with a trained ensemble, choosing members per frame.

    Every member is applied to the frame and scored with the selector's
    label-free criteria on that frame alone.  The members used are those
    scoring at least ``min_score`` and within ``tolerance`` of the best member
    (at most ``k``, best first); their mean is the prediction and their
    standard deviation the uncertainty.  When no member reaches ``min_score``,
    or the best score falls more than ``max_drop`` below its mean over the
    first ``reference_frames`` frames, the frame is flagged
    ``needs_retraining``; when no member is usable, the single best one is
    used, so every frame has a result.

    Parameters
    ----------
    ensemble : elit.ensemble.Ensemble
        The trained ensemble (e.g. from :func:`elit.results.load_ensemble`).
    config : PipelineConfig, ScaleConfig, dict or None
        The run's config: its ``scale`` (input pixel size, lattice for the
        estimate), ``iterations.threshold`` and, when it is ``auto``, the
        selector's settings.  The working scale is the ensemble's own.
    selector : Selector, optional
        Scores members; default: the ``auto`` selector with the config's params.
    k : int, optional
        The most members used on one frame (default: no limit).
    min_score : float
        A member is usable on a frame when it scores at least this.
    tolerance : float
        ... and at most this far below the frame's best member.
    max_drop : float or None
        Flag a frame whose best score is this far below the reference frames'
        (None: only ``min_score`` flags).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    input_pixel_size : float, optional
        Angstrom per pixel of the incoming frames; default: the config's, else
        each frame's metadata, else estimated once from the first frame.
    threshold : float, optional
        Probability threshold for atoms (default: the config's, else 0.5).
    reference_frames : int
        Frames whose indicators and scores are the reference for drift.
    predict_options : dict, optional
        Extra keyword arguments for :meth:`Ensemble.predict` (``batched``, ``amp``, ``tile``...).
    score_size : int, optional
        Score members on a centred crop of at most this many working-scale
        pixels per side (scoring costs time in proportion to the pixels and atoms;
        on a GPU it is most of the latency).  None: the whole frame.
    finish : bool, optional
        Finish the atoms as ``elit run`` does, with the config's ``locate``
        settings and classifier: border fit, vacuum filter and classes on the
        raw frame (:func:`elit.pipeline.finish_atoms`); the Gaussian fit on the
        raw frame only when it gives the positions (``locate.positions:
        refined``).  Default: when a full pipeline config is given.
    """

    def __init__(
        self,
        ensemble,
        config=None,
        selector=None,
        k: int | None = None,
        min_score: float = 0.5,
        tolerance: float = 0.1,
        max_drop: float | None = 0.2,
        device: str = "cpu",
        input_pixel_size: float | None = None,
        threshold: float | None = None,
        reference_frames: int = 3,
        predict_options: dict | None = None,
        score_size: int | None = None,
        finish: bool | None = None,
    ) -> None:
        from elit.config import PipelineConfig, ScaleConfig
        from elit.devices import resolve_device

        if len(ensemble) == 0:
            raise ConfigError("the ensemble has no members")
        if k is not None and int(k) < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if not 0.0 <= float(min_score) <= 1.0:
            raise ConfigError(f"min_score must lie in [0, 1], got {min_score}")
        if float(tolerance) < 0:
            raise ConfigError(f"tolerance must be >= 0, got {tolerance}")
        if max_drop is not None and float(max_drop) < 0:
            raise ConfigError(f"max_drop must be >= 0 or None, got {max_drop}")
        if int(reference_frames) < 1:
            raise ConfigError(f"reference_frames must be at least 1, got {reference_frames}")
        if score_size is not None and int(score_size) < 16:
            raise ConfigError(f"score_size must be at least 16 pixels, got {score_size}")
        if input_pixel_size is not None and not float(input_pixel_size) > 0:
            raise ConfigError(f"input_pixel_size must be positive, got {input_pixel_size}")

        if isinstance(config, dict):
            config = PipelineConfig.model_validate(config)
        pipeline_config = config if isinstance(config, PipelineConfig) else None
        if isinstance(config, PipelineConfig):
            scale = config.scale
        elif isinstance(config, ScaleConfig):
            scale = config
        elif config is None:
            scale = ScaleConfig()
        else:
            raise ConfigError(f"config must be a PipelineConfig, ScaleConfig, dict or None, got {type(config).__name__}")
        # the ensemble says which scale it was trained at; frames are brought there
        self.scale = scale.model_copy(update={"pixel_size": float(ensemble.pixel_size), "input_pixel_size": None})
        self.ensemble = ensemble
        self.config = pipeline_config
        self.selector = selector if selector is not None else _default_selector(pipeline_config)
        self.k = None if k is None else int(k)
        self.min_score = float(min_score)
        self.tolerance = float(tolerance)
        self.max_drop = None if max_drop is None else float(max_drop)
        self.device = resolve_device(device)
        if threshold is None:
            threshold = pipeline_config.iterations.threshold if pipeline_config is not None else 0.5
        self.threshold = float(threshold)
        self.reference_frames = int(reference_frames)
        self.predict_options = dict(predict_options or {})
        self.score_size = None if score_size is None else int(score_size)
        self.fixed_pixel_size = float(input_pixel_size) if input_pixel_size is not None else scale.input_pixel_size
        self._spectrum = _Spectrum(self.scale.pixel_size)
        if finish is None:
            finish = pipeline_config is not None
        if finish and pipeline_config is None:
            raise ConfigError("finish=True needs the run's full config (its locate settings and classifier)")
        self.locate = None
        if finish:  # the raw-frame Gaussian fit (about 1 s per 384^2 frame on a CPU) only when it gives x, y
            locate = pipeline_config.locate
            self.locate = locate if locate.positions == "refined" else locate.model_copy(update={"refine": False})
        self.classifier = None
        if finish:
            from elit.pipeline import finishing_classifier

            self.classifier = finishing_classifier(pipeline_config)
        self.reset()

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget the frames seen (frame numbers, pixel-size estimate and drift reference)."""
        self.frames_seen_ = 0
        self.input_pixel_size_: float | None = self.fixed_pixel_size
        self._ref_spectra: list[np.ndarray] = []
        self._ref_best: list[float] = []

    @property
    def n_members(self) -> int:
        """Members in the ensemble."""
        return len(self.ensemble)

    def settings(self) -> dict[str, Any]:
        """JSON-able settings, for provenance."""
        return {
            "k": self.k,
            "min_score": self.min_score,
            "tolerance": self.tolerance,
            "max_drop": self.max_drop,
            "threshold": self.threshold,
            "reference_frames": self.reference_frames,
            "score_size": self.score_size,
            "device": str(self.device),
            "working_pixel_size": self.scale.pixel_size,
            "input_pixel_size": self.fixed_pixel_size,
            "selector": {"name": getattr(self.selector, "name", type(self.selector).__name__),
                         "params": self.selector.get_params() if hasattr(self.selector, "get_params") else {}},
            "predict_options": {k: v for k, v in self.predict_options.items() if isinstance(v, (bool, int, float, str, type(None)))},
        }

    # ---------------------------------------------------------------- processing
    def process(self, frame, source: str = "", pixel_size: float | None = None) -> LiveResult:
        """Analyse one raw frame.

        Parameters
        ----------
        frame : array (H, W) or (1, H, W)
            The frame as acquired; any real dtype.
        source : str
            Where it came from (kept in the result and the log).
        pixel_size : float, optional
            Angstrom per pixel from the frame's metadata; used when the
            analyzer has no fixed input pixel size.

        Returns
        -------
        LiveResult
        """
        from elit.atoms import locate_atoms
        from elit.pipeline import prepare_frames

        t0 = time.perf_counter()
        raw = np.asarray(frame)
        if raw.ndim == 3 and raw.shape[0] == 1:
            raw = raw[0]
        if raw.ndim != 2:
            raise InputError(f"{source or 'frame'}: a live frame must be one 2-D image, got shape {raw.shape}")
        if raw.size == 0 or not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
            raise InputError(f"{source or 'frame'}: a frame must hold real numbers, got dtype {raw.dtype} and shape {raw.shape}")
        if not np.isfinite(raw).all():
            raise InputError(f"{source or 'frame'}: the frame holds NaN or infinite values")
        px = self.fixed_pixel_size or (float(pixel_size) if pixel_size else None) or self.input_pixel_size_
        working, px, factor = prepare_frames(raw[None], px, self.scale)
        if self.input_pixel_size_ is None:
            self.input_pixel_size_ = px  # estimated once, then kept for the whole session
        t1 = time.perf_counter()

        preds = self.ensemble.predict(working, device=self.device, **self.predict_options)  # (M, 1, K, H, W)
        t2 = time.perf_counter()
        selection = self.selector.select(*self._scoring_region(preds, working), self.scale.pixel_size)
        scores = np.asarray(selection.scores, dtype=np.float64)
        members, flags, reasons, best = self._choose(scores)
        t3 = time.perf_counter()

        mean, std = self.ensemble.mean_std(preds, members)
        working_atoms = locate_atoms(
            mean,
            threshold=self.threshold,
            uncertainty=std,
            member_probabilities=preds[members],
            class_names=self.ensemble.class_names,
            border_fit=self.locate is not None and self.locate.border_fit,
        )
        if self.locate is not None:
            from elit.pipeline import finish_atoms

            working_atoms, _ = finish_atoms(working_atoms, raw[None], px, self.scale.pixel_size, self.locate, self.classifier)
        working_atoms.frame = working_atoms.frame + self.frames_seen_
        atoms = working_atoms.scaled(1.0 / factor)
        t4 = time.perf_counter()

        drift = self._drift(raw, working[0], best, working_atoms)
        t5 = time.perf_counter()
        result = LiveResult(
            index=self.frames_seen_,
            source=str(source),
            atoms=atoms,
            mean=mean[0],
            std=std[0],
            members=members,
            scores=scores,
            criteria={c: np.asarray(v, dtype=np.float64) for c, v in selection.criteria.items()},
            needs_retraining=bool(flags),
            reasons=reasons,
            flags=flags,
            drift=drift,
            latency=time.perf_counter() - t0,
            timings={"prepare": t1 - t0, "predict": t2 - t1, "select": t3 - t2, "locate": t4 - t3, "drift": t5 - t4},
            input_pixel_size=float(px),
            working_pixel_size=self.scale.pixel_size,
            input_shape=tuple(int(s) for s in raw.shape),
        )
        self.frames_seen_ += 1
        return result

    def _scoring_region(self, preds: np.ndarray, working: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.score_size is None:
            return preds, working
        h, w = working.shape[-2:]
        r0, c0 = max(0, (h - self.score_size) // 2), max(0, (w - self.score_size) // 2)
        rows, cols = slice(r0, r0 + self.score_size), slice(c0, c0 + self.score_size)
        return preds[..., rows, cols], working[..., rows, cols]

    def _choose(self, scores: np.ndarray) -> tuple[list[int], list[str], list[str], float]:
        order = [int(m) for m in np.argsort(-scores, kind="stable")]
        best = float(scores[order[0]])
        usable = [m for m in order if scores[m] >= self.min_score and scores[m] >= best - self.tolerance - 1e-12]
        if self.k is not None:
            usable = usable[: self.k]
        reasons: list[str] = []
        flags: list[str] = []
        if usable:
            members = usable
            reasons.append(
                f"members {members} used: score >= {self.min_score:.2f} and within {self.tolerance:.2f} of the best ({best:.3f})"
            )
        else:
            members = order[:1]
            flags.append(f"no member scores >= {self.min_score:.2f} (best {best:.3f})")
            reasons.append(f"no member scores >= {self.min_score:.2f}; the best, member {order[0]} ({best:.3f}), used")
        dropped = [m for m in order if m not in members]
        if dropped:
            reasons.append("dropped: " + ", ".join(f"{m} ({scores[m]:.3f})" for m in dropped))
        ref = self._reference_best(best)
        if self.max_drop is not None and best < ref - self.max_drop:
            flags.append(f"best score {best:.3f} is {ref - best:.3f} below the first frames' {ref:.3f}")
        return members, flags, reasons, best

    def _reference_best(self, best: float) -> float:
        if len(self._ref_best) < self.reference_frames:
            self._ref_best.append(best)
        return float(np.mean(self._ref_best))

    def _drift(self, raw: np.ndarray, working: np.ndarray, best: float, atoms: AtomTable) -> dict[str, float]:
        values, log_spectrum = _image_indicators(raw, working, self._spectrum)
        if len(self._ref_spectra) < self.reference_frames:
            self._ref_spectra.append(log_spectrum)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # empty frequency bins are NaN
            ref = np.nanmean(np.stack(self._ref_spectra), axis=0)
            diff = np.abs(log_spectrum - ref)
            values["spectral_change"] = float(np.nanmean(diff)) if np.isfinite(diff).any() else float("nan")
        values["mean_uncertainty"] = float(atoms.uncertainty.mean()) if len(atoms) else float("nan")
        values["best_score"] = best
        values["score_drop"] = float(np.mean(self._ref_best)) - best
        return {name: values[name] for name in DRIFT_INDICATORS}


def _default_selector(config):
    from elit.plugins import default_registry

    cls = default_registry().get_stage("selector", "auto")
    if config is not None and config.selector.name == "auto":
        return cls(config.selector.params)
    return cls()


# ============================================================================ live file


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _encode(text: str, size: int) -> bytes:
    raw = str(text).encode("utf-8", "replace")
    return raw if len(raw) <= size else raw[-size:]


class LiveWriter:
    """Appends :class:`LiveResult` rows to an HDF5 file that readers can open while it grows.

    The file is created at the first :meth:`append` (the map size is known
    then), every dataset is made there, and the file switches to SWMR mode
    (``libver="latest"``): from then on readers opened with
    ``h5py.File(path, "r", libver="latest", swmr=True)`` (or :func:`read_live`)
    see each frame once ``/n_frames`` counts it.  Nothing is pickled.

    Parameters
    ----------
    path : str or Path
        The live file.
    provenance : dict, optional
        JSON-able facts written as root attributes (model file, checksum,
        iteration, config, settings...).
    overwrite : bool
        Replace an existing file.
    """

    def __init__(self, path, provenance: dict | None = None, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not a live file")
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path} already exists; choose another --out or allow overwriting")
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot create {self.path}: folder {self.path.parent} does not exist")
        self.provenance = dict(provenance or {})
        self.overwrite = overwrite
        self._file = None
        self._shape: tuple[int, ...] | None = None
        self._criteria: list[str] = []
        self.n_frames = 0
        self.n_atoms = 0

    # ---------------------------------------------------------------- creation
    def _create(self, r: LiveResult) -> None:
        import h5py

        from elit import __version__

        k, h, w = r.mean.shape
        m = r.n_members
        self._shape = (k, h, w, m)
        self._criteria = sorted(r.criteria)
        if self.path.exists():
            self.path.unlink()
        f = h5py.File(self.path, "w", libver="latest")
        try:
            attrs = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "elit_version": __version__,
                "started": _now_iso(),
                "class_names": json.dumps(list(r.atoms.class_names)),
                "n_members": m,
                "working_pixel_size": float(r.working_pixel_size),
                "input_pixel_size": float(r.input_pixel_size),
                "input_shape": json.dumps(list(r.input_shape)),
                "drift_indicators": json.dumps(list(DRIFT_INDICATORS)),
                "criteria": json.dumps(self._criteria),
                "states": json.dumps({str(k_): v for k_, v in STATES.items()}),
            }
            for key, value in self.provenance.items():
                attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, sort_keys=True, default=str)
            for key, value in attrs.items():
                f.attrs[key] = value

            def grow(name, shape_tail, dtype, chunk_rows=1, **attrs_):
                ds = f.create_dataset(name, shape=(0,) + shape_tail, maxshape=(None,) + shape_tail, dtype=dtype,
                                      chunks=(chunk_rows,) + shape_tail)
                for a, v in attrs_.items():
                    ds.attrs[a] = v
                return ds

            f.create_dataset("n_frames", data=np.zeros(1, np.int64))
            f["n_frames"].attrs["description"] = "frames complete in this file; read only rows below this count"
            f.create_dataset("state", data=np.zeros(1, np.int8))
            f["state"].attrs["description"] = "0 running, 1 finished, 2 interrupted, 3 failed"
            px = float(r.working_pixel_size)
            grow("maps/mean", (k, h, w), np.float32, dims=json.dumps(["frame", "class", "y", "x"]), quantity="probability",
                 pixel_size=px, description="mean probability over the members used, per frame (working scale)")
            grow("maps/uncertainty", (k, h, w), np.float32, dims=json.dumps(["frame", "class", "y", "x"]),
                 quantity="probability std", pixel_size=px, description="standard deviation over the members used")
            grow("frames/source", (), f"S{SOURCE_BYTES}", 64, description="file (and frame within it) of each row, UTF-8")
            grow("frames/sha256", (), "S64", 64, description="sha256 of the source file")
            grow("frames/time", (), np.float64, 64, units="s since 1970-01-01 UTC", description="when the result was written")
            grow("frames/latency", (), np.float64, 64, units="s", description="from receiving the frame to its result")
            grow("frames/n_atoms", (), np.int64, 64, description="atoms found in the frame")
            grow("frames/atom_start", (), np.int64, 64, description="row of the frame's first atom in /atoms")
            grow("frames/needs_retraining", (), np.uint8, 64, description="1: no member scored well enough")
            grow("frames/input_shape", (2,), np.int64, 64, description="rows, cols of the input frame")
            grow("frames/members_used", (m,), np.uint8, 64, description="1 where the member was used for the frame")
            grow("frames/scores", (m,), np.float64, 64, description="every member's selector score on the frame")
            for c in self._criteria:
                grow(f"frames/criteria/{c}", (m,), np.float64, 64, description=f"selector criterion {c!r} per member")
            for name in DRIFT_INDICATORS:
                grow(f"frames/drift/{name}", (), np.float64, 64, description=f"drift indicator {name!r}")
            for col, dtype in zip(ATOM_COLUMNS, (np.int64, np.float64, np.float64, np.int64, np.float64, np.float64)):
                grow(f"atoms/{col}", (), dtype, 4096)
            f["atoms"].attrs["description"] = "atoms of every frame, positions in the input frame's pixels (row, col)"
            f["atoms"].attrs["class_names"] = json.dumps(list(r.atoms.class_names))
            f.swmr_mode = True
        except BaseException:
            f.close()
            raise
        self._file = f

    # ---------------------------------------------------------------- appending
    def append(self, r: LiveResult, sha256: str = "") -> None:
        """Append one frame's result and make it visible to readers."""
        if self._file is None:
            if self.n_frames:
                raise StoreError(f"{self.path} is closed")
            self._create(r)
        k, h, w, m = self._shape
        if r.mean.shape != (k, h, w) or r.n_members != m:
            raise InputError(
                f"{r.source or 'frame'}: maps of shape {r.mean.shape} with {r.n_members} members do not fit this live file "
                f"({(k, h, w)}, {m} members); frames of one session must share their size: start a new live file"
            )
        if sorted(r.criteria) != self._criteria:
            raise InputError(f"{r.source or 'frame'}: selector criteria changed within one live file")
        f = self._file
        n = self.n_frames
        with _defer_sigint():
            used = np.zeros(m, np.uint8)
            used[r.members] = 1
            rows = {
                "maps/mean": r.mean.astype(np.float32),
                "maps/uncertainty": r.std.astype(np.float32),
                "frames/source": np.bytes_(_encode(r.source, SOURCE_BYTES)),
                "frames/sha256": np.bytes_(_encode(sha256, 64)),
                "frames/time": time.time(),
                "frames/latency": r.latency,
                "frames/n_atoms": len(r.atoms),
                "frames/atom_start": self.n_atoms,
                "frames/needs_retraining": int(r.needs_retraining),
                "frames/input_shape": np.asarray(r.input_shape, np.int64),
                "frames/members_used": used,
                "frames/scores": r.scores,
            }
            for c in self._criteria:
                rows[f"frames/criteria/{c}"] = r.criteria[c]
            for name in DRIFT_INDICATORS:
                rows[f"frames/drift/{name}"] = r.drift.get(name, float("nan"))
            for name, value in rows.items():
                ds = f[name]
                ds.resize(n + 1, axis=0)
                ds[n] = value
            a = len(r.atoms)
            if a:
                cols = r.atoms.to_columns()
                for col in ATOM_COLUMNS:
                    ds = f[f"atoms/{col}"]
                    ds.resize(self.n_atoms + a, axis=0)
                    ds[self.n_atoms:] = cols[col]
            f.flush()
            f["n_frames"][0] = n + 1
            f.flush()
            self.n_frames = n + 1
            self.n_atoms += a

    def close(self, state: int = STATE_FINISHED) -> None:
        """Mark the file finished (or interrupted/failed) and close it."""
        if self._file is None:
            return
        try:
            self._file["state"][0] = int(state)
            self._file.flush()
        finally:
            self._file.close()
            self._file = None

    @property
    def created(self) -> bool:
        """Whether the file exists yet (it is made at the first frame)."""
        return self._file is not None or self.n_frames > 0

    def __enter__(self) -> LiveWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close(STATE_FINISHED)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close(STATE_INTERRUPTED)
        else:
            self.close(STATE_FAILED)
        return False


@contextlib.contextmanager
def _defer_sigint():
    """Hold back Ctrl-C (in the main thread) until the block is done, so a frame is written whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []

    def handler(signum, frame):
        caught.append((signum, frame))

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # not allowed here (e.g. embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


@dataclass
class LiveData:
    """The content of a live file up to its last complete frame (see :func:`read_live`).

    Attributes
    ----------
    n_frames : int
    state : str
        ``running``, ``finished``, ``interrupted`` or ``failed``.
    attrs : dict
        Provenance (JSON attributes decoded).
    frames : dict of str to ndarray
        Per-frame columns: ``source`` (str), ``sha256``, ``time``, ``latency``,
        ``n_atoms``, ``atom_start``, ``needs_retraining`` (bool),
        ``input_shape``, ``members_used`` (bool, frames x members), ``scores``.
    criteria, drift : dict of str to ndarray
        Per-frame selector criteria (frames x members) and drift indicators.
    atoms : AtomTable
        All atoms of the complete frames (input pixels).
    mean, uncertainty : ndarray (frames, K, H, W) or None
        The maps, when read with ``maps=True``.
    """

    n_frames: int
    state: str
    attrs: dict
    frames: dict[str, np.ndarray]
    criteria: dict[str, np.ndarray]
    drift: dict[str, np.ndarray]
    atoms: AtomTable
    mean: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


def read_live(path, maps: bool = False) -> LiveData:
    """Read a live file, also while :class:`LiveWriter` is still appending to it.

    Only frames counted by ``/n_frames`` are returned, so a reader never sees
    half a frame.

    Parameters
    ----------
    path : str or Path
    maps : bool
        Also read the mean and uncertainty maps (may be large).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such live file (it is created when the first frame is done)")
    try:
        f = h5py.File(path, "r", libver="latest", swmr=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the live file ({exc})") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{path} is not an elit live file (format {f.attrs.get('format')!r})")
        if int(f.attrs.get("format_version", 0)) > FORMAT_VERSION:
            raise StoreError(f"{path} was written by a newer elit (live format {f.attrs['format_version']}); upgrade elit")
        for obj in (f["n_frames"], f["state"]):
            obj.refresh()
        n = int(f["n_frames"][0])
        state = STATES.get(int(f["state"][0]), "unknown")
        attrs = {}
        for key, value in f.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, str) and value[:1] in "[{":
                with contextlib.suppress(ValueError):
                    value = json.loads(value)
            attrs[key] = value.item() if isinstance(value, np.generic) else value

        def rows(name, count=n):
            ds = f[name]
            ds.refresh()
            return ds[:count]

        frames = {name: rows(f"frames/{name}") for name in f["frames"] if isinstance(f[f"frames/{name}"], h5py.Dataset)}
        frames["source"] = np.array([s.decode("utf-8", "replace") for s in frames["source"]], dtype=object)
        frames["sha256"] = np.array([s.decode() for s in frames["sha256"]], dtype=object)
        frames["needs_retraining"] = frames["needs_retraining"].astype(bool)
        frames["members_used"] = frames["members_used"].astype(bool)
        criteria = {c: rows(f"frames/criteria/{c}") for c in f["frames/criteria"]}
        drift = {d: rows(f"frames/drift/{d}") for d in f["frames/drift"]}
        n_atoms = int(frames["atom_start"][-1] + frames["n_atoms"][-1]) if n else 0
        cols = {c: rows(f"atoms/{c}", n_atoms) for c in ATOM_COLUMNS}
        names = attrs.get("class_names") or ["atom"]
        atoms = AtomTable(**cols, class_names=tuple(names))
        mean = rows("maps/mean") if maps else None
        unc = rows("maps/uncertainty") if maps else None
    return LiveData(n, state, attrs, frames, criteria, drift, atoms, mean, unc)


# ============================================================================ watching a folder


def model_provenance(result_path, iteration: int, config=None) -> dict[str, Any]:
    """Provenance attributes naming the run file an ensemble came from."""
    p = Path(result_path)
    prov: dict[str, Any] = {
        "model_file": str(p.resolve()),
        "model_sha256": _sha256_file(p),
        "model_iteration": int(iteration),
    }
    if config is not None:
        prov["config"] = config.to_json() if hasattr(config, "to_json") else json.dumps(config, sort_keys=True)
        if hasattr(config, "sha256"):
            prov["config_sha256"] = config.sha256()
    return prov


class _FolderScanner:
    """Finds files matching a pattern that are completely written, each once, in (mtime, name) order."""

    def __init__(self, folder: Path, pattern: str, exclude: Sequence[Path] = (), skip_existing: bool = False,
                 give_up: float = 30.0) -> None:
        self.folder = folder
        self.pattern = pattern
        self.exclude = {p.resolve() for p in exclude}
        self.seen: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) at the last poll
        self.done: set[str] = set()
        self.first_failure: dict[str, float] = {}
        self.give_up = give_up
        if skip_existing:
            for name, _sig, _ in self._listing():
                self.done.add(name)

    def _listing(self):
        out = []
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            raise InputError(f"{self.folder}: the watched folder no longer exists") from None
        for e in entries:
            if not fnmatch.fnmatchcase(e.name.lower(), self.pattern.lower()) or e.name.startswith("."):
                continue
            try:
                if not e.is_file():
                    continue
                st = e.stat()
            except FileNotFoundError:
                continue
            p = Path(e.path)
            if p.resolve() in self.exclude:
                continue
            out.append((e.name, (st.st_size, st.st_mtime_ns), st.st_mtime_ns))
        return out

    def ready(self) -> list[Path]:
        """Files whose size and mtime did not change since the last poll and that were not done yet."""
        now = {}
        ready = []
        for name, sig, mtime in self._listing():
            if name in self.done:
                continue
            now[name] = sig
            if sig[0] > 0 and self.seen.get(name) == sig:
                ready.append((mtime, name))
        self.seen = now
        return [self.folder / name for _, name in sorted(ready)]

    def unchanged(self, path: Path) -> bool:
        """True when the file's size and mtime are still those it was found ready with."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        return self.seen.get(path.name) == (st.st_size, st.st_mtime_ns)

    def failed(self, path: Path) -> bool:
        """Record a failed read; True when the file has failed for ``give_up`` seconds and should be skipped."""
        t = self.first_failure.setdefault(path.name, time.monotonic())
        return time.monotonic() - t >= self.give_up

    def mark_done(self, path: Path) -> None:
        self.done.add(path.name)
        self.first_failure.pop(path.name, None)


def watch_folder(
    analyzer: LiveAnalyzer,
    folder,
    pattern: str = "*.tif",
    out=None,
    *,
    provenance: dict | None = None,
    poll: float = 0.5,
    max_frames: int | None = None,
    timeout: float | None = None,
    stop_when_idle: float | None = None,
    log: Callable[[str], Any] | None = print,
    overwrite: bool = False,
    skip_existing: bool = False,
    give_up: float = 30.0,
    stop_event: threading.Event | None = None,
    on_result: Callable[[LiveResult], Any] | None = None,
    figure=None,
    signal: str | None = None,
) -> int:
    """Watch ``folder`` with a ready :class:`LiveAnalyzer`; see :func:`watch` for the parameters.

    ``stop_event`` (set it from another thread) and ``on_result`` (called
    with each :class:`LiveResult`) are for programs that embed the watcher;
    ``give_up`` is how long (seconds) a file that stays unreadable is retried.
    """
    from elit.readers import read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder to watch")
    if not poll > 0:
        raise ConfigError(f"poll must be positive, got {poll}")
    if max_frames is not None and int(max_frames) < 1:
        raise ConfigError(f"max_frames must be at least 1, got {max_frames}")
    say = log or (lambda _line: None)
    out = Path(out) if out is not None else folder / time.strftime("elit-live-%Y%m%d-%H%M%S.h5")
    prov = dict(provenance or {})
    prov.update({"watch": {"folder": str(folder.resolve()), "pattern": pattern, "poll": poll},
                 "live_settings": analyzer.settings(), "ensemble": _ensemble_summary(analyzer.ensemble)})
    writer = LiveWriter(out, prov, overwrite=overwrite)
    scanner = _FolderScanner(folder, pattern, exclude=[out], skip_existing=skip_existing, give_up=give_up)
    say(f"watching {folder} for {pattern}; results go to {out} (created with the first frame); Ctrl-C stops")
    start = last_new = time.monotonic()
    processed = 0
    state = STATE_FINISHED
    why = "stopped"
    try:
        while True:
            files = scanner.ready()
            for path in files:
                try:
                    image = read_image(path, signal=signal)
                except InputError as err:
                    first = path.name not in scanner.first_failure
                    if scanner.failed(path):
                        say(f"skipping {path.name}: {err}")
                        scanner.mark_done(path)
                    elif first:
                        say(f"waiting for {path.name}: not readable yet, retrying for up to {give_up:g} s ({err})")
                    continue
                if not scanner.unchanged(path):
                    continue  # written to while we read it: read it again once it is stable
                scanner.mark_done(path)
                last_new = time.monotonic()
                n_in_file = len(image.frames)
                for i in range(n_in_file):
                    source = path.name if n_in_file == 1 else f"{path.name}[{i}]"
                    try:
                        result = analyzer.process(image.frames[i], source=source, pixel_size=image.pixel_size)
                        writer.append(result, sha256=image.sha256)
                    except InputError as err:
                        say(f"skipping {source}: {err}")
                        continue
                    processed += 1
                    say(result.summary())
                    if on_result is not None:
                        on_result(result)
                    if max_frames is not None and processed >= max_frames:
                        break
                if max_frames is not None and processed >= max_frames:
                    why = f"{processed} frames done"
                    break
            else:
                now = time.monotonic()
                if stop_event is not None and stop_event.is_set():
                    why = "asked to stop"
                elif timeout is not None and now - start >= timeout:
                    why = f"timeout after {timeout:g} s"
                elif stop_when_idle is not None and now - last_new >= stop_when_idle:
                    why = f"no new frame for {stop_when_idle:g} s"
                else:
                    time.sleep(poll)
                    continue
            break
    except KeyboardInterrupt:
        state = STATE_INTERRUPTED
        why = "interrupted"
    except BaseException:
        writer.close(STATE_FAILED)
        raise
    writer.close(state)
    say(f"{why}: {processed} frame(s) analysed" + (f", results in {out}" if writer.created else ", no live file written"))
    if figure is not None and writer.created:
        say(f"wrote drift report {drift_figure(out, figure)}")
    return processed


def _ensemble_summary(ensemble) -> dict[str, Any]:
    return {
        "architecture": getattr(ensemble, "architecture", ""),
        "architecture_params": getattr(ensemble, "architecture_params", {}),
        "n_members": len(ensemble),
        "class_names": list(getattr(ensemble, "class_names", ())),
        "pixel_size": float(getattr(ensemble, "pixel_size", float("nan"))),
        "activation": getattr(ensemble, "activation", ""),
        "member_seeds": [int(getattr(m, "seed", -1)) for m in getattr(ensemble, "members", [])],
    }


def watch(
    result_path,
    folder,
    pattern: str = "*.tif",
    out=None,
    poll: float = 0.5,
    max_frames: int | None = None,
    timeout: float | None = None,
    stop_when_idle: float | None = None,
    log: Callable[[str], Any] | None = print,
    *,
    iteration: int | str = "last",
    device: str | None = None,
    pixel_size: float | None = None,
    k: int | None = None,
    min_score: float | None = None,
    tolerance: float | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
    figure=None,
    signal: str | None = None,
    **analyzer_options,
) -> int:
    """Analyse image files as they appear in a folder; return the number of frames analysed.

    Each completely written file matching ``pattern`` (its size and
    modification time unchanged between two polls, and readable) is processed
    exactly once, oldest first (then by name); every frame of a stack is a
    frame.  Each frame gets one log line (atoms found, members in use, drift
    indicators, latency) and one row in the live HDF5 file ``out``.

    Parameters
    ----------
    result_path : str or Path
        A finished run file; its ensemble (of ``iteration``) does the work.
    folder : str or Path
        The folder the microscope writes into.
    pattern : str
        Shell pattern of the files to analyse (``*.tif``, ``frame_*.npy``...), matched
        regardless of case (``*.tif`` also takes ``IMG.TIF``).
    out : str or Path, optional
        The live file; default ``FOLDER/elit-live-YYYYmmdd-HHMMSS.h5``.
    poll : float
        Seconds between looks at the folder.
    max_frames : int, optional
        Stop after this many frames.
    timeout : float, optional
        Stop after this many seconds.
    stop_when_idle : float, optional
        Stop when no new file came for this many seconds.
    log : callable or None
        Receives each log line (default ``print``).
    iteration : int or "last"
        The run's iteration whose ensemble is used.
    device : str, optional
        ``cpu``, ``cuda`` or ``auto`` (default: the run's config).
    pixel_size : float, optional
        Input pixel size in Angstrom/px (default: the file's metadata, else estimated once).
    k, min_score, tolerance
        Member choice per frame (see :class:`LiveAnalyzer`).
    overwrite : bool
        Replace ``out`` if it exists.
    skip_existing : bool
        Ignore files already in the folder when watching starts.
    figure : str or Path, optional
        Draw the drift report (:func:`drift_figure`) into this PNG at the end.
    signal : str, optional
        Signal to read from files holding several (name or index; default: the HAADF/ADF image).
    **analyzer_options
        More :class:`LiveAnalyzer` settings (``max_drop``, ``reference_frames``,
        ``predict_options``, ``threshold``, ``score_size``).

    Returns
    -------
    int
        Frames analysed.  Ctrl-C stops cleanly: the live file is closed and
        marked ``interrupted``, and stays readable.
    """
    from elit.results import load_ensemble

    ensemble, config, it = load_ensemble(result_path, iteration)
    opts = dict(analyzer_options)
    for name, value in (("k", k), ("min_score", min_score), ("tolerance", tolerance)):
        if value is not None:
            opts[name] = value
    analyzer = LiveAnalyzer(ensemble, config, device=device or config.device, input_pixel_size=pixel_size, **opts)
    provenance = model_provenance(result_path, it, config)
    return watch_folder(
        analyzer, folder, pattern, out, provenance=provenance, poll=poll, max_frames=max_frames, timeout=timeout,
        stop_when_idle=stop_when_idle, log=log, overwrite=overwrite, skip_existing=skip_existing, figure=figure,
        signal=signal,
    )


# ============================================================================ figure


def drift_figure(live_h5_path, out_png, dpi: int = 110) -> str:
    """Draw a live file's drift report: scores, members used, atoms found, uncertainty, drift indicators.

    Parameters
    ----------
    live_h5_path : str or Path
        A live file (it may still be growing).
    out_png : str or Path
        The PNG to write.

    Returns
    -------
    str
        The PNG path.
    """
    from elit.figures import file_pyplot

    data = read_live(live_h5_path)
    if data.n_frames == 0:
        raise StoreError(f"{live_h5_path} holds no complete frame yet")
    plt = file_pyplot()
    n = data.n_frames
    x = np.arange(n)
    scores = data.frames["scores"]
    used = data.frames["members_used"]
    m = scores.shape[1]
    flagged = data.frames["needs_retraining"]
    settings = data.attrs.get("live_settings") or {}
    fig, axes = plt.subplots(5, 1, figsize=(9, 11), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.6, 1.6, 2.4]})

    def shade(ax):
        for f in np.flatnonzero(flagged):
            ax.axvspan(f - 0.5, f + 0.5, color="tab:red", alpha=0.12, lw=0)

    ax = axes[0]
    cmap = plt.get_cmap("tab10" if m <= 10 else "tab20")
    for j in range(m):
        ax.plot(x, scores[:, j], "-", color=cmap(j % cmap.N), lw=1.2, label=f"member {j}")
        ax.plot(x[used[:, j]], scores[used[:, j], j], "o", color=cmap(j % cmap.N), ms=4)
    if "min_score" in settings:
        ax.axhline(settings["min_score"], color="k", ls="--", lw=0.8, label="min_score")
    shade(ax)
    ax.set_ylabel("member score")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=min(m + 1, 5), loc="lower left")
    ax.set_title(f"{Path(live_h5_path).name}: {n} frames ({data.state}); dots = used, red = retraining flagged", fontsize=10)

    ax = axes[1]
    ax.imshow(used.T, aspect="auto", cmap="Greens", vmin=0, vmax=1.3, interpolation="nearest",
              extent=(-0.5, n - 0.5, m - 0.5, -0.5))
    ax.set_ylabel("members used\n(green)")
    ax.set_yticks(range(m))
    ax.set_yticklabels([f"member {j}" for j in range(m)] if m <= 12 else [str(j) for j in range(m)], fontsize=7)

    ax = axes[2]
    ax.bar(x, data.frames["n_atoms"], color="tab:blue", width=0.8)
    shade(ax)
    ax.set_ylabel("atoms found")

    ax = axes[3]
    ax.plot(x, data.drift["mean_uncertainty"], "o-", color="tab:purple", ms=3)
    shade(ax)
    ax.set_ylabel("mean atom\nuncertainty")
    ax.text(0.99, 0.9, "0 while one member is used", transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.4")

    ax = axes[4]
    top = 1.0
    for name, colour in (("mean_intensity", "tab:gray"), ("noise", "tab:orange"), ("sharpness", "tab:green"),
                         ("contrast", "tab:brown")):
        v = data.drift[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.nanmean(v[: max(1, min(3, n))])
        if np.isfinite(ref) and ref != 0:
            ax.plot(x, v / ref, "-", color=colour, lw=1.2, label=name)
            if np.isfinite(v / ref).any():
                top = max(top, float(np.nanmax(v / ref)))
    ax.set_ylim(0, 1.45 * top)  # room for the legend
    shade(ax)
    ax.set_ylabel("image indicators\n(/ first 3 frames)")
    ax.set_xlabel("frame")
    twin = ax.twinx()
    twin.plot(x, data.drift["spectral_change"], ":", color="k", lw=1.4, label="spectral change (decades, right)")
    twin.set_ylabel("spectral change")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    out_png = str(out_png)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return out_png
