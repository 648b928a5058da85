"""The Pipeline: runs the ELIT loop's stages in order and is the only code that talks to the store.

Iteration 0 trains an ensemble on simulated data and applies every member to
the frames; a Selector chooses the artifact-free members.  Each further
iteration refines a training set from the experiment, retrains (warm-started
from the selected members by default), predicts and selects again, until the
detection rate stops improving.  An optional multi-class iteration classifies
the atoms and trains a multi-class ensemble.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from elit.config import STAGE_FIELDS, PipelineConfig, build_stages, load_config
from elit.data import AtomTable, Selection, TrainingSet
from elit.errors import ConfigError, InputError
from elit.stages import STAGE_KINDS, Stage

log = logging.getLogger("elit")

PREDICT = "predict"
"""Kind of the pipeline's own step that applies an ensemble and locates atoms."""
STEP_ORDER = STAGE_FIELDS + (PREDICT,)


def derive_seed(root: int, iteration: int, step: str, member: int | None = None) -> int:
    """Derive a reproducible 32-bit seed for one step (and member) from the root seed."""
    key = [int(iteration), STEP_ORDER.index(step)]
    if member is not None:
        key.append(int(member))
    return int(np.random.SeedSequence(entropy=int(root), spawn_key=tuple(key)).generate_state(1)[0])


@dataclass
class IterationSummary:
    """What one iteration produced, for tables and stopping decisions."""

    iteration: int
    kind: str
    n_atoms: int
    atoms_per_frame: list[int]
    detection_rate: float | None
    members: list[int]
    seconds: float
    accepted: bool = True
    note: str = ""  # said of the result iteration when another iteration found more atoms

    def as_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return dict(self.__dict__)


@dataclass
class RunResult:
    """The outcome of :meth:`Pipeline.run`."""

    path: Path | None
    atoms: AtomTable
    mean: np.ndarray
    std: np.ndarray
    ensemble: Any
    selection: Selection
    iterations: list[IterationSummary] = field(default_factory=list)
    input_pixel_size: float = 0.0
    working_pixel_size: float = 0.0


@dataclass
class _State:
    """Arrays carried from one step to the next."""

    ensemble: Any = None
    iteration: int = 0
    predictions: np.ndarray | None = None  # None once let go; :meth:`_Runner.maps` makes them again
    selection: Selection | None = None
    atoms: AtomTable | None = None
    paths: dict[str, str] = field(default_factory=dict)


