"""Locating atoms in probability maps: threshold, connected blobs, sub-pixel centroids.

The networks give one probability map per atom class.  :func:`locate_atoms`
turns such maps (the mean of the ensemble members used) into an
:class:`~elit.data.AtomTable`: each connected blob above a threshold is an
atom, placed at its probability-weighted centroid, with the blob's peak
probability and an uncertainty taken from the ensemble.

Everything is vectorised per frame and class (``scipy.ndimage.label`` plus
``numpy.bincount``), so thousands of atoms per frame cost milliseconds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from elit.data import AtomTable
from elit.errors import InputError

__all__ = ["atom_patches", "blob_statistics", "fit_border_blobs", "locate_atoms", "refine_gaussian"]


def _as_nkhw(array, name: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise InputError(f"{name} must have shape (K, H, W) or (N, K, H, W), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def blob_statistics(prob: np.ndarray, labels: np.ndarray, n: int, threshold: float) -> dict[str, np.ndarray]:
    """Per-blob area, weighted centroid and peak of one probability map.

    Parameters
    ----------
    prob : ndarray, shape (H, W)
        Probability map.
    labels : ndarray of int, shape (H, W)
        Blob labels ``1..n`` (0 outside blobs), as from ``scipy.ndimage.label``.
    n : int
        Number of blobs.
    threshold : float
        The threshold that made the blobs; pixels are weighted by ``p - threshold``
        (plus a tiny floor), which goes to zero at the blob edge and so removes
        most of the bias a hard cut-off gives the plain weighted centroid.

    Returns
    -------
    dict
        ``area``, ``row``, ``col``, ``peak``, ``mean`` arrays of length ``n``.
    """
    h, w = prob.shape
    lab = labels.ravel()
    p = prob.ravel()
    inside = lab > 0
    lab_in = lab[inside]
    p_in = p[inside]
    flat = np.flatnonzero(inside)
    rr = (flat // w).astype(np.float64)
    cc = (flat % w).astype(np.float64)
    weight = np.maximum(p_in - threshold, 0.0) + 1e-6
    area = np.bincount(lab_in, minlength=n + 1)[1:]
    wsum = np.bincount(lab_in, weights=weight, minlength=n + 1)[1:]
    row = np.bincount(lab_in, weights=weight * rr, minlength=n + 1)[1:] / wsum
    col = np.bincount(lab_in, weights=weight * cc, minlength=n + 1)[1:] / wsum
    psum = np.bincount(lab_in, weights=p_in, minlength=n + 1)[1:]
    peak = np.zeros(n + 1)
    np.maximum.at(peak, lab_in, p_in)
    return {"area": area, "row": row, "col": col, "peak": peak[1:], "mean": psum / np.maximum(area, 1)}


def split_merged_blobs(prob: np.ndarray, labels: np.ndarray, n: int, threshold: float, min_core: int = 2):
    """Split the blobs that hold two or more atoms joined by a thin bridge.

    Two neighbouring atoms whose discs the map joins by a bridge just above the
    threshold (a bond at the edge of a hole or at the frame border, where an atom
    lacks its other neighbours) make one blob, and its centroid lies between them.
    Each blob's cores (4-connected pixels with ``p`` at least halfway from the
    threshold to 1, of at least ``min_core`` pixels) mark its atoms.  A blob is
    split when it has two or more cores whose centroids lie at least the
    diameter of a typical blob apart (the equivalent diameter of the median
    blob with one core), so a single atom with a noisy top stays whole; each of
    its pixels goes to the nearest core.

    Parameters
    ----------
    prob : ndarray, shape (H, W)
        Probability map.
    labels : ndarray of int, shape (H, W)
        Its blob labels ``1..n`` at ``threshold``.
    n : int
        Number of blobs.
    threshold : float
        The threshold that made the blobs.
    min_core : int
        Smallest core, in pixels.

    Returns
    -------
    labels : ndarray of int
        New labels ``1..n_new`` (the input is not changed).
    n_new : int
        Number of blobs after splitting.
    """
    if n == 0:
        return labels, n
    level = threshold + 0.5 * (1.0 - threshold)
    cores, n_cores = ndimage.label((prob >= level) & (labels > 0))
    if n_cores < 2:
        return labels, n
    core_area = np.bincount(cores.ravel(), minlength=n_cores + 1)
    valid = core_area >= min_core
    valid[0] = False
    parent = np.zeros(n_cores + 1, dtype=np.int64)
    flat = cores.ravel()
    parent[flat] = labels.ravel()
    per_blob = np.bincount(parent[valid], minlength=n + 1)
    if not (per_blob[1:] >= 2).any():
        return labels, n
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    single = area[per_blob[1:] == 1]
    if len(single) < 3:
        return labels, n
    diameter = 2.0 * np.sqrt(np.median(single) / np.pi)
    shared = np.flatnonzero(valid & (per_blob[parent] >= 2))  # the cores of the blobs that may split
    centre = dict(zip(shared, ndimage.center_of_mass(cores > 0, cores, shared)))
    out = labels.copy()
    n_new = n
    objects = ndimage.find_objects(labels)
    for b in np.flatnonzero(per_blob >= 2):
        ids = np.flatnonzero(valid & (parent == b))
        pts = np.array([centre[i] for i in ids])
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        if d.min() < diameter:
            continue
        box = objects[b - 1]
        inside = labels[box] == b
        core_box = np.where(np.isin(cores[box], ids), cores[box], 0)
        _, (ir, ic) = ndimage.distance_transform_edt(core_box == 0, return_indices=True)
        nearest = core_box[ir, ic]
        part = np.searchsorted(ids, nearest)  # 0 .. len(ids) - 1
        new = np.where(part == 0, b, n_new + part)
        out[box][inside] = new[inside]
        n_new += len(ids) - 1
    return out, n_new


def _radial_profile(prob, labels, row, col, ids, reach: float, step: float) -> np.ndarray:
    """Mean of ``prob`` against the distance from the centres ``(row, col)`` of blobs ``ids`` (bins of ``step``).

    Pixels of other blobs are left out, so neighbours do not enter a blob's tail.
    """
    h, w = prob.shape
    k = int(np.ceil(reach))
    off = np.arange(-k, k + 1)
    dr, dc = (a.ravel() for a in np.meshgrid(off, off, indexing="ij"))
    rr = np.rint(row)[:, None].astype(np.int64) + dr[None]
    cc = np.rint(col)[:, None].astype(np.int64) + dc[None]
    ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    rr, cc = np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)
    d = np.hypot(rr - row[:, None], cc - col[:, None])
    lab = labels[rr, cc]
    ok &= (d <= reach) & ((lab == 0) | (lab == ids[:, None]))
    n_bins = int(np.ceil(reach / step)) + 2
    b = np.minimum((d[ok] / step).astype(np.int64), n_bins - 1)
    total = np.bincount(b, weights=prob[rr, cc][ok], minlength=n_bins)
    count = np.bincount(b, minlength=n_bins)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def _move_range(low_side: bool, high_side: bool, span: float) -> tuple[float, float]:
    """How far a cut blob's centre may move along one axis: outwards across the one cut side, else half a pixel."""
    if low_side and not high_side:
        return -span, 0.5
    if high_side and not low_side:
        return -0.5, span
    return -0.5, 0.5


