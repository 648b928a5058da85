"""Plain-array containers handed between pipeline stages.

Stages never open files; they receive and return these containers, which hold
only NumPy arrays and simple Python values.  Images are indexed ``(row, col)``.
Atom classes are 0-based indices into ``class_names``; label images use ``0``
for background, ``k + 1`` for atom class ``k`` and :data:`IGNORE` for pixels
that no loss may learn from (the ensemble was unsure there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE = 255
"""Label of pixels left out of the loss (e.g. where the ensemble that made an experimental label was unsure)."""

ATOM_COLUMNS = ("frame", "row", "col", "class_index", "probability", "uncertainty")
OPTIONAL_COLUMNS = ("row_network", "col_network", "class_probability", "fit_residual", "intensity", "row_refined",
                    "col_refined", "row_frame", "col_frame", "n_averaged", "filled")
"""Float columns an :class:`AtomTable` may carry (None when absent)."""


@dataclass
class AtomTable:
    """A table of located atoms, one row per atom.

    Attributes
    ----------
    frame : ndarray of int64
        Frame index of each atom.
    row, col : ndarray of float64
        Sub-pixel position in the pixels of the image it was found in.
    class_index : ndarray of int64
        Atom class, an index into ``class_names``.
    probability : ndarray of float64
        Mean network probability at the atom.
    uncertainty : ndarray of float64
        Ensemble standard deviation at the atom (0 for a single member).
    class_names : tuple of str
        Names of the classes.
    row_network, col_network : ndarray or None
        The network's position when ``row``, ``col`` were refined on the raw
        frame (:mod:`elit.localize`); None when they are the network's.
    class_probability : ndarray or None
        Probability of the assigned class (from a classifier's mixture model).
    fit_residual : ndarray or None
        Relative RMS residual of the position fit (NaN where the fit failed).
    intensity : ndarray or None
        Integrated intensity of the atom on the raw frame.
    row_refined, col_refined : ndarray or None
        The position fitted on the raw frame (NaN where the fit failed), kept
        whichever position ``row``, ``col`` report.
    row_frame, col_frame : ndarray or None
        This frame's own position when ``row``, ``col`` average the atom over
        several frames of a movie (:mod:`elit.temporal`).
    n_averaged : ndarray or None
        How many frames' positions ``row``, ``col`` average (1: this frame's alone).
    filled : ndarray or None
        1 for an atom this frame's detection missed and the frames before and after it
        saw (:func:`elit.temporal.fill_gaps`), else 0.
    """

    frame: np.ndarray
    row: np.ndarray
    col: np.ndarray
    class_index: np.ndarray
    probability: np.ndarray
    uncertainty: np.ndarray
    class_names: tuple[str, ...] = ("atom",)
    row_network: np.ndarray | None = None
    col_network: np.ndarray | None = None
    class_probability: np.ndarray | None = None
    fit_residual: np.ndarray | None = None
    intensity: np.ndarray | None = None
    row_refined: np.ndarray | None = None
    col_refined: np.ndarray | None = None
    row_frame: np.ndarray | None = None
    col_frame: np.ndarray | None = None
    n_averaged: np.ndarray | None = None
    filled: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.frame = np.asarray(self.frame, dtype=np.int64).reshape(-1)
        self.row = np.asarray(self.row, dtype=np.float64).reshape(-1)
        self.col = np.asarray(self.col, dtype=np.float64).reshape(-1)
        self.class_index = np.asarray(self.class_index, dtype=np.int64).reshape(-1)
        self.probability = np.asarray(self.probability, dtype=np.float64).reshape(-1)
        self.uncertainty = np.asarray(self.uncertainty, dtype=np.float64).reshape(-1)
        self.class_names = tuple(str(c) for c in self.class_names)
        for name in OPTIONAL_COLUMNS:
            if getattr(self, name) is not None:
                setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        n = len(self.frame)
        for name in self.column_names():
            if len(getattr(self, name)) != n:
                raise ValueError(f"AtomTable column {name!r} has {len(getattr(self, name))} rows, expected {n}")

    def column_names(self) -> tuple[str, ...]:
        """The columns present: :data:`ATOM_COLUMNS`, then the optional ones that are set."""
        return ATOM_COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if getattr(self, c) is not None)

    def __len__(self) -> int:
        return len(self.frame)

    @classmethod
    def empty(cls, class_names=("atom",)) -> AtomTable:
        """Return a table with no rows."""
        z = np.zeros(0)
        return cls(z, z, z, z, z, z, class_names=tuple(class_names))

    @classmethod
    def concatenate(cls, tables: list[AtomTable], class_names=None) -> AtomTable:
        """Stack several tables (they must share class names unless given)."""
        if not tables:
            return cls.empty(class_names or ("atom",))
        names = tuple(class_names) if class_names is not None else tables[0].class_names
        cols = {c: np.concatenate([getattr(t, c) for t in tables]) for c in ATOM_COLUMNS}
        for c in OPTIONAL_COLUMNS:  # an optional column some tables lack is NaN there
            if any(getattr(t, c) is not None for t in tables):
                cols[c] = np.concatenate(
                    [getattr(t, c) if getattr(t, c) is not None else np.full(len(t), np.nan) for t in tables]
                )
        return cls(**cols, class_names=names)

    def select(self, index) -> AtomTable:
        """Return the rows picked by a boolean mask or an index array."""
        return AtomTable(**{c: getattr(self, c)[index] for c in self.column_names()}, class_names=self.class_names)

    def in_frame(self, frame: int) -> AtomTable:
        """Return the atoms of one frame."""
        return self.select(self.frame == frame)

    def positions(self) -> np.ndarray:
        """Return an ``(n, 2)`` array of ``(row, col)``."""
        return np.stack([self.row, self.col], axis=1) if len(self) else np.zeros((0, 2))

    def scaled(self, factor: float) -> AtomTable:
        """Return the table with positions multiplied by ``factor`` (pixel-size change)."""
        from elit.scale import positions_to_working

        out = self.select(slice(None))
        out.row, out.col = positions_to_working(self.row, self.col, factor)
        for r, c in (("row_network", "col_network"), ("row_refined", "col_refined"), ("row_frame", "col_frame")):
            if getattr(self, r) is not None and getattr(self, c) is not None:
                rr, cc = positions_to_working(getattr(self, r), getattr(self, c), factor)
                setattr(out, r, rr)
                setattr(out, c, cc)
        return out

    def to_columns(self) -> dict[str, np.ndarray]:
        """Return the columns present (:meth:`column_names`) as a dict of arrays."""
        return {c: getattr(self, c) for c in self.column_names()}


def class_weights(counts, power: float = 0.5, max_ratio: float = 50.0) -> np.ndarray:
    """Loss weights per label value from label counts (background first), for class-balanced training.

    ``w_k`` is proportional to ``counts_k ** -power`` (0.5: square-root
    balancing, 1: full inverse frequency), capped at ``max_ratio`` times the
    smallest weight, and scaled so that the count-weighted mean is 1 (the
    loss keeps its size).  A label with no pixels gets the largest weight.
    With 18 Si against 3,000 C the Si pixels weigh about 13 times the C (uncapped)
    pixels at ``power=0.5``.

    Parameters
    ----------
    counts : array_like of int, shape (K + 1,)
        Pixels (or atoms) of each label value: background, then class 0, 1, ...
    power : float
        Balancing strength, 0 (none) to 1.
    max_ratio : float
        Largest allowed ratio between two weights.

    Returns
    -------
    ndarray of float64, shape (K + 1,)
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    if counts.size == 0 or np.any(counts < 0) or not np.isfinite(counts).all():
        raise ValueError(f"counts must be non-negative and finite, got {counts.tolist()}")
    if not 0 <= power <= 1 or max_ratio < 1:
        raise ValueError(f"power must lie in [0, 1] and max_ratio be >= 1, got {power}, {max_ratio}")
    present = counts > 0
    if not present.any():
        return np.ones_like(counts)
    w = np.ones_like(counts)
    w[present] = counts[present] ** -float(power)
    w = np.minimum(w / w[present].min(), max_ratio)
    w[~present] = w[present].max()
    return w / (np.sum(w * counts) / np.sum(counts))