class Pipeline:
    """Runs the configured stages; built from a config or composed in Python.

    Parameters
    ----------
    config : PipelineConfig or dict, optional
        The run's settings (defaults: the built-in graphene set-up).
    registry : Registry, optional
        Where stage names are looked up (default: installed plugins).
    **stages : Stage
        Stage instances replacing the configured ones, keyed by kind
        (``simulator=``, ``trainer=``, ...).
    """

    def __init__(self, config: PipelineConfig | dict | None = None, *, registry=None, **stages: Stage) -> None:
        from elit.plugins import default_registry

        if config is None or isinstance(config, dict):
            config = load_config(raw=config or {})
        self.registry = registry or default_registry()
        unknown = set(stages) - set(STAGE_FIELDS)
        if unknown:
            raise ConfigError(f"unknown stage kind(s) {sorted(unknown)}; kinds: {', '.join(STAGE_FIELDS)}")
        for kind, stage in stages.items():
            if stage is not None and not isinstance(stage, STAGE_KINDS[kind]):
                raise ConfigError(f"{kind}= needs a {STAGE_KINDS[kind].__name__}, got {type(stage).__name__}")
        # Record programmatic stages in the config so the stored config describes the run.
        updates = {}
        for kind, stage in stages.items():
            updates[kind] = None if stage is None else {"name": stage.name, "params": stage.get_params()}
        if updates:
            config = PipelineConfig.model_validate({**config.model_dump(mode="json"), **updates})
        self.config = config
        given = {k: v for k, v in stages.items() if v is not None}
        specs = {k: spec for k, spec in config.stage_specs().items() if k not in given}
        self.stages: dict[str, Stage] = {**build_stages(specs, self.registry), **given}

    @classmethod
    def from_config(cls, config: PipelineConfig | dict | str | Path, registry=None) -> Pipeline:
        """Build from a config object, a dict or a YAML path."""
        if isinstance(config, (str, Path)):
            config = load_config(config)
        return cls(config, registry=registry)

    # ------------------------------------------------------------------ provenance
    def _stage_info(self, kind: str, iteration: int, seed: int, used: list[str]) -> dict[str, Any]:
        if kind == PREDICT:
            return predict_step_info({"threshold": self.config.iterations.threshold}, used, seed)
        stage = self.stages[kind]
        entry = self.registry.stages.get((kind, stage.name))
        if entry is not None and entry.cls is type(stage):
            plugin, package, pversion = entry.plugin, entry.package, entry.package_version
        else:
            plugin, package, pversion = "python", type(stage).__module__.split(".")[0], "unknown"
        return {
            "name": stage.name,
            "plugin": plugin,
            "package": package,
            "plugin_version": pversion,
            "stage_version": str(stage.version),
            "config": stage.get_params(),
            "seed": seed,
            "used": used,
        }

    def environment(self, device: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """Versions of the software and the plugins, for the store."""
        import platform
        import sys

        import h5py
        import torch

        from elit import __version__

        env = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "elit": __version__,
            "numpy": np.__version__,
            "torch": torch.__version__,
            "h5py": h5py.__version__,
            "device": device,
        }
        try:
            from importlib.metadata import version

            env["sidpy"] = version("sidpy")
            env["pyNSID"] = version("pyNSID")
        except Exception:  # pragma: no cover - metadata missing
            pass
        return env, self.registry.rows()

    # ------------------------------------------------------------------ input
    def prepare(self, frames: np.ndarray, pixel_size: float | None) -> tuple[np.ndarray, float, float]:
        """Resample raw frames to the working scale and normalise them (see :func:`prepare_frames`)."""
        return prepare_frames(frames, pixel_size, self.config.scale)

    # ------------------------------------------------------------------ running
    def run(
        self,
        frames: np.ndarray | None = None,
        *,
        pixel_size: float | None = None,
        store: str | Path | None = None,
        overwrite: bool = False,
        resume: bool = False,
        input_name: str = "frames",
        source: dict[str, Any] | None = None,
        on_iteration: Callable[[IterationSummary, AtomTable], None] | None = None,
    ) -> RunResult:
        """Run the whole ELIT loop on ``frames``.

        Parameters
        ----------
        frames : ndarray (N, H, W) or (H, W)
            Raw frames; read from ``config.data.path`` when None.  On resume,
            taken from the store.
        pixel_size : float, optional
            Input pixel size (Angstrom/px) when known from the file.
        store : path, optional
            The run's HDF5 file; a temporary file is used when None.
        overwrite : bool
            Replace an existing store file.
        resume : bool
            Continue the run in ``store``, redoing only unfinished steps.
        on_iteration : callable, optional
            Called after each iteration with its summary and atoms (input pixels).
        """
        import tempfile

        from elit.devices import resolve_device
        from elit.store import RunStore

        tmpdir = None
        if store is None:
            tmpdir = tempfile.TemporaryDirectory(prefix="elit-")
            store = Path(tmpdir.name) / "run.h5"
        store = Path(store)
        device = resolve_device(self.config.device)
        source = dict(source or {})

        if resume:
            rs = RunStore.open(store, mode="a")
            stored = rs.read_config()
            if stored.get("seed") != self.config.seed:
                raise ConfigError(f"{store} was made with seed {stored.get('seed')}, not {self.config.seed}; resume with the same config")
            frames, pixel_size, _meta = rs.read_input(input_name)
            rs.write_environment(*self.environment(device))  # the resumed session joins the history
        else:
            if frames is not None:  # frames given in Python get the same checks as files
                from elit.readers import validate_frames

                frames, _notes = validate_frames(frames, nan_policy=self.config.data.nan_policy, source=input_name)
            else:
                if not self.config.data.path:
                    raise InputError("no input: give frames or set data.path / --data")
                from elit.readers import read_image

                image = read_image(self.config.data.path, nan_policy=self.config.data.nan_policy, signal=self.config.data.signal)
                frames, pixel_size = image.frames, pixel_size or image.pixel_size
                source.setdefault("source", image.source)
                source.setdefault("sha256", image.sha256)
                source.setdefault("metadata", image.metadata)
            raw = np.asarray(frames)
            raw = raw[None] if raw.ndim == 2 else raw
            # config, environment and input appear together: a run file can always be resumed
            with RunStore.building(store, overwrite=overwrite) as rs:
                rs.write_config(self.config.model_dump(mode="json"))
                env, plugins = self.environment(device)
                rs.write_environment(env, plugins)
                rs.write_input(
                    input_name,
                    raw,
                    pixel_size=self.config.scale.input_pixel_size or pixel_size,
                    source=source.get("source"),
                    sha256=source.get("sha256"),
                    metadata=source.get("metadata"),
                )
            rs = RunStore.open(store, mode="a")
            frames = raw

        working, input_px, factor = self.prepare(frames, pixel_size)
        runner = _Runner(self, rs, working, input_px, factor, device, input_name, on_iteration)
        del working  # the runner alone holds the working frames (it lets them go before the result is made)
        runner.raw = np.asarray(frames)[None] if np.ndim(frames) == 2 else np.asarray(frames)
        from elit.executors import make_executor

        runner.executor = make_executor(self.config.executor, device=str(device))  # a cluster starts at first use
        try:
            with runner.executor:
                result = runner.run()
        finally:
            if tmpdir is not None:
                tmpdir.cleanup()
        result.path = None if tmpdir is not None else store
        return result


PREPARE_CHUNK = 16
"""Frames resampled and normalised at a time by :func:`prepare_frames`."""


def prepare_frames(frames: np.ndarray, pixel_size: float | None, scale) -> tuple[np.ndarray, float, float]:
    """Resample raw frames to the working scale and normalise them.

    Parameters
    ----------
    frames : ndarray (N, H, W) or (H, W)
        Raw frames.
    pixel_size : float or None
        Input pixel size from the file; ``scale.input_pixel_size`` wins, and
        when both are missing it is estimated from the first frame.
    scale : ScaleConfig
        The run's scale settings.

    Returns
    -------
    working : ndarray (N, H', W') float32
    input_pixel_size : float
    factor : float
        Working pixels per input pixel (``input_pixel_size / working``).
    """
    from elit.scale import estimate_pixel_size, normalize, to_working

    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3:
        raise InputError(f"frames must be a 2-D image or a 3-D stack (frames, rows, cols), got shape {frames.shape}")
    px = scale.input_pixel_size or pixel_size
    if px is None:
        px, confidence = estimate_pixel_size(frames[:8].astype(np.float32), lattice=scale.lattice, spacing_A=scale.lattice_spacing)
        log.info("estimated pixel size %.4f A/px (confidence %.2f)", px, confidence)
        if confidence < 0.3:
            log.warning("the pixel-size estimate is unreliable (confidence %.2f); give it with --pixel-size", confidence)
        if not np.isfinite(px) or px <= 0:
            raise InputError("the pixel size could not be estimated; give it with --pixel-size")
    factor = float(px) / scale.pixel_size
    working = None
    for f0 in range(0, len(frames), PREPARE_CHUNK):  # a few frames at a time: no full-size temporaries
        part = normalize(to_working(frames[f0 : f0 + PREPARE_CHUNK], factor))
        if working is None:
            working = np.empty((len(frames),) + part.shape[1:], dtype=np.float32)
        working[f0 : f0 + len(part)] = part
    return working, float(px), factor


