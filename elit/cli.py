"""The ``elit`` command line.

Every user error ends in one line on stderr and exit code 2; ``--debug`` shows
the traceback.  Long work shows progress bars.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from elit.errors import ElitError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


def _registry():
    from elit.plugins import default_registry

    return default_registry()


# ---------------------------------------------------------------------- commands
def cmd_plugins(args) -> int:
    rows = _registry().rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ("kind", "name", "plugin", "package", "version", "description")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in cols[:-1]}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols[:-1]) + "  DESCRIPTION")
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols[:-1]) + "  " + r["description"])
    return 0


def schemas(registry=None) -> dict[str, dict]:
    """JSON Schemas of the pipeline config and of every registered stage's Config, keyed by file name."""
    from elit.config import PipelineConfig

    registry = registry or _registry()
    out = {"pipeline.schema.json": PipelineConfig.model_json_schema()}
    for (kind, name), entry in sorted(registry.stages.items()):
        schema = entry.cls.Config.model_json_schema()
        schema["title"] = f"{kind} {name}"
        schema["description"] = entry.cls.description
        out[f"{kind}.{name}.schema.json"] = schema
    return out


def cmd_schema(args) -> int:
    docs = schemas()
    if not args.out:
        if not args.stage:  # the pipeline config and every stage's fields, keyed by schema file name
            print(json.dumps(docs, indent=2, sort_keys=True))
            return 0
        kind, _, sname = args.stage.partition(":")
        name = f"{kind}.{sname}.schema.json"
        if name not in docs:
            raise ElitError(f"no stage {args.stage!r}; use KIND:NAME as listed by `elit plugins`")
        print(json.dumps(docs[name], indent=2, sort_keys=True))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _refuse_existing([out / name for name in docs], args.overwrite)
    for name, doc in docs.items():
        (out / name).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(docs)} schemas to {out}/")
    return 0


def cmd_inspect(args) -> int:
    from elit.store import RunStore

    store = RunStore.open(args.file, mode="r")
    print(store.tree(verbose=args.verbose))
    missing = store.missing_plugins(_registry())
    if missing:
        print(f"note: this file was made with plugins not installed here: {', '.join(missing)}")
    return 0


