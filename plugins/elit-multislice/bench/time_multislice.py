"""Time the multislice simulator (run by hand, not a test).

Usage: python plugins/elit-multislice/bench/time_multislice.py [--pixel-size 0.1] [--repeats 11 6] [--interpolation 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from elit_multislice import MultisliceSimulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pixel-size", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, nargs=2, default=(11, 6))
    parser.add_argument("--interpolation", type=int, default=3)
    parser.add_argument("--dopant-fraction", type=float, default=0.02)
    parser.add_argument("--frozen-phonons", type=int, default=0)
    parser.add_argument("--n", type=int, default=1)
    args = parser.parse_args()
    sim = MultisliceSimulator(
        repeats=tuple(args.repeats),
        prism_interpolation=args.interpolation,
        dopant_fraction=args.dopant_fraction,
        frozen_phonons=args.frozen_phonons,
    )
    sim.simulate(1, np.random.default_rng(0), args.pixel_size)  # imports and numba compilation
    start, cpu_start = time.perf_counter(), time.process_time()
    out = sim.simulate(args.n, np.random.default_rng(1), args.pixel_size)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(
        f"repeats {tuple(args.repeats)}  cell {out.metadata['cell_extent_A'][1]:.1f} x {out.metadata['cell_extent_A'][0]:.1f} A  "
        f"image {out.images.shape[1]} x {out.images.shape[2]} px at {args.pixel_size} A/px  "
        f"interpolation {args.interpolation}  phonons {args.frozen_phonons}: "
        f"{total / args.n:.1f} s per image wall, {cpu / args.n:.1f} s CPU"
    )


if __name__ == "__main__":
    main()
