"""Realistic benchmark: run the recipes as a user does on multislice movies and score every iteration.

For every movie (``realistic_data``) and dose it writes ``frames.npy``, runs

    elit run --recipe graphene --data frames.npy --pixel-size 0.1 --out r.h5

(``--recipe perovskite`` for SrTiO3) in a subprocess, reads every finished
iteration's atoms from ``r.h5`` and scores them against the exact truth:

* F1, precision, recall: one-to-one matches within 0.5 A (:func:`elit.metrics.match_atoms`);
* RMSE and mean bias (x, y) of the matched positions, Angstrom (the run's own `x, y`; "frame": each
  frame's own positions, before `locate.average_frames` averages an atom over the frames it was seen in);
* graphene: Si recall and precision by class (the predicted class named ``Si``, else the
  brighter predicted class); perovskite: A/B class accuracy (names ``A``/``B``, else brightness);
* atoms in the hole (false detections, as counted in precision, inside the hole mask) and
  detections on the amorphous patch, per frame.

Left out of scoring ("don't care"): true lattice atoms inside the amorphous mask (the patch
outline + 0.5 A); unmatched detections inside it, or within 0.5 A of such an atom or of an amorphous
atom (a don't-care atom found just outside the outline); unmatched true atoms and detections within
``EDGE_PX`` of the frame border (the periodic frame shows half an atom on both sides); and in
SrTiO3 unmatched detections within 0.5 A of a pure-O column (O columns are not truth).

The conventional baseline (``--recipe conventional``) runs in the same loop with the augmenter's
Poisson noise set per movie (:func:`conventional_overrides`); for SrTiO3 it simulates Gaussian
perovskite columns instead of graphene, with the widths and B/A contrast a careful user measures
once on the data (:data:`CONVENTIONAL_MATERIAL`).

Use
---
    python bench/realistic.py --doses 8e4 --json out.json              # tuning seeds
    python bench/realistic.py --final --json heldout.json              # held-out seeds, every dose
    python bench/realistic.py --final --seeds 104 --materials graphene # one held-out seed
    python bench/realistic.py --final --reuse-conventional ...         # conventional trained once per dose
    python bench/realistic.py --doses 2e4 --pixel-size 0.075           # frames sampled finer (default 0.1 A/px)
    python bench/realistic.py --real                                   # no-collapse check on real images
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realistic_data as rd  # noqa: E402
from elit.data import AtomTable  # noqa: E402
from elit.metrics import match_atoms  # noqa: E402

MATCH_A = 0.5
"""Largest distance of a match, Angstrom."""

EDGE_PX = 3.0
"""Unmatched atoms this close to the frame border (pixels) are neither missed nor invented."""

RECIPES = {"graphene": "graphene", "perovskite": "perovskite"}

QUICK_CONVENTIONAL = [
    "trainer.params.steps=150", "trainer.params.min_steps=100", "iterations.n_simulated=96",
]
"""``--quick``: the conventional baseline trains ~8x shorter than its recipe (about 2-3 min instead of ~20)."""

CONVENTIONAL_MATERIAL = {
    "graphene": [],
    "perovskite": [
        "scale.lattice=perovskite", "simulator.name=lattice",
        # peak sigma 0.27 A for both sites, B/A peak ratio 0.29, measured on tuning seed 0's noise-free frame
        "simulator.params.atom_sigma_range=[0.15,0.2]", "simulator.params.probe_sigma_range=[0.15,0.2]",
        "simulator.params.b_site_ratio_range=[0.25,0.4]", "simulator.params.second_phase_probability=0",
        # the B columns are ~0.4x as bright as A: keep them, as the perovskite recipe does (with the default 0.4 the
        # faint-atom filter, which AtomAI does not have, dropped every B column of held-out seed 105)
        "locate.faint_fraction=0.15",
    ],
}
"""The conventional recipe's simulator set to each material, as a careful user sets it by hand."""

