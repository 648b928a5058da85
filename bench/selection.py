"""How well the selector picks: every member of iteration 0 scored alone against the selected set.

Issue #12 asks that, over the benchmark's movies, the selected member set reaches at least the
best single member's F1 more often than not and is never the worst.  For each run file of
``bench/realistic.py`` (its work folder holds ``<movie>/elit/r.h5``) this reads iteration 0's
stored member maps and the selector's choice, locates the atoms of each member alone exactly as
the run located the selected set's (``elit.pipeline.combine_members`` and ``finish_atoms``, with
the run's own settings, classes left out), scores them with ``realistic.score`` and prints one
line per movie: each member's F1, the selected members, the selected set's F1, and whether it is
at least the best member's and not the worst (unless every member scores the same).

Use::

    python bench/selection.py --workdir /tmp/elit-realistic --final     # every movie of a bench run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realistic as rb  # noqa: E402
import realistic_data as rd  # noqa: E402


def member_scores(run: Path, movie) -> dict:
    """F1 of every iteration-0 member alone and of the selected set, with the selector's choice."""
    from elit.config import PipelineConfig
    from elit.pipeline import combine_members, finish_atoms, prepare_frames
    from elit.store import RunStore
    from elit.store.precision import ProbabilityMaps

    store = RunStore.open(run, mode="r")
    cfg = PipelineConfig.model_validate(store.read_config())
    group = "/iterations/iter_000"
    path = f"{group}/predict/member_probabilities"
    if int(store.attrs(f"{path}/member_probabilities").get("member_maps_every", 1)) != 1:
        raise SystemExit(f"{run}: only some frames' member maps were kept; cannot score the members")
    preds = ProbabilityMaps(store.read_image(path, raw=True))
    ensemble = store.read_ensemble(0)
    chosen = list(store.read_json(f"{group}/selector/selection")["members"])
    _, input_px, factor = prepare_frames(movie.frames[:1], movie.pixel_size, cfg.scale)

    def f1_of(members: list[int]) -> float:
        _, _, atoms = combine_members(ensemble, preds, members, cfg.iterations.threshold, **cfg.locate.blob_options())
        atoms, _ = finish_atoms(atoms, movie.frames, input_px, cfg.scale.pixel_size, cfg.locate, None)
        return float(rb.score(movie, atoms.scaled(1.0 / factor))["f1"])

    singles = [f1_of([m]) for m in range(len(ensemble))]
    selected = f1_of(chosen)
    return {"movie": movie.name, "members_f1": singles, "selected": chosen, "selected_f1": selected,
            "at_least_best": selected >= max(singles) - 1e-12, "not_worst": selected > min(singles) + 1e-12 or max(singles) - min(singles) < 1e-12}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, required=True, help="the work folder of a bench/realistic.py run")
    p.add_argument("--final", action="store_true", help="its movies are held-out seeds")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    rows = []
    from elit.store import RunStore

    for run in sorted(args.workdir.glob("*/elit/r.h5")):
        if not RunStore.open(run, mode="r").stage_complete(0, "predict"):
            print(f"{run}: iteration 0 did not finish; skipped", flush=True)
            continue
        material, seed, regime, dose, pixel_size = rd.parse_movie_name(run.parent.parent.name)
        movie = rd.load_movie(material, seed, dose, regime, final=args.final, pixel_size=pixel_size)
        r = member_scores(run, movie)
        rows.append(r)
        print(f"{r['movie']:28s} members F1 {' '.join(f'{x:.4f}' for x in r['members_f1'])} | selected {r['selected']} "
              f"F1 {r['selected_f1']:.4f} | >= best {r['at_least_best']} | not the worst {r['not_worst']}", flush=True)
    if rows:
        print(f"selected set >= best member: {sum(r['at_least_best'] for r in rows)} of {len(rows)} movies; "
              f"not the worst (or all members equal): {sum(r['not_worst'] for r in rows)} of {len(rows)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
