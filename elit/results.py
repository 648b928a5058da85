"""Working with finished runs: export atoms, apply a trained ensemble to new data, re-select members."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from elit.data import AtomTable
from elit.errors import StoreError

log = logging.getLogger("elit")

CSV_COLUMNS = (
    "frame", "x", "y", "class", "probability", "uncertainty", "class_name",
    "x_network", "y_network", "position", "class_probability", "x_refined", "y_refined",
    "x_frame", "y_frame", "n_averaged", "filled",
)
"""Columns of ``elit atoms`` output: x = column, y = row, in the input's own pixels.

``x, y`` are the positions the run reports (``locate.positions``), or those asked for with
``--positions``: ``refined`` (a Gaussian fit on the raw frame, :mod:`elit.localize`) or
``network`` (the ensemble's); ``position`` says per atom which of them ``x, y`` are (``network``
where there was no fit or it failed).  ``x_network, y_network`` and ``x_refined, y_refined``
always hold both (the refined ones empty where there was no fit).  ``class_probability`` is the
classifier's probability of the class (empty when unknown).  In a movie the run's ``x, y`` average
each atom over the frames where it was seen again in the same place (``locate.average_frames``,
:mod:`elit.temporal`): ``n_averaged`` says over how many frames (1: this frame alone, as always with
``--positions``), and ``x_frame, y_frame`` hold this frame's own position of the kind ``position`` names.
``filled`` is 1 for an atom this frame's detection missed and the frames around it saw
(``locate.fill_gaps``; its position is theirs, mapped into this frame), else 0.
"""

POSITIONS = ("refined", "network")


def rejected_iterations(store) -> list[int]:
    """Iterations that the retraining guard (:mod:`elit.guard`) rejected: they stay in the file, not in the result."""
    out = []
    for it in store.iterations():
        if store.stage_complete(it, "guard"):
            if not store.read_json(f"/iterations/iter_{it:03d}/guard/decision").get("accepted", True):
                out.append(it)
    return out


def resolve_iteration(store, iteration: int | str = "last") -> int:
    """Turn ``"last"`` or a number into an iteration whose prediction step finished.

    ``"last"`` is the run's result: the last finished iteration that the guard did not reject.
    """
    finished = [it for it in store.iterations() if store.stage_complete(it, "predict")]
    if not finished:
        raise StoreError(f"{store.path} holds no finished iteration yet")
    if iteration in ("last", None):
        rejected = set(rejected_iterations(store))
        accepted = [it for it in finished if it not in rejected]
        return (accepted or finished)[-1]
    try:
        it = int(iteration)
    except (TypeError, ValueError):
        raise StoreError(f"iteration must be a number or 'last', got {iteration!r}") from None
    if it not in finished:
        raise StoreError(f"iteration {it} is not finished in {store.path}; finished: {finished}")
    return it


def read_atoms(result: str | Path, iteration: int | str = "last") -> AtomTable:
    """Atoms of one iteration, in the input's own pixels."""
    from elit.store import RunStore

    store = RunStore.open(result, mode="r")
    it = resolve_iteration(store, iteration)
    return store.read_table(f"/iterations/iter_{it:03d}/predict/atoms")


def write_atoms_csv(atoms: AtomTable, out: str | Path, positions: str | None = None) -> int:
    """Write an atom table as CSV with :data:`CSV_COLUMNS`; return the number of rows.

    ``positions`` chooses ``x, y``: None keeps the table's own (what the run reports),
    ``"refined"`` the raw-frame fit where there is one (else the network's), ``"network"`` the network's
    (both this frame's own, not averaged over frames).
    """
    if positions is not None and positions not in POSITIONS:
        raise StoreError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    n = len(atoms)
    has_net = atoms.row_network is not None and atoms.col_network is not None
    net_r = atoms.row_network if has_net else atoms.row
    net_c = atoms.col_network if has_net else atoms.col
    if atoms.row_refined is not None and atoms.col_refined is not None:
        ref_r, ref_c = atoms.row_refined, atoms.col_refined
    elif has_net:  # tables written before both positions were kept: row, col were the fit's where it differed
        fitted = np.isfinite(atoms.fit_residual) if atoms.fit_residual is not None else np.ones(n, bool)
        moved = fitted & ((atoms.row != net_r) | (atoms.col != net_c))
        ref_r, ref_c = np.where(moved, atoms.row, np.nan), np.where(moved, atoms.col, np.nan)
    else:
        ref_r = ref_c = np.full(n, np.nan)
    has_fit = np.isfinite(ref_r) & np.isfinite(ref_c)
    averaged = atoms.row_frame is not None and atoms.col_frame is not None and atoms.n_averaged is not None
    frame_r = atoms.row_frame if averaged else atoms.row
    frame_c = atoms.col_frame if averaged else atoms.col
    n_avg = np.ones(n, dtype=np.int64)
    filled = (np.nan_to_num(atoms.filled) > 0) if atoms.filled is not None else np.zeros(n, dtype=bool)
    if positions == "network":
        rows, cols, refined = net_r, net_c, np.zeros(n, dtype=bool)
    elif positions == "refined":
        rows, cols, refined = np.where(has_fit, ref_r, net_r), np.where(has_fit, ref_c, net_c), has_fit
    else:
        rows, cols = atoms.row, atoms.col
        refined = has_fit & (frame_r == ref_r) & (frame_c == ref_c) & ((ref_r != net_r) | (ref_c != net_c))
        if averaged:
            n_avg = np.nan_to_num(atoms.n_averaged, nan=1.0).astype(np.int64)
    cprob = atoms.class_probability

    def num(v: float, fmt: str = ".3f") -> str:
        return format(v, fmt) if np.isfinite(v) else ""

    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for i in range(n):
            k = int(atoms.class_index[i])
            w.writerow(
                [
                    int(atoms.frame[i]),
                    f"{cols[i]:.3f}",
                    f"{rows[i]:.3f}",
                    k,
                    f"{atoms.probability[i]:.4f}",
                    f"{atoms.uncertainty[i]:.4f}",
                    atoms.class_names[k] if k < len(atoms.class_names) else str(k),
                    f"{net_c[i]:.3f}",
                    f"{net_r[i]:.3f}",
                    "refined" if refined[i] else "network",
                    num(cprob[i], ".4f") if cprob is not None else "",
                    num(ref_c[i]),
                    num(ref_r[i]),
                    f"{frame_c[i]:.3f}",
                    f"{frame_r[i]:.3f}",
                    int(n_avg[i]),
                    int(filled[i]),
                ]
            )
    tmp.replace(out)
    return n