REAL_IMAGES = {
    "graphene": sorted(str(p) for p in Path("/work/shared/data/real/graphene").glob("*.hdf5")),
    "perovskite": ["/work/shared/data/real/srtio3/test_ADF_cropped.hdf5"],
}


# ------------------------------------------------------------------------------------ scoring


def _in_mask(masks: np.ndarray, table: AtomTable) -> np.ndarray:
    """Whether each atom's nearest pixel lies in its frame's mask."""
    if len(table) == 0:
        return np.zeros(0, dtype=bool)
    _, h, w = masks.shape
    r = np.clip(np.rint(table.row).astype(int), 0, h - 1)
    c = np.clip(np.rint(table.col).astype(int), 0, w - 1)
    return masks[table.frame, r, c]


def _near_edge(table: AtomTable, shape) -> np.ndarray:
    h, w = shape
    return (table.row < EDGE_PX - 0.5) | (table.col < EDGE_PX - 0.5) | (table.row > h - 0.5 - EDGE_PX) | (table.col > w - 0.5 - EDGE_PX)


def _near_points(table: AtomTable, points: AtomTable, radius_px: float) -> np.ndarray:
    out = np.zeros(len(table), dtype=bool)
    if len(points) == 0:
        return out
    from scipy.spatial import cKDTree

    for f in np.unique(table.frame):
        i = np.flatnonzero(table.frame == f)
        p = points.positions()[points.frame == f]
        if len(p):
            d, _ = cKDTree(p).query(table.positions()[i])
            out[i] = d <= radius_px
    return out


def _bright_class(pred: AtomTable, frames: np.ndarray, wanted: str) -> int | None:
    """Index of the predicted class named ``wanted``, else of the brightest class; None with one class."""
    if wanted in pred.class_names:
        return pred.class_names.index(wanted)
    present = np.unique(pred.class_index)
    if len(pred.class_names) < 2 or len(present) < 2:
        return None
    if pred.intensity is not None and np.isfinite(pred.intensity).any():
        level = pred.intensity
    else:
        from scipy import ndimage

        smooth = np.stack([ndimage.gaussian_filter(f.astype(np.float64), 2.0) for f in frames])
        r = np.clip(np.rint(pred.row).astype(int), 0, frames.shape[1] - 1)
        c = np.clip(np.rint(pred.col).astype(int), 0, frames.shape[2] - 1)
        level = smooth[pred.frame, r, c]
    means = {k: np.nanmean(level[pred.class_index == k]) for k in present}
    return int(max(means, key=means.get))