class _Runner:
    """One execution of the loop against one store (kept apart so Pipeline stays a plain recipe)."""

    def __init__(self, pipeline: Pipeline, store, frames, input_px, factor, device, input_name, on_iteration):
        self.p = pipeline
        self.cfg = pipeline.config
        self.store = store
        self.frames = frames
        self.input_px = input_px
        self.factor = factor
        self.px = pipeline.config.scale.pixel_size
        self.device = device
        self.input_path = f"/inputs/{input_name}"
        self.on_iteration = on_iteration
        self.summaries: list[IterationSummary] = []
        self.executor = None  # where ensemble members train (elit.executors); None: here
        self.raw = None  # the input frames at their own pixel size, for locating atoms on them

    # -- helpers
    def seed(self, iteration: int, kind: str) -> int:
        return derive_seed(self.cfg.seed, iteration, kind)

    def rng(self, iteration: int, kind: str) -> np.random.Generator:
        return np.random.default_rng(self.seed(iteration, kind))

    def done(self, iteration: int, kind: str) -> bool:
        return self.store.stage_complete(iteration, kind)

    def path(self, iteration: int, kind: str, name: str) -> str:
        return f"/iterations/iter_{iteration:03d}/{kind}/{name}"

    # -- steps
    def match_conditions(self) -> None:
        """Measure the frames' noise and atom peak width; give the simulator and augmenter matching settings.

        Settings the config gives explicitly are kept.  The measurement, the
        calibration notes and the settings applied are stored as iteration 0's
        ``conditions`` step (see :mod:`elit.conditions`).
        """
        cfg = self.cfg.conditions
        it = 0
        if not cfg.match or self.done(it, "trainer"):
            return
        if self.done(it, "conditions"):
            record = self.store.read_json(self.path(it, "conditions", "conditions"))
        else:
            from elit.conditions import estimate_conditions, match_stages

            seed = self.seed(it, "simulator")
            cond = estimate_conditions(self.frames, self.px, self.factor, cfg.min_distance_A)
            sim_params, aug_params, notes = match_stages(
                cond, self.p.stages["simulator"], self.px, np.random.default_rng([seed, 0xC0D1]),
                min_distance_A=cfg.min_distance_A, match_width=cfg.match_width, dose_spread=cfg.dose_spread,
            )
            kept = {}
            for kind, params in (("simulator", sim_params), ("augmenter", aug_params)):
                spec = getattr(self.cfg, kind)
                given = set(spec.params) if spec is not None else set()
                kept[kind] = {k: v for k, v in params.items() if k not in given and kind in self.p.stages}
                if given & set(params):
                    notes.append(f"{kind} settings {sorted(given & set(params))} come from the config and were kept")
            record = {
                "measured": cond.as_dict(),
                "simulator_params": kept["simulator"],
                "augmenter_params": kept["augmenter"],
                "notes": cond.notes + notes,
            }
            info = own_step_info("estimate-conditions", cfg.model_dump(mode="json"), [self.input_path], seed)
            with self.store.stage(it, "conditions", info) as st:
                st.add_json("conditions", record)
            for line in notes:
                log.info("%s", line)
        for kind in ("simulator", "augmenter"):
            extra = record.get(f"{kind}_params") or {}
            if extra and kind in self.p.stages:
                stage = self.p.stages[kind]
                self.p.stages[kind] = type(stage)(**{**stage.get_params(), **extra})

    def simulate(self) -> TrainingSet | None:
        it = 0
        if self.done(it, "trainer"):
            return None  # nothing downstream needs the simulated set again
        # On resume, a finished step's training set is read back instead of made again.
        last = "augmenter" if self._has("augmenter") else "simulator"
        if self.done(it, last):
            return _read_training_set(self.store, self.path(it, last, ""))
        if self.done(it, "simulator"):
            ts = _read_training_set(self.store, self.path(it, "simulator", ""))
        else:
            seed = self.seed(it, "simulator")
            ts = self.p.stages["simulator"].simulate(self.cfg.iterations.n_simulated, np.random.default_rng(seed), self.px)
            with self.store.stage(it, "simulator", self.p._stage_info("simulator", it, seed, [])) as st:
                _write_training_set(st, ts, self.px, [])
        if self._has("augmenter"):
            seed = self.seed(it, "augmenter")
            ts = self.p.stages["augmenter"].augment(ts, np.random.default_rng(seed))
            used = [self.path(it, "simulator", "images")]
            with self.store.stage(it, "augmenter", self.p._stage_info("augmenter", it, seed, used)) as st:
                _write_training_set(st, ts, self.px, used)
        return ts

    def _has(self, kind: str) -> bool:
        return kind in self.p.stages

    def train(self, it: int, ts: TrainingSet | None, init, used: list[str]):
        from elit.ensemble import Member

        if self.done(it, "trainer"):
            return self.store.read_ensemble(it, registry=self.p.registry)
        if ts is None:
            raise InputError(f"cannot resume iteration {it}: its training data was not stored")
        seed = self.seed(it, "trainer")
        info = self.p._stage_info("trainer", it, seed, used)
        info["config"] = {**info["config"], "architecture": self.p.stages["architecture"].get_params(),
                          "architecture_name": self.p.stages["architecture"].name, "warm_start": init is not None}
        stored = self.store.read_members(it, info=info)
        completed = {i: Member.from_arrays(spec, arrays) for i, (spec, arrays) in stored.items()}
        trainer = self.p.stages["trainer"]
        extra = {}
        if self.executor is not None and getattr(self.executor, "kind", "local") != "local":
            if "executor" in inspect.signature(trainer.fit).parameters:
                extra["executor"] = self.executor
            else:
                log.warning("trainer %r does not take an executor; its members train in this process", trainer.name)
        with self.store.stage(it, "trainer", info) as st:
            ens = trainer.fit(
                ts,
                self.p.stages["architecture"],
                seed,
                init=init,
                device=self.device,
                completed=completed,
                on_member=lambda i, m: st.add_member(i, m),  # the driver alone writes the file
                **extra,
            )
            st.add_ensemble(ens)
        return ens

    def _member_maps(self, ensemble):
        """Every member's maps of every frame, quantized as the config says (:mod:`elit.store.precision`)."""
        from elit.store.precision import ProbabilityMaps

        precision, chunk = self.cfg.store.probabilities, self.cfg.store.frames_per_chunk
        if self.executor is not None and getattr(self.executor, "kind", "local") != "local":
            from elit.executors import predict_frame_chunks  # chunks of frames as tasks, quantized as they arrive

            parts = predict_frame_chunks(self.executor, ensemble, self.frames, chunk=self.cfg.executor.frames_per_task,
                                         device=str(self.device))
        else:
            parts = ensemble.predict_chunks(self.frames, chunk=chunk, device=self.device, progress=False)
        return ProbabilityMaps.from_chunks(parts, len(self.frames), precision)

    def _stored_maps(self, it: int, ensemble):
        """The member maps of a finished predict step: read back, or predicted again where only some were kept."""
        from elit.store.precision import ProbabilityMaps

        path = self.path(it, PREDICT, "member_probabilities")
        attrs = self.store.attrs(f"{path}/member_probabilities") if self.store.has(path) else {}
        if self.store.has(path) and int(attrs.get("member_maps_every", 1)) == 1:
            return ProbabilityMaps(self.store.read_image(path, raw=True))
        return self._member_maps(ensemble)  # the same values: prediction is deterministic

    def maps(self, state: _State):
        """``state``'s member maps, read back or predicted again when they were let go to save memory."""
        if state.predictions is None:
            state.predictions = self._stored_maps(state.iteration, state.ensemble)
        return state.predictions

    def predict(self, it: int, ensemble) -> _State:
        st_out = _State(ensemble=ensemble, iteration=it)
        chunk = self.cfg.store.frames_per_chunk
        if self.done(it, PREDICT) and self.done(it, "selector"):
            st_out.predictions = self._stored_maps(it, ensemble)
            st_out.selection = _read_selection(self.store, self.path(it, "selector", ""))
            st_out.atoms = read_working_atoms(self.store, self.path(it, PREDICT, ""))
            return st_out
        preds = self._member_maps(ensemble)
        seed = self.seed(it, "selector")
        selector_done = self.done(it, "selector")  # resumed between the selector's and the predict step's commits
        if selector_done:
            selection = _read_selection(self.store, self.path(it, "selector", ""))
        else:
            n = len(self.frames)
            selection = self.p.stages["selector"].select_chunks(
                ((preds[:, f0 : f0 + chunk], self.frames[f0 : f0 + chunk]) for f0 in range(0, n, chunk)), self.px
            )
        members = selection.members if it == 0 else list(range(len(ensemble)))
        mean, std, atoms = combine_members(ensemble, preds, members, self.cfg.iterations.threshold, chunk=chunk,
                                           **self.cfg.locate.blob_options())
        atoms, location = self.finish_atoms(atoms)
        used = [self.path(it, "trainer", "ensemble"), self.input_path]
        if not selector_done:
            with self.store.stage(it, "selector", self.p._stage_info("selector", it, seed, used)) as st:
                st.add_json(
                    "selection",
                    {
                        "members": selection.members,
                        "reasons": selection.reasons,
                        "criteria": sorted(selection.criteria),
                        "frame_scores": selection.frame_scores is not None,
                    },
                )
                st.add_array("scores", selection.scores)
                for name, values in selection.criteria.items():
                    st.add_array(f"criteria/{name}", np.asarray(values, dtype=np.float64))
                if selection.frame_scores is not None:
                    st.add_array("frame_scores", np.asarray(selection.frame_scores, dtype=np.float64))
        used = used + [self.path(it, "selector", "selection")]
        with self.store.stage(it, PREDICT, self.p._stage_info(PREDICT, it, 0, used)) as st:
            atoms = write_predictions(st, preds, mean, std, atoms, self.px, self.factor, used,
                                      self.cfg.store.member_map_step(len(self.frames)))
            st.add_json("location", location)
        st_out.predictions, st_out.selection, st_out.atoms = preds, selection, atoms
        return st_out

    def finish_atoms(self, atoms: AtomTable) -> tuple[AtomTable, dict[str, Any]]:
        """:func:`finish_atoms` on this run's raw frames (working pixels in and out)."""
        raw = self.raw if self.raw is not None else self.frames
        raw_px = self.input_px if self.raw is not None else self.px
        classifier = self.p.stages["classifier"] if self._has("classifier") else None
        return finish_atoms(atoms, raw, raw_px, self.px, self.cfg.locate, classifier)

    @staticmethod
    def as_trained(atoms: AtomTable, ensemble) -> AtomTable:
        """``atoms`` in the classes of the ``ensemble`` that found them (one class when ``locate.classify`` named them)."""
        if tuple(atoms.class_names) == tuple(ensemble.class_names) or len(ensemble.class_names) != 1:
            return atoms
        out = atoms.select(slice(None))
        out.class_names = tuple(ensemble.class_names)
        out.class_index = np.zeros(len(out), dtype=np.int64)
        out.class_probability = None
        return out

    def refine(self, it: int, prev: _State, atoms: AtomTable) -> tuple[TrainingSet | None, list[str], bool]:
        """The refiner's training set, its provenance, and whether it may be trained on.

        A refinement that keeps fewer than ``iterations.min_kept_share`` of the
        atoms is stored (to be looked at) but refused: a warning, and a guard
        record that ends the retraining with the previous iteration's atoms.
        """
        used = [self.path(it - 1, PREDICT, "member_probabilities"), self.path(it - 1, "selector", "selection")]
        refused = self.stored_guard(it)
        if refused is not None and refused.get("step") == "refiner":
            return None, used, False
        if self.done(it, "refiner"):
            if self.done(it, "trainer"):
                return None, used, True
            return _read_training_set(self.store, self.path(it, "refiner", "")), used, True
        seed = self.seed(it, "refiner")
        ref = self.p.stages["refiner"].refine(
            self.frames, self.maps(prev), prev.selection, atoms, np.random.default_rng(seed), self.px
        )
        with self.store.stage(it, "refiner", self.p._stage_info("refiner", it, seed, used)) as st:
            _write_training_set(st, ref.training_set, self.px, used)
            st.add_table("kept", ref.kept, used)
            st.add_table("dropped", ref.dropped, used)
            st.add_json("refinement", {"frames_used": ref.frames_used, "reasons": ref.reasons})
        n_kept, n_all = len(ref.kept), len(ref.kept) + len(ref.dropped)
        share = n_kept / max(n_all, 1)
        limit = self.cfg.iterations.min_kept_share
        if self.cfg.iterations.guard and share < limit:
            from elit.guard import GuardDecision

            decision = GuardDecision(False, [
                f"the refiner {self.p.stages['refiner'].name!r} kept {n_kept} of {n_all} atoms ({share:.0%}, less than "
                f"{limit:.0%}): not trained on; the result stays iteration {it - 1}'s"
            ] + [r for r in ref.reasons if "could not avoid" in r], {"kept": n_kept, "dropped": n_all - n_kept})
            self.write_guard(it, decision, "refiner", [self.path(it, "refiner", "kept")])
            return None, used, False
        return ref.training_set, [self.path(it, "refiner", "images")], True

    def stored_guard(self, it: int) -> dict[str, Any] | None:
        """The guard decision stored for iteration ``it``, or None."""
        if not self.done(it, "guard"):
            return None
        return self.store.read_json(self.path(it, "guard", "decision"))

    def write_guard(self, it: int, decision, step: str, used: list[str]) -> None:
        """Store a guard decision as iteration ``it``'s ``guard`` step; warn when it rejects."""
        record = {**decision.as_dict(), "step": step}
        cfg = {k: getattr(self.cfg.iterations, k) for k in ("max_atom_loss", "max_regularity_drop", "min_kept_share")}
        with self.store.stage(it, "guard", own_step_info("guard", cfg, used)) as st:
            st.add_json("decision", record)
        if not decision.accepted:
            log.warning("iteration %d rejected: %s", it, "; ".join(decision.reasons))

    def judge(self, it: int, prev: _State, new: _State) -> bool:
        """Whether iteration ``it`` replaces ``prev`` (:func:`elit.guard.judge_iteration`); stored as its guard step."""
        if not self.cfg.iterations.guard:
            return True
        stored = self.stored_guard(it)
        if stored is not None:
            return bool(stored["accepted"])
        from elit.guard import judge_iteration

        c = self.cfg.iterations
        rates = {s.iteration: s.detection_rate for s in self.summaries}
        decision = judge_iteration(prev.atoms, new.atoms, self.px, max_atom_loss=c.max_atom_loss,
                                   max_regularity_drop=c.max_regularity_drop,
                                   detection_rates=(rates.get(prev.iteration), rates.get(it)),
                                   max_rate_drop=c.max_rate_drop)
        used = [self.path(it - 1, PREDICT, "atoms"), self.path(it, PREDICT, "atoms")]
        self.write_guard(it, decision, PREDICT, used)
        return decision.accepted

    def classify(self, it: int, atoms: AtomTable) -> AtomTable:
        seed = self.seed(it, "classifier")
        used = [self.path(it - 1, PREDICT, "atoms"), self.input_path]
        if self.done(it, "classifier"):
            return self.store.read_table(self.path(it, "classifier", "atoms"))
        out = self.p.stages["classifier"].classify(self.frames, atoms, self.px)
        with self.store.stage(it, "classifier", self.p._stage_info("classifier", it, seed, used)) as st:
            st.add_table("atoms", out, used)
        return out

    def summarize(self, it: int, kind: str, state: _State, seconds: float) -> IterationSummary:
        counts = [int(np.sum(state.atoms.frame == f)) for f in range(len(self.frames))]
        rate = None
        density = self.cfg.iterations.expected_density
        if density:
            area = self.frames.shape[1] * self.frames.shape[2] * self.px**2
            rate = float(np.mean(counts) / (density * area))
        members = state.selection.members if it == 0 else list(range(len(state.ensemble)))
        s = IterationSummary(it, kind, int(len(state.atoms)), counts, rate, members, round(seconds, 2))
        names = state.atoms.class_names
        per_class = np.bincount(state.atoms.class_index, minlength=len(names)) if len(names) > 1 else []
        classes = f" ({', '.join(f'{int(n)} {c}' for n, c in zip(per_class, names))})" if len(per_class) else ""
        log.info(
            "iteration %d (%s): %d atoms%s%s, members %s, %.1f s",
            it, kind, s.n_atoms, classes, "" if rate is None else f", detection rate {rate:.3f}", members, seconds,
        )
        self.summaries.append(s)
        if self.on_iteration is not None:
            self.on_iteration(s, state.atoms.scaled(1.0 / self.factor))
        return s

    def run(self) -> RunResult:
        t0 = time.perf_counter()
        self.match_conditions()
        ts = self.simulate()
        last_ts_path = self.path(0, "augmenter" if self._has("augmenter") else "simulator", "images")
        ens = self.train(0, ts, None, [last_ts_path])
        state = self.predict(0, ens)
        self.summarize(0, "simulated", state, time.perf_counter() - t0)

        it, result_it, stopped = 0, 0, None
        prev = self.summaries[-1]
        for it in range(1, self.cfg.iterations.max_iterations + 1):
            t0 = time.perf_counter()
            ts, used, ok = self.refine(it, state, self.as_trained(state.atoms, state.ensemble))
            if not ok:
                stopped = it
                break
            init = state.ensemble.subset(state.selection.members) if self.cfg.iterations.warm_start else None
            state.predictions = None  # a long movie's maps are not held twice; made again if this iteration stays
            ens = self.train(it, ts, init, used)
            new_state = self.predict(it, ens)
            s = self.summarize(it, "experimental", new_state, time.perf_counter() - t0)
            if not self.judge(it, state, new_state):
                s.accepted, stopped = False, it
                new_state.predictions = None  # a rejected iteration's maps are not held beside the result's
                break
            state, result_it = new_state, it
            if self._converged(prev, s):
                log.info("detection rate stopped improving after iteration %d", it)
                break
            prev = s

        if self.cfg.iterations.multiclass and self._has("classifier"):
            it += 1
            t0 = time.perf_counter()
            classified = self.classify(it, state.atoms)
            ts, used, ok = self.refine(it, state, classified)
            if ok:
                init = state.ensemble.subset(state.selection.members) if self.cfg.iterations.warm_start else None
                ens = self.train(it, ts, init, used)
                new_state = self.predict(it, ens)
                s = self.summarize(it, "multi-class", new_state, time.perf_counter() - t0)
                if self.judge(it, state, new_state):
                    state, result_it = new_state, it
                else:
                    s.accepted = False
                    new_state.predictions = None
        if stopped is not None:
            log.info("retraining stopped at iteration %d by the guard", stopped)
        self.report_result(result_it)

        members = state.selection.members if result_it == 0 else list(range(len(state.ensemble)))
        maps = self.maps(state)
        self.frames = None  # not needed any more: a long movie's working frames are let go before mean and std
        mean, std = state.ensemble.mean_std(maps, members)
        self.store.write_summary([s.as_dict() for s in self.summaries])
        return RunResult(
            path=None,
            atoms=state.atoms.scaled(1.0 / self.factor),
            mean=mean,
            std=std,
            ensemble=state.ensemble,
            selection=state.selection,
            iterations=self.summaries,
            input_pixel_size=self.input_px,
            working_pixel_size=self.px,
        )

    def report_result(self, result_it: int) -> None:
        """Mark the iteration whose atoms are the result; say so (stderr and file) when another found more atoms."""
        result = next(s for s in self.summaries if s.iteration == result_it)
        if result.iteration != self.summaries[-1].iteration:
            log.warning("the result is iteration %d (%d atoms): later iterations were rejected by the guard and stay "
                        "in the file for inspection", result_it, result.n_atoms)
        best = max(self.summaries, key=lambda s: s.n_atoms)
        if result.n_atoms < best.n_atoms:
            why = ("the guard judged the change acceptable (see each iteration's guard step)" if self.cfg.iterations.guard
                   else "the guard is off (iterations.guard)")
            lost = best.n_atoms - result.n_atoms
            result.note = (f"the result (iteration {result_it}) has {result.n_atoms} atoms, {lost} "
                           f"({100 * lost / best.n_atoms:.1f} %) fewer than iteration {best.iteration}'s "
                           f"{best.n_atoms}; {why}")
            log.warning("%s", result.note)

    def _converged(self, prev: IterationSummary, cur: IterationSummary) -> bool:
        tol = self.cfg.iterations.min_improvement
        if prev.detection_rate is not None and cur.detection_rate is not None:
            return cur.detection_rate - prev.detection_rate < tol
        if prev.n_atoms == 0:
            return False
        return abs(cur.n_atoms - prev.n_atoms) / prev.n_atoms < tol


