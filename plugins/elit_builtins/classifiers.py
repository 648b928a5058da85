"""Built-in classifiers: split located atoms into classes by their brightness (ELIT step 8).

Both measure each atom's intensity the same way (:func:`atom_intensities`):
the frame is lightly smoothed, a local background (a grey opening with a
disc wider than an atom: what is left when the atoms are taken away) is
subtracted, and a Gaussian-weighted mean is taken within ``disc_A`` of the
atom.  Intensities are divided by the median atom of their frame, so they are
comparable between frames (1 = the typical atom).

``intensity``
    Thresholds on that relative intensity, given in the config or found by
    Otsu's method (multi-Otsu for more than two classes).
``gmm``
    A Gaussian mixture on the relative intensity (optionally plus PCA
    features of the patch around the atom), components sorted by intensity.
``relative``
    The intensity divided by the median of the atom's nearest neighbours
    (:func:`relative_intensities`: follows background gradients, dose changes
    and drift), a 1-D Gaussian mixture on its square root (:func:`mixture_1d`;
    the root makes shot noise about equal for dim and bright atoms) and each
    atom's posterior class probability (``class_probability``).  The same
    machinery separates a rare bright dopant and two sublattices of similar
    count (perovskite A/B).  In a movie each atom's class is decided on the
    evidence of all its sightings (:func:`combine_over_frames`): the
    mixture is fitted to the single sightings, and an atom seen in several
    frames adds up their log-likelihoods.

A split is accepted only when the brighter side's mean is at least
``min_contrast`` times the darker side's; otherwise the two sides are merged,
so a frame without dopants does not invent any.  Class names are listed from
darkest to brightest.
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import Field, model_validator
from scipy import ndimage
from scipy.stats import poisson

from elit.data import AtomTable
from elit.errors import InputError
from elit.stages import Classifier, StageConfig

log = logging.getLogger("elit")


class _MeasureConfig(StageConfig):
    class_names: list[str] = Field(
        ["C", "Si"], description="class names from darkest to brightest", min_length=2, max_length=16
    )
    smooth_A: float = Field(0.1, description="Gaussian smoothing of the frame before measuring, Angstrom", ge=0, le=5)
    disc_A: float = Field(0.3, description="radius within which an atom's intensity is averaged, Angstrom", gt=0, le=5)
    background_A: float | None = Field(
        1.0,
        description="radius of the grey opening that estimates the local background, Angstrom; None: no correction",
        gt=0,
        le=20,
    )
    min_contrast: float = Field(
        2.0,
        description="a split is kept only when the brighter class's mean intensity is at least this multiple of "
        "the darker's (1 keeps every split)",
        ge=1,
    )


def _disc(radius_px: float) -> np.ndarray:
    r = int(np.ceil(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2) <= radius_px**2 + 1e-9


def atom_intensities(
    frames: np.ndarray,
    atoms: AtomTable,
    pixel_size: float,
    smooth_A: float = 0.1,
    disc_A: float = 0.3,
    background_A: float | None = 1.0,
    relative: bool = True,
) -> np.ndarray:
    """Background-corrected intensity at each atom.

    Parameters
    ----------
    frames : ndarray, shape (N, H, W)
    atoms : AtomTable
        Positions in the pixels of ``frames``; ``frame`` indexes ``frames``.
    pixel_size : float
        Angstrom per pixel.
    smooth_A, disc_A, background_A : float
        See the classifier configs.
    relative : bool
        Divide by the median atom intensity of each frame.

    Returns
    -------
    ndarray, shape (n,)
    """
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3:
        raise InputError(f"frames must have shape (N, H, W), got {frames.shape}")
    if len(atoms) and (atoms.frame.min() < 0 or atoms.frame.max() >= len(frames)):
        raise InputError(f"atoms refer to frame {int(atoms.frame.max())} but only {len(frames)} frames were given")
    out = np.zeros(len(atoms))
    if len(atoms) == 0:
        return out
    sigma = smooth_A / pixel_size
    radius = max(disc_A / pixel_size, 0.75)
    reach = int(np.ceil(radius))
    off = np.arange(-reach, reach + 1)
    for f in np.unique(atoms.frame):
        idx = np.flatnonzero(atoms.frame == f)
        img = np.nan_to_num(frames[f].astype(np.float64))
        if sigma > 0:
            img = ndimage.gaussian_filter(img, sigma)
        if background_A is not None:
            img = img - ndimage.grey_opening(img, footprint=_disc(background_A / pixel_size))
        h, w = img.shape
        r, c = atoms.row[idx], atoms.col[idx]
        r0, c0 = np.rint(r).astype(np.int64), np.rint(c).astype(np.int64)
        rr = r0[:, None, None] + off[None, :, None]
        cc = c0[:, None, None] + off[None, None, :]
        d2 = (rr - r[:, None, None]) ** 2 + (cc - c[:, None, None]) ** 2
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w) & (d2 <= radius**2)
        wgt = np.where(inside, np.exp(-d2 / (2 * (radius / 2) ** 2)), 0.0)
        vals = img[np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)]
        wsum = wgt.sum(axis=(1, 2))
        measured = (wgt * vals).sum(axis=(1, 2)) / np.where(wsum > 0, wsum, 1)
        if relative:
            ref = np.median(measured)
            measured = measured / ref if ref > 0 else measured
        out[idx] = measured
    return out


def _merge_weak_splits(values: np.ndarray, labels: np.ndarray, n_classes: int, min_contrast: float) -> np.ndarray:
    """Merge neighbouring classes (by intensity order) whose mean ratio is below ``min_contrast``."""
    labels = labels.copy()
    if min_contrast <= 1:
        return labels
    present = [k for k in range(n_classes) if np.any(labels == k)]
    # walk from the brightest boundary down; merge the brighter class into the darker one
    for hi, lo in zip(present[::-1][:-1], present[::-1][1:]):
        lo_mean = values[labels == lo].mean()
        hi_mean = values[labels == hi].mean()
        if not (lo_mean > 0 and hi_mean >= min_contrast * lo_mean):
            labels[labels == hi] = lo
    # the darkest present class keeps its index; a merged run takes the darker index
    return labels


class IntensityClassifier(Classifier):
    """Threshold each atom's background-corrected intensity (given thresholds or Otsu)."""

    name = "intensity"
    version = "1"
    description = "classify atoms by their brightness: fixed thresholds or Otsu / multi-Otsu"

    class Config(_MeasureConfig):
        thresholds: list[float] | None = Field(
            None,
            description="ascending thresholds on the relative intensity (1 = median atom), one fewer than the "
            "classes; None finds them with Otsu's method",
        )
        refine_thresholds: bool = Field(
            True,
            description="move Otsu's thresholds to the midpoints between the class means (1-D k-means): "
            "robust when one class is rare, e.g. a few dopants",
        )

        @model_validator(mode="after")
        def _valid_thresholds(self):
            t = self.thresholds
            if t is not None:
                if len(t) != len(self.class_names) - 1:
                    n = len(self.class_names)
                    raise ValueError(f"{n} classes need {n - 1} thresholds, got {len(t)}")
                if any(b <= a for a, b in zip(t, t[1:])):
                    raise ValueError(f"thresholds must ascend, got {t}")
            return self

    def classify(self, frames: np.ndarray, atoms: AtomTable, pixel_size: float) -> AtomTable:
        """Return ``atoms`` with classes from the thresholded intensity."""
        cfg = self.config
        names = tuple(cfg.class_names)
        out = atoms.select(slice(None))
        out.class_names = names
        n_classes = len(names)
        if len(atoms) == 0:
            out.class_index = np.zeros(0, dtype=np.int64)
            return out
        values = atom_intensities(frames, atoms, pixel_size, cfg.smooth_A, cfg.disc_A, cfg.background_A)
        if cfg.thresholds is not None:
            labels = np.searchsorted(np.asarray(cfg.thresholds), values, side="right")
        else:
            labels = _otsu_labels(values, n_classes, cfg.refine_thresholds)
            labels = _merge_weak_splits(values, labels, n_classes, cfg.min_contrast)
        out.class_index = labels.astype(np.int64)
        return out


