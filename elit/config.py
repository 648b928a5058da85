"""Pipeline configuration: strict pydantic models, YAML loading, overrides, two-step validation.

A pipeline config names each stage as ``{name, params}``.  Step one validates
the structure (:class:`PipelineConfig`); step two looks up each stage class in
the registry by ``(kind, name)`` and validates ``params`` with that class's
``Config`` (:func:`resolve_stages`).  Third-party stages therefore validate
exactly like built-ins.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from elit.errors import ConfigError

SCHEMA_VERSION = 1

STAGE_FIELDS = ("simulator", "augmenter", "architecture", "trainer", "selector", "refiner", "classifier")
"""Config keys of the stages, in pipeline order; each key equals the stage kind."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageSpec(_Strict):
    """Which registered stage to use and its parameters."""

    name: str = Field(description="Registered name of the stage (see `elit plugins`).")
    params: dict[str, Any] = Field(default_factory=dict, description="Settings validated by the stage's own Config.")


class ScaleConfig(_Strict):
    """Working ("canonical") scale and the input's pixel size."""

    pixel_size: float = Field(0.2, gt=0.01, le=2.0, description="Working scale in Angstrom per pixel; frames are resampled to it.")
    input_pixel_size: float | None = Field(
        None, gt=0.0, le=100.0, description="Pixel size of the input (Angstrom/px); None: from file metadata, else estimated."
    )
    lattice: Literal["graphene", "perovskite", "square"] = Field(
        "graphene", description="Lattice used to estimate the pixel size from the image when it is not known."
    )
    lattice_spacing: float | None = Field(None, gt=0.0, description="Lattice constant for the estimate (Angstrom); None: the lattice's default.")


class IterationConfig(_Strict):
    """The ELIT loop's iteration plan."""

    max_iterations: int = Field(3, ge=0, le=50, description="Retraining iterations after iteration 0 (0: simulation-trained ensemble only).")
    min_improvement: float = Field(
        0.005, ge=0.0, le=1.0, description="Stop when the detection rate improves by less than this between iterations."
    )
    warm_start: bool = Field(True, description="Start retraining from the selected members' weights instead of from scratch.")
    multiclass: bool = Field(False, description="After the loop, classify atoms and train a multi-class ensemble.")
    n_simulated: int = Field(256, ge=1, le=1_000_000, description="Number of simulated training images for iteration 0.")
    expected_density: float | None = Field(
        None, gt=0.0, description="Expected atoms per square Angstrom (graphene 0.382) for the detection rate; None: not reported."
    )
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Probability threshold for locating atoms.")
    guard: bool = Field(
        True, description="Keep the previous iteration when a label-free check says a retrained one is worse (elit.guard)."
    )
    max_atom_loss: float = Field(
        0.2, ge=0.0, le=1.0, description="The guard rejects an iteration that loses more than this share of the atoms, "
        "unless the lost atoms were in vacuum or duplicates.",
    )
    max_regularity_drop: float = Field(
        0.05, ge=0.0, le=1.0, description="The guard rejects an iteration whose share of atoms at the lattice's neighbour "
        "distance falls by more than this.",
    )
    max_rate_drop: float = Field(
        0.0, ge=0.0, le=1.0, description="The guard rejects an iteration whose detection rate (with expected_density) "
        "falls by more than this (a share of the lattice's sites), unless the lost atoms were in vacuum or duplicates.",
    )
    min_kept_share: float = Field(
        0.5, ge=0.0, le=1.0, description="A refinement that keeps fewer than this share of the atoms is not trained on: "
        "the loop keeps the previous iteration and says so.",
    )


class ConditionsConfig(_Strict):
    """Matching iteration 0's training data to the noise and blur measured on the frames (elit.conditions)."""

    match: bool = Field(True, description="Measure the frames' shot noise and set the augmenter's Poisson noise to it (params set in the config win).")
    match_width: bool = Field(True, description="Also scale the simulator's atom and probe widths to the measured atom peak width.")
    dose_spread: float = Field(
        1.5, ge=1.0, le=20.0, description="The augmenter's dose range spans the frames' measured doses widened by this factor each way."
    )
    min_distance_A: float = Field(1.0, gt=0.1, le=10.0, description="Smallest distance between atom columns (Angstrom) used to find atom peaks.")