def predict_step_info(config: dict[str, Any], used: list[str], seed: int = 0) -> dict[str, Any]:
    """Provenance of the pipeline's own prediction step (it is not a plugin stage)."""
    return own_step_info("ensemble-predict", config, used, seed)


def own_step_info(name: str, config: dict[str, Any], used: list[str], seed: int = 0) -> dict[str, Any]:
    """Provenance of a step that elit itself runs (not a plugin stage)."""
    from elit import __version__

    return {
        "name": name,
        "plugin": "elit",
        "package": "elit",
        "plugin_version": __version__,
        "stage_version": __version__,
        "config": config,
        "seed": seed,
        "used": used,
    }


def finishing_classifier(config):
    """The classifier stage that :func:`finish_atoms` names classes with under ``config`` (None when it does not)."""
    if not config.locate.classify or config.classifier is None:
        return None
    from elit.config import build_stages

    return build_stages({"classifier": config.classifier})["classifier"]


def finish_atoms(atoms: AtomTable, raw, raw_px: float, working_px: float, locate, classifier=None):
    """Drop faint detections (vacuum, or outside the lattice), fit the rest on the raw frames, average, classify.

    Parameters
    ----------
    atoms : AtomTable
        Located in the working pixels (``working_px`` Angstrom per pixel).
    raw : ndarray, shape (N, H, W)
        The frames at their own pixel size ``raw_px``.
    locate : LocateConfig
        ``faint_fraction``, ``keep_faint_in_lattice``, ``lonely_fraction``, ``refine``, ``positions``, ``average_frames`` (with
        ``max_motion_A`` and ``fill_gaps``) and ``classify``.
    classifier : Classifier or None
        Names the classes of a single-class table when ``locate.classify`` is on.

    Returns
    -------
    atoms : AtomTable
        In working pixels.
    record : dict
        What was done (stored as the predict step's ``location``).
    """
    from elit.vacuum import in_full_shell, lonely_atoms, signal_share

    to_raw = working_px / raw_px
    on_raw = atoms.scaled(to_raw)
    share = signal_share(raw, on_raw, raw_px) if locate.faint_fraction or locate.lonely_fraction else None
    faint = share < locate.faint_fraction if locate.faint_fraction else np.zeros(len(on_raw), dtype=bool)
    record: dict[str, Any] = {"faint_fraction": locate.faint_fraction, "lonely_fraction": locate.lonely_fraction}
    if locate.keep_faint_in_lattice and faint.any():
        in_lattice = in_full_shell(on_raw, faint)
        faint &= ~in_lattice
        record["faint_kept_in_lattice"] = int(in_lattice.sum())
    record["faint_dropped"] = int(faint.sum())
    lonely = np.zeros(len(on_raw), dtype=bool)
    if locate.lonely_fraction and len(on_raw):
        rest = np.flatnonzero(~faint)  # neighbours are counted among the atoms that stay
        lonely[rest] = (share[rest] < locate.lonely_fraction) & lonely_atoms(on_raw.select(~faint), np.shape(raw)[-2:])
        record["lonely_dropped"] = int(lonely.sum())
    if faint.any() or lonely.any():
        log.info("dropped %d of %d atoms as too faint for atoms (vacuum) and %d faint ones outside the lattice",
                 int(faint.sum()), len(atoms), int(lonely.sum()))
    on_raw = on_raw.select(~(faint | lonely))
    if locate.refine and len(on_raw):
        from elit.localize import recentre_network, refine_on_frames

        refined = refine_on_frames(raw, on_raw, raw_px)
        fitted = np.isfinite(refined.fit_residual) if refined.fit_residual is not None else np.ones(len(refined), bool)
        refined.row_refined = np.where(fitted, refined.row, np.nan)  # both positions are kept
        refined.col_refined = np.where(fitted, refined.col, np.nan)
        if locate.recentre:
            refined, shift = recentre_network(refined)
            record["network_shift_px"] = list(shift)  # (row, col), input pixels
        if locate.positions == "network":  # report the network's positions; the fit's stay in *_refined
            refined.row, refined.col = refined.row_network.copy(), refined.col_network.copy()
        else:  # where a fit failed, the (re-centred) network position
            refined.row = np.where(fitted, refined.row, refined.row_network)
            refined.col = np.where(fitted, refined.col, refined.col_network)
        on_raw = refined
    record["positions"] = locate.positions if locate.refine else "network"
    if locate.average_frames and len(on_raw):
        from elit.temporal import average_over_frames, fill_gaps, link_frames

        links = link_frames(on_raw, raw_px, window=locate.average_frames, max_motion_A=locate.max_motion_A)
        on_raw, record["averaged"] = average_over_frames(on_raw, raw_px, links=links)
        if locate.fill_gaps:
            on_raw, record["gaps"] = fill_gaps(on_raw, links, raw, raw_px, window=locate.average_frames,
                                                  first_frame=locate.fill_first_frame)
    if locate.classify and classifier is not None and len(on_raw.class_names) == 1:
        on_raw = classifier.classify(raw, on_raw, raw_px)
        record["classifier"] = {"name": classifier.name, "config": classifier.config.model_dump(mode="json")}
    return on_raw.scaled(1.0 / to_raw), record