def fit_border_blobs(prob: np.ndarray, labels: np.ndarray, stats: dict[str, np.ndarray], min_interior: int = 5):
    """Centres of the blobs cut by the frame border, from the frame's own blob profile.

    A blob that touches the border shows only part of an atom, and its centroid lies
    inside the frame by up to the blob's radius.  The radial profile of the frame's
    whole blobs (the larger three quarters of those that do not touch the border) is
    fitted to the visible part of each cut blob by a grid search (0.5, 0.1, then
    0.02 px).  The centre moves outwards across a cut side (by at most the blob
    radius plus a pixel) and by at most half a pixel along an axis that is not
    cut, and is kept within the field of view (half a pixel beyond the outer pixel
    centres).  With fewer than ``min_interior`` whole blobs the
    centroids are returned unchanged.

    Parameters
    ----------
    prob : ndarray, shape (H, W)
        Probability map.
    labels : ndarray of int, shape (H, W)
        Its blob labels ``1..n``.
    stats : dict
        :func:`blob_statistics` of these blobs (``area``, ``row``, ``col``).
    min_interior : int
        Whole blobs needed to measure the profile.

    Returns
    -------
    row, col : ndarray
        Positions of all ``n`` blobs: refitted for the cut ones, the centroid for the rest.
    """
    h, w = prob.shape
    row, col = stats["row"].astype(np.float64).copy(), stats["col"].astype(np.float64).copy()
    n = len(row)
    sides = np.zeros((4, n + 1), dtype=bool)  # top, bottom, left, right
    for i, edge in enumerate((labels[0], labels[-1], labels[:, 0], labels[:, -1])):
        sides[i, edge] = True
    sides = sides[:, 1:]
    cut = sides.any(axis=0)
    area = stats["area"]
    whole = ~cut & (area >= np.percentile(area, 25)) if n else cut
    if not cut.any() or whole.sum() < min_interior:
        return row, col
    radius = float(np.sqrt(np.median(area[whole]) / np.pi))
    reach, step = 2.0 * radius + 2.0, 0.25
    profile = _radial_profile(prob, labels, row[whole], col[whole], np.flatnonzero(whole) + 1, reach, step)

    def model(d):
        x = np.maximum(d / step - 0.5, 0.0)  # bin i holds the mean over [i, i + 1) steps: its centre is i + 0.5
        i = np.clip(x.astype(np.int64), 0, len(profile) - 2)
        t = np.clip(x - i, 0.0, 1.0)
        return np.where(d <= reach, profile[i] * (1.0 - t) + profile[i + 1] * t, 0.0)

    k = int(np.ceil(reach)) + 2
    off = np.arange(-k, k + 1)
    dr, dc = (a.ravel() for a in np.meshgrid(off, off, indexing="ij"))
    span = np.ceil(radius) + 1.0
    grids = [np.arange(-span, span + 1e-9, 0.5), np.arange(-0.5, 0.5 + 1e-9, 0.1), np.arange(-0.1, 0.1 + 1e-9, 0.02)]
    grids = [tuple(a.ravel() for a in np.meshgrid(g, g, indexing="ij")) for g in grids]
    for j in np.flatnonzero(cut):
        rr = int(np.rint(row[j])) + dr
        cc = int(np.rint(col[j])) + dc
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        rr, cc = rr[ok], cc[ok]
        lab = labels[rr, cc]
        own = ((lab == 0) | (lab == j + 1)) & (np.hypot(rr - row[j], cc - col[j]) <= reach + span)
        rr, cc = rr[own], cc[own]
        v = prob[rr, cc]
        # the centre moves outwards across a cut side, by at most half a pixel along an uncut axis
        r_lo, r_hi = _move_range(sides[0, j], sides[1, j], span)
        c_lo, c_hi = _move_range(sides[2, j], sides[3, j], span)
        dr0 = dc0 = 0.0
        for gr, gc in grids:
            cr = row[j] + np.clip(dr0 + gr, r_lo, r_hi)
            cc_ = col[j] + np.clip(dc0 + gc, c_lo, c_hi)
            cost = ((v[None] - model(np.hypot(rr[None] - cr[:, None], cc[None] - cc_[:, None]))) ** 2).sum(axis=1)
            best = int(np.argmin(cost))
            dr0, dc0 = cr[best] - row[j], cc_[best] - col[j]
        row[j] = np.clip(row[j] + dr0, -0.5, h - 0.5)
        col[j] = np.clip(col[j] + dc0, -0.5, w - 0.5)
    return row, col