def _otsu_labels(values: np.ndarray, n_classes: int, refine: bool = True) -> np.ndarray:
    """Class of each value by Otsu thresholds, optionally refined by 1-D k-means (Lloyd) steps."""
    from skimage.filters import threshold_multiotsu, threshold_otsu

    if len(np.unique(values)) < n_classes:
        return np.zeros(len(values), dtype=np.int64)
    try:
        if n_classes == 2:
            thresholds = np.array([threshold_otsu(values)])
        else:
            thresholds = threshold_multiotsu(values, classes=n_classes)
    except ValueError:
        return np.zeros(len(values), dtype=np.int64)
    labels = np.searchsorted(thresholds, values, side="right")
    if refine:
        for _ in range(100):
            means = [values[labels == k].mean() for k in range(n_classes) if np.any(labels == k)]
            if len(means) < 2:
                break
            new = np.searchsorted(0.5 * (np.asarray(means[:-1]) + np.asarray(means[1:])), values, side="right")
            if np.array_equal(new, labels):
                break
            labels = new
    return labels.astype(np.int64)


class GmmClassifier(Classifier):
    """Gaussian mixture on the intensity (and optionally patch features); components sorted by brightness."""

    name = "gmm"
    version = "1"
    description = "classify atoms with a Gaussian mixture on intensity (and patch features), sorted by brightness"

    class Config(_MeasureConfig):
        patch_features: int = Field(
            0, description="PCA components of the patch around each atom added to the intensity (0: intensity only)",
            ge=0, le=50,
        )
        patch_A: float = Field(2.0, description="side of the patch for patch features, Angstrom", gt=0, le=50)
        patch_weight: float = Field(
            0.3, description="total spread of the patch features relative to the intensity's spread", gt=0, le=10
        )
        seed: int = Field(0, description="random state of the mixture fit", ge=0)

    def classify(self, frames: np.ndarray, atoms: AtomTable, pixel_size: float) -> AtomTable:
        """Return ``atoms`` with classes from the mixture components."""
        from sklearn.mixture import GaussianMixture

        cfg = self.config
        names = tuple(cfg.class_names)
        n_classes = len(names)
        out = atoms.select(slice(None))
        out.class_names = names
        if len(atoms) < 2 * n_classes:
            out.class_index = np.zeros(len(atoms), dtype=np.int64)
            return out
        values = atom_intensities(frames, atoms, pixel_size, cfg.smooth_A, cfg.disc_A, cfg.background_A)
        feats = values[:, None]
        if cfg.patch_features:
            from sklearn.decomposition import PCA

            from elit.atoms import atom_patches
            from elit.scale import normalize

            half = max(1, int(round(cfg.patch_A / pixel_size / 2)))
            patches = atom_patches(normalize(np.asarray(frames, dtype=np.float32)), atoms, half)
            x = patches.reshape(len(atoms), -1).astype(np.float64)
            n_pca = int(min(cfg.patch_features, len(atoms) - 1, x.shape[1]))
            pca = PCA(n_components=n_pca, random_state=cfg.seed).fit_transform(x)
            # each component scaled so that together they spread patch_weight times the intensity
            pca = pca / (pca.std(axis=0) + 1e-12) * (cfg.patch_weight * values.std() / np.sqrt(n_pca))
            feats = np.concatenate([feats, pca], axis=1)
        gmm = GaussianMixture(n_components=n_classes, random_state=cfg.seed, reg_covar=1e-6)
        comp = gmm.fit_predict(feats)
        # order components by the mean intensity of their atoms, darkest first
        means = np.array([values[comp == c].mean() if np.any(comp == c) else np.inf for c in range(n_classes)])
        rank = np.empty(n_classes, dtype=np.int64)
        rank[np.argsort(means, kind="stable")] = np.arange(n_classes)
        labels = rank[comp]
        labels = _merge_weak_splits(values, labels, n_classes, cfg.min_contrast)
        out.class_index = labels.astype(np.int64)
        return out


