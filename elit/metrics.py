"""Detection and segmentation metrics, plus label-free checks for graphene-like lattices.

* :func:`match_atoms` pairs true and found atoms one to one (Hungarian
  assignment on the KD-tree-pruned candidate pairs, component by component).
* :func:`detection_scores` gives F1, precision, recall and position RMSE, overall,
  per frame and per class.
* :func:`iou_per_class` gives the IoU of each *atom* class; the background is
  never averaged in (that is what makes some published IoUs look better than
  the detection is).
* :func:`neighbour_stats` and :func:`detection_rate` need no labels.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from elit.data import AtomTable
from elit.errors import InputError

__all__ = [
    "GRAPHENE_DENSITY_PER_A2",
    "detection_rate",
    "detection_scores",
    "iou_per_class",
    "match_atoms",
    "neighbour_stats",
]

GRAPHENE_DENSITY_PER_A2 = 4.0 / (np.sqrt(3.0) * 2.46**2)
"""Atoms per square Angstrom in pristine graphene (0.3816, i.e. 38.2 per nm^2)."""


def _as_points(a, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"{name} must have shape (n, 2) of (row, col), got {arr.shape}")
    return arr


def match_atoms(true_rc, pred_rc, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Pair true and predicted positions one to one.

    Among pairs closer than ``max_distance``, the matching with the most
    pairs is chosen, and of those the one with the smallest total distance.
    Candidate pairs come from a KD-tree; the assignment is solved separately
    for each connected group of candidates, so thousands of atoms take
    milliseconds.

    Parameters
    ----------
    true_rc : array_like, shape (n, 2)
    pred_rc : array_like, shape (m, 2)
    max_distance : float
        Largest distance (same units as the positions) of a match.

    Returns
    -------
    pairs : ndarray of int, shape (k, 2)
        ``(true index, predicted index)`` per match, sorted by true index.
    distances : ndarray, shape (k,)
    """
    t = _as_points(true_rc, "true_rc")
    p = _as_points(pred_rc, "pred_rc")
    empty = (np.zeros((0, 2), dtype=np.int64), np.zeros(0))
    if len(t) == 0 or len(p) == 0 or max_distance <= 0:
        return empty
    # The "ndarray" output keeps pairs at distance exactly 0 (a sparse matrix might not).
    cand = cKDTree(t).sparse_distance_matrix(cKDTree(p), float(max_distance), output_type="ndarray")
    ti, pi, d = cand["i"].astype(np.int64), cand["j"].astype(np.int64), cand["v"].astype(np.float64)
    if len(ti) == 0:
        return empty
    n, m = len(t), len(p)
    graph = coo_matrix((np.ones(len(ti)), (ti, n + pi)), shape=(n + m, n + m))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[ti]
    order = np.argsort(edge_comp, kind="stable")
    ti, pi, d, edge_comp = ti[order], pi[order], d[order], edge_comp[order]
    starts = np.flatnonzero(np.r_[True, edge_comp[1:] != edge_comp[:-1]])
    ends = np.r_[starts[1:], len(edge_comp)]
    sizes = ends - starts
    out_t, out_p, out_d = [], [], []
    single = sizes == 1
    if single.any():
        s = starts[single]
        out_t.append(ti[s])
        out_p.append(pi[s])
        out_d.append(d[s])
    big_penalty = float(max_distance) * (len(ti) + 1) + 1.0
    for s, e in zip(starts[~single], ends[~single]):
        ct, cp, cd = ti[s:e], pi[s:e], d[s:e]
        ut, it = np.unique(ct, return_inverse=True)
        up, ip = np.unique(cp, return_inverse=True)
        cost = np.full((len(ut), len(up)), big_penalty)
        cost[it, ip] = cd
        r, c = linear_sum_assignment(cost)
        real = cost[r, c] < big_penalty
        out_t.append(ut[r[real]])
        out_p.append(up[c[real]])
        out_d.append(cost[r[real], c[real]])
    tt = np.concatenate(out_t).astype(np.int64)
    pp = np.concatenate(out_p).astype(np.int64)
    dd = np.concatenate(out_d)
    order = np.argsort(tt, kind="stable")
    return np.stack([tt[order], pp[order]], axis=1), dd[order]