def cmd_info(args) -> int:
    from elit.readers import choose_signal, list_signals

    path, cls, signals = list_signals(args.file)
    try:
        chosen, why = choose_signal(signals, args.signal, str(path))
    except ElitError as err:
        if args.signal is not None:
            raise
        chosen, why = None, str(err)
    if args.json:
        print(json.dumps({"file": str(path), "reader": cls.name, "signals": [s.summary() for s in signals],
                          "chosen": None if chosen is None else chosen.index, "why": why}, indent=2))
        return 0 if chosen is not None else 2
    print(f"{path}: {len(signals)} signal(s), read by {cls.name} ({cls.description})")
    rows = [("#", "NAME", "SHAPE", "DTYPE", "PIXEL SIZE", "CALIBRATION", "")]
    for sig in signals:
        rows.append((str(sig.index), sig.label(), "x".join(map(str, sig.shape)) or "scalar", sig.dtype,
                     f"{sig.pixel_size:.4g} Å" if sig.pixel_size else "unknown", sig.calibration or "-",
                     "<- chosen" if sig is chosen else (sig.problem or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[6])
    if chosen is None:
        raise ElitError(f"elit cannot analyse {path.name}: " + (why.split("can read: ", 1)[-1] if len(signals) == 1 else
                                                                  "no signal is an image it can read (see the table)"))
    print(f"elit reads #{chosen.index} {chosen.label()!r}: {why}")
    return 0


def _refuse_existing(paths, overwrite: bool) -> None:
    """Refuse to replace any of ``paths`` without ``--overwrite`` (naming the first few)."""
    found = [str(p) for p in paths if Path(p).exists()]
    if found and not overwrite:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise ElitError(f"{', '.join(found[:3])}{more} exist(s); pass --overwrite to replace")


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ElitError(f"{path} exists; pass --overwrite to replace it")
    if path.parent and not path.parent.exists():
        raise ElitError(f"output folder {path.parent} does not exist")


def _executor_overrides(args) -> list[str]:
    """``--executor / --workers / --scheduler`` as config overrides (``executor.*``)."""
    out = []
    if args.scheduler and args.executor == "local":
        raise ElitError("--scheduler needs --executor dask (or leave --executor out)")
    if args.executor:
        out.append(f"executor.kind={args.executor}")
    elif args.scheduler or args.workers:
        out.append("executor.kind=dask")
    if args.workers is not None:
        out.append(f"executor.n_workers={args.workers}")
    if args.scheduler:
        out.append(f"executor.address={json.dumps(args.scheduler)}")
    return out


def _add_executor_options(s) -> None:
    s.add_argument("--executor", choices=["local", "dask"], help="where ensemble members train (default: the config's, local)")
    s.add_argument("--workers", type=int, metavar="N", help="worker processes of a local dask cluster (implies --executor dask)")
    s.add_argument("--scheduler", metavar="ADDRESS", help="address of a running dask scheduler, e.g. tcp://host:8786 (implies --executor dask)")


def cmd_run(args) -> int:
    from elit.config import load_config
    from elit.pipeline import Pipeline

    if args.resume:
        from elit.store import RunStore

        stored = RunStore.open(args.resume, mode="r").read_config()
        config = load_config(raw=stored, overrides=list(args.set) + _executor_overrides(args))
        result = Pipeline(config).run(store=args.resume, resume=True)
        _print_summary(result)
        return 0
    if not args.config and not args.recipe:
        raise ElitError("give a CONFIG file or --recipe NAME (recipes: see `elit run --help`)")
    overrides = list(args.set) + _executor_overrides(args)
    if args.data:
        overrides.append(f"data.path={json.dumps(args.data)}")
    if args.signal is not None:
        overrides.append(f"data.signal={json.dumps(args.signal)}")
    if args.pixel_size:
        overrides.append(f"scale.input_pixel_size={args.pixel_size}")
    if args.device:
        overrides.append(f"device={args.device}")
    config = load_config(args.config, recipe=args.recipe, overrides=overrides)
    out = Path(args.out)
    _check_output(out, args.overwrite)
    pipeline = Pipeline(config)
    result = pipeline.run(store=out, overwrite=args.overwrite)
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    print(f"{'iteration':>9}  {'kind':<13} {'atoms':>7}  {'rate':>6}  {'seconds':>8}  members")
    for s in result.iterations:
        rate = "-" if s.detection_rate is None else f"{s.detection_rate:.3f}"
        note = "" if s.accepted else "  (rejected by the guard)"
        print(f"{s.iteration:>9}  {s.kind:<13} {s.n_atoms:>7}  {rate:>6}  {s.seconds:>8.1f}  {s.members}{note}")
    for s in result.iterations:
        if s.note:
            print(f"note: {s.note}")
    if result.path:
        print(f"results: {result.path}")


def cmd_simulate(args) -> int:
    import numpy as np

    from elit.config import load_config
    from elit.figures import training_gallery
    from elit.pipeline import Pipeline, derive_seed

    config = load_config(args.config, recipe=None if args.config else "graphene", overrides=args.set)
    pipeline = Pipeline(config)
    out = Path(args.out)
    _refuse_existing([out / "simulated.png", out / "augmented.png"], args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    px = config.scale.pixel_size
    ts = pipeline.stages["simulator"].simulate(args.n, np.random.default_rng(derive_seed(config.seed, 0, "simulator")), px)
    training_gallery(ts, out / "simulated.png", n=min(args.n, 8))
    written = [out / "simulated.png"]
    if "augmenter" in pipeline.stages:
        aug = pipeline.stages["augmenter"].augment(ts, np.random.default_rng(derive_seed(config.seed, 0, "augmenter")))
        training_gallery(aug, out / "augmented.png", n=min(args.n, 8))
        written.append(out / "augmented.png")
    for w in written:
        print(f"wrote {w}")
    return 0


def cmd_atoms(args) -> int:
    from elit.results import export_atoms_csv

    out = Path(args.out)
    _check_output(out, args.overwrite)
    n = export_atoms_csv(args.result, out, iteration=args.iteration, positions=args.positions)
    print(f"wrote {n} atoms to {out}")
    return 0


def cmd_predict(args) -> int:
    from elit.results import predict_file

    out = Path(args.out)
    _check_output(out, args.overwrite)
    data = f"{args.data}:{args.signal}" if args.signal is not None else args.data  # FILE:SIGNAL
    n = predict_file(args.result, data, out, iteration=args.iteration, pixel_size=args.pixel_size,
                     overwrite=args.overwrite, device=args.device)
    print(f"wrote predictions and {n} atoms to {out}")
    return 0


def _int_list(text: str, option: str) -> list[int]:
    """Parse ``"3,7"``; a bad item is a user error naming the option."""
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ElitError(f"{option} takes comma-separated whole numbers, e.g. 3,7; got {text!r}") from None


def cmd_report(args) -> int:
    from elit.report import write_report

    out = Path(args.out)
    patterns = ("members_iter*.png", "atoms_*.png", "uncertainty_*.png", "detection.png", "selection_iter*.png",
                "report.html")  # what write_report writes
    _refuse_existing([p for pat in patterns for p in out.glob(pat)], args.overwrite)
    paths = write_report(args.result, out, html=args.html)
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_gallery(args) -> int:
    from elit.report import member_gallery

    frames = _int_list(args.frames, "--frames") if args.frames else None
    _check_output(Path(args.out), args.overwrite)
    path = member_gallery(args.result, Path(args.out), iteration=args.iteration, frames=frames)
    print(f"wrote {path}")
    return 0


def cmd_select(args) -> int:
    from elit.results import continue_with_members

    from elit.store import RunStore

    members = _int_list(args.members, "--members")
    store = RunStore.open(args.result, mode="r")
    later = [i for i in store.iterations() if i > 0]
    old = store.read_config().get("selector", {})
    lost = "iteration 0's selection and prediction" + (
        f" and iterations {later[0]}..{later[-1]} (refinements, retrained ensembles, predictions)" if later else "")
    change = (f"the selector changes from {old.get('name', '?')!r} to 'manual' (members {members}) for every "
              "iteration: later iterations, when rerun, keep the same member indices of their retrained ensembles")
    if not args.overwrite:
        raise ElitError(f"elit select rewrites {args.result} in place, discarding {lost}; {change}. "
                        "Copy the file first to keep it, and pass --overwrite to go ahead")
    print(f"discarding {lost}; {change}")
    result = continue_with_members(args.result, members)
    _print_summary(result)
    return 0


def cmd_watch(args) -> int:
    from elit.live import watch

    watch(args.result, args.folder, pattern=args.pattern, out=args.out, poll=args.poll, max_frames=args.max_frames,
          timeout=args.timeout, stop_when_idle=args.idle, iteration=args.iteration, device=args.device,
          pixel_size=args.pixel_size, k=args.k, min_score=args.min_score, tolerance=args.tolerance,
          score_size=args.score_size, overwrite=args.overwrite, skip_existing=args.skip_existing, figure=args.figure,
          signal=args.signal)
    return 0


def cmd_demo(args) -> int:
    from elit.demo import run_demo

    overrides = list(args.set) + _executor_overrides(args)
    return run_demo(case=args.case, out=Path(args.out), overwrite=args.overwrite, overrides=overrides)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="elit", description="Find and classify atoms with ensembles of networks trained iteratively (ELIT).")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("plugins", help="list installed stages: kind, name, plugin, package, version, description")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_plugins)

    s = sub.add_parser("schema", help="print or write JSON Schemas of the config and every stage")
    s.add_argument("--out", help="folder to write every schema into")
    s.add_argument("--stage", help="print one stage's schema, as KIND:NAME")
    s.add_argument("--overwrite", action="store_true", help="replace schema files already in --out (others are left alone)")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("info", help="list the signals of an image file (name, shape, dtype, pixel size) and the one elit reads")
    s.add_argument("file", help="image file in any supported format (see docs/user-guide.md)")
    s.add_argument("--signal", metavar="NAME_OR_INDEX", help="check that this signal can be read")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("inspect", help="print a result file's iterations and stages with their provenance")
    s.add_argument("file")
    s.add_argument("-v", "--verbose", action="store_true", help="list every dataset and attribute")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("run", help="run the ELIT loop from a config file or recipe")
    s.add_argument("config", nargs="?", help="YAML config (starts from --recipe when given)")
    s.add_argument("--recipe", help="a shipped recipe: graphene, perovskite")
    s.add_argument("--data", help="input image or stack, any format `elit info` reads (.emd, .ser, .mrc, .dm3/.dm4, .tif, .hspy, .zspy, .h5, .npy, .png)")
    s.add_argument("--signal", metavar="NAME_OR_INDEX", help="signal of a file holding several (default: the HAADF/ADF image; see `elit info`)")
    s.add_argument("--out", default="elit-run.h5", help="result HDF5 file (default: elit-run.h5)")
    s.add_argument("--pixel-size", type=float, help="input pixel size in Angstrom/px (default: metadata or estimate)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where networks run")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. trainer.params.n_members=4")
    s.add_argument("--resume", metavar="RESULT.h5", help="continue an interrupted run in this file")
    _add_executor_options(s)
    s.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("simulate", help="write gallery PNGs of simulated (and augmented) training pairs")
    s.add_argument("config", nargs="?", help="YAML config (default: the graphene recipe)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("-n", type=int, default=8, help="number of pairs to draw")
    s.add_argument("--overwrite", action="store_true", help="replace simulated.png / augmented.png in --out")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(func=cmd_simulate)

    from elit.results import CSV_COLUMNS

    text = f"export the atom table as CSV ({','.join(CSV_COLUMNS)})"
    s = sub.add_parser("atoms", help=text, description=text[0].upper() + text[1:] + ".")
    s.add_argument("result")
    s.add_argument("--iteration", default="last", help="iteration number or 'last'")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--positions", choices=("refined", "network"), default=None,
                   help="x,y: the run's own choice (locate.positions, averaged over frames with locate.average_frames; "
                   "default), this frame's positions refined on the raw frame (the network's where not refined) or the "
                   "network's; x_network,y_network and x_refined,y_refined always hold both, x_frame,y_frame this frame's "
                   "own of the run's choice")
    s.set_defaults(func=cmd_atoms)

    s = sub.add_parser("predict", help="apply a trained ensemble to new data without retraining")
    s.add_argument("result")
    s.add_argument("data")
    s.add_argument("--signal", metavar="NAME_OR_INDEX", help="signal of a file holding several (default: the HAADF/ADF image)")
    s.add_argument("--out", required=True)
    s.add_argument("--iteration", default="last")
    s.add_argument("--pixel-size", type=float)
    s.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("report", help="write the figures (and an HTML report) of a run")
    s.add_argument("result")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--html", action="store_true", help="also write a self-contained report.html")
    s.add_argument("--overwrite", action="store_true", help="replace report files already in --out")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("gallery", help="PNG grid of every member's prediction, to choose members by eye")
    s.add_argument("result")
    s.add_argument("--frames", help="comma-separated frame indices (default: first, middle, last)")
    s.add_argument("--iteration", type=int, default=0)
    s.add_argument("--out", default="gallery.png")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.set_defaults(func=cmd_gallery)

    s = sub.add_parser("select", help="choose members by hand and continue the run from there")
    s.add_argument("result")
    s.add_argument("--members", required=True, help="comma-separated member indices, e.g. 3,7")
    s.add_argument("--overwrite", action="store_true",
                   help="rewrite the run file in place (discards iteration 0's selection and every later iteration)")
    s.set_defaults(func=cmd_select)

    s = sub.add_parser("watch", help="analyse image files as they appear in a folder (automated experiments)")
    s.add_argument("result", help="finished run file whose trained ensemble is used")
    s.add_argument("folder", help="folder the microscope writes into")
    s.add_argument("--pattern", default="*.tif", help="shell pattern of the files to analyse (default: *.tif)")
    s.add_argument("--signal", metavar="NAME_OR_INDEX", help="signal of files holding several (default: the HAADF/ADF image)")
    s.add_argument("--out", help="live HDF5 file, readable while it grows (default: FOLDER/elit-live-DATE-TIME.h5)")
    s.add_argument("--poll", type=float, default=0.5, help="seconds between looks at the folder (default: 0.5)")
    s.add_argument("--max-frames", type=int, help="stop after this many frames")
    s.add_argument("--timeout", type=float, help="stop after this many seconds")
    s.add_argument("--idle", type=float, help="stop when no new file came for this many seconds")
    s.add_argument("--iteration", default="last", help="iteration of the run whose ensemble is used (default: last)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where networks run (default: the run's config)")
    s.add_argument("--pixel-size", type=float, help="input pixel size in Angstrom/px (default: metadata or estimate)")
    s.add_argument("--k", type=int, help="most members used per frame (default: no limit)")
    s.add_argument("--min-score", type=float, help="member score needed on a frame (default: 0.5)")
    s.add_argument("--tolerance", type=float, help="how far below the frame's best member a used member may score (default: 0.1)")
    s.add_argument("--score-size", type=int, help="score members on a centred crop of this many working pixels (faster)")
    s.add_argument("--figure", help="write the drift report PNG here at the end")
    s.add_argument("--skip-existing", action="store_true", help="ignore files already in the folder")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.set_defaults(func=cmd_watch)

    s = sub.add_parser("demo", help="run the embedded demo end to end and print a summary")
    s.add_argument("--case", choices=["graphene", "perovskite"], default="graphene")
    s.add_argument("--out", default="elit-demo", help="output folder (default: ./elit-demo)")
    s.add_argument("--overwrite", action="store_true", help="replace earlier demo results in the folder")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _add_executor_options(s)
    s.set_defaults(func=cmd_demo)
    return p


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process gets SIGTERM, so it unwinds like Ctrl-C."""


def _raise_terminated(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated()


def _interrupted_message(args) -> str:
    """What an interrupted command tells the user (a run says how to resume it)."""
    target = {"run": getattr(args, "resume", None) or getattr(args, "out", None), "select": getattr(args, "result", None)}
    if target.get(args.command):
        return f"elit: interrupted; finished stages are kept (resume with `elit run --resume {target[args.command]}`)"
    return "elit: interrupted"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``elit`` command.

    Exit codes: 0 success, 2 a user error (one ``elit: error:`` line), 1 an
    internal error, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
    """
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="elit: %(message)s", stream=sys.stderr
    )
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _dispatch(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _dispatch(args) -> int:
    try:
        return args.func(args) or 0
    except ElitError as err:
        if args.debug:
            raise
        for line in str(err).splitlines() or ["error"]:
            print(f"elit: error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as err:
        print(_interrupted_message(args), file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except Exception as err:  # noqa: BLE001 - the CLI's last line of defence
        if args.debug:
            raise
        print(f"elit: internal error: {type(err).__name__}: {err} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