def combine_members(ensemble, preds, members: list[int] | None, threshold: float, chunk: int = 32,
                    border_fit: bool = True, split_merged: bool = True):
    """Mean and std of the chosen members' maps, and the atoms located in the mean (working pixels).

    ``preds`` is an ``(M, N, K, H, W)`` array or :class:`~elit.store.precision.ProbabilityMaps`;
    mean and std are made and atoms located ``chunk`` frames at a time (the same atoms as all at
    once), and mean and std are returned in the maps' stored precision (uint8: p = q/255), so a
    long movie's maps are never held as float32 whole.  ``border_fit`` places the blobs cut by the
    frame border (:func:`elit.atoms.fit_border_blobs`); ``split_merged`` splits the blobs that hold two
    atoms (:func:`elit.atoms.split_merged_blobs`).
    """
    from elit.atoms import locate_atoms
    from elit.data import AtomTable
    from elit.store.precision import ProbabilityMaps, quantize

    members = list(range(len(preds))) if members is None else list(members)
    precision = preds.precision if isinstance(preds, ProbabilityMaps) else "float32"
    n = preds.shape[1]
    mean = np.empty(tuple(preds.shape[1:]), dtype=precision)
    std = np.empty_like(mean)
    tables = []
    for f0 in range(0, n, chunk):
        part = preds[members, f0 : f0 + chunk]
        m, sd = ensemble.mean_std(part)
        tables.append(locate_atoms(
            m, threshold=threshold, uncertainty=sd, member_probabilities=part, class_names=ensemble.class_names,
            frame_offset=f0, border_fit=border_fit, split_merged=split_merged,
        ))
        mean[f0 : f0 + chunk], std[f0 : f0 + chunk] = quantize(m, precision), quantize(sd, precision)
    return mean, std, AtomTable.concatenate(tables, class_names=tables[0].class_names if tables else None)


