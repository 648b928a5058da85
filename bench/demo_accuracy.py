"""Accuracy and speed of the ELIT loop on the embedded datasets, against two baselines.

Usage: python bench/demo_accuracy.py [--case graphene] [--doses 5,10,30] [--set key=value ...]

For each dose, one JSON line: per iteration F1 / precision / recall / localisation RMSE / dopant
recall / atoms in the hole, the classical peak finder and a single simulation-trained network
(member 0 of iteration 0) scored the same way, the wall time of every stage (from the run file's
provenance), training member-steps per second and inference frames per second.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="graphene", choices=["graphene", "perovskite"])
    ap.add_argument("--doses", default="10", help="comma-separated electrons per pixel (graphene only)")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()

    from elit import experiments
    from elit.atoms import locate_atoms
    from elit.baselines import classical_atoms
    from elit.config import load_config
    from elit.demo import DEMO_OVERRIDES, atoms_in_holes, score
    from elit.pipeline import Pipeline
    from elit.store import RunStore

    doses = [float(d) for d in args.doses.split(",")] if args.case == "graphene" else [30.0]
    for dose in doses:
        exp = experiments.graphene_movie(seed=0, dose=dose) if args.case == "graphene" else experiments.perovskite_image(seed=0)
        config = load_config(recipe=args.case, overrides=DEMO_OVERRIDES[args.case] + args.set)
        rows = []

        def on_iteration(s, atoms):
            rows.append({"iteration": s.iteration, "kind": s.kind, "atoms": len(atoms),
                         **score(exp.truth, atoms, exp.pixel_size), "in_hole": atoms_in_holes(atoms, exp.hole_masks)})

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "run.h5"
            t0 = time.perf_counter()
            result = Pipeline(config).run(exp.frames, pixel_size=exp.pixel_size, store=path, on_iteration=on_iteration)
            wall = time.perf_counter() - t0
            store = RunStore.open(path, "r")
            stages, steps, train_s = {}, 0, 0.0
            for it in store.iterations():
                for kind, attrs in store.stages(it).items():
                    sec = (datetime.fromisoformat(attrs["finished"]) - datetime.fromisoformat(attrs["started"])).total_seconds()
                    stages[kind] = round(stages.get(kind, 0.0) + sec, 1)
                ens = store.read_ensemble(it)
                steps += sum(int(m.metrics.get("steps", 0)) for m in ens.members)
                train_s += sum(float(m.metrics.get("seconds", 0)) for m in ens.members)
            ens0 = store.read_ensemble(0)
            working = result.mean.shape[-2:]
            # single simulation-trained network: member 0 of iteration 0, same location rule
            preds0 = store.read_image("/iterations/iter_000/predict/member_probabilities")[:1]
            single = locate_atoms(preds0[0], threshold=config.iterations.threshold, class_names=ens0.class_names)
            factor = config.scale.pixel_size and exp.pixel_size / config.scale.pixel_size
            single = single.scaled(1.0 / factor)
            t1 = time.perf_counter()
            frames_w = np.zeros((len(exp.frames), *working), np.float32)
            result.ensemble.predict(frames_w)
            infer_s = time.perf_counter() - t1
        base = classical_atoms(exp.frames, exp.pixel_size)
        print(json.dumps({
            "case": args.case, "dose": dose, "frames": len(exp.frames), "wall_s": round(wall, 1),
            "iterations": rows,
            "classical": {**score(exp.truth, base, exp.pixel_size), "in_hole": atoms_in_holes(base, exp.hole_masks)},
            "single_network": {**score(exp.truth, single, exp.pixel_size), "in_hole": atoms_in_holes(single, exp.hole_masks)},
            "stage_seconds": stages,
            "train_member_steps_per_s": round(steps / train_s, 1) if train_s else None,
            "infer_frames_per_s": round(len(exp.frames) * len(result.ensemble) / infer_s, 1),
        }, default=float), flush=True)


if __name__ == "__main__":
    main()
