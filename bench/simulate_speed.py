"""Time simulating and augmenting training pairs; optionally draw simulated graphene next to a real image.

Usage::

    python bench/simulate_speed.py [--n 1000] [--simulator graphene] [--pixel-size 0.2]
    python bench/simulate_speed.py --n 200 --real path/to/G-Si-2nm.hdf5 \
        --real-pixel-size 0.0771 --figure docs/img/graphene_vs_real.png

Prints one JSON line: seconds to simulate and to augment ``n`` pairs, per pair, the
process's CPU seconds and the machine's load average (timings on a busy machine are inflated).
``--real`` (an HDF5 file with dataset ``image_data``, or ``.npy``) adds a figure:
the real image resampled to the working scale, simulated clean images, and the
same after the standard augmenter.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from elit.plugins import default_registry


def read_image(path: str, dataset: str = "image_data") -> np.ndarray:
    if path.endswith((".h5", ".hdf5")):
        import h5py

        with h5py.File(path, "r") as handle:
            return np.asarray(handle[dataset][()], dtype=np.float64)
    return np.load(path, allow_pickle=False).astype(np.float64)


def figure(real_path, real_pixel_size, clean, augmented, out_path, pixel_size):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elit.scale import estimate_pixel_size, normalize, to_working_scale

    raw = read_image(real_path)
    if real_pixel_size is None:
        real_pixel_size, _ = estimate_pixel_size(raw, "graphene")
    real, _ = to_working_scale(raw, real_pixel_size, pixel_size)
    real = normalize(real)
    n = 4
    fig, axes = plt.subplots(2, n + 1, figsize=(2.6 * (n + 1), 6.4))
    axes[0, 0].imshow(real, cmap="gray")
    axes[0, 0].set_title(f"real: {real_path.rsplit('/', 1)[-1]}\n{real.shape[0]}x{real.shape[1]} px at {pixel_size} A/px", fontsize=8)
    axes[1, 0].imshow(real[: augmented.images.shape[1], : augmented.images.shape[2]], cmap="gray")
    axes[1, 0].set_title("real, crop of the output size", fontsize=8)
    for i in range(n):
        axes[0, i + 1].imshow(clean.images[i], cmap="gray")
        axes[0, i + 1].set_title(f"simulated #{i}", fontsize=8)
        axes[1, i + 1].imshow(augmented.images[i], cmap="gray")
        axes[1, i + 1].set_title(f"simulated + augmented #{i}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"graphene at the working scale ({pixel_size} A/px): real (left) vs simulator 'graphene' + augmenter 'standard'", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95), h_pad=1.5)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="training pairs")
    parser.add_argument("--simulator", default="graphene")
    parser.add_argument("--params", default="{}", help="simulator settings as JSON, e.g. '{\"mode\": \"removal\"}'")
    parser.add_argument("--augmenter", default="standard")
    parser.add_argument("--pixel-size", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", help="real image for the comparison figure")
    parser.add_argument("--real-pixel-size", type=float, help="its pixel size (estimated from the FFT if left out)")
    parser.add_argument("--figure", default="docs/img/graphene_vs_real.png")
    parser.add_argument("--gallery", help="also write a gallery PNG of augmented pairs here")
    parser.add_argument("--clean-gallery", help="also write a gallery PNG of the simulator's own pairs here")
    args = parser.parse_args()

    registry = default_registry()
    simulator = registry.get_stage("simulator", args.simulator)(json.loads(args.params))
    augmenter = registry.get_stage("augmenter", args.augmenter)()
    rng = np.random.default_rng(args.seed)
    simulator.simulate(2, np.random.default_rng(0), args.pixel_size)  # warm up imports and caches
    cpu_start = time.process_time()
    start = time.perf_counter()
    clean = simulator.simulate(args.n, rng, args.pixel_size)
    simulated = time.perf_counter() - start
    start = time.perf_counter()
    augmented = augmenter.augment(clean, rng)
    augment_seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    total = simulated + augment_seconds
    print(
        json.dumps(
            {
                "n": args.n,
                "simulator": args.simulator,
                "augmenter": args.augmenter,
                "image_size": list(clean.images.shape[1:]),
                "crop_size": list(augmented.images.shape[1:]),
                "simulate_s": round(simulated, 3),
                "augment_s": round(augment_seconds, 3),
                "total_s": round(total, 3),
                "ms_per_pair": round(1000 * total / args.n, 3),
                "cpu_s": round(cpu, 3),
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
        )
    )
    from elit.figures import training_gallery

    if args.gallery:
        training_gallery(augmented, args.gallery, title=f"'{args.simulator}' + '{args.augmenter}': {augmented.images.shape[1]} px crops at {args.pixel_size} A/px")
    if args.clean_gallery:
        training_gallery(clean, args.clean_gallery, title=f"'{args.simulator}' {args.params}: {clean.images.shape[1]} px at {args.pixel_size} A/px")
    if args.real:
        figure(args.real, args.real_pixel_size, clean, augmented, args.figure, args.pixel_size)


if __name__ == "__main__":
    main()