def local_reference(atoms: AtomTable, values: np.ndarray, neighbours: int = 30) -> np.ndarray:
    """Trimmed mean (20-80 % quantiles) of ``values`` over each atom's ``neighbours`` nearest atoms of its frame.

    The atom itself is excluded.  Dividing by it makes an intensity relative
    to the local level of the atoms around it: it follows background
    gradients, dose changes between and within frames, and drift; the trim
    keeps a rare dopant from moving it, and with two sublattices of similar
    count (perovskite A/B) it is their local mid-level, steady because many
    neighbours are averaged.
    """
    from scipy.spatial import cKDTree

    values = np.asarray(values, dtype=np.float64)
    out = np.full(len(atoms), np.nan)
    for f in np.unique(atoms.frame):
        idx = np.flatnonzero(atoms.frame == f)
        if len(idx) < 2:
            out[idx] = values[idx]
            continue
        k = int(min(neighbours, len(idx) - 1)) + 1
        _, nn = cKDTree(np.stack([atoms.row[idx], atoms.col[idx]], axis=1)).query(
            np.stack([atoms.row[idx], atoms.col[idx]], axis=1), k=k
        )
        near = np.sort(values[idx][nn[:, 1:]], axis=1)
        lo, hi = int(np.floor(0.2 * near.shape[1])), int(np.ceil(0.8 * near.shape[1]))
        out[idx] = near[:, lo : max(hi, lo + 1)].mean(axis=1)
    return out


