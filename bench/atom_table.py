"""Positions, classes and uncertainty of the atom table on the multislice benchmark (one JSON line per case).

For a movie of ``realistic_data`` (tuning seed 0 unless ``--final``) and each dose, the atoms
to refine come from a finished run file (``--run r.h5``: every finished iteration, as
``elit run`` wrote them) or, without one, from the truth plus Gaussian noise of
``--start-noise`` pixels (a stand-in for the network's error).  For each it reports, scored with
``realistic.score`` (one-to-one matches within 0.5 A, amorphous patch and edges left out):

* ``network``: the atoms as given; ``refined``: after :func:`elit.localize.refine_on_frames`
  on the raw frames; ``classified``: refined, then classes from the ``relative`` classifier on
  the raw frames (graphene: C/Si; perovskite: B/A) - RMSE, bias, Si recall/precision or the
  A/B accuracy;
* uncertainty, for the atoms as given and as classified: ROC AUC of ``uncertainty`` (and of the fit
  residual) for telling unmatched detections from matched ones, the expected calibration error of ``probability``, and of a
  :class:`elit.calibration.Calibration` fitted on the first half of the frames and tested on
  the second (the benchmark truth stands in for the simulated validation labels).

Use::

    python bench/atom_table.py --material graphene --doses 2e4 8e4 3e5
    python bench/atom_table.py --material graphene --doses 8e4 --run /path/to/r.h5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _names(material: str) -> list[str]:
    return ["C", "Si"] if material == "graphene" else ["B", "A"]


def uncertainty_figures(movie, atoms) -> dict:
    """ROC AUC and calibration of the atoms' uncertainty and probability against the movie's truth."""
    from elit.calibration import Calibration, atom_features, expected_calibration_error, label_atoms, roc_auc
    import realistic as rb

    keep = ~rb._in_mask(movie.amorphous_masks, atoms) & ~rb._near_edge(atoms, movie.frames.shape[1:])
    a = atoms.select(keep)
    correct, _ = label_atoms(a, movie.truth, rb.MATCH_A / movie.pixel_size)
    out = {"n_scored": int(len(a)), "n_false": int((~correct).sum())}
    if correct.all() or not correct.any():
        return out
    out["auc_uncertainty"] = roc_auc(a.uncertainty, ~correct)
    if a.fit_residual is not None:
        out["auc_fit_residual"] = roc_auc(np.nan_to_num(a.fit_residual, nan=np.nanmax(a.fit_residual)), ~correct)
    out["ece_probability"] = expected_calibration_error(np.clip(a.probability, 0, 1), correct)
    half = a.frame < (movie.frames.shape[0] // 2)
    feats = atom_features(a)
    if correct[half].all() or not correct[half].any():
        return out
    cal = Calibration.fit({k: v[half] for k, v in feats.items()}, correct[half])
    p = cal.predict({k: v[~half] for k, v in feats.items()})
    out["ece_calibrated_heldout_frames"] = expected_calibration_error(p, correct[~half])
    out["auc_calibrated_heldout_frames"] = roc_auc(-p, ~correct[~half])
    return out


def bench(movie, atoms, material: str, label: str) -> list[dict]:
    import realistic as rb
    from elit.localize import refine_on_frames
    from elit_builtins.classifiers import RelativeClassifier

    rows = []
    t0 = time.perf_counter()
    refined = refine_on_frames(movie.frames, atoms, movie.pixel_size)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    classified = RelativeClassifier(class_names=_names(material)).classify(movie.frames, refined, movie.pixel_size)
    t_cls = time.perf_counter() - t0
    for kind, table in (("network", atoms), ("refined", refined), ("classified", classified)):
        s = rb.score(movie, table)
        row = {"case": label, "positions": kind, **{k: s[k] for k in (
            "n_atoms", "precision", "recall", "rmse_A", "bias_x_A", "bias_y_A", "class", "class_true",
            "class_pred", "class_recall", "class_precision", "class_accuracy")}}
        if kind == "refined":
            row["fit_failed"] = float(np.mean(~np.isfinite(refined.fit_residual)))
            row["fit_seconds_per_frame"] = round(t_fit / movie.frames.shape[0], 3)
        if kind == "classified":
            row["classify_seconds"] = round(t_cls, 3)
        if kind in ("network", "classified"):  # the run's own table (x, y as reported), and the re-fitted one
            row.update(uncertainty_figures(movie, table))
        rows.append(row)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--material", default="graphene", choices=("graphene", "perovskite"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--final", action="store_true", help="allow the held-out seeds")
    ap.add_argument("--doses", type=float, nargs="+", default=[2e4, 8e4, 3e5])
    ap.add_argument("--regime", default="normal")
    ap.add_argument("--run", help="a finished elit run file on this movie and dose (else truth + noise)")
    ap.add_argument("--start-noise", type=float, default=0.7, help="pixels of Gaussian noise on the truth start")
    args = ap.parse_args(argv)

    import realistic_data as rd
    from elit.data import AtomTable

    for dose in args.doses:
        movie = rd.load_movie(args.material, args.seed, dose, regime=args.regime, final=args.final)
        if args.run:
            import realistic as rb

            its = rb.iterations_of(Path(args.run))
            cases = [(f"{movie.name} iteration {it} ({kind})", atoms) for it, kind, atoms, _ in its]
        else:
            t = movie.truth
            a = movie.amorphous
            rng = np.random.default_rng(0)
            both = AtomTable.concatenate([t, AtomTable(a.frame, a.row, a.col, np.zeros(len(a)), np.ones(len(a)),
                                                       np.zeros(len(a)), class_names=t.class_names)])
            start = both.select(slice(None))
            start.row = both.row + rng.normal(0, args.start_noise, len(both))
            start.col = both.col + rng.normal(0, args.start_noise, len(both))
            start.class_index = np.zeros(len(both), dtype=np.int64)
            cases = [(f"{movie.name} truth+{args.start_noise}px", start)]
        for label, atoms in cases:
            for row in bench(movie, atoms, args.material, label):
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
