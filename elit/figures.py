"""Figures written as PNG files (matplotlib with the Agg backend, imported when a figure is drawn)."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["file_pyplot", "label_colours", "training_gallery"]


def file_pyplot():
    """pyplot for drawing files: Agg unless the caller already chose a backend (a notebook's stays inline)."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def label_colours(n_classes: int) -> np.ndarray:
    """RGBA colours for label values ``0..n_classes`` (0, background, transparent)."""
    base = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.75, 1.0, 1.0],
            [1.0, 0.35, 0.1, 1.0],
            [0.3, 1.0, 0.3, 1.0],
            [1.0, 0.9, 0.1, 1.0],
            [0.85, 0.3, 1.0, 1.0],
            [1.0, 1.0, 1.0, 1.0],
        ]
    )
    if n_classes + 1 <= len(base):
        return base[: n_classes + 1]
    extra = np.random.default_rng(0).uniform(0.2, 1.0, (n_classes + 1 - len(base), 4))
    extra[:, 3] = 1.0
    return np.concatenate([base, extra])


def training_gallery(training_set, path, n: int = 8, title: str | None = None, dpi: int = 100) -> str:
    """Write a PNG grid of training images (top) and their label maps (bottom).

    Parameters
    ----------
    training_set : elit.data.TrainingSet
        The images and labels to show (the first ``n``).
    path : str or path-like
        Output PNG file; parent folders are created.
    n : int
        Number of image / label pairs.
    title : str, optional
        Figure title; by default the class names and pixel size.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    str
        The path written.
    """
    plt = file_pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    count = max(1, min(int(n), len(training_set)))
    names = training_set.class_names
    colours = label_colours(len(names))
    cmap = ListedColormap(colours)
    fig, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.8), squeeze=False)
    for i in range(count):
        image = training_set.images[i]
        axes[0, i].imshow(image, cmap="gray", interpolation="nearest")
        axes[1, i].imshow(image, cmap="gray", interpolation="nearest", alpha=0.45)
        axes[1, i].imshow(training_set.labels[i], cmap=cmap, vmin=-0.5, vmax=len(names) + 0.5, interpolation="nearest", alpha=0.8)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, i].set_title(f"#{i}", fontsize=8)
    axes[0, 0].set_ylabel("image", fontsize=9)
    axes[1, 0].set_ylabel("labels", fontsize=9)
    handles = [Patch(color=colours[k + 1], label=name) for k, name in enumerate(names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(names), 6), fontsize=8, frameon=False)
    size = training_set.images.shape[1:]
    fig.suptitle(
        title or f"{len(training_set)} training pairs, {size[0]}x{size[1]} px at {training_set.pixel_size:g} A/px",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