def relative_intensities(frames, atoms: AtomTable, pixel_size: float, neighbours: int = 30, smooth_A: float = 0.1,
                         disc_A: float = 0.3, background_A: float | None = 1.0) -> np.ndarray:
    """Each atom's background-corrected intensity divided by its neighbours' level (:func:`local_reference`).

    1 is the local majority level; a dopant twice as bright reads about 2.
    See :func:`atom_intensities` and :func:`local_reference`.
    """
    raw = atom_intensities(frames, atoms, pixel_size, smooth_A, disc_A, background_A, relative=False)
    ref = local_reference(atoms, raw, neighbours)
    scale = np.nanmedian(np.abs(raw)) if len(raw) else 1.0
    floor = 1e-6 * (scale if scale > 0 else 1.0)
    return raw / np.where(np.abs(ref) > floor, ref, floor)


def mixture_1d(values: np.ndarray, n_classes: int, min_separation: float = 4.0, min_contrast: float = 1.0,
               iterations: int = 200, min_evidence: float | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """A 1-D Gaussian mixture, components sorted by mean; unsupported components are merged away.

    Two starts are fitted by EM with a variance floor, and the one with the
    better BIC is kept: Otsu's thresholds refined by 1-D k-means, and the
    robust outliers (above the median + ``min_separation`` robust standard
    deviations) as the brightest class.  The second finds a rare bright class
    in a wide, skewed majority (18 Si among 3,000 C at low dose), where Otsu
    cuts into the majority.  A class of one or two values is taken to be no
    sharper than the largest class.  Two neighbouring components are merged
    when their means are less than ``min_separation`` pooled standard
    deviations apart, or the brighter mean is below ``min_contrast`` times the
    darker; a frame without dopants therefore gets one class.  With
    ``min_evidence``, a pair between 0.75 and 1 times ``min_separation`` apart
    stays split when the split explains the values better than the merged
    model by at least that much (log-likelihood less BIC's penalty): 18 Si
    among 3,000 C at 1e4 e/A^2 lie about 3.8 standard deviations apart, with an
    evidence near 50, while the bright tail of carbon alone scores below 0.

    Returns
    -------
    labels : ndarray of int
        Component of each value (0 = lowest mean), with merged components
        taking the lower index.
    probability : ndarray
        Posterior probability of the assigned component.
    info : dict
        ``means``, ``sds``, ``weights`` of the components kept (lists).
    """
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0), {"means": [], "sds": [], "weights": []}
    starts = [_otsu_labels(x, n_classes, refine=True) if n >= 2 * n_classes else np.zeros(n, dtype=np.int64)]
    med = float(np.median(x))
    rsd = 1.4826 * float(np.median(np.abs(x - med)))
    outliers = x > med + min_separation * rsd
    if n_classes >= 2 and rsd > 0 and 0 < outliers.sum() <= n // 2:
        starts.append(np.where(outliers, n_classes - 1, 0).astype(np.int64))
    fits = [_fit_mixture(x, labels, n_classes, min_separation, min_contrast, iterations, min_evidence) for labels in starts]
    hard, post, mu, sd, wt, bic = max(fits, key=lambda f: f[5])
    if len(mu) == 1:
        return np.zeros(n, dtype=np.int64), np.ones(n), {"means": mu.tolist(), "sds": sd.tolist(), "weights": [1.0]}
    prob = post[np.arange(n), hard]
    return hard.astype(np.int64), prob, {"means": mu.tolist(), "sds": sd.tolist(), "weights": wt.tolist()}


