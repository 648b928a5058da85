"""Conformance kit for stage plugins: check a stage class in one call.

Examples
--------
>>> from elit.testing import check_stage
>>> check_stage(MySelector, params={"k": 2})   # raises AssertionError on a problem
"""

from __future__ import annotations

import builtins
import contextlib
import io
from typing import Any

import numpy as np

from elit.data import AtomTable, Selection, TrainingSet
from elit.stages import STAGE_KINDS, Stage, StageConfig

__all__ = ["check_stage", "check_config", "tiny_config", "toy_frames", "toy_training_set", "no_file_io"]


def _library_read(args, kwargs) -> bool:
    """True for a read-only open of an installed library's own file (or /proc), which a stage may do."""
    import os
    import sys

    path = args[0] if args else kwargs.get("file")
    mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
    if not isinstance(path, (str, bytes, os.PathLike)) or any(c in str(mode) for c in "wax+"):
        return False
    path = os.path.realpath(os.fsdecode(path))
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, "/proc")}
    return any(path.startswith(root + os.sep) for root in roots)


@contextlib.contextmanager
def no_file_io():
    """Fail any call to :func:`open` inside the block, except reads of installed libraries' own files."""
    real_open, real_io_open = builtins.open, io.open

    def refuse(*args, **kwargs):
        if _library_read(args, kwargs):
            return real_open(*args, **kwargs)
        raise AssertionError(f"stage opened a file: {args[:1]!r}")

    builtins.open = io.open = refuse
    try:
        yield
    finally:
        builtins.open, io.open = real_open, real_io_open


def toy_frames(n: int = 2, size: int = 48, spacing: float = 7.0, seed: int = 0) -> tuple[np.ndarray, AtomTable]:
    """Small frames of Gaussian atoms on a square grid, with their true positions."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:size, 0:size]
    grid = np.arange(spacing / 2, size, spacing)
    gr, gc = np.meshgrid(grid, grid, indexing="ij")
    rows, cols, frames_idx, frames = [], [], [], []
    for f in range(n):
        r = gr.ravel() + rng.normal(0, 0.3, gr.size)
        c = gc.ravel() + rng.normal(0, 0.3, gc.size)
        img = np.zeros((size, size), np.float32)
        for ri, ci in zip(r, c):
            img += np.exp(-((rr - ri) ** 2 + (cc - ci) ** 2) / (2 * 1.2**2))
        img += rng.normal(0, 0.03, img.shape)
        frames.append(np.clip(img, 0, None) / max(img.max(), 1e-6))
        rows.append(r)
        cols.append(c)
        frames_idx.append(np.full(len(r), f))
    k = sum(len(r) for r in rows)
    atoms = AtomTable(np.concatenate(frames_idx), np.concatenate(rows), np.concatenate(cols), np.zeros(k), np.ones(k), np.zeros(k))
    return np.stack(frames).astype(np.float32), atoms


def toy_training_set(n: int = 2, size: int = 48) -> TrainingSet:
    """A tiny single-class training set (discs of radius 2 px at the toy atoms)."""
    frames, atoms = toy_frames(n, size)
    rr, cc = np.mgrid[0:size, 0:size]
    labels = np.zeros(frames.shape, np.uint8)
    for f, r, c in zip(atoms.frame, atoms.row, atoms.col):
        labels[f][(rr - r) ** 2 + (cc - c) ** 2 <= 4.0] = 1
    return TrainingSet(frames, labels, ("atom",), 0.2, atoms)


def tiny_config(seed: int = 3, **iterations: Any) -> dict[str, Any]:
    """A pipeline config that runs in seconds on 48 px frames at 0.2 A/px (2 tiny members, a few steps).

    ``iterations`` update the ``iterations`` section (e.g. ``max_iterations=2``).
    """
    return {
        "seed": seed,
        "device": "cpu",
        "scale": {"pixel_size": 0.2, "input_pixel_size": 0.2},
        "iterations": {"min_improvement": 0.0, "n_simulated": 4, "multiclass": False, **iterations},
        "simulator": {"name": "graphene", "params": {"image_size": 48}},
        "augmenter": {"name": "standard", "params": {"crop_size": 32}},
        "architecture": {"name": "compact-unet", "params": {"base_filters": 4, "depth": 2}},
        "trainer": {
            "name": "multi-swa",
            "params": {"n_members": 2, "steps": 4, "batch_size": 2, "patch_size": 32, "min_steps": 0, "eval_every": 2,
                       "val_patches": 2, "bn_batches": 2, "progress": False},
        },
        "selector": {"name": "auto", "params": {"k": 1}},
    }


def check_config(cls: type[Stage], params: dict[str, Any] | None = None) -> Stage:
    """Check class attributes, the Config's strictness and a config round trip; return an instance."""
    assert isinstance(cls, type) and issubclass(cls, Stage), f"{cls!r} is not an elit Stage subclass"
    assert cls.kind in STAGE_KINDS, f"{cls.__name__}.kind {cls.kind!r} is not one of {list(STAGE_KINDS)}"
    for attr in ("name", "version", "description"):
        value = getattr(cls, attr, "")
        assert isinstance(value, str) and value, f"{cls.__name__}.{attr} must be a non-empty string"
    assert issubclass(cls.Config, StageConfig), f"{cls.__name__}.Config must subclass elit.StageConfig"
    assert cls.Config.model_config.get("extra") == "forbid", f"{cls.__name__}.Config must forbid unknown fields"
    for fname, finfo in cls.Config.model_fields.items():
        assert finfo.description, f"{cls.__name__}.Config.{fname} has no description"
    cls.Config.model_json_schema()
    stage = cls(params or {})
    again = cls(stage.get_params())
    assert again.config == stage.config, f"{cls.__name__}: config does not survive a JSON round trip"
    try:
        cls({**(params or {}), "__no_such_field__": 1})
    except Exception:
        pass
    else:  # pragma: no cover - a failure path
        raise AssertionError(f"{cls.__name__} accepted an unknown config field")
    return stage


