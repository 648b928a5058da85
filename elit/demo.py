"""The embedded demo: the paper's two cases end to end on data elit generates itself.

The "experiment" is rendered with different image physics than the training
simulator (a probe with tails, scan noise and drift, Poisson noise, a growing
hole, an amorphous patch), and its exact ground truth is kept aside to score
every iteration.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from elit.errors import ElitError

log = logging.getLogger("elit")

MATCH_DISTANCE_A = 0.5
"""Largest distance (Angstrom) between a found and a true atom to count as a match."""

DEMO_OVERRIDES = {
    "graphene": ["trainer.params.steps=100", "trainer.params.warm_steps=40", "iterations.max_iterations=1"],
    "perovskite": ["trainer.params.steps=100", "trainer.params.warm_steps=40", "iterations.max_iterations=1"],
}
"""Settings that keep the demo within a few minutes on a 2-core laptop."""

OUTPUTS = ("result.h5", "atoms.csv", "summary.json", "report")


def make_experiment(case: str, seed: int = 0):
    """The embedded dataset of one demo case."""
    from elit import experiments

    if case == "graphene":
        return experiments.graphene_movie(seed=seed)
    if case == "perovskite":
        return experiments.perovskite_image(seed=seed)
    raise ElitError(f"unknown demo case {case!r}; cases: graphene, perovskite")


def atoms_in_holes(atoms, hole_masks) -> int:
    """Number of found atoms that lie inside the experiment's holes."""
    if hole_masks is None or len(atoms) == 0:
        return 0
    n, h, w = hole_masks.shape
    r = np.clip(np.round(atoms.row).astype(int), 0, h - 1)
    c = np.clip(np.round(atoms.col).astype(int), 0, w - 1)
    f = np.clip(atoms.frame, 0, n - 1)
    return int(hole_masks[f, r, c].sum())


def score(truth, atoms, pixel_size: float) -> dict:
    """F1, precision, recall, localisation RMSE (Angstrom) and dopant recall against the truth."""
    from elit.metrics import detection_scores

    s = detection_scores(truth, atoms, MATCH_DISTANCE_A / pixel_size)
    out = {
        "f1": float(s["f1"]),
        "precision": float(s["precision"]),
        "recall": float(s["recall"]),
        "rmse_A": float(s["rmse"]) * pixel_size if np.isfinite(s["rmse"]) else float("nan"),
    }
    per_class = s.get("recall_per_class") or {}
    if len(truth.class_names) > 1:
        minority = truth.class_names[-1]
        out[f"{minority}_recall"] = float(per_class.get(minority, float("nan")))
        as_class = s.get("class_recall_per_class") or {}
        out[f"{minority}_as_{minority}"] = float(as_class.get(minority, 0.0))
    return out


def run_demo(
    case: str = "graphene",
    out: Path = Path("elit-demo"),
    overwrite: bool = False,
    overrides: list[str] = (),
) -> int:
    """Run one demo case, write its files into ``out`` and print the summary table."""
    from elit.baselines import classical_atoms
    from elit.config import load_config
    from elit.pipeline import Pipeline
    from elit.report import write_report
    from elit.results import write_atoms_csv

    out = Path(out)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise ElitError(f"{out} already holds demo results ({', '.join(existing)}); pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    exp = make_experiment(case)
    config = load_config(recipe=case, overrides=DEMO_OVERRIDES[case] + list(overrides))
    np.save(out / "input.npy", exp.frames, allow_pickle=False)
    print(f"elit demo ({case}): {len(exp.frames)} frame(s) of {exp.frames.shape[1]}x{exp.frames.shape[2]} px at "
          f"{exp.pixel_size} A/px; training on simulations, then on the data itself", flush=True)

    rows = []
    t_iter = time.perf_counter()

    def on_iteration(summary, atoms):
        nonlocal t_iter
        row = {"iteration": summary.iteration, "kind": summary.kind, "atoms": len(atoms)}
        row.update(score(exp.truth, atoms, exp.pixel_size))
        row["in_hole"] = atoms_in_holes(atoms, exp.hole_masks)
        row["seconds"] = round(time.perf_counter() - t_iter, 1)
        t_iter = time.perf_counter()
        rows.append(row)
        print(_format_row(row, header=len(rows) == 1), flush=True)

    result = Pipeline(config).run(
        exp.frames, pixel_size=exp.pixel_size, store=out / "result.h5", overwrite=True, on_iteration=on_iteration,
        source={"source": f"elit.experiments ({case}, seed 0)", "metadata": exp.description},
    )
    baseline = {"iteration": "classical", "kind": "peak finder"}
    base_atoms = classical_atoms(exp.frames, exp.pixel_size)
    baseline.update({"atoms": len(base_atoms), **score(exp.truth, base_atoms, exp.pixel_size)})
    baseline.update({"in_hole": atoms_in_holes(base_atoms, exp.hole_masks), "seconds": 0.0})
    rows.append(baseline)
    print(_format_row(baseline), flush=True)

    write_atoms_csv(result.atoms, out / "atoms.csv")
    figures = write_report(out / "result.h5", out / "report", html=True, extra_rows=rows)
    total = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps({"case": case, "rows": rows, "seconds": round(total, 1)}, indent=2, default=str))
    print(f"\nfinished in {total:.0f} s. Files:")
    for p in [out / "result.h5", out / "atoms.csv", out / "summary.json", *figures]:
        print(f"  {p}")
    return 0


def _format_row(row: dict, header: bool = False) -> str:
    keys = [k for k in row if k not in ("kind",)]
    head = "  ".join(f"{k:>12}" for k in keys)
    vals = "  ".join(f"{row[k]:>12.3f}" if isinstance(row[k], float) else f"{str(row[k]):>12}" for k in keys)
    return (head + "\n" + vals) if header else vals