def score(movie, pred: AtomTable) -> dict:
    """Score one iteration's atoms against the movie's truth (see the module docstring)."""
    ps = movie.pixel_size
    truth = movie.truth
    shape = movie.frames.shape[1:]
    t_keep = ~_in_mask(movie.amorphous_masks, truth)
    p_in_patch = _in_mask(movie.amorphous_masks, pred)
    p_in_hole = _in_mask(movie.hole_masks, pred)
    p_on_oxygen = _near_points(pred, movie.oxygen, MATCH_A / ps)
    # a detection of a don't-care atom (a lattice atom inside the mask, or an amorphous atom) that lies
    # just outside the mask's outline is not a false atom either
    ignored = AtomTable.concatenate([truth.select(~t_keep), movie.amorphous], class_names=("ignored",))
    p_on_ignored = _near_points(pred, ignored, MATCH_A / ps)
    t_edge, p_edge = _near_edge(truth, shape), _near_edge(pred, shape)
    n_frames = movie.frames.shape[0]
    t_matched = np.zeros(len(truth), dtype=bool)
    p_matched = np.zeros(len(pred), dtype=bool)
    partner = np.full(len(truth), -1)
    dists, offsets, frame_dists = [], [], []
    own = (np.stack([pred.row_frame, pred.col_frame], axis=1) if pred.row_frame is not None and pred.col_frame is not None
           else pred.positions())  # each frame's own positions, before averaging over frames
    for f in range(n_frames):
        ti = np.flatnonzero((truth.frame == f) & t_keep)
        pi = np.flatnonzero(pred.frame == f)
        pairs, d = match_atoms(truth.positions()[ti], pred.positions()[pi], MATCH_A / ps)
        if len(pairs):
            a, b = ti[pairs[:, 0]], pi[pairs[:, 1]]
            t_matched[a], p_matched[b], partner[a] = True, True, b
            dists.append(d)
            offsets.append(pred.positions()[b] - truth.positions()[a])
            frame_dists.append(np.hypot(*(own[b] - truth.positions()[a]).T))
    fn_mask = t_keep & ~t_matched & ~t_edge
    fp_mask = ~p_matched & ~p_in_patch & ~p_edge & ~p_on_oxygen & ~p_on_ignored
    tp, fp, fn = int(t_matched.sum()), int(fp_mask.sum()), int(fn_mask.sum())
    d = np.concatenate(dists) if dists else np.zeros(0)
    off = np.concatenate(offsets) if offsets else np.zeros((0, 2))
    out = {
        "n_atoms": len(pred), "n_true": int((t_keep & ~(t_edge & ~t_matched)).sum()),
        "tp": tp, "fp": fp, "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
        "rmse_A": float(np.sqrt(np.mean(d**2)) * ps) if len(d) else float("nan"),
        "rmse_frame_A": float(np.sqrt(np.mean(np.concatenate(frame_dists) ** 2)) * ps) if len(d) else float("nan"),
        "bias_x_A": float(off[:, 1].mean() * ps) if len(off) else float("nan"),
        "bias_y_A": float(off[:, 0].mean() * ps) if len(off) else float("nan"),
        "f1_per_frame": [],
        "hole_atoms_per_frame": [], "patch_atoms_per_frame": [], "patch_true_per_frame": [],
    }
    for f in range(n_frames):
        tpf = int((t_matched & (truth.frame == f)).sum())
        fpf = int((fp_mask & (pred.frame == f)).sum())
        fnf = int((fn_mask & (truth.frame == f)).sum())
        out["f1_per_frame"].append(2 * tpf / (2 * tpf + fpf + fnf) if tpf + fpf + fnf else float("nan"))
        out["hole_atoms_per_frame"].append(int((p_in_hole & fp_mask & (pred.frame == f)).sum()))
        out["patch_atoms_per_frame"].append(int((p_in_patch & (pred.frame == f)).sum()))
        out["patch_true_per_frame"].append(int((movie.amorphous.frame == f).sum()))
    out["hole_atoms"] = int(sum(out["hole_atoms_per_frame"]))
    out["oxygen_detections"] = int((p_on_oxygen & ~p_matched).sum())
    # classes: the truth's minority/dopant class against the predicted class of that name, else the brightest
    wanted = "Si" if "Si" in truth.class_names else truth.class_names[0]
    k_true = truth.class_names.index(wanted)
    k_pred = _bright_class(pred, movie.frames, wanted)
    true_k = t_keep & (truth.class_index == k_true) & ~(t_edge & ~t_matched)
    out["class"] = wanted
    out["class_true"] = int(true_k.sum())
    out["class_found_any"] = int((true_k & t_matched).sum())
    if k_pred is None:
        out.update(class_recall=float("nan"), class_precision=float("nan"), class_accuracy=float("nan"), class_pred=0)
        return out
    pred_k = pred.class_index == k_pred
    hit = true_k & t_matched
    hit_as_k = np.zeros(len(truth), dtype=bool)
    hit_as_k[hit] = pred_k[partner[hit]]
    pk_counted = pred_k & (p_matched | fp_mask)
    pk_true = np.zeros(len(pred), dtype=bool)
    pk_true[partner[hit]] = pred_k[partner[hit]]
    matched_t = np.flatnonzero(t_matched)
    same = (truth.class_index[matched_t] == k_true) == pred_k[partner[matched_t]]
    out.update(
        class_pred=int(pk_counted.sum()),
        class_recall=float(hit_as_k.sum() / true_k.sum()) if true_k.any() else float("nan"),
        class_precision=float(pk_true.sum() / pk_counted.sum()) if pk_counted.any() else float("nan"),
        class_accuracy=float(same.mean()) if len(same) else float("nan"),
    )
    return out