def _run(stage: Stage, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    kind = stage.kind
    if kind == "simulator":
        return stage.simulate(2, rng, 0.2)
    if kind == "augmenter":
        return stage.augment(toy_training_set(), rng)
    if kind == "architecture":
        import torch

        torch.manual_seed(seed)
        net = stage.build(1, 2).eval()
        with torch.inference_mode():
            return net(torch.from_numpy(toy_frames(1, 37)[0][:, None]))
    if kind == "selector":
        preds = np.random.default_rng(seed).random((3, 2, 1, 32, 32)).astype(np.float32)
        return stage.select(preds, toy_frames(2, 32)[0], 0.2)
    if kind == "refiner":
        frames, atoms = toy_frames(2, 64)
        preds = np.clip(frames[None, :, None] * 1.2, 0, 1)
        selection = Selection(members=[0], scores=np.ones(1))
        return stage.refine(frames, preds, selection, atoms, rng, 0.2)
    if kind == "classifier":
        frames, atoms = toy_frames(2, 48)
        return stage.classify(frames, atoms, 0.2)
    if kind == "trainer":
        arch = _tiny_architecture()
        return stage.fit(toy_training_set(2, 32), arch, seed)
    raise AssertionError(f"no conformance run for kind {kind!r}")


def _tiny_architecture():
    from elit.plugins import default_registry

    return default_registry().get_stage("architecture", "compact-unet")()


def _assert_output(stage: Stage, out: Any) -> None:
    kind = stage.kind
    if kind in ("simulator", "augmenter"):
        assert isinstance(out, TrainingSet), f"{kind} must return a TrainingSet, got {type(out).__name__}"
        assert np.isfinite(out.images).all(), f"{kind} produced non-finite pixels"
    elif kind == "architecture":
        assert tuple(out.shape) == (1, 2, 37, 37), f"architecture output shape {tuple(out.shape)} != (1, 2, 37, 37)"
    elif kind == "selector":
        assert isinstance(out, Selection), "selector must return a Selection"
        assert len(out.scores) == 3, "selector must score every member"
    elif kind == "refiner":
        from elit.data import Refinement

        assert isinstance(out, Refinement), "refiner must return a Refinement"
    elif kind == "classifier":
        assert isinstance(out, AtomTable), "classifier must return an AtomTable"
        assert len(out) > 0 and out.class_index.max() < len(out.class_names)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, TrainingSet):
        return np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    if isinstance(a, Selection):
        return a.members == b.members and np.allclose(a.scores, b.scores)
    if isinstance(a, AtomTable):
        return all(np.allclose(x, y) for x, y in zip(a.to_columns().values(), b.to_columns().values()))
    if hasattr(a, "training_set"):
        return _same(a.training_set, b.training_set)
    if hasattr(a, "detach"):
        return bool((a - b).abs().max() < 1e-6)
    return True


def check_stage(cls: type[Stage], params: dict[str, Any] | None = None, run: bool = True) -> None:
    """Check a stage class: attributes, strict described Config, round trip, seeded determinism, outputs, no file I/O.

    Parameters
    ----------
    cls : type
        The stage class.
    params : dict, optional
        Settings to use (pick fast ones).
    run : bool
        Also run the stage on toy data (twice with one seed, once with another).
    """
    stage = check_config(cls, params)
    if not run:
        return
    with no_file_io():
        first = _run(stage, 1)
        second = _run(cls(stage.get_params()), 1)
    _assert_output(stage, first)
    assert _same(first, second), f"{cls.__name__}: the same seed gave different results"