MARGINAL_SEPARATION = 0.75
"""A split whose separation lies between this share of ``min_separation`` and ``min_separation`` is marginal:
kept only on strong evidence (``min_evidence``)."""


def _component_loglik(x, mu, sd):
    """Log-likelihood of each value under each Gaussian component, ``(n, k)``, less the constant."""
    return -0.5 * ((x[:, None] - mu) / sd) ** 2 - np.log(sd)


def _normalise(logp):
    """Posteriors from unnormalised log-probabilities ``(n, k)``, and each row's log normaliser."""
    top = logp.max(axis=1, keepdims=True)
    post = np.exp(logp - top)
    total = post.sum(axis=1, keepdims=True)
    post /= total
    return post, top[:, 0] + np.log(total[:, 0])


def _posterior(x, mu, sd, wt):
    """Hard labels, posteriors and the mixture's score (log-likelihood less BIC's penalty) for one set of components."""
    post, lognorm = _normalise(_component_loglik(x, mu, sd) + np.log(np.maximum(wt, 1e-12)))
    loglik = float(np.sum(lognorm))
    return post.argmax(axis=1), post, loglik - 0.5 * (3 * len(mu) - 1) * np.log(max(len(x), 2))


def _merge_up(labels: np.ndarray, i: int) -> np.ndarray:
    """Labels with component ``i + 1`` merged into ``i`` and the ones above moved down by one."""
    return np.where(labels > i, labels - 1, labels)


def _fit_mixture(x, labels, n_classes, min_separation, min_contrast, iterations, min_evidence=None):
    """EM from ``labels``, merging unsupported neighbours; ``(hard, post, mu, sd, wt, score)`` (score: -BIC/2).

    With ``min_evidence`` a marginal pair (see :data:`MARGINAL_SEPARATION`) is kept apart when the split
    model's score beats the merged model's by at least ``min_evidence``.
    """
    n = len(x)
    comps = [k for k in range(n_classes) if np.count_nonzero(labels == k) >= 1]
    spread = float(np.subtract(*np.percentile(x, [75, 25]))) / 1.349 or float(np.std(x)) or 1.0
    floor = 0.02 * spread + 1e-12
    while True:
        mu = np.array([x[labels == k].mean() for k in comps]) if comps else np.array([np.median(x)])
        sd = np.array([max(x[labels == k].std(), floor) for k in comps]) if comps else np.array([spread])
        if len(comps) > 1:
            # a class of one or two atoms (one Si in a small image) has no spread of its own: it is taken
            # to be no sharper than the largest class, so it is judged against the real measurement noise
            counts = np.array([np.count_nonzero(labels == k) for k in comps])
            sd = np.where(counts < 3, np.maximum(sd, sd[np.argmax(counts)]), sd)
        wt = np.array([np.mean(labels == k) for k in comps]) if comps else np.array([1.0])
        for _ in range(iterations if len(mu) > 1 else 0):
            _, post, _ = _posterior(x, mu, sd, wt)
            nk = post.sum(axis=0) + 1e-12
            new_mu = (post * x[:, None]).sum(axis=0) / nk
            sd = np.maximum(np.sqrt((post * (x[:, None] - new_mu) ** 2).sum(axis=0) / nk), floor)
            wt = nk / n
            if np.allclose(new_mu, mu, rtol=0, atol=1e-9 * spread):
                mu = new_mu
                break
            mu = new_mu
        order = np.argsort(mu)
        mu, sd, wt = mu[order], sd[order], wt[order]
        sep = [(mu[j + 1] - mu[j]) / np.sqrt(0.5 * (sd[j] ** 2 + sd[j + 1] ** 2)) for j in range(len(mu) - 1)]
        unsupported = [
            not (mu[j] > 0 and mu[j + 1] >= min_contrast * mu[j]) or wt[j] * n < 1 or wt[j + 1] * n < 1
            for j in range(len(mu) - 1)
        ]
        weak = [j for j in range(len(mu) - 1) if sep[j] < min_separation or unsupported[j]]
        hard, post, score = _posterior(x, mu, sd, wt)
        while weak and min_evidence is not None:  # marginal pairs stay apart on strong evidence
            i = min(weak, key=lambda j: sep[j])
            if unsupported[i] or sep[i] < MARGINAL_SEPARATION * min_separation:
                break
            alt = _fit_mixture(x, _merge_up(hard, i), n_classes, min_separation, min_contrast, iterations, min_evidence)
            if score - alt[5] < min_evidence:
                return alt
            weak.remove(i)
        if not weak or len(mu) == 1:
            break
        # merge the closest weak pair and refit
        i = min(weak, key=lambda j: sep[j])
        hard = labels = _merge_up(hard, i)
        comps = list(range(len(mu) - 1))
    return hard, post, mu, sd, wt, score