# ------------------------------------------------------------------------------------- running


def conventional_overrides(movie) -> list[str]:
    """The conventional baseline's noise, set by hand to the movie (as a careful user would).

    The user measures, on the movie, the counts of a typical carbon atom above the background
    and the background itself.  Here they come from the noise-free expected counts at the true
    atoms (what a careful user approaches by averaging clicked atoms): ``contrast`` = median
    counts inside the 0.5 A label discs of the true atoms minus the 5th percentile of the frame,
    ``level`` = that 5th percentile / contrast.  The augmenter then adds Poisson noise of
    ``dose_range = contrast x (0.75, 1.33)`` counts per typical atom (``dose_reference: atoms``)
    on a background of ``level x (0.75, 1.33)`` in every training image.  The networks work at the
    movie's own pixel size (``scale.pixel_size``, the recipe's 0.1 A/px unless the movie has another).
    """
    clean = movie.clean
    from elit.masks import label_map

    labels = np.stack([
        label_map(movie.truth.positions()[movie.truth.frame == f], np.zeros(int((movie.truth.frame == f).sum()), dtype=np.int64),
                  clean.shape[1:], 0.5 / movie.pixel_size)
        for f in range(len(clean))
    ])
    bg = float(np.percentile(clean, 5.0))
    contrast = max(float(np.median(clean[labels == 1])) - bg, 1e-6)
    level = bg / contrast
    return [
        f"augmenter.params.dose_range=[{0.75 * contrast:.4g},{1.33 * contrast:.4g}]",
        f"augmenter.params.poisson_background_range=[{0.75 * level:.4g},{1.33 * level:.4g}]",
    ] + ([] if movie.pixel_size == rd.PIXEL_SIZE else [f"scale.pixel_size={movie.pixel_size:g}"])


def run_elit(frames_npy: Path, recipe: str, out: Path, sets: list[str], log: Path, pixel_size: float = rd.PIXEL_SIZE) -> float:
    """``elit run`` as a user types it; returns the wall seconds; raises with the log's tail on failure."""
    elit = Path(sys.executable).with_name("elit")
    cmd = [str(elit), "run", "--recipe", recipe, "--data", str(frames_npy), "--pixel-size", f"{pixel_size:g}",
           "--out", str(out), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"elit run failed ({rc}): {' '.join(cmd)}\n" + "\n".join(tail))
    return wall


def iterations_of(result: Path) -> list[tuple[int, str, AtomTable, float | None]]:
    """``(iteration, kind, atoms, seconds)`` of every finished iteration of a run file.

    ``kind`` is ``"rejected"`` for an iteration the guard rejected (it stays in the file; the run's result is
    the last iteration that is not).
    """
    from elit.store import RunStore

    store = RunStore.open(result, mode="r")
    summary = {int(r["iteration"]): r for r in store.read_summary()}
    out = []
    for it in store.iterations():
        if not store.stage_complete(it, "predict"):
            continue
        atoms = store.read_table(f"/iterations/iter_{it:03d}/predict/atoms")
        row = summary.get(it, {})
        kind = str(row.get("kind", "")) if row.get("accepted", True) else "rejected"  # by the guard: not the result
        out.append((it, kind, atoms, row.get("seconds")))
    return out


def predict_elit(model: Path, frames_npy: Path, out: Path, log: Path, pixel_size: float = rd.PIXEL_SIZE) -> float:
    """``elit predict MODEL frames.npy`` (a trained ensemble applied to new data); returns the wall seconds."""
    elit = Path(sys.executable).with_name("elit")
    cmd = [str(elit), "predict", str(model), str(frames_npy), "--pixel-size", f"{pixel_size:g}", "--out", str(out),
           "--overwrite"]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"elit predict failed ({rc}): {' '.join(cmd)}\n" + "\n".join(log.read_text().splitlines()[-15:]))
    return time.perf_counter() - t0