def write_predictions(
    st, preds, mean, std, atoms: AtomTable, px: float, factor: float, used: list[str], member_maps_every: int = 1
) -> AtomTable:
    """Store per-member maps, mean, uncertainty and the atoms in a stage; return the atoms as stored.

    Maps are stored in the precision ``preds`` holds (``ProbabilityMaps``: uint8 by
    default; a float array as it is); mean and uncertainty in the same precision.
    With ``member_maps_every`` n > 1 only every n-th frame's member maps are kept;
    the dataset's attribute ``frames`` lists them.  The atoms (working pixels) are
    stored once, in input pixels; the returned working table is the stored one scaled
    back (:func:`read_working_atoms` gives the same after a resume).
    """
    from elit.store.precision import ProbabilityMaps, quantization_label, quantize

    dims = ["member", "frame", "class", "y", "x"]
    values = preds.values if isinstance(preds, ProbabilityMaps) else np.asarray(preds)
    precision = values.dtype.name if values.dtype.name in ("uint8", "float16") else "float32"
    label = quantization_label(precision)
    n = values.shape[1]
    kept = list(range(0, n, max(1, member_maps_every)))
    if len(kept) != n:
        values = values[:, kept]
    extra = {"member_maps_every": member_maps_every, "frames": np.asarray(kept, np.int64)} if len(kept) != n else None
    member_path = st.add_image(
        "member_probabilities", values, dims, "probability", "", px, used, quantization=label, copy=False, attrs=extra
    )
    st.add_image("mean", quantize(mean, precision), dims[1:], "probability", "", px, [member_path], quantization=label, copy=False)
    st.add_image("uncertainty", quantize(std, precision), dims[1:], "probability std", "", px, [member_path],
                 quantization=label, copy=False)
    on_input = atoms.scaled(1.0 / factor)
    st.add_table("atoms", on_input, [member_path])
    st.add_json("working_scale", {"factor": factor})
    return on_input.scaled(factor)


