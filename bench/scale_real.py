"""Estimate the pixel size of real graphene images from their FFT and compare with the nominal values.

Usage::

    python bench/scale_real.py path/to/G-Si-2nm.hdf5:0.075 \
        path/to/G-GrainBoundary-4nm.hdf5:0.078 \
        path/to/LibraryNet_test-1.hdf5:0.08

Each argument is ``PATH[:NOMINAL_PIXEL_SIZE]``; HDF5 files are read at dataset
``image_data`` (``--dataset`` to change), ``.npy`` files directly.  Prints one
JSON line per image and, when a simulated check is asked (``--simulated``), one
for simulated graphene images of known pixel size.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from elit.scale import estimate_pixel_size


def read_image(path: str, dataset: str) -> np.ndarray:
    if path.endswith((".h5", ".hdf5")):
        import h5py

        with h5py.File(path, "r") as handle:
            return np.asarray(handle[dataset][()], dtype=np.float64)
    return np.load(path, allow_pickle=False).astype(np.float64)


def simulated_check(n_images: int = 20, seed: int = 0) -> dict:
    """Estimate the pixel size of graphene images from the built-in simulator at known pixel sizes."""
    from elit_builtins.simulators import GrapheneSimulator

    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(n_images):
        pixel_size = float(rng.uniform(0.06, 0.35))
        sim = GrapheneSimulator(image_size=256, multiclass=False)
        training = sim.simulate(1, rng, pixel_size)
        image = training.images[0] + rng.normal(0, 0.15, training.images[0].shape)
        estimate, _ = estimate_pixel_size(image, "graphene")
        errors.append((estimate - pixel_size) / pixel_size)
    errors = np.abs(np.array(errors)) * 100
    return {
        "what": "simulated graphene 256x256, pixel size 0.06-0.35 A/px, Gaussian noise 0.15",
        "n": n_images,
        "mean_abs_error_percent": round(float(errors.mean()), 3),
        "max_abs_error_percent": round(float(errors.max()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", help="PATH[:NOMINAL] of real graphene images")
    parser.add_argument("--dataset", default="image_data")
    parser.add_argument("--lattice", default="graphene")
    parser.add_argument("--simulated", action="store_true", help="also check simulated images")
    args = parser.parse_args()
    for item in args.images:
        path, _, nominal = item.partition(":")
        image = read_image(path, args.dataset)
        start = time.perf_counter()
        pixel_size, confidence = estimate_pixel_size(image, args.lattice)
        seconds = time.perf_counter() - start
        row = {
            "image": path.rsplit("/", 1)[-1],
            "shape": list(image.shape),
            "estimate": round(pixel_size, 5),
            "confidence": round(confidence, 3),
            "seconds": round(seconds, 3),
        }
        if nominal:
            row["nominal"] = float(nominal)
            row["error_percent"] = round((pixel_size - float(nominal)) / float(nominal) * 100, 2)
        print(json.dumps(row))
    if args.simulated:
        print(json.dumps(simulated_check()))


if __name__ == "__main__":
    main()