def export_atoms_csv(result: str | Path, out: str | Path, iteration: int | str = "last",
                     positions: str | None = None) -> int:
    """Write the atoms of one iteration of a run file as CSV; return the number of atoms."""
    return write_atoms_csv(read_atoms(result, iteration), out, positions=positions)


def load_ensemble(result: str | Path, iteration: int | str = "last"):
    """The trained ensemble of one iteration of a run file, with the run's config."""
    from elit.config import PipelineConfig
    from elit.store import RunStore

    store = RunStore.open(result, mode="r")
    it = resolve_iteration(store, iteration)
    config = PipelineConfig.model_validate(store.read_config())
    return store.read_ensemble(it), config, it


def predict_file(
    result: str | Path,
    data: str,
    out: str | Path,
    iteration: int | str = "last",
    pixel_size: float | None = None,
    overwrite: bool = False,
    device: str | None = None,
) -> int:
    """Apply a run's trained ensemble to new data and write a prediction file; return the atom count."""
    from elit.devices import resolve_device
    from elit.pipeline import (
        combine_members, finish_atoms, finishing_classifier, predict_step_info, prepare_frames, write_predictions,
    )
    from elit.readers import read_image
    from elit.store import RunStore
    from elit.store.precision import ProbabilityMaps

    ensemble, config, it = load_ensemble(result, iteration)
    image = read_image(data)
    working, input_px, factor = prepare_frames(image.frames, pixel_size or image.pixel_size, config.scale)
    dev = resolve_device(device or config.device)
    parts = ensemble.predict_chunks(working, chunk=config.store.frames_per_chunk, device=dev)  # bounded memory
    preds = ProbabilityMaps.from_chunks(_chunk_progress(parts, len(working)), len(working), config.store.probabilities)
    mean, std, atoms = combine_members(ensemble, preds, None, config.iterations.threshold,
                                       **config.locate.blob_options())
    atoms, location = finish_atoms(atoms, image.frames, input_px, config.scale.pixel_size, config.locate,
                                   finishing_classifier(config))
    store = RunStore.create(out, overwrite=overwrite)
    cfg = config.model_dump(mode="json")
    cfg["scale"]["input_pixel_size"] = input_px
    store.write_config(cfg)
    store.write_input("frames", image.frames, pixel_size=input_px, source=image.source, sha256=image.sha256, metadata=image.metadata)
    used = [f"{Path(result).name}:/iterations/iter_{it:03d}/trainer/ensemble", "/inputs/frames"]
    info = predict_step_info(
        {"threshold": config.iterations.threshold, "model_file": str(result), "model_iteration": it}, used
    )
    with store.stage(0, "predict", info) as st:
        write_predictions(st, preds, mean, std, atoms, config.scale.pixel_size, factor, used)
        st.add_json("location", location)
    return len(atoms)


def _chunk_progress(parts, n_frames: int):
    """``parts`` (frame chunks of predictions) passed through, with a progress bar over the frames."""
    from tqdm.auto import tqdm

    with tqdm(total=n_frames, desc="frames", unit="frame", disable=None) as bar:
        for sl, pred in parts:
            yield sl, pred
            bar.update(sl.stop - sl.start)


def continue_with_members(result: str | Path, members: list[int]):
    """Choose iteration 0's members by hand and continue the run from there (the ``manual`` selector).

    Everything after iteration 0's training is discarded and redone with the
    ``manual`` selector keeping ``members``.
    """
    from elit.config import load_config
    from elit.pipeline import Pipeline
    from elit.store import RunStore

    if not members:
        raise StoreError("give at least one member index")
    store = RunStore.open(result, mode="a")
    if not store.stage_complete(0, "trainer"):
        raise StoreError(f"{result}: iteration 0's ensemble is not trained yet; nothing to select from")
    n = len(store.read_ensemble(0))
    bad = [m for m in members if m < 0 or m >= n]
    if bad:
        raise StoreError(f"members {bad} do not exist: the ensemble has members 0..{n - 1}")
    raw = store.read_config()
    raw["selector"] = {"name": "manual", "params": {"members": members}}
    config = load_config(raw=raw)
    store.discard_from(0, "selector")
    store.write_config(config.model_dump(mode="json"), overwrite=True)  # the selector changed: record it
    log.info("continuing %s with members %s", result, members)
    return Pipeline(config).run(store=result, resume=True)
