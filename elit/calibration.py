"""Does the per-atom uncertainty predict error?  Ranking, calibration and a calibration map.

Three questions, each a function:

* :func:`roc_auc` - how well a score ranks wrong atoms above right ones
  (1: perfectly, 0.5: not at all);
* :func:`reliability_curve` and :func:`expected_calibration_error` - does a
  stated probability of 0.9 mean right nine times in ten;
* :class:`Calibration` - a map from per-atom features (the network's peak
  probability, ensemble spread, members' agreement, fit residual) to a
  probability of being right, fitted by logistic regression and optionally
  made monotone by isotonic regression on top.

Where the labels come from.  On real data there is no truth, so the map is
fitted where there is: on the simulated validation images (the simulator's
exact atom positions; :func:`label_atoms` matches found atoms to them), and
then applied to the real frames.  This assumes that the features mean the
same on simulated and real frames; the condition-matching step
(:mod:`elit.conditions`) makes the simulation resemble the data, and the
label-free checks of :mod:`elit.quality` show whether the result is
plausible.  Members' agreement alone is a label-free proxy, but it scores
the ensemble against itself: atoms every member invents alike look right.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from elit.data import AtomTable
from elit.errors import InputError

__all__ = [
    "Calibration",
    "atom_features",
    "expected_calibration_error",
    "label_atoms",
    "reliability_curve",
    "roc_auc",
]


def _pair(a, b, names=("scores", "labels")) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b).reshape(-1).astype(bool)
    if a.shape != b.shape:
        raise InputError(f"{names[0]} and {names[1]} differ in length: {a.size} and {b.size}")
    if not np.isfinite(a).all():
        raise InputError(f"{names[0]} must be finite")
    return a, b


def roc_auc(scores, positive) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative.

    Ties count one half (the Mann-Whitney statistic).  NaN when one side is empty.

    Parameters
    ----------
    scores : array_like
        Higher means "more likely positive" (e.g. uncertainty, to find wrong atoms).
    positive : array_like of bool
    """
    from scipy.stats import rankdata

    s, y = _pair(scores, positive)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability_curve(probability, correct, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Stated probability against observed frequency of being right, in equal-width bins.

    Returns
    -------
    dict
        ``edges`` (n_bins + 1), and per bin ``mean_probability``, ``frequency`` (NaN in an
        empty bin) and ``count``.
    """
    p, y = _pair(probability, correct, ("probability", "correct"))
    if np.any((p < 0) | (p > 1)):
        raise InputError("probability must lie in [0, 1]")
    if int(n_bins) < 1:
        raise InputError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, int(n_bins) - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        freq = np.bincount(idx, weights=y.astype(float), minlength=n_bins) / count
    return {"edges": edges, "mean_probability": mean_p, "frequency": freq, "count": count}


def expected_calibration_error(probability, correct, n_bins: int = 10) -> float:
    """Count-weighted mean of ``|observed frequency - mean stated probability|`` over the bins."""
    curve = reliability_curve(probability, correct, n_bins)
    c = curve["count"]
    if c.sum() == 0:
        return float("nan")
    used = c > 0
    gap = np.abs(curve["frequency"][used] - curve["mean_probability"][used])
    return float(np.sum(gap * c[used]) / c.sum())


def label_atoms(pred: AtomTable, truth: AtomTable, max_distance_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Which found atoms are real, and how far each is from its true atom.

    Found and true atoms are matched one to one per frame within
    ``max_distance_px`` (:func:`elit.metrics.match_atoms`).

    Returns
    -------
    correct : ndarray of bool
        True for a found atom matched to a true one (False: a false positive).
    error : ndarray
        Distance to the matched true atom (pixels); NaN for false positives.
    """
    from elit.metrics import match_atoms

    correct = np.zeros(len(pred), dtype=bool)
    error = np.full(len(pred), np.nan)
    for f in np.unique(pred.frame):
        pi = np.flatnonzero(pred.frame == f)
        ti = np.flatnonzero(truth.frame == f)
        pairs, dist = match_atoms(truth.positions()[ti], pred.positions()[pi], max_distance_px)
        if len(pairs):
            correct[pi[pairs[:, 1]]] = True
            error[pi[pairs[:, 1]]] = dist
    return correct, error


FEATURES = ("probability", "uncertainty", "fit_residual", "class_probability")
"""Per-atom features a :class:`Calibration` may use, where the table has them."""


def atom_features(atoms: AtomTable, names=FEATURES) -> dict[str, np.ndarray]:
    """The named per-atom features the table has (missing optional columns are left out; NaN -> column median)."""
    out = {}
    for name in names:
        v = getattr(atoms, name, None)
        if v is None:
            continue
        v = np.asarray(v, dtype=np.float64)
        if not np.isfinite(v).any():
            continue
        fill = float(np.nanmedian(v))
        out[name] = np.where(np.isfinite(v), v, fill)
    return out


@dataclass
class Calibration:
    """A fitted map from per-atom features to the probability of being right.

    Build with :meth:`fit`; apply with :meth:`predict`; store with
    :meth:`to_dict` / :meth:`from_dict` (plain JSON, no pickles).
    """

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    isotonic_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    isotonic_y: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def fit(cls, features: dict[str, np.ndarray], correct, isotonic: bool = True, l2: float = 1.0) -> Calibration:
        """Fit a logistic regression (and an isotonic map of its output) to labelled atoms.

        Parameters
        ----------
        features : dict of name -> array
            Per-atom features, e.g. :func:`atom_features`.
        correct : array_like of bool
            The labels (e.g. :func:`label_atoms` on simulated validation images).
        isotonic : bool
            Make the logistic output monotone-calibrated by isotonic regression.
        l2 : float
            Inverse regularisation strength ``C`` of the logistic regression.
        """
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression

        names = tuple(features)
        if not names:
            raise InputError("give at least one feature to calibrate on")
        y = np.asarray(correct).reshape(-1).astype(bool)
        x = np.stack([np.asarray(features[k], dtype=np.float64).reshape(-1) for k in names], axis=1)
        if len(x) != len(y):
            raise InputError(f"{len(x)} feature rows for {len(y)} labels")
        if not np.isfinite(x).all():
            raise InputError("features must be finite (fill missing values first)")
        if y.all() or not y.any():
            raise InputError("calibration needs both right and wrong atoms among the labels")
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        lr = LogisticRegression(C=float(l2), max_iter=1000).fit((x - mean) / scale, y)
        cal = cls(names, mean, scale, lr.coef_[0].copy(), float(lr.intercept_[0]))
        if isotonic:
            raw = cal._logistic(x)
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y.astype(float))
            cal.isotonic_x, cal.isotonic_y = np.asarray(iso.X_thresholds_), np.asarray(iso.y_thresholds_)
        return cal

    def _logistic(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def predict(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Calibrated probability of being right for each atom."""
        missing = [k for k in self.features if k not in features]
        if missing:
            raise InputError(f"calibration needs features {missing}")
        x = np.stack([np.asarray(features[k], dtype=np.float64).reshape(-1) for k in self.features], axis=1)
        p = self._logistic(x)
        if len(self.isotonic_x):
            p = np.interp(p, self.isotonic_x, self.isotonic_y)
        return p

    def to_dict(self) -> dict:
        """JSON-friendly parameters."""
        return {
            "features": list(self.features), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
            "coef": self.coef.tolist(), "intercept": self.intercept,
            "isotonic_x": self.isotonic_x.tolist(), "isotonic_y": self.isotonic_y.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(d["features"]), np.asarray(d["mean"]), np.asarray(d["scale"]), np.asarray(d["coef"]),
                   float(d["intercept"]), np.asarray(d.get("isotonic_x", [])), np.asarray(d.get("isotonic_y", [])))