@dataclass
class TrainingSet:
    """Images with their label maps, as produced by simulators, augmenters and refiners.

    Attributes
    ----------
    images : ndarray, shape (N, H, W), float32
        Images, normalised to roughly [0, 1].
    labels : ndarray, shape (N, H, W), uint8
        0 is background, ``k + 1`` is atom class ``k``.
    class_names : tuple of str
        Atom class names (background not included).
    pixel_size : float
        Angstrom per pixel of the images.
    atoms : AtomTable or None
        True atom positions (frame = image index), when known.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] = ("atom",)
    pixel_size: float = 0.2
    atoms: AtomTable | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = np.ascontiguousarray(self.images, dtype=np.float32)
        self.labels = np.ascontiguousarray(self.labels, dtype=np.uint8)
        self.class_names = tuple(str(c) for c in self.class_names)
        if self.images.ndim != 3:
            raise ValueError(f"TrainingSet images must be (N, H, W), got shape {self.images.shape}")
        if self.labels.shape != self.images.shape:
            raise ValueError(
                f"TrainingSet labels shape {self.labels.shape} differs from images shape {self.images.shape}"
            )
        if len(self.images) == 0:
            raise ValueError("TrainingSet is empty")
        known = self.labels[self.labels != IGNORE]
        if known.size and int(known.max()) > len(self.class_names):
            raise ValueError(
                f"labels hold class {int(known.max())} but only {len(self.class_names)} class names"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_classes(self) -> int:
        """Number of atom classes (background excluded)."""
        return len(self.class_names)

    def class_weights(self, power: float = 0.5, max_ratio: float = 50.0) -> np.ndarray:
        """Loss weights per label value (background first) from this set's pixel counts; see :func:`class_weights`."""
        known = self.labels[self.labels != IGNORE]
        return class_weights(np.bincount(known.ravel(), minlength=self.n_classes + 1), power, max_ratio)

    def one_hot(self) -> np.ndarray:
        """Return masks ``(N, n_classes, H, W)`` float32, one channel per atom class."""
        k = np.arange(1, self.n_classes + 1, dtype=np.uint8)[None, :, None, None]
        return (self.labels[:, None] == k).astype(np.float32)

    def subset(self, index) -> TrainingSet:
        """Return the images picked by ``index`` (atoms are dropped unless all are kept)."""
        idx = np.arange(len(self))[index]
        atoms = None
        if self.atoms is not None:
            keep = np.isin(self.atoms.frame, idx)
            atoms = self.atoms.select(keep)
            remap = np.full(len(self), -1)
            remap[idx] = np.arange(len(idx))
            atoms.frame = remap[atoms.frame]
        return TrainingSet(self.images[idx], self.labels[idx], self.class_names, self.pixel_size, atoms, dict(self.metadata))