def refine_gaussian(
    image: np.ndarray, row: np.ndarray, col: np.ndarray, half_width: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Refine positions by a local least-squares 2-D Gaussian fit.

    An axis-aligned Gaussian is a paraboloid in ``log(image)``; it is fitted,
    weighted by the squared values (which favours the peak), in a
    ``(2 * half_width + 1)``-pixel window around the nearest pixel of each
    start position.  All atoms are solved at once.  A fit that is not a peak
    (flat top, saddle), moves further than the window or leaves the image
    keeps the start value.  For positions on the raw frame use
    :func:`elit.localize.fit_gaussians`.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Non-negative map (probability or intensity).
    row, col : ndarray
        Start positions in pixels.
    half_width : int
        Half the window size in pixels.

    Returns
    -------
    row, col : ndarray
        Refined positions.
    """
    row = np.asarray(row, dtype=np.float64)
    col = np.asarray(col, dtype=np.float64)
    if row.size == 0:
        return row.copy(), col.copy()
    hw = int(half_width)
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    pad = np.pad(img, hw, mode="constant", constant_values=0.0)
    valid = np.pad(np.ones_like(img, dtype=bool), hw, mode="constant", constant_values=False)
    r0 = np.clip(np.rint(row).astype(np.int64), 0, h - 1)
    c0 = np.clip(np.rint(col).astype(np.int64), 0, w - 1)
    off = np.arange(-hw, hw + 1)
    dr, dc = np.meshgrid(off, off, indexing="ij")
    dr, dc = dr.ravel(), dc.ravel()
    ri = r0[:, None] + hw + dr[None, :]
    ci = c0[:, None] + hw + dc[None, :]
    values = pad[ri, ci]
    ok = valid[ri, ci] & (values > 0)
    # Weighted least squares: log v = a + b r + c s + d r^2 + e s^2, weights v^2.
    design = np.stack([np.ones_like(dr), dr, dc, dr**2, dc**2], axis=1).astype(np.float64)
    wgt = np.where(ok, values**2, 0.0)
    logv = np.log(np.where(ok, values, 1.0))
    ata = np.einsum("np,pi,pj->nij", wgt, design, design)
    atb = np.einsum("np,pi,np->ni", wgt, design, logv)
    ata += np.eye(5)[None] * 1e-12
    coef = np.full((len(row), 5), np.nan)
    enough = ok.sum(axis=1) >= 5
    if enough.any():
        try:
            coef[enough] = np.linalg.solve(ata[enough], atb[enough][..., None])[..., 0]
        except np.linalg.LinAlgError:
            pass
    b, c, d, e = coef[:, 1], coef[:, 2], coef[:, 3], coef[:, 4]
    with np.errstate(divide="ignore", invalid="ignore"):
        dr_fit = -b / (2 * d)
        dc_fit = -c / (2 * e)
    good = (d < -1e-6) & (e < -1e-6) & (np.abs(dr_fit) <= hw) & (np.abs(dc_fit) <= hw)
    # a peak cut by the image edge can extrapolate outside it: keep the start there
    good &= (r0 + dr_fit >= 0) & (r0 + dr_fit <= h - 1) & (c0 + dc_fit >= 0) & (c0 + dc_fit <= w - 1)
    out_r = np.where(good, r0 + dr_fit, row)
    out_c = np.where(good, c0 + dc_fit, col)
    return out_r, out_c


def labelled_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Label, row and column of every labelled pixel of a label image, and the flat mask of them.

    Returns
    -------
    lab_in, rows, cols : ndarray
        Label (1..n) and float64 coordinates of each labelled pixel, in raster order.
    inside : ndarray of bool
        ``labels.ravel() > 0``, to pick the same pixels out of other maps.
    """
    w = labels.shape[1]
    lab = labels.ravel()
    inside = lab > 0
    flat = np.flatnonzero(inside)
    return lab[inside], (flat // w).astype(np.float64), (flat % w).astype(np.float64), inside


def _member_spread(members: np.ndarray, labels: np.ndarray, n: int, row: np.ndarray, col: np.ndarray,
                   threshold: float) -> np.ndarray:
    """RMS distance (px) of each member's centroid inside the blob from the ensemble centroid."""
    m = members.shape[0]
    if m < 2 or n == 0:
        return np.zeros(n)
    lab_in, rr, cc, inside = labelled_pixels(labels)
    sq = np.zeros(n)
    counted = np.zeros(n)
    for k in range(m):
        p = members[k].ravel()[inside]
        wgt = np.maximum(p - threshold, 0.0)
        ws = np.bincount(lab_in, weights=wgt, minlength=n + 1)[1:]
        has = ws > 0
        r = np.bincount(lab_in, weights=wgt * rr, minlength=n + 1)[1:]
        c = np.bincount(lab_in, weights=wgt * cc, minlength=n + 1)[1:]
        r = np.where(has, r / np.where(has, ws, 1), row)
        c = np.where(has, c / np.where(has, ws, 1), col)
        sq += np.where(has, (r - row) ** 2 + (c - col) ** 2, 0.0)
        counted += has
    return np.sqrt(sq / np.maximum(counted, 1))


def _drop_cross_class_duplicates(row, col, cls, prob, radius) -> np.ndarray:
    """Boolean keep-mask: of two blobs of different classes at one place, keep the more probable."""
    n = len(row)
    keep = np.ones(n, dtype=bool)
    if n < 2 or len(np.unique(cls)) < 2:
        return keep
    reach = max(float(radius.max()), 1.5)
    tree = cKDTree(np.stack([row, col], axis=1))
    pairs = tree.query_pairs(reach, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    i, j = pairs[:, 0], pairs[:, 1]
    dist = np.hypot(row[i] - row[j], col[i] - col[j])
    same_place = (cls[i] != cls[j]) & (dist <= np.maximum(np.maximum(radius[i], radius[j]), 1.5))
    i, j = i[same_place], j[same_place]
    if len(i) == 0:
        return keep
    order = np.argsort(-np.maximum(prob[i], prob[j]), kind="stable")
    for a, b in zip(i[order], j[order]):
        if keep[a] and keep[b]:
            if prob[a] >= prob[b]:
                keep[b] = False
            else:
                keep[a] = False
    return keep


def locate_atoms(
    probability,
    threshold: float = 0.5,
    min_area: int = 2,
    uncertainty=None,
    member_probabilities=None,
    class_names=("atom",),
    frame_offset: int = 0,
    refine: bool = False,
    border_fit: bool = False,
    split_merged: bool = False,
) -> AtomTable:
    """Find atoms as blobs of high probability.

    Per frame and class the map is thresholded; every 4-connected blob of at
    least ``min_area`` pixels is one atom, placed at the centroid weighted by
    ``p - threshold``.  Where blobs of two classes sit at the same place (one
    centroid within the other blob's equivalent radius), the more probable
    one is kept.

    Parameters
    ----------
    probability : array_like, shape (K, H, W) or (N, K, H, W)
        Per-class atom probability (the mean of the members used).
    threshold : float
        Pixels with ``p >= threshold`` belong to blobs.
    min_area : int
        Smallest blob, in pixels.
    uncertainty : array_like or None
        Same shape as ``probability``: per-pixel ensemble standard deviation.
        When None and ``member_probabilities`` is given it is computed from them.
    member_probabilities : array_like or None
        Shape ``(M,) + probability.shape``: the members' own maps.  Adds the
        spread of the atom's position across members to the uncertainty.
    class_names : sequence of str
        One name per class ``K``.
    frame_offset : int
        Added to the frame index (to locate atoms chunk by chunk).
    refine : bool
        Refine each position with a local 2-D Gaussian fit to the probability
        (useful when maps are peaked; flat-topped blobs keep the centroid).
    border_fit : bool
        Place the blobs cut by the frame border with :func:`fit_border_blobs`
        (their centroids lie too far inside the frame).
    split_merged : bool
        Split the blobs that hold two atoms joined by a thin bridge
        (:func:`split_merged_blobs`).

    Returns
    -------
    AtomTable
        ``probability`` is the blob's peak probability; ``uncertainty`` is
        ``sqrt(s_p**2 + s_x**2)`` where ``s_p`` is the mean ensemble standard
        deviation over the blob and ``s_x`` the RMS spread of the members'
        centroids divided by the blob's equivalent radius ``sqrt(area/pi)``
        (clipped to 1): both are dimensionless, 0 for an ensemble of one.

    Raises
    ------
    InputError
        On wrong shapes or a class-name count that differs from ``K``.
    """
    prob = _as_nkhw(probability, "probability")
    n_frames, k, h, w = prob.shape
    names = tuple(str(c) for c in class_names)
    if len(names) != k:
        if names == ("atom",):
            names = tuple(f"class_{i}" for i in range(k))
        else:
            raise InputError(f"{len(names)} class names {names} for {k} probability channels")
    members = None
    if member_probabilities is not None:
        members = np.asarray(member_probabilities, dtype=np.float64)
        if members.shape[1:] == (k, h, w) and n_frames == 1:
            members = members[:, None]
        if members.shape[1:] != prob.shape:
            raise InputError(
                f"member_probabilities shape {members.shape} does not match probability shape {prob.shape} "
                "with a leading member axis"
            )
    if uncertainty is not None:
        unc = _as_nkhw(uncertainty, "uncertainty")
        if unc.shape != prob.shape:
            raise InputError(f"uncertainty shape {unc.shape} differs from probability shape {prob.shape}")
    elif members is not None and members.shape[0] > 1:
        unc = members.std(axis=0)
    else:
        unc = None
    if not 0.0 < float(threshold) <= 1.0:
        raise InputError(f"threshold must lie in (0, 1] for probability maps, got {threshold}")
    threshold = float(threshold)
    min_area = max(int(min_area), 1)

    tables = []
    for f in range(n_frames):
        cols = {name: [] for name in ("row", "col", "cls", "prob", "unc", "radius")}
        for c in range(k):
            p = np.nan_to_num(prob[f, c], nan=0.0)
            mask = p >= threshold
            if not mask.any():
                continue
            labels, n = ndimage.label(mask)
            if split_merged:
                labels, n = split_merged_blobs(p, labels, n, threshold)
            stats = blob_statistics(p, labels, n, threshold)
            big = stats["area"] >= min_area
            if not big.any():
                continue
            row, col = stats["row"], stats["col"]
            if border_fit:
                row, col = fit_border_blobs(p, labels, stats)
            if refine:
                row, col = refine_gaussian(p, row, col, half_width=2)
            radius = np.sqrt(stats["area"] / np.pi)
            u = np.zeros(n)
            if unc is not None:
                u_sum = np.bincount(labels.ravel(), weights=np.nan_to_num(unc[f, c]).ravel(), minlength=n + 1)[1:]
                u = u_sum / np.maximum(stats["area"], 1)
            if members is not None and members.shape[0] > 1:
                spread = _member_spread(members[:, f, c], labels, n, row, col, threshold)
                u = np.sqrt(u**2 + np.minimum(spread / np.maximum(radius, 0.5), 1.0) ** 2)
            cols["row"].append(row[big])
            cols["col"].append(col[big])
            cols["cls"].append(np.full(int(big.sum()), c))
            cols["prob"].append(stats["peak"][big])
            cols["unc"].append(u[big])
            cols["radius"].append(radius[big])
        if not cols["row"]:
            continue
        arr = {key: np.concatenate(v) for key, v in cols.items()}
        keep = _drop_cross_class_duplicates(arr["row"], arr["col"], arr["cls"], arr["prob"], arr["radius"])
        tables.append(
            AtomTable(
                frame=np.full(int(keep.sum()), f + int(frame_offset)),
                row=arr["row"][keep],
                col=arr["col"][keep],
                class_index=arr["cls"][keep],
                probability=arr["prob"][keep],
                uncertainty=arr["unc"][keep],
                class_names=names,
            )
        )
    if not tables:
        return AtomTable.empty(names)
    return AtomTable.concatenate(tables, class_names=names)


def atom_patches(frames, atoms: AtomTable, half: int) -> np.ndarray:
    """Square patches ``(n, 2 * half + 1, 2 * half + 1)`` centred on each atom's nearest pixel.

    Parameters
    ----------
    frames : array_like, shape (N, H, W) or (H, W)
        Images; ``atoms.frame`` indexes them.
    atoms : AtomTable
        Atom positions in the pixels of ``frames``.
    half : int
        Half the patch side; the atom sits at the patch's centre pixel.

    Returns
    -------
    ndarray of float32
        Frames are reflect-padded (edge-padded when tiny), so atoms at the
        edge get full patches.
    """
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    half = int(half)
    n = len(atoms)
    size = 2 * half + 1
    if n == 0:
        return np.zeros((0, size, size), dtype=np.float32)
    _, h, w = frames.shape
    if len(atoms) and (atoms.frame.min() < 0 or atoms.frame.max() >= len(frames)):
        raise InputError(f"atoms refer to frame {int(atoms.frame.max())} but only {len(frames)} frames were given")
    mode = "reflect" if half < min(h, w) else "edge"
    padded = np.pad(frames, ((0, 0), (half, half), (half, half)), mode=mode)
    r0 = np.clip(np.rint(atoms.row).astype(np.int64), 0, h - 1)
    c0 = np.clip(np.rint(atoms.col).astype(np.int64), 0, w - 1)
    off = np.arange(size)
    rows = r0[:, None] + off[None, :]
    cols = c0[:, None] + off[None, :]
    return padded[atoms.frame[:, None, None], rows[:, :, None], cols[:, None, :]].astype(np.float32)
