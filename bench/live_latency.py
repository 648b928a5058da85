"""Per-frame latency of the automated-experiment mode (``elit.live``); prints ONE JSON line.

Usage::

    python bench/live_latency.py                         # 512x512 frames, 8 members, CPU
    python bench/live_latency.py --device cuda           # on a GPU
    python bench/live_latency.py --result run.h5         # a trained ensemble from a finished run

Each frame goes through :meth:`elit.live.LiveAnalyzer.process` (resample and
normalise, all members applied, every member scored by the ``auto`` selector on
the frame, mean/std of the members kept, atoms located, drift indicators) and
is appended to a live HDF5 file (:class:`elit.live.LiveWriter`), which is what
``elit watch`` does per frame after a file is found.  Reported: median, p90,
mean, min and max seconds per frame over ``--frames`` frames after one warm-up
frame, with and without the file append, and the median of each stage.

Without ``--result`` the ensemble is made here: one member of the default
architecture (``compact-unet`` defaults) is trained briefly on simulated
graphene, and ``--members`` copies with jittered weights (seeded, +/-2 %)
form the ensemble -- latency depends on the network's shape and the frame
size, not on what the members learnt, but the scoring needs realistic maps.
Frames are a synthetic graphene movie (``elit.experiments.graphene_movie``,
dose 10) at ``--pixel-size`` (default 0.2 A/px = the working scale, so the
networks see 512x512).

Timings on a shared machine are noisy: the line carries the load average and
the process CPU seconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def make_ensemble(n_members: int, steps: int, device: str, seed: int = 0):
    """One briefly trained default member, copied ``n_members`` times with jittered weights."""
    from elit.ensemble import Ensemble, Member
    from elit.plugins import default_registry

    reg = default_registry()
    arch = reg.get_stage("architecture", "compact-unet")()
    ts = reg.get_stage("simulator", "graphene")(image_size=128).simulate(16, np.random.default_rng(seed), 0.2)
    trainer = reg.get_stage("trainer", "multi-swa")(
        n_members=1, steps=steps, eval_every=max(1, steps // 2), min_steps=steps, progress=False
    )
    base = trainer.fit(ts, arch, seed, device=device)
    rng = np.random.default_rng(seed + 1)
    members = []
    for i in range(n_members):
        state = {}
        for key, value in base.members[0].state.items():
            if value.dtype.kind == "f" and "running" not in key and value.ndim > 0:
                value = (value * (1.0 + 0.02 * rng.standard_normal(value.shape))).astype(np.float32)
            state[key] = value
        members.append(Member(state=state, seed=seed + i))
    return Ensemble(base.architecture, base.architecture_params, base.in_channels, base.out_channels, base.class_names,
                    members, base.pixel_size, base.activation, metadata={"note": "bench: jittered copies of one member"},
                    stage=base.stage)


def stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {
        "median": round(float(np.median(v)), 4),
        "p90": round(float(np.percentile(v, 90)), 4),
        "mean": round(float(v.mean()), 4),
        "min": round(float(v.min()), 4),
        "max": round(float(v.max()), 4),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--size", type=int, default=512, help="frame side in pixels")
    p.add_argument("--pixel-size", type=float, default=0.2, help="frame pixel size, Angstrom/px (0.2 = working scale)")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--frames", type=int, default=10, help="timed frames (after one warm-up frame)")
    p.add_argument("--result", help="use the ensemble of this finished run file instead of making one")
    p.add_argument("--train-steps", type=int, default=100, help="training steps of the made member")
    p.add_argument("--batched", choices=["auto", "yes", "no"], default="auto", help="members as one vmapped call")
    p.add_argument("--amp", choices=["auto", "yes", "no"], default="auto", help="float16 autocast (CUDA)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--score-size", type=int, default=None, help="score members on a centred crop of this side (px)")
    args = p.parse_args(argv)

    import torch

    from elit.devices import resolve_device, set_threads
    from elit.experiments import graphene_movie
    from elit.live import LiveAnalyzer, LiveWriter

    threads = set_threads(args.threads or None)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    if args.result:
        from elit.results import load_ensemble

        ensemble, config, _ = load_ensemble(args.result)
        ensemble = ensemble.subset(list(range(min(args.members, len(ensemble)))))
        source = str(args.result)
    else:
        ensemble, config = make_ensemble(args.members, args.train_steps, str(device)), None
        source = f"made here: compact-unet defaults, {args.train_steps} steps, jittered copies"
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    movie = graphene_movie(n_frames=args.frames + 1, size=args.size, pixel_size=args.pixel_size, seed=0, dose=10.0)
    frames_s = time.perf_counter() - t0

    opts = {}
    if args.batched != "auto":
        opts["batched"] = args.batched == "yes"
    if args.amp != "auto":
        opts["amp"] = args.amp == "yes"
    analyzer = LiveAnalyzer(ensemble, config, device=str(device), input_pixel_size=args.pixel_size, predict_options=opts,
                            score_size=args.score_size)
    latencies, with_write, stages, atoms = [], [], {}, []
    first = None
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        with LiveWriter(Path(tmp) / "live.h5", {"bench": "live_latency"}) as writer:
            for i, frame in enumerate(movie.frames):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                result = analyzer.process(frame, source=f"frame_{i}")
                writer.append(result)
                total = time.perf_counter() - t
                if i == 0:
                    first = total
                    continue
                latencies.append(result.latency)
                with_write.append(total)
                atoms.append(len(result.atoms))
                for k, v in result.timings.items():
                    stages.setdefault(k, []).append(v)
    cpu_s = time.process_time() - cpu0
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    line = {
        "bench": "live_latency",
        "device": str(device),
        "gpu": gpu,
        "machine": platform.machine(),
        "threads": threads,
        "torch": torch.__version__,
        "members": len(ensemble),
        "architecture": {"name": ensemble.architecture, "params": ensemble.architecture_params},
        "ensemble": source,
        "input_shape": [args.size, args.size],
        "input_pixel_size": args.pixel_size,
        "working_shape": list(result.mean.shape[-2:]),
        "working_pixel_size": ensemble.pixel_size,
        "frames": len(latencies),
        "predict_options": opts,
        "score_size": args.score_size,
        "latency_s": stats(latencies),
        "latency_with_file_append_s": stats(with_write),
        "stages_median_s": {k: round(float(np.median(v)), 4) for k, v in stages.items()},
        "first_frame_s": round(first, 3),
        "atoms_per_frame": int(np.median(atoms)),
        "members_used_last_frame": result.members,
        "cpu_seconds_timed_loop": round(cpu_s, 2),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "setup_s": round(setup_s, 1),
        "make_frames_s": round(frames_s, 1),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
