"""Per-frame analysis with member re-selection: :class:`LiveAnalyzer` and its :class:`LiveResult`."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elit.data import AtomTable
from elit.errors import ConfigError, InputError
from elit.live.indicators import DRIFT_INDICATORS, _image_indicators, _Spectrum


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
            **(self.locate.blob_options() if self.locate is not None else {}),
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
