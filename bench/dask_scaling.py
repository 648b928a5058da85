"""Wall time of one ensemble trained on a dask LocalCluster with 1 vs 2 worker processes.

Each worker trains one member at a time with one torch thread; cluster start-up
and the workers' first imports are left out of the timings (a warm-up task runs
first).  The same ensemble trained in-process with one thread is the baseline.
Prints one JSON line: seconds local, with 1 and with 2 workers, the ratio
1 worker / 2 workers, and whether all three gave the same weights.  On a 2-core machine 2 workers can at best
halve the time (ratio <= 2), less when other processes share the cores.

Usage: ``python bench/dask_scaling.py [--members 8] [--steps 60] [--patch 64]``
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _warm():
    import torch  # noqa: F401  (the first import in a worker takes seconds)

    import elit_builtins.trainers  # noqa: F401

    return os.getpid()


def training_set(n: int, size: int, seed: int = 0):
    """Gaussian atoms at random places with disc labels (normalised to [0, 1])."""
    from elit.data import TrainingSet

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size), np.float32)
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for r, c in rng.uniform(0, size, (size * size // 50, 2)):
            d2 = (yy - r) ** 2 + (xx - c) ** 2
            images[i] += np.exp(-d2 / 4.5)
            labels[i][d2 <= 6.25] = 1
        images[i] += rng.normal(0, 0.05, (size, size))
        images[i] = (images[i] - images[i].min()) / np.ptp(images[i])
    return TrainingSet(images, labels, ("atom",), 0.2)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps per member")
    ap.add_argument("--patch", type=int, default=64, help="training patch side, px")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=8, help="training images of side 2 * patch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from elit.executors import DaskExecutor
    from elit_builtins.architectures import CompactUNetArchitecture
    from elit_builtins.trainers import MultiSWATrainer

    ts = training_set(args.images, 2 * args.patch, args.seed)
    arch = CompactUNetArchitecture()
    params = dict(
        n_members=args.members, steps=args.steps, batch_size=args.batch, patch_size=args.patch,
        eval_every=max(1, args.steps // 3), min_steps=args.steps, val_patches=8, bn_batches=4, progress=False, threads=1,
    )
    out = {"bench": "dask_scaling", "members": args.members, "steps": args.steps, "patch": args.patch,
           "batch": args.batch, "cpu_cores": os.cpu_count(), "architecture": arch.get_params(),
           "load_average_before": round(os.getloadavg()[0], 2)}
    ensembles = {}
    import torch

    before = torch.get_num_threads()
    t0 = time.perf_counter()
    ensembles[0] = MultiSWATrainer(**params).fit(ts, arch, seed=args.seed)  # in-process, one thread: the baseline
    out["seconds_local_1_thread"] = round(time.perf_counter() - t0, 2)
    torch.set_num_threads(before)
    for n_workers in (1, 2):
        with DaskExecutor(n_workers=n_workers, threads_per_worker=1) as ex:
            ex.client.run(_warm)
            t0 = time.perf_counter()
            ensembles[n_workers] = MultiSWATrainer(**params).fit(ts, arch, seed=args.seed, executor=ex)
            out[f"seconds_{n_workers}_worker"] = round(time.perf_counter() - t0, 2)
    out["load_average_after"] = round(os.getloadavg()[0], 2)  # above 0 = other processes shared the cores
    out["ratio_1_over_2"] = round(out["seconds_1_worker"] / out["seconds_2_worker"], 3)
    out["member_steps_per_s_2_workers"] = round(args.members * args.steps / out["seconds_2_worker"], 2)
    out["same_weights"] = all(
        np.allclose(a.state[k], b.state[k], rtol=1e-5, atol=1e-6)
        for other in (ensembles[0], ensembles[1])
        for a, b in zip(other.members, ensembles[2].members)
        for k in a.state
    )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