def bench_movie(movie, recipe: str, workdir: Path, sets: list[str], label: str, model: Path | None = None) -> list[dict]:
    """Run (or, with ``model``, apply that run's ensemble to) one movie and score every iteration."""
    d = workdir / movie.name / label
    d.mkdir(parents=True, exist_ok=True)
    frames = rd.save_npy(movie, d)
    if model is None:
        wall = run_elit(frames, recipe, d / "r.h5", sets, d / "elit.log", movie.pixel_size)
    else:
        wall = predict_elit(model, frames, d / "r.h5", d / "elit.log", movie.pixel_size)
        sets = [f"predict with {model}"]
    rows = []
    for it, kind, atoms, seconds in iterations_of(d / "r.h5"):
        s = score(movie, atoms)
        s.update(movie=movie.name, material=movie.info["material"], seed=movie.info["seed"], dose=movie.info["dose"],
                 regime=movie.info["regime"], method=label, iteration=it, kind=kind, seconds=seconds, run_wall_s=wall,
                 overrides=sets)
        rows.append(s)
    return rows


def print_rows(rows: list[dict]) -> None:
    head = (f"{'movie':<28} {'method':<13} {'it':>2} {'kind':<10} {'F1':>6} {'prec':>6} {'rec':>6} {'RMSE A':>7} {'frame':>6} "
            f"{'bias x,y A':>13} {'cls':>3} {'c.rec':>6} {'c.prec':>6} {'hole':>4} {'patch/frame':<18} {'atoms':>6} {'s':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['movie']:<28} {r['method']:<13} {r['iteration']:>2} {r['kind'][:10]:<10} {r['f1']:6.3f} {r['precision']:6.3f} "
              f"{r['recall']:6.3f} {r['rmse_A']:7.3f} {r.get('rmse_frame_A', r['rmse_A']):6.3f} {r['bias_x_A']:+6.3f},{r['bias_y_A']:+6.3f} {r['class'][:3]:>3} "
              f"{r['class_recall']:6.3f} {r['class_precision']:6.3f} {r['hole_atoms']:>4} "
              f"{','.join(str(x) for x in r['patch_atoms_per_frame']):<18} {r['n_atoms']:>6} "
              f"{(r['seconds'] or float('nan')):6.0f}", flush=True)


SUFFIX = ", rejected"