SAME_ATOMS_P = 1e-3
"""The frames' evidence is combined when their agreement on the rarer classes is this improbable by chance."""


def combine_over_frames(loglik: np.ndarray, labels: np.ndarray, atoms: AtomTable, pixel_size: float, window: int,
                        max_motion_A: float = 0.3) -> tuple[np.ndarray, int]:
    """Each atom's per-class log-likelihoods summed with those of its sightings in the frames up to ``window`` away.

    The sightings are linked as :func:`elit.temporal.link_frames` links them for averaging positions
    (on ``row_frame``, ``col_frame`` where the table has them).  A substitutional dopant stays on its
    site from frame to frame, so adding the evidence of ``n`` sightings separates the classes as a
    frame with ``n`` times the dose would: at 1e4 e/A^2 the 0.5 A disc holds ~20 counts per Si, and one
    frame alone left a few Si of each multislice graphene movie as C.

    The frames are combined only when their linked sightings agree on the rarer classes beyond chance:
    ``a``, the links (over all pairs of frames) on which both sightings' own ``labels`` give the same
    class other than the commonest, must be improbable (below :data:`SAME_ATOMS_P`) for a Poisson count
    with the mean ``e`` expected of unrelated atoms with the same class shares.  Where it is not, the
    frames may not show the same atoms: a stack of separate images of one lattice registers on the
    lattice all the same, and its dopants would be shared out among the other images' carbon atoms.

    Parameters
    ----------
    loglik : ndarray, shape (n_atoms, n_classes)
        Each sighting's log-likelihood under each class.
    labels : ndarray of int, shape (n_atoms,)
        Each sighting's own class, for the check above.
    atoms : AtomTable
        The sightings, in pixels of ``pixel_size`` Angstrom.
    window, max_motion_A
        As :func:`elit.temporal.link_frames` takes them.

    Returns
    -------
    total : ndarray, shape (n_atoms, n_classes)
        Unchanged where an atom was linked to no other frame.
    pairs : int
        Pairs of frames combined (0 or all that were linked).
    """
    from elit.temporal import link_frames

    total = np.array(loglik, dtype=np.float64, copy=True)
    if window <= 0 or len(np.unique(atoms.frame)) < 2:
        return total, 0
    seen = atoms.select(slice(None))
    if atoms.row_frame is not None and atoms.col_frame is not None:
        seen.row, seen.col = atoms.row_frame.copy(), atoms.col_frame.copy()
    links = link_frames(seen, pixel_size, window=window, max_motion_A=max_motion_A)
    labels = np.asarray(labels)
    rare = [k for k in np.unique(labels) if k != np.bincount(labels).argmax()]
    agree = expected = 0.0
    for i, j in links.pairs.values():
        agree += sum(int(np.sum((labels[i] == k) & (labels[j] == k))) for k in rare)
        expected += sum(np.sum(labels[i] == k) * np.sum(labels[j] == k) / max(len(i), 1) for k in rare)
    if not links.pairs or not poisson.sf(agree - 1, max(expected, 1e-12)) < SAME_ATOMS_P:
        return total, 0
    for i, j in links.pairs.values():
        total[i] += loglik[j]
        total[j] += loglik[i]
    return total, len(links.pairs)