class LocateConfig(_Strict):
    """What happens to the atoms located in the ensemble's mean prediction (input pixels)."""

    faint_fraction: float = Field(
        0.4, ge=0.0, lt=1.0, description="Drop atoms whose matched-filter signal on the raw frame is below this fraction of the "
        "frame's median atom (noise clusters in vacuum); 0 keeps every atom (elit.vacuum).",
    )
    keep_faint_in_lattice: bool = Field(
        True, description="Keep a faint detection whose neighbours form a complete lattice shell (elit.vacuum.in_full_shell): "
        "an atom dim by chance in a noisy frame, not a noise cluster in vacuum or at a hole's edge.",
    )
    lonely_fraction: float = Field(
        0.6, ge=0.0, lt=1.0, description="Also drop atoms with fewer than two neighbours at the lattice's neighbour "
        "distance (elit.vacuum.lonely_atoms: a noise cluster in vacuum or a site just outside a hole's edge, not an "
        "atom of the lattice) whose signal is below this fraction of the frame's median atom; near a frame border one "
        "neighbour fewer is needed, in a corner none; 0 keeps them.",
    )
    border_fit: bool = Field(
        True, description="Place the atoms cut by the frame border by fitting the frame's whole-blob profile to what is "
        "visible (elit.atoms.fit_border_blobs); their centroids lie inside the frame by up to the blob radius.",
    )
    split_merged: bool = Field(
        True, description="Split a blob that holds two atoms joined by a thin bridge of probability (a bond at a hole's edge "
        "or the frame border) at its cores (elit.atoms.split_merged_blobs); its centroid lies between the two atoms.",
    )
    refine: bool = Field(True, description="Also fit every atom with a Gaussian on the raw frame at its own pixel size (elit.localize).")
    recentre: bool = Field(
        True, description="Shift the network's positions by their mean offset from the Gaussian fits, on each axis where "
        "that offset is beyond two standard errors (elit.localize.recentre_network): a small offset common to all of an "
        "ensemble's atoms. Needs refine.",
    )
    positions: Literal["network", "refined"] = Field(
        "network", description="Which position x, y report: the ensemble's (network) or the Gaussian fit's (refined); "
        "on multislice graphene at 2e4-8e4 e/A^2 the network's were the more accurate.",
    )
    average_frames: int = Field(
        3, ge=0, le=1000, description="Average each atom's position with the same atom in up to this many frames on "
        "each side (registered on the atoms, elit.temporal); an atom that moved further than its noise, or by more "
        "than max_motion_A, is not averaged. This frame's own position stays in row_frame, col_frame. 0: off.",
    )
    max_motion_A: float = Field(
        0.3, gt=0.0, le=5.0, description="Largest shift (Angstrom) between two frames' sightings of one atom for "
        "average_frames to combine them.",
    )
    fill_gaps: bool = Field(
        True, description="With average_frames, add an atom that a frame missed where the frames before and after it "
        "(within average_frames) saw one atom at the same place and the raw frame is not dark there "
        "(elit.temporal.fill_gaps; the atom's filled column is 1).",
    )
    fill_first_frame: bool = Field(
        True, description="With fill_gaps, also add an atom that the first frame missed where frames 1 and 2 both saw "
        "it and the raw first frame is not dark there: the beam removes atoms far more often than it adds them to a "
        "lattice site. Off for a movie in which atoms arrive (growth, deposition).",
    )
    classify: bool = Field(
        False, description="Give the atoms of every single-class ensemble their classes with the classifier stage on "
        "the raw frames (e.g. C and Si, or a perovskite's A and B sites); the loop still trains on one class. A "
        "multi-class ensemble's atoms keep the network's classes.",
    )

    def blob_options(self) -> dict:
        """The options of :func:`elit.atoms.locate_atoms` set here."""
        return {"border_fit": self.border_fit, "split_merged": self.split_merged}


class DataConfig(_Strict):
    """Where the frames come from."""

    path: str | None = Field(None, description="Image file in any format `elit info` reads (.emd, .ser/.emi, .mrc, .dm3/.dm4, .tif, .hspy, .zspy, .h5, .npy, .png…); the CLI's --data overrides it.")
    signal: str | None = Field(None, description="Which signal of a file holding several (name or index, as `elit info` lists them); None: the HAADF/ADF image. The CLI's --signal overrides it.")
    nan_policy: Literal["refuse", "fill"] = Field("refuse", description="What to do with NaN/Inf pixels: refuse the input or fill them with the median.")


