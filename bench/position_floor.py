"""The noise floor of one atom's position: the Cramer-Rao bound of the realistic graphene movies.

How precisely can any unbiased estimator place one carbon column from the Poisson counts of a
realistic movie (``realistic_data``), when everything else is known exactly: the atom's profile,
its neighbours and the background?  The Fisher information of the atom's position ``(y, x)`` is

    I_xx = sum over pixels of (d lambda / d x)**2 / lambda

where ``lambda`` is the noise-free expected count of the frame (the movie's ``clean``) and
``d lambda / d x`` is the change of the atom's own image as it moves: a round Gaussian whose width and
height are fitted, together with a flat background, to the noise-free frame as a sum of Gaussians
at the true positions.  The bound on the radial RMSE is ``sqrt(1 / I_xx + 1 / I_yy)``.

An estimator that beats this floor uses something besides the atom's own counts: the lattice
around it (a network trained on lattices does), at the price of a bias where the lattice is not
perfect.  Printed per dose: the root-mean-square bound over the atoms of the first frame (away
from the border, the hole and the amorphous patch).

Use
---
    python bench/position_floor.py                       # tuning seed 0, doses 2e4, 8e4, 3e5, 5e5
    python bench/position_floor.py --seed 104 --final    # a held-out seed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realistic_data as rd  # noqa: E402

HALF = 15
"""Half size (pixels) of the window over which an atom's information is summed (1.5 A at 0.1 A/px)."""


def gaussian_lattice_fit(clean: np.ndarray, rows, cols, keep: np.ndarray):
    """Width (pixels), height and background of the sum of round Gaussians that best fits ``clean``."""
    h, w = clean.shape
    best = None
    for s in np.arange(2.0, 7.01, 0.25):
        model = np.zeros((h, w))
        for r, c in zip(rows, cols):
            r0, r1, c0, c1 = max(int(r) - 25, 0), min(int(r) + 26, h), max(int(c) - 25, 0), min(int(c) + 26, w)
            yy, xx = np.mgrid[r0:r1, c0:c1]
            model[r0:r1, c0:c1] += np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * s * s))
        design = np.c_[model[keep], np.ones(int(keep.sum()))]
        coef, *_ = np.linalg.lstsq(design, clean[keep], rcond=None)
        misfit = float(np.sqrt(np.mean((design @ coef - clean[keep]) ** 2)) / clean[keep].mean())
        if best is None or misfit < best[0]:
            best = (misfit, float(s), float(coef[0]), float(coef[1]))
    return best


def floor(movie: rd.Movie, sigma_px: float, height: float, frame: int = 0) -> np.ndarray:
    """Per-atom bound on the radial position error (Angstrom) in ``frame``."""
    lam = np.maximum(movie.clean[frame].astype(np.float64), 1e-9)
    h, w = lam.shape
    sel = movie.truth.frame == frame
    out = []
    yy, xx = np.mgrid[-HALF:HALF + 1, -HALF:HALF + 1]
    for r, c in zip(movie.truth.row[sel], movie.truth.col[sel]):
        ir, ic = int(r), int(c)
        if not (HALF < ir < h - HALF - 1 and HALF < ic < w - HALF - 1):
            continue
        if movie.hole_masks[frame][ir, ic] or movie.amorphous_masks[frame][ir, ic]:
            continue
        dy, dx = yy - (r - ir), xx - (c - ic)
        own = height * np.exp(-(dx * dx + dy * dy) / (2 * sigma_px ** 2))
        window = lam[ir - HALF:ir + HALF + 1, ic - HALF:ic + HALF + 1]
        i_xx = np.sum((own * dx / sigma_px ** 2) ** 2 / window)
        i_yy = np.sum((own * dy / sigma_px ** 2) ** 2 / window)
        out.append(np.sqrt(1.0 / i_xx + 1.0 / i_yy) * movie.pixel_size)
    return np.asarray(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--final", action="store_true", help="allow a held-out seed")
    p.add_argument("--doses", default="2e4,8e4,3e5,5e5", help="comma-separated e/A^2")
    args = p.parse_args(argv)
    doses = [float(d) for d in args.doses.split(",")]
    ref = rd.load_movie("graphene", args.seed, doses[0], final=args.final)
    sel = ref.truth.frame == 0
    keep = ~ref.hole_masks[0] & ~ref.amorphous_masks[0]
    misfit, sigma, height, background = gaussian_lattice_fit(ref.clean[0].astype(np.float64), ref.truth.row[sel], ref.truth.col[sel], keep)
    print(f"graphene seed {args.seed}, frame 0: atom image sigma {sigma * ref.pixel_size:.3f} A, "
          f"height/background {height / background:.2f}, relative misfit of the Gaussian model {misfit:.2f}")
    print(f"{'dose e/A^2':>11} {'counts/atom':>12} {'floor: RMSE A':>14}")
    for dose in doses:
        movie = rd.load_movie("graphene", args.seed, dose, final=args.final)
        scale = dose / doses[0]  # the counts scale with the dose; the model was fitted at doses[0]
        bound = floor(movie, sigma, height * scale)
        counts = 2 * np.pi * sigma ** 2 * height * scale
        print(f"{dose:>11.0e} {counts:>12.0f} {np.sqrt(np.mean(bound ** 2)):>14.4f}   ({len(bound)} atoms)")


if __name__ == "__main__":
    main()