class RelativeClassifier(Classifier):
    """Intensity relative to the neighbours' level, classified by a 1-D mixture with per-atom probabilities."""

    name = "relative"
    version = "4"
    description = ("classify atoms by their intensity relative to their neighbours (robust to gradients, dose "
                   "and drift) with a 1-D Gaussian mixture; stores each atom's class probability")

    class Config(_MeasureConfig):
        neighbours: int = Field(30, description="nearest atoms whose trimmed mean intensity is the local reference",
                                ge=2, le=500)
        min_separation: float = Field(
            4.0, description="neighbouring classes are kept apart only when their mean relative intensities "
            "differ by at least this many pooled standard deviations", ge=0,
        )
        min_contrast: float = Field(
            1.3, description="a split is kept only when the brighter class's mean relative intensity is at "
            "least this multiple of the darker's (1 keeps every split)", ge=1,
        )
        min_evidence: float | None = Field(
            10.0, description="a split between 0.75 and 1 times min_separation apart is still kept when it explains the "
            "intensities better than one class by at least this much (log-likelihood less BIC's penalty; 10 is "
            "very strong evidence); None: never", ge=0,
        )
        stabilize: bool = Field(
            True, description="fit the mixture to the square root of the relative intensity, which makes shot noise "
            "about equal for dim and bright atoms (Poisson counts); min_separation is then counted in that space",
        )
        combine_frames: int = Field(
            3, description="in a movie, decide each atom's class on the evidence of its sightings in up to this many "
            "frames on each side, linked as elit.temporal links them for locate.average_frames (gate at most 0.3 A); 0: each "
            "frame alone",
            ge=0, le=1000,
        )
        class_map: list[int] | None = Field(
            None, description="class index for each mixture component from darkest up (default: the first "
            "components get the first classes); e.g. [0, 2] when only C and the brightest class are expected",
        )

        @model_validator(mode="after")
        def _valid_class_map(self):
            n = len(self.class_names)
            if self.class_map is not None and (len(self.class_map) != n or any(not 0 <= k < n for k in self.class_map)):
                raise ValueError(f"class_map needs {n} class indices in 0..{n - 1}, got {self.class_map}")
            return self

    def classify(self, frames: np.ndarray, atoms: AtomTable, pixel_size: float) -> AtomTable:
        """Return ``atoms`` with classes and ``class_probability`` from the mixture."""
        cfg = self.config
        names = tuple(cfg.class_names)
        out = atoms.select(slice(None))
        out.class_names = names
        if len(atoms) == 0:
            out.class_index = np.zeros(0, dtype=np.int64)
            out.class_probability = np.zeros(0)
            return out
        rel = relative_intensities(frames, atoms, pixel_size, cfg.neighbours, cfg.smooth_A, cfg.disc_A,
                                   cfg.background_A)
        values = np.nan_to_num(rel, nan=1.0)
        contrast = cfg.min_contrast
        if cfg.stabilize:  # variance-stabilising transform: the means' ratio r becomes sqrt(r)
            values, contrast = np.sqrt(np.clip(values, 0.0, None)), float(np.sqrt(contrast))
        labels, prob, fit = mixture_1d(values, len(names), cfg.min_separation, contrast, min_evidence=cfg.min_evidence)
        if cfg.combine_frames and len(fit["means"]) > 1:
            mu, sd, wt = (np.asarray(fit[k], dtype=np.float64) for k in ("means", "sds", "weights"))
            total, pairs = combine_over_frames(_component_loglik(values, mu, sd), labels, atoms, pixel_size,
                                               cfg.combine_frames)
            if pairs:
                log.info("classes decided on every atom's sightings in %d linked pairs of frames", pairs)
            post, _ = _normalise(total + np.log(np.maximum(wt, 1e-12)))
            labels, prob = post.argmax(axis=1).astype(np.int64), post.max(axis=1)
        if cfg.class_map is not None:
            labels = np.asarray(cfg.class_map, dtype=np.int64)[labels]
        out.class_index = labels
        out.class_probability = prob
        return out


STAGES = [IntensityClassifier, GmmClassifier, RelativeClassifier]