def real_check(workdir: Path) -> list[dict]:
    """Run the graphene and perovskite recipes on the real images and report atoms per iteration."""
    rows = []
    for material, paths in REAL_IMAGES.items():
        for path in paths:
            d = workdir / "real" / Path(path).stem
            d.mkdir(parents=True, exist_ok=True)
            elit = Path(sys.executable).with_name("elit")
            cmd = [str(elit), "run", "--recipe", RECIPES[material], "--data", path, "--out", str(d / "r.h5"), "--overwrite"]
            t0 = time.perf_counter()
            with open(d / "elit.log", "w") as fh:
                rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
            wall = time.perf_counter() - t0
            counts = [] if rc else [(it, kind, len(a)) for it, kind, a, _ in iterations_of(d / "r.h5")]
            result_atoms, rejected, guard = None, [], {}
            if not rc:
                from elit.results import read_atoms, rejected_iterations
                from elit.store import RunStore

                store = RunStore.open(d / "r.h5", mode="r")
                rejected = rejected_iterations(store)
                guard = {it: store.read_json(f"/iterations/iter_{it:03d}/guard/decision")
                         for it in store.iterations() if store.stage_complete(it, "guard")}
                result_atoms = len(read_atoms(d / "r.h5"))
            # an unconfirmed loss of > 20 % is one that became (or stayed in) the result
            accepted = [c for c in counts if c[0] not in rejected]
            drops = [b[2] < 0.8 * a[2] for a, b in zip(accepted, accepted[1:])]
            row = dict(image=path, recipe=RECIPES[material], rc=rc, wall_s=wall, atoms=counts, rejected=rejected,
                       result_atoms=result_atoms, guard=guard, drop_over_20pct_in_result=any(drops))
            print(f"{Path(path).name:<30} {RECIPES[material]:<10} rc={rc} atoms per iteration "
                  f"{' -> '.join(f'{n} ({k}{SUFFIX if it in rejected else str()})' for it, k, n in counts)}"
                  f"; result {result_atoms}{'  DROP > 20 % IN THE RESULT' if any(drops) else ''}  {wall:.0f} s",
                  flush=True)
            for it, g in guard.items():
                print(f"    guard iteration {it} ({g.get('step')}): {'accepted' if g['accepted'] else 'REJECTED'}: "
                      f"{'; '.join(g['reasons'])}", flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--final", action="store_true", help="the held-out seeds (never tune on them)")
    p.add_argument("--materials", default="graphene,perovskite")
    p.add_argument("--seeds", help="comma-separated seeds of the chosen set (default: all of them; e.g. the held-out seeds simulated so far)")
    p.add_argument("--doses", default=",".join(f"{d:g}" for d in rd.DOSES), help="comma-separated e/A^2")
    p.add_argument("--regime", default="normal", choices=sorted(rd.REGIMES))
    p.add_argument("--pixel-size", type=float, default=rd.PIXEL_SIZE,
                   help=f"Angstrom per pixel the movies are sampled at (default {rd.PIXEL_SIZE:g}; given to elit as --pixel-size)")
    p.add_argument("--quick", action="store_true", help="train the conventional baseline much shorter (see QUICK_CONVENTIONAL)")
    p.add_argument("--skip-conventional", action="store_true")
    p.add_argument("--skip-elit", action="store_true", help="only the conventional baseline")
    p.add_argument("--reuse-conventional", action="store_true",
                   help="train the conventional baseline once per dose (on the first seed, noise set to that movie) "
                   "and apply it to the other seeds with `elit predict`, as a user reuses a trained ensemble")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "elit-realistic")
    p.add_argument("--json", type=Path, help="write every row here")
    p.add_argument("--real", action="store_true", help="no-collapse check on ../shared/data/real instead")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for the elit recipe runs")
    args = p.parse_args(argv)
    if args.real:
        rows = real_check(args.workdir)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    seeds = rd.HELDOUT_SEEDS if args.final else rd.TUNING_SEEDS
    doses = [float(x) for x in args.doses.split(",")]
    rows = []
    trained: dict[tuple, Path] = {}
    for material in args.materials.split(","):
        chosen = seeds[material]
        if args.seeds:
            chosen = tuple(int(x) for x in args.seeds.split(","))
            other = sorted(set(chosen) - set(seeds[material]))
            if other:
                p.error(f"{material} seeds {other} are not {'held-out' if args.final else 'tuning'} seeds {seeds[material]}")
        for seed in chosen:
            for dose in doses:
                movie = rd.load_movie(material, seed, dose, args.regime, final=args.final, pixel_size=args.pixel_size)
                new = []
                if not args.skip_elit:
                    new += bench_movie(movie, RECIPES[material], args.workdir, list(args.set), "elit")
                if not args.skip_conventional:
                    label = "conv-quick" if args.quick else "conventional"
                    key = (dose, args.regime, label)
                    if args.reuse_conventional and key in trained:
                        new += bench_movie(movie, "conventional", args.workdir, [], label, model=trained[key])
                    else:
                        sets = (CONVENTIONAL_MATERIAL[material] + conventional_overrides(movie)
                                + (QUICK_CONVENTIONAL if args.quick else []))
                        new += bench_movie(movie, "conventional", args.workdir, sets, label)
                        trained[key] = args.workdir / movie.name / label / "r.h5"
                print_rows(new)
                rows += new
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1, default=float))
    print()
    print_rows(rows)


if __name__ == "__main__":
    main()
