"""Long movies: seconds per frame, peak memory and file size against the movie's length.

Each length runs in a fresh process: a graphene movie of 512x512 frames at
0.1 A/px from the embedded generator (``elit.experiments.graphene_movie``), the
graphene recipe with its default settings, one run file.  The movie is made
beforehand in a process of its own and saved as ``.npy`` in the work folder
(the generator renders the whole movie at once and needs about 14 GB for 1,000
frames; that is the benchmark's memory, not elit's).  The measured process
loads the frames, as ``elit run --data movie.npy`` would, and runs the loop.
Printed per length: wall time, seconds per frame, peak RSS of the measured
process and the bytes per frame of the run file together with its ``.parts``
folder.

Usage::

    nice -n 10 python bench/long_movie.py                    # 100, 300 and 1000 frames
    python bench/long_movie.py --frames 20 --set trainer.params.steps=10   # a quick check
    python bench/long_movie.py --frames 100 --kill-after 400 # also: SIGKILL at 400 s, --resume, compare atoms
    python bench/long_movie.py --frames 1000 --kill-after 900 --kill-only --workdir W
        # only the kill and resume, compared with W/movie_1000.csv of an earlier uninterrupted run
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def folder_bytes(run: Path) -> int:
    """Bytes of the run file and its parts folder."""
    total = run.stat().st_size
    parts = run.with_name(run.name + ".parts")
    if parts.is_dir():
        total += sum(p.stat().st_size for p in parts.iterdir() if p.is_file())
    return total


def make_movie(n_frames: int, path: Path) -> None:
    """Write the ``n_frames``-frame movie to ``path`` (float32 ``.npy``) unless it is there."""
    if path.exists():
        return
    import numpy as np

    from elit.experiments import graphene_movie

    frames = graphene_movie(n_frames=n_frames, size=512, pixel_size=0.1, seed=0).frames
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, frames.astype(np.float32))
    os.replace(tmp, path)


def movie_path(work: Path, n_frames: int) -> Path:
    return work / f"frames_{n_frames}.npy"


def child(n_frames: int, out: Path, overrides: list[str], resume: bool) -> None:
    """Run the pipeline once in this process and print one JSON line."""
    import resource

    import numpy as np

    from elit.config import load_config
    from elit.pipeline import Pipeline
    from elit.results import write_atoms_csv

    t0 = time.perf_counter()
    frames = None
    if not resume:
        frames = np.load(movie_path(out.parent, n_frames))
    t_gen = time.perf_counter() - t0
    config = load_config(recipe="graphene", overrides=overrides)
    t1 = time.perf_counter()
    result = Pipeline(config).run(frames, pixel_size=0.1, store=out, overwrite=True, resume=resume)
    wall = time.perf_counter() - t1
    write_atoms_csv(result.atoms, out.with_suffix(".csv"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "frames": n_frames, "wall_s": round(wall, 1), "load_s": round(t_gen, 1), "s_per_frame": round(wall / n_frames, 3),
        "peak_rss_gb": round(rss / 1e9, 2), "bytes_per_frame": int(folder_bytes(out) / n_frames),
        "atoms": int(len(result.atoms)),
    }), flush=True)


def run_child(n: int, out: Path, overrides: list[str], resume: bool = False, kill_after: float | None = None):
    cmd = [sys.executable, __file__, "--child", str(n), "--out", str(out)] + [a for s in overrides for a in ("--set", s)]
    if resume:
        cmd.append("--resume")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the {n}-frame run failed (exit {proc.returncode})")
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (default: none)")
    ap.add_argument("--kill-after", type=float, help="after the runs, SIGKILL a run of the first length at this many s, resume it, compare atoms")
    ap.add_argument("--kill-only", action="store_true",
                    help="skip the timed runs; compare the resumed run with movie_N.csv already in --workdir")
    ap.add_argument("--workdir", help="where run files go (default: a temporary folder)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--make-movie", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_movie:
        make_movie(args.make_movie, Path(args.out))
        return
    if args.child:
        child(args.child, Path(args.out), args.set, args.resume)
        return
    if args.kill_only and not (args.kill_after and args.workdir):
        ap.error("--kill-only needs --kill-after and the --workdir of an earlier uninterrupted run")
    tmp = tempfile.TemporaryDirectory(prefix="elit-long-") if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    if not args.kill_only:
        print(f"{'frames':>7} {'wall s':>8} {'s/frame':>8} {'peak RSS GB':>12} {'MB/frame':>9} {'atoms':>8}", flush=True)
    rows = []
    for n in [] if args.kill_only else args.frames:
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--make-movie", str(n), "--out", str(movie_path(work, n))], check=True)
        print(f"  (the {n}-frame movie: {time.perf_counter() - t:.0f} s)", flush=True)
        r = run_child(n, work / f"movie_{n}.h5", args.set)
        rows.append(r)
        print(f"{n:>7} {r['wall_s']:>8.1f} {r['s_per_frame']:>8.3f} {r['peak_rss_gb']:>12.2f} "
              f"{r['bytes_per_frame'] / 1e6:>9.3f} {r['atoms']:>8}", flush=True)
    if len(rows) > 1:
        print(f"s/frame at {rows[-1]['frames']} / at {rows[0]['frames']}: {rows[-1]['s_per_frame'] / rows[0]['s_per_frame']:.2f}")
    if args.kill_after:
        n = args.frames[0]
        reference = work / f"movie_{n}.csv"
        if not reference.exists():
            raise SystemExit(f"no uninterrupted run to compare with: {reference} is missing")
        if not movie_path(work, n).exists():
            raise SystemExit(f"the movie is missing: {movie_path(work, n)}")
        out = work / f"killed_{n}.h5"
        assert run_child(n, out, args.set, kill_after=args.kill_after) is None, "the run ended before the kill"
        r = run_child(n, out, args.set, resume=True)
        same = out.with_suffix(".csv").read_bytes() == reference.read_bytes()
        print(f"killed at {args.kill_after:.0f} s and resumed: {r['atoms']} atoms, atoms.csv identical to the uninterrupted run: {same}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