@dataclass
class Selection:
    """Which ensemble members a Selector chose, and why.

    Attributes
    ----------
    members : list of int
        Chosen member indices, best first.
    scores : ndarray, shape (M,)
        Overall score of each member (higher is better).
    criteria : dict of str to ndarray
        Each criterion's per-member values, shape (M,).
    frame_scores : ndarray, shape (M, N) or None
        Per-member, per-frame score, when the selector computes it.
    reasons : list of str
        Human-readable lines explaining the choice.
    """

    members: list[int]
    scores: np.ndarray
    criteria: dict[str, np.ndarray] = field(default_factory=dict)
    frame_scores: np.ndarray | None = None
    reasons: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.members = [int(m) for m in self.members]
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if not self.members:
            raise ValueError("a Selection must keep at least one member")
        if any(m < 0 or m >= len(self.scores) for m in self.members):
            raise ValueError(f"selected members {self.members} out of range for {len(self.scores)} members")


@dataclass
class Refinement:
    """A training set built from the experiment by a Refiner.

    Attributes
    ----------
    training_set : TrainingSet
        Augmented experimental patches with freshly drawn masks.
    kept, dropped : AtomTable
        Atoms used for the masks, and atoms removed (in frame pixels).
    frames_used : list of int
        Frames the training set was drawn from.
    reasons : list of str
        Human-readable lines on what was kept and dropped.
    """

    training_set: TrainingSet
    kept: AtomTable
    dropped: AtomTable
    frames_used: list[int]
    reasons: list[str] = field(default_factory=list)