class ExecutorConfig(_Strict):
    """Where independent tasks (ensemble members) run; results are the same either way."""

    kind: Literal["local", "dask"] = Field(
        "local", description="local: one after another in this process; dask: as tasks on a dask.distributed cluster."
    )
    address: str | None = Field(
        None, description="Address of a running dask scheduler (e.g. tcp://10.0.0.5:8786); None: start a LocalCluster on 127.0.0.1."
    )
    n_workers: int = Field(2, ge=1, le=1024, description="Worker processes of the LocalCluster (ignored with address; with CUDA: one per GPU).")
    threads_per_worker: int = Field(1, ge=1, le=256, description="Tasks each LocalCluster worker runs at once (1 suits training).")
    retries: int = Field(1, ge=0, le=10, description="Times a task that raised is tried again (a task whose worker died is rescheduled anyway).")
    frames_per_task: int = Field(16, ge=1, le=100_000, description="Frames per inference task when a stack is predicted on the cluster.")


class StoreConfig(_Strict):
    """How the run file keeps the probability maps (see docs/file-format.md)."""

    probabilities: Literal["uint8", "float16", "float32"] = Field(
        "uint8", description="Precision the member probability maps are kept in, in memory and in the file (uint8: p = q/255)."
    )
    member_maps_every: int = Field(
        1, ge=1, le=1_000_000, description="Store every member's map for every n-th frame only (1: all frames); mean, uncertainty and atoms are kept for all."
    )
    member_maps_frames: int = Field(
        64, ge=0, le=1_000_000, description="Store every member's map for at most this many frames, evenly spaced "
        "(0: no limit); bounds the file of a long movie. With member_maps_every the larger step wins.",
    )
    frames_per_chunk: int = Field(32, ge=1, le=100_000, description="Frames predicted, scored and located at a time (bounds the memory).")

    def member_map_step(self, n_frames: int) -> int:
        """Every how many frames the member maps are stored, for a movie of ``n_frames``."""
        step = self.member_maps_every
        if self.member_maps_frames:
            step = max(step, -(-n_frames // self.member_maps_frames))
        return max(1, step)


class PipelineConfig(_Strict):
    """A whole ELIT run."""

    schema_version: int = Field(SCHEMA_VERSION, description="Version of this config schema.")
    seed: int = Field(0, ge=0, description="Root seed; every stage and member derives its own seed from it.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where networks run: auto picks CUDA when present.")
    data: DataConfig = Field(default_factory=DataConfig, description="The input frames.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="Where ensemble members train: locally or on a dask cluster.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Precision and extent of the stored probability maps.")
    scale: ScaleConfig = Field(default_factory=ScaleConfig, description="Pixel sizes.")
    iterations: IterationConfig = Field(default_factory=IterationConfig, description="The iteration plan.")
    locate: LocateConfig = Field(default_factory=LocateConfig, description="Filtering and refining the located atoms.")
    conditions: ConditionsConfig = Field(
        default_factory=ConditionsConfig, description="Training data matched to the noise and peak width measured on the frames."
    )
    simulator: StageSpec = Field(default_factory=lambda: StageSpec(name="graphene"), description="Makes iteration 0's training data.")
    augmenter: StageSpec | None = Field(
        default_factory=lambda: StageSpec(name="standard"), description="Augments the simulated training data (null: none)."
    )
    architecture: StageSpec = Field(default_factory=lambda: StageSpec(name="compact-unet"), description="Each member's network.")
    trainer: StageSpec = Field(default_factory=lambda: StageSpec(name="multi-swa"), description="Trains the ensembles.")
    selector: StageSpec = Field(default_factory=lambda: StageSpec(name="auto"), description="Chooses the artifact-free members.")
    refiner: StageSpec = Field(default_factory=lambda: StageSpec(name="gmm-patches"), description="Builds training data from the experiment.")
    classifier: StageSpec | None = Field(
        default_factory=lambda: StageSpec(name="intensity"), description="Splits atoms into classes for the multi-class iteration (null: none)."
    )

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(f"config schema_version {v} is newer than this elit understands ({SCHEMA_VERSION})")
        return v

    @model_validator(mode="after")
    def _multiclass_needs_classifier(self) -> PipelineConfig:
        if self.iterations.multiclass and self.classifier is None:
            raise ValueError("iterations.multiclass is true but no classifier is configured")
        return self

    def stage_specs(self) -> dict[str, StageSpec]:
        """The configured stages, keyed by kind, in pipeline order (unset optional ones left out)."""
        return {k: getattr(self, k) for k in STAGE_FIELDS if getattr(self, k) is not None}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) of the whole config."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def sha256(self) -> str:
        """Checksum of :meth:`to_json`."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def format_validation_error(err: ValidationError, where: str) -> str:
    """Turn a pydantic error into lines naming the field, the problem and what is allowed."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        ctx = e.get("ctx") or {}
        if "expected" in ctx:
            msg += f" (allowed: {ctx['expected']})"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{where}: {loc}: {msg}{got_s}")
    return "\n".join(lines)


def _validate_structure(raw: dict) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        allowed = ", ".join(PipelineConfig.model_fields)
        text = format_validation_error(err, "config")
        if "unknown field" in text:
            text += f"\nconfig: top-level fields are: {allowed}"
        raise ConfigError(text) from None


def yaml_problem(err: Exception) -> str:
    """A YAML parser error in one line: ``line L, column C: problem``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value as YAML) into a key path and a value."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, _, value = item.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({yaml_problem(err)})") from None
    return path, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of ``raw`` with ``key.path=value`` overrides applied."""
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = {}
                node[part] = nxt
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict, with clear errors."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    if p.is_dir():
        raise ConfigError(f"config path {str(p)!r} is a directory, not a YAML file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {yaml_problem(err)}") from None
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"config file {str(p)!r} cannot be read as text ({type(err).__name__}: {err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of settings, got {type(raw).__name__}")
    return raw


def recipe_names() -> list[str]:
    """Names of the recipes shipped with elit."""
    from importlib.resources import files

    return sorted(p.name[:-5] for p in files("elit.recipes").iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> dict:
    """Return a shipped recipe as a raw dict."""
    from importlib.resources import files

    if name not in recipe_names():
        raise ConfigError(f"no recipe named {name!r}; recipes: {', '.join(recipe_names()) or 'none'}")
    import yaml

    return yaml.safe_load(files("elit.recipes").joinpath(f"{name}.yaml").read_text()) or {}


def merge(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base`` (a stage's ``name`` change resets its params)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            if "name" in v and v.get("name") != out[k].get("name"):
                out[k] = copy.deepcopy(v)
            else:
                out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(
    path: str | Path | None = None, recipe: str | None = None, overrides: list[str] = (), raw: dict | None = None
) -> PipelineConfig:
    """Build a structurally valid config from a recipe, a YAML file, a dict and overrides (in that order).

    Everything starts from the defaults, so an override such as
    ``trainer.params.n_members=4`` works when no file names the trainer.
    """
    data: dict = PipelineConfig().model_dump(mode="json")
    if recipe:
        data = merge(data, load_recipe(recipe))
    if path is not None:
        data = merge(data, load_yaml(path))
    if raw:
        data = merge(data, raw)
    data = apply_overrides(data, list(overrides))
    return _validate_structure(data)


def build_stages(specs: dict[str, StageSpec], registry=None) -> dict[str, Any]:
    """Build stages from ``{kind: StageSpec}``, validating each one's params with its class's Config.

    Raises
    ------
    ConfigError
        Naming the stage, the field, the problem and what is allowed.
    """
    from elit.plugins import default_registry

    registry = registry or default_registry()
    stages = {}
    for kind, spec in specs.items():
        cls = registry.get_stage(kind, spec.name)
        try:
            stages[kind] = cls(spec.params)
        except ValidationError as err:
            fields = ", ".join(cls.Config.model_fields) or "none"
            text = format_validation_error(err, f"{kind} {spec.name!r}: params")
            raise ConfigError(f"{text}\n{kind} {spec.name!r} accepts: {fields}") from None
    return stages


def resolve_stages(config: PipelineConfig, registry=None) -> dict[str, Any]:
    """Step two of validation: build every stage the config names (see :func:`build_stages`)."""
    return build_stages(config.stage_specs(), registry)