def read_working_atoms(store, group: str) -> AtomTable:
    """A predict step's atoms in working pixels (``group``: the step's path, e.g. ``/iterations/iter_000/predict``).

    Files written by elit 0.1 hold them as ``atoms_working``; later ones keep the
    input-pixel ``atoms`` and the scale ``working_scale`` they are derived with.
    """
    group = group.rstrip("/")
    if store.has(f"{group}/atoms_working"):
        return store.read_table(f"{group}/atoms_working")
    factor = float(store.read_json(f"{group}/working_scale")["factor"])
    return store.read_table(f"{group}/atoms").scaled(factor)


def _write_training_set(st, ts: TrainingSet, px: float, used: list[str]) -> None:
    p = st.add_image("images", ts.images, ["sample", "y", "x"], "intensity", "a.u.", px, used)
    st.add_image("labels", ts.labels, ["sample", "y", "x"], "class label", "", px, [p])
    st.add_json("classes", {"class_names": list(ts.class_names), "pixel_size": ts.pixel_size})
    if ts.atoms is not None:
        st.add_table("atoms", ts.atoms, [p])


def _read_training_set(store, group: str) -> TrainingSet:
    group = group.rstrip("/")
    meta = store.read_json(f"{group}/classes")
    return TrainingSet(
        store.read_image(f"{group}/images"),
        store.read_image(f"{group}/labels"),
        tuple(meta["class_names"]),
        float(meta["pixel_size"]),
        store.read_table(f"{group}/atoms") if store.has(f"{group}/atoms") else None,
    )


def _read_selection(store, group: str) -> Selection:
    group = group.rstrip("/")
    meta = store.read_json(f"{group}/selection")
    return Selection(
        members=meta["members"],
        scores=store.read_array(f"{group}/scores"),
        criteria={name: store.read_array(f"{group}/criteria/{name}") for name in meta.get("criteria", [])},
        frame_scores=store.read_array(f"{group}/frame_scores") if meta.get("frame_scores") else None,
        reasons=meta["reasons"],
    )