def _ratios(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1; an empty side counts as perfect (nothing missed or invented)."""
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    return float(precision), float(recall), float(f1)


def detection_scores(true: AtomTable, pred: AtomTable, max_distance_px: float) -> dict:
    """Score found atoms against true ones, frame by frame.

    Parameters
    ----------
    true, pred : AtomTable
        Positions in the same pixels.
    max_distance_px : float
        Largest distance of a match, in pixels (e.g. half a bond length).

    Returns
    -------
    dict
        ``f1``, ``precision``, ``recall``, ``tp``, ``fp``, ``fn`` over all frames;
        ``rmse`` (pixels, NaN without matches); ``frames`` and per-frame lists
        ``f1_per_frame``, ``precision_per_frame``, ``recall_per_frame``,
        ``tp_per_frame``, ``fp_per_frame``, ``fn_per_frame``;
        ``recall_per_class`` (true class name -> share of those atoms found,
        at any class; e.g. the dopant recall); ``precision_per_class`` and
        ``class_accuracy`` (share of matched atoms whose class names agree),
        ``class_recall_per_class`` (true class name -> share found with that class),
        when both tables have class names in common.
    """
    frames = np.union1d(np.unique(true.frame), np.unique(pred.frame)).astype(np.int64)
    per = {key: [] for key in ("f1", "precision", "recall", "tp", "fp", "fn")}
    all_d = []
    found_true = np.zeros(len(true), dtype=bool)
    found_pred = np.zeros(len(pred), dtype=bool)
    pairs_all = []
    for f in frames:
        ti = np.flatnonzero(true.frame == f)
        pi = np.flatnonzero(pred.frame == f)
        pairs, d = match_atoms(true.positions()[ti], pred.positions()[pi], max_distance_px)
        tp = len(pairs)
        fp = len(pi) - tp
        fn = len(ti) - tp
        pr, rc, f1 = _ratios(tp, fp, fn)
        for key, val in zip(("f1", "precision", "recall", "tp", "fp", "fn"), (f1, pr, rc, tp, fp, fn)):
            per[key].append(val)
        all_d.append(d)
        if tp:
            found_true[ti[pairs[:, 0]]] = True
            found_pred[pi[pairs[:, 1]]] = True
            pairs_all.append(np.stack([ti[pairs[:, 0]], pi[pairs[:, 1]]], axis=1))
    tp, fp, fn = int(sum(per["tp"])), int(sum(per["fp"])), int(sum(per["fn"]))
    precision, recall, f1 = _ratios(tp, fp, fn)
    d = np.concatenate(all_d) if all_d else np.zeros(0)
    out = {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "rmse": float(np.sqrt(np.mean(d**2))) if len(d) else float("nan"),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "frames": frames.tolist(),
    }
    for key, vals in per.items():
        out[f"{key}_per_frame"] = list(vals)
    out["recall_per_class"] = {
        name: float(found_true[true.class_index == k].mean())
        for k, name in enumerate(true.class_names)
        if np.any(true.class_index == k)
    }
    out["precision_per_class"] = {
        name: float(found_pred[pred.class_index == k].mean())
        for k, name in enumerate(pred.class_names)
        if np.any(pred.class_index == k)
    }
    if set(true.class_names) & set(pred.class_names):
        pairs = np.concatenate(pairs_all) if pairs_all else np.zeros((0, 2), dtype=np.int64)
        tn = np.asarray(true.class_names, dtype=object)[true.class_index[pairs[:, 0]]]
        pn = np.asarray(pred.class_names, dtype=object)[pred.class_index[pairs[:, 1]]]
        out["class_accuracy"] = float(np.mean(tn == pn)) if len(pairs) else float("nan")
        out["class_recall_per_class"] = {
            name: float(np.sum((tn == pn) & (tn == name)) / np.sum(true.class_index == k))
            for k, name in enumerate(true.class_names)
            if np.any(true.class_index == k)
        }
    return out


def iou_per_class(pred_labels, true_labels, n_classes: int) -> dict[int, float]:
    """Intersection over union of each atom class in label maps.

    Parameters
    ----------
    pred_labels, true_labels : array_like of int, same shape
        Label maps: 0 background, ``k + 1`` atom class ``k``.
    n_classes : int
        Number of atom classes (background excluded).

    Returns
    -------
    dict of int to float
        Atom class index ``k`` -> IoU of label ``k + 1``; NaN where the class
        is absent from both maps.  The background is not included, so the
        mean of these values is an honest segmentation score.
    """
    pred = np.asarray(pred_labels)
    true = np.asarray(true_labels)
    if pred.shape != true.shape:
        raise InputError(f"label maps differ in shape: {pred.shape} vs {true.shape}")
    out = {}
    for k in range(int(n_classes)):
        a = pred == k + 1
        b = true == k + 1
        union = np.count_nonzero(a | b)
        out[k] = float(np.count_nonzero(a & b) / union) if union else float("nan")
    return out


def neighbour_stats(positions_A, bond: float = 1.42, tol: float = 0.15, edge_margin_A: float = 0.0) -> float:
    """Share of atoms with exactly three neighbours at ``bond +- tol`` (a graphene check).

    Needs no labels: in pristine graphene every interior atom has three
    neighbours at 1.42 A; invented atoms, missed atoms and foggy blobs lower
    the share.

    Parameters
    ----------
    positions_A : array_like, shape (n, 2)
        Positions of one frame in Angstrom.
    bond, tol : float
        Expected neighbour distance and tolerance, Angstrom.
    edge_margin_A : float
        Atoms closer than this to the bounding box of all positions are not
        counted (they still count as neighbours); 0 counts every atom.

    Returns
    -------
    float
        The share in [0, 1]; NaN when no atom is counted.
    """
    pos = _as_points(positions_A, "positions_A")
    if len(pos) == 0:
        return float("nan")
    tree = cKDTree(pos)
    hi = tree.query_ball_point(pos, r=bond + tol, return_length=True) - 1
    lo = tree.query_ball_point(pos, r=max(bond - tol, 0.0), return_length=True) - 1
    three = (hi - lo) == 3
    # atoms closer than bond - tol disqualify too (a duplicate is not a bond)
    three &= lo == 0
    counted = np.ones(len(pos), dtype=bool)
    if edge_margin_A > 0:
        lo_b, hi_b = pos.min(axis=0), pos.max(axis=0)
        counted = np.all((pos - lo_b >= edge_margin_A) & (hi_b - pos >= edge_margin_A), axis=1)
    if not counted.any():
        return float("nan")
    return float(three[counted].mean())


def detection_rate(atoms_per_frame, area_A2, density_per_A2: float = GRAPHENE_DENSITY_PER_A2):
    """Found atoms as a share of the atoms the area should hold.

    Parameters
    ----------
    atoms_per_frame : int or array_like
        Number of atoms found in each frame.
    area_A2 : float or array_like
        Area of the material in each frame, square Angstrom (exclude holes
        and vacuum if known).
    density_per_A2 : float
        Expected areal density (graphene: 0.382 per A^2).

    Returns
    -------
    float or ndarray
        ``atoms / (area * density)``; 1 means every expected atom was found.
    """
    n = np.asarray(atoms_per_frame, dtype=np.float64)
    area = np.asarray(area_A2, dtype=np.float64)
    if np.any(area <= 0) or density_per_A2 <= 0:
        raise InputError("area_A2 and density_per_A2 must be positive")
    rate = n / (area * float(density_per_A2))
    return float(rate) if rate.ndim == 0 else rate
