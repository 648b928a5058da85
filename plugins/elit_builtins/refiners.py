"""Built-in refiners: build a training set from the experiment's own good portion.

Both refiners share the same steps (ELIT method step 6):

1. **Frames.**  An explicit ``frames: [start, stop]`` range, or the frames
   whose score (the selection's ``frame_scores`` averaged over the selected
   members) is at or above the ``frame_quantile`` of all frame scores,
   at most ``max_frames`` of the best.  Without frame scores (e.g. the manual
   selector) every frame is used.
2. **Atoms.**  The atoms located in the selected members' mean prediction are
   split into kept and dropped: ``gmm-patches`` clusters image patches around
   the atoms and keeps the crystal-like cluster; ``uncertainty`` drops atoms
   whose ensemble uncertainty is high.
3. **Masks.**  Fresh disc label maps (radius ``mask_radius_A``) are drawn at
   the kept atoms with their classes.  The discs of dropped atoms (1.5 x the
   radius) are labelled unsure (:data:`elit.data.IGNORE`) and left out of the
   loss (``ignore_dropped``); everything else is background.
4. **Crops.**  ``n_samples`` random square crops of ``crop_A`` with small
   scale jitter, ±90° rotations and flips (image and mask alike; masks are
   redrawn at the transformed positions, so discs stay round) and Gaussian
   noise of random strength (image only).  Crops keep the scale of their
   frame, normalised as a whole with :func:`elit.scale.normalize` (as the
   ensemble sees it when it predicts): a crop normalised on its own is
   stretched differently, most where it holds vacuum, and a network retrained
   on such crops lost the atoms on a hole's edge.  Crops whose area lies more than
   ``max_dropped_fraction`` near dropped atoms are avoided (redrawn), so the
   networks are not taught "background" on large amorphous regions.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator
from scipy import ndimage
from scipy.spatial import cKDTree

from elit.atoms import atom_patches
from elit.data import IGNORE, AtomTable, Refinement, Selection, TrainingSet
from elit.errors import InputError
from elit.masks import label_map
from elit.scale import normalize
from elit.stages import Refiner, StageConfig


class _CommonConfig(StageConfig):
    frames: list[int] | None = Field(
        None, description="explicit frame range [start, stop) to learn from; None chooses frames by their score"
    )
    frame_quantile: float = Field(
        0.5, description="keep frames whose selection score is at least this quantile of all frame scores", ge=0, le=1
    )
    max_frames: int | None = Field(
        64, description="use at most this many of the best frames (None: no limit); bounds the memory and time of "
        "refining a long movie", ge=1,
    )
    mask_radius_A: float = Field(0.5, description="radius of the disc drawn at each kept atom, Angstrom", gt=0, le=5)
    crop_A: float = Field(22.4, description="side of the square training crops, Angstrom", gt=0)
    n_samples: int = Field(256, description="number of augmented crops to produce", ge=1, le=100_000)
    scale_jitter: float = Field(0.1, description="crops are zoomed by a random factor in [1 - j, 1 + j]", ge=0, lt=0.5)
    rotate: bool = Field(True, description="random rotations by multiples of 90 degrees")
    flip: bool = Field(True, description="random mirror flips")
    noise_max: float = Field(
        0.1, description="Gaussian noise with a random std in [0, noise_max] of the normalised range", ge=0, le=1
    )
    avoid_dropped: bool = Field(True, description="avoid crops that lie mostly around dropped atoms")
    ignore_dropped: bool = Field(
        True, description="label the discs of dropped atoms (1.5 x mask_radius_A) 'unsure' (255): left out of the loss, "
        "not taught as background",
    )
    max_dropped_fraction: float = Field(
        0.1, description="largest share of a crop's area that may lie near dropped atoms", ge=0, le=1
    )

    @field_validator("frames")
    @classmethod
    def _valid_frames(cls, value):
        if value is None:
            return value
        if len(value) != 2 or value[0] < 0 or value[1] <= value[0]:
            raise ValueError(f"frames must be [start, stop) with 0 <= start < stop, got {value}")
        return value


class _ExperimentRefiner(Refiner):
    """Shared frame choice, mask drawing and augmentation; subclasses split the atoms."""

    def split_atoms(
        self, frames: np.ndarray, atoms: AtomTable, rng: np.random.Generator, pixel_size: float
    ) -> tuple[np.ndarray, list[str]]:
        """Return a boolean keep-mask over ``atoms`` and reason lines."""
        raise NotImplementedError

    def refine(
        self,
        frames: np.ndarray,
        predictions: np.ndarray,
        selection: Selection,
        atoms: AtomTable,
        rng: np.random.Generator,
        pixel_size: float,
    ) -> Refinement:
        """Return augmented crops of the good frames with masks at the kept atoms."""
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3:
            raise InputError(f"frames must have shape (N, H, W), got {frames.shape}")
        if not pixel_size > 0:
            raise InputError(f"pixel_size must be positive, got {pixel_size}")
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        n_frames = len(frames)
        used, reasons = self._choose_frames(n_frames, selection)
        in_used = np.isin(atoms.frame, used)
        candidates = atoms.select(in_used)
        if len(candidates) == 0:
            raise InputError(
                f"no located atoms in the frames chosen for refinement ({used}); lower the location threshold "
                "or choose other frames"
            )
        keep, split_reasons = self.split_atoms(frames, candidates, rng, pixel_size)
        kept, dropped = candidates.select(keep), candidates.select(~keep)
        reasons += split_reasons
        reasons.append(f"kept {len(kept)} atoms, dropped {len(dropped)} in {len(used)} frame(s)")
        if len(kept) == 0:
            raise InputError("the refiner dropped every atom; loosen its settings (e.g. a higher uncertainty limit)")
        ts = self._training_set(frames, used, kept, dropped, rng, pixel_size, reasons)
        return Refinement(training_set=ts, kept=kept, dropped=dropped, frames_used=list(used), reasons=reasons)

    # -- frames ---------------------------------------------------------------------------------------
    def _choose_frames(self, n_frames: int, selection: Selection) -> tuple[list[int], list[str]]:
        cfg = self.config
        if cfg.frames is not None:
            start, stop = cfg.frames
            if start >= n_frames:
                raise InputError(f"refiner frames {cfg.frames} start beyond the {n_frames} frames")
            used = list(range(start, min(stop, n_frames)))
            return used, [f"frames {used[0]}..{used[-1]} from the config"]
        fs = selection.frame_scores
        if fs is None:
            return list(range(n_frames)), ["no frame scores in the selection: all frames used"]
        fs = np.asarray(fs, dtype=np.float64)
        if fs.ndim != 2 or fs.shape[1] != n_frames:
            raise InputError(f"selection frame_scores shape {fs.shape} does not match {n_frames} frames")
        score = fs[selection.members].mean(axis=0)
        cut = float(np.quantile(score, cfg.frame_quantile))
        used = np.flatnonzero(score >= cut - 1e-12)
        if cfg.max_frames is not None and len(used) > cfg.max_frames:
            used = np.sort(used[np.argsort(-score[used], kind="stable")[: cfg.max_frames]])
        used = [int(u) for u in used]
        return used, [
            f"frames {used} used: selected members' frame score >= {cut:.3f} "
            f"(quantile {cfg.frame_quantile}; scores {np.round(score, 3).tolist()})"
        ]

    # -- training set ---------------------------------------------------------------------------------
    def _training_set(self, frames, used, kept, dropped, rng, pixel_size, reasons) -> TrainingSet:
        cfg = self.config
        h, w = frames.shape[1:]
        radius = cfg.mask_radius_A / pixel_size
        side = int(round(cfg.crop_A / pixel_size))
        side = max(8, min(side, h, w))
        if side < int(round(cfg.crop_A / pixel_size)):
            reasons.append(f"frames ({h}x{w} px) smaller than crop_A: crops of {side} px")
        norm = normalize(frames[used].astype(np.float32))
        kept_pos = [kept.in_frame(f) for f in used]
        dropped_pos = [dropped.in_frame(f) for f in used]
        avoid = None
        if cfg.avoid_dropped and len(dropped):
            # pixels within one bond-ish distance (3 disc radii) of a dropped atom
            avoid = np.zeros((len(used), h, w), dtype=bool)
            for i, d in enumerate(dropped_pos):
                if len(d):
                    avoid[i] = label_map(d.positions(), np.zeros(len(d), int), (h, w), 3 * radius) > 0
            # integral images give the avoided share of any window in O(1)
            integral = np.pad(avoid.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
        images = np.zeros((cfg.n_samples, side, side), dtype=np.float32)
        labels = np.zeros((cfg.n_samples, side, side), dtype=np.uint8)
        tables = []
        n_avoided = 0
        for s in range(cfg.n_samples):
            zoom = 1.0 + rng.uniform(-cfg.scale_jitter, cfg.scale_jitter) if cfg.scale_jitter else 1.0
            src = min(side / zoom, h, w)
            zoom = side / src
            best = None
            for _attempt in range(20):
                i = int(rng.integers(len(used)))
                r0 = rng.uniform(0, h - src) - 0.5 if h > src else -0.5
                c0 = rng.uniform(0, w - src) - 0.5 if w > src else -0.5
                if avoid is None:
                    best = (i, r0, c0)
                    break
                a, b = int(np.clip(np.floor(r0 + 0.5), 0, h)), int(np.clip(np.floor(c0 + 0.5), 0, w))
                a2, b2 = int(min(h, a + np.ceil(src))), int(min(w, b + np.ceil(src)))
                area = max((a2 - a) * (b2 - b), 1)
                ii = integral[i]
                share = (ii[a2, b2] - ii[a, b2] - ii[a2, b] + ii[a, b]) / area
                if best is None or share < best[3]:
                    best = (i, r0, c0, share)
                if share <= cfg.max_dropped_fraction:
                    break
            if avoid is not None and best[3] > cfg.max_dropped_fraction:
                n_avoided += 1
            i, r0, c0 = best[:3]
            # output pixel j samples input coordinate r0 + (j + 0.5) / zoom - 0.5 ... (edge-aligned window)
            grid = (np.arange(side) + 0.5) / zoom
            rows = r0 + grid
            cols = c0 + grid
            img = ndimage.map_coordinates(
                norm[i], np.meshgrid(rows, cols, indexing="ij"), order=1, mode="reflect"
            ).astype(np.float32)
            t = kept_pos[i]
            pos = _crop_positions(t, r0, c0, zoom)
            cls = t.class_index.copy()
            lab = label_map(pos, cls, (side, side), radius * zoom)
            d = dropped_pos[i]
            if cfg.ignore_dropped and len(d):
                unsure = label_map(_crop_positions(d, r0, c0, zoom), np.zeros(len(d), int), (side, side),
                                   1.5 * radius * zoom) > 0
                lab[unsure & (lab == 0)] = IGNORE
            k = int(rng.integers(4)) if cfg.rotate else 0
            flip = bool(rng.integers(2)) if cfg.flip else False
            img, lab, pos = _rot_flip(img, lab, pos, k, flip)
            if cfg.noise_max > 0:
                img = img + rng.normal(0.0, rng.uniform(0, cfg.noise_max), img.shape).astype(np.float32)
            images[s] = img  # the frame's scale, not the crop's own: see the module docstring
            labels[s] = lab
            inside = np.all((pos >= -0.5) & (pos < side - 0.5), axis=1)
            tables.append(
                AtomTable(
                    frame=np.full(int(inside.sum()), s),
                    row=pos[inside, 0],
                    col=pos[inside, 1],
                    class_index=cls[inside],
                    probability=t.probability[inside],
                    uncertainty=t.uncertainty[inside],
                    class_names=kept.class_names,
                )
            )
        if n_avoided:
            reasons.append(f"{n_avoided} of {cfg.n_samples} crops could not avoid dropped regions")
        return TrainingSet(
            images=images,
            labels=labels,
            class_names=kept.class_names,
            pixel_size=pixel_size,
            atoms=AtomTable.concatenate(tables, class_names=kept.class_names),
            metadata={"source": "experiment", "frames_used": list(used), "refiner": self.name},
        )


def _crop_positions(atoms: AtomTable, r0: float, c0: float, zoom: float) -> np.ndarray:
    """``(n, 2)`` positions of ``atoms`` in a crop whose edge sits at ``(r0, c0)``, zoomed by ``zoom``."""
    return np.stack([(atoms.row - r0) * zoom - 0.5, (atoms.col - c0) * zoom - 0.5], axis=1)


def _rot_flip(img: np.ndarray, lab: np.ndarray, pos: np.ndarray, k: int, flip: bool):
    """Rotate a square crop by ``k`` quarter turns (as np.rot90) and mirror it, positions too."""
    side = img.shape[0]
    for _ in range(k % 4):
        img, lab = np.rot90(img), np.rot90(lab)
        pos = np.stack([side - 1 - pos[:, 1], pos[:, 0]], axis=1)
    if flip:
        img, lab = img[:, ::-1], lab[:, ::-1]
        pos = np.stack([pos[:, 0], side - 1 - pos[:, 1]], axis=1)
    return np.ascontiguousarray(img), np.ascontiguousarray(lab), pos


class GmmPatchRefiner(_ExperimentRefiner):
    """Keep the atoms whose surroundings look like the crystal (PCA + Gaussian mixture on patches)."""

    name = "gmm-patches"
    version = "1"
    description = "cluster patches around atoms (PCA + Gaussian mixture) and keep the crystal-like cluster"

    class Config(_CommonConfig):
        patch_A: float = Field(4.8, description="side of the patch around each atom, Angstrom", gt=0, le=50)
        n_components: int = Field(2, description="Gaussian mixture components", ge=2, le=10)
        pca_components: int = Field(10, description="PCA components of the patch features", ge=1, le=100)
        symmetrize: bool = Field(
            True,
            description="average each patch with its 180-degree rotation so both graphene sublattices look alike",
        )
        keep: Literal["ordered", "largest"] = Field(
            "ordered",
            description="which clusters are crystal: 'ordered' keeps every cluster whose mean patch shows "
            "structure around the centre (at least order_fraction of the most ordered cluster's); "
            "'largest' keeps only the largest cluster",
        )
        order_fraction: float = Field(
            0.5,
            description="for 'ordered': the share of the best cluster's order a cluster needs to be kept",
            gt=0,
            le=1,
        )
        centre_A: float = Field(
            0.8, description="radius around the patch centre (the atom itself) left out of the order measure, Angstrom",
            ge=0, le=10,
        )
        min_atoms: int = Field(20, description="with fewer atoms no clustering is done and all are kept", ge=2)
        fit_atoms: int = Field(
            20_000, description="the PCA and the mixture are fitted on at most this many atoms (a random draw), then "
            "every atom is assigned; bounds the memory of a long movie", ge=100,
        )

    def split_atoms(self, frames, atoms, rng, pixel_size):
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        cfg = self.config
        n = len(atoms)
        if n < max(cfg.min_atoms, 2 * cfg.n_components):
            return np.ones(n, dtype=bool), [f"only {n} atoms: all kept without clustering"]
        half = max(2, int(round(cfg.patch_A / pixel_size / 2)))
        needed, local_frame = np.unique(atoms.frame, return_inverse=True)
        norm = normalize(np.asarray(frames)[needed].astype(np.float32))
        h, w = norm.shape[1:]
        # patches that reach beyond the frame hold mirrored content: cluster the interior atoms,
        # then give each edge atom the majority group of its nearest interior atoms
        interior = (
            (atoms.row >= half) & (atoms.row <= h - 1 - half) & (atoms.col >= half) & (atoms.col <= w - 1 - half)
        )
        if interior.sum() < max(cfg.min_atoms, 2 * cfg.n_components):
            interior = np.ones(n, dtype=bool)
        fit_atoms = atoms.select(interior)
        fit_atoms.frame = local_frame.reshape(-1)[interior]
        patches = atom_patches(norm, fit_atoms, half)
        del norm
        if cfg.symmetrize:
            patches += patches[:, ::-1, ::-1].copy()
            patches *= 0.5
        n_fit, n_px = len(fit_atoms), patches[0].size
        n_pca = int(min(cfg.pca_components, n_fit - 1, n_px))
        seed = int(rng.integers(2**31 - 1))
        pca = PCA(n_components=n_pca, random_state=seed)
        gmm = GaussianMixture(n_components=cfg.n_components, covariance_type="full", random_state=seed, reg_covar=1e-4)
        def features(p):
            return p.reshape(len(p), n_px).astype(np.float64)

        comp = np.full(n, -1)
        if n_fit <= cfg.fit_atoms:
            comp[interior] = gmm.fit_predict(pca.fit_transform(features(patches)))
        else:  # fitted on a draw; every atom assigned a chunk at a time (float64 features of all are never held)
            draw = np.sort(np.random.default_rng(seed).choice(n_fit, cfg.fit_atoms, replace=False))
            gmm.fit(pca.fit_transform(features(patches[draw])))
            comp[interior] = np.concatenate([
                gmm.predict(pca.transform(features(patches[s : s + cfg.fit_atoms])))
                for s in range(0, n_fit, cfg.fit_atoms)
            ])
        edge = np.flatnonzero(~interior)
        if len(edge):
            comp[edge] = _vote_from_neighbours(atoms, interior, comp, edge, cfg.n_components)
        sizes = np.bincount(comp, minlength=cfg.n_components)
        order = _cluster_order(patches, comp[interior], cfg.n_components, cfg.centre_A / pixel_size, cfg.fit_atoms)
        if cfg.keep == "largest":
            kept_groups = [int(np.argmax(sizes))]
        else:
            big = sizes >= max(5, 0.05 * n)
            reference = order[big].max() if big.any() else order.max()
            kept_groups = [
                g for g in range(cfg.n_components) if sizes[g] and order[g] >= cfg.order_fraction * reference
            ]
        keep = np.isin(comp, kept_groups)
        reasons = [
            f"patches of {2 * half + 1} px clustered into {cfg.n_components} groups of sizes {sizes.tolist()}; "
            f"order of their mean patches {np.round(order, 2).tolist()}; kept group(s) {kept_groups} ({cfg.keep})"
            + (f"; PCA and mixture fitted on {cfg.fit_atoms} of {n_fit} atoms" if n_fit > cfg.fit_atoms else "")
        ]
        return keep, reasons


def _vote_from_neighbours(atoms: AtomTable, interior: np.ndarray, comp: np.ndarray, edge: np.ndarray,
                          n_groups: int, k: int = 3) -> np.ndarray:
    """Majority group of the ``k`` nearest interior atoms of the same frame, for each edge atom."""
    out = np.zeros(len(edge), dtype=np.int64)
    for f in np.unique(atoms.frame[edge]):
        e_local = np.flatnonzero(atoms.frame[edge] == f)
        src = np.flatnonzero(interior & (atoms.frame == f))
        if len(src) == 0:
            src = np.flatnonzero(interior)
        kk = min(k, len(src))
        pts = np.stack([atoms.row[src], atoms.col[src]], axis=1)
        q = np.stack([atoms.row[edge[e_local]], atoms.col[edge[e_local]]], axis=1)
        _, nb = cKDTree(pts).query(q, k=kk)
        nb = np.asarray(nb).reshape(len(q), kk)
        votes = comp[src][nb]
        counts = np.stack([(votes == g).sum(axis=1) for g in range(n_groups)], axis=1)
        out[e_local] = counts.argmax(axis=1)
    return out


def _cluster_order(patches: np.ndarray, groups: np.ndarray, n_groups: int, centre_px: float,
                   chunk: int = 20_000) -> np.ndarray:
    """How much lattice structure each group's mean patch shows, in units of the patch noise.

    Patches centred on atoms of a crystal average to a sharp picture of the
    neighbours; patches from amorphous regions or holes average to a smooth
    blur.  Per group, the spatial spread of the mean patch outside the centre
    (bias-corrected for the group's size) is divided by the pooled per-pixel
    standard deviation within groups.  Patches are taken ``chunk`` at a time
    (in float64), so a long movie's patches are never copied whole.
    """
    size = patches.shape[-1]
    off = np.arange(size) - size // 2
    outer = np.hypot(off[:, None], off[None, :]) > centre_px
    n_px = int(outer.sum())
    counts = np.bincount(groups, minlength=n_groups)

    def parts():
        for s in range(0, len(patches), chunk):
            yield patches[s : s + chunk][:, outer].astype(np.float64), groups[s : s + chunk]

    means = np.zeros((n_groups, n_px))
    for x, g_of in parts():
        for g in range(n_groups):
            if counts[g]:
                means[g] += x[g_of == g].sum(axis=0)
    means /= np.maximum(counts, 1)[:, None]
    pooled = 0.0
    for x, g_of in parts():
        for g in range(n_groups):
            if counts[g]:
                pooled += ((x[g_of == g] - means[g]) ** 2).sum()
    pooled = pooled / max(len(patches) * n_px, 1)
    order = np.zeros(n_groups)
    for g in range(n_groups):
        if counts[g]:
            spread = means[g].var() - pooled / counts[g]
            order[g] = np.sqrt(max(spread, 0.0) / max(pooled, 1e-12))
    return order


class UncertaintyRefiner(_ExperimentRefiner):
    """Drop the atoms the ensemble is unsure about."""

    name = "uncertainty"
    version = "1"
    description = "drop atoms whose ensemble uncertainty is above a limit (or quantile)"

    class Config(_CommonConfig):
        max_uncertainty: float | None = Field(
            0.25, description="drop atoms with uncertainty above this; None uses the quantile", ge=0
        )
        uncertainty_quantile: float = Field(
            0.9, description="used when max_uncertainty is None: drop atoms above this quantile", gt=0, le=1
        )
        source: Literal["table", "all-members"] = Field(
            "table",
            description="'table': the atoms' uncertainty column (from the members the pipeline averaged); "
            "'all-members': the std of all members' probability at each atom (useful when one member was selected)",
        )

    def refine(self, frames, predictions, selection, atoms, rng, pixel_size):
        """See :meth:`elit.stages.Refiner.refine`; ``source`` decides which uncertainty is used."""
        if self.config.source == "all-members":
            atoms = atoms.select(slice(None))
            atoms.uncertainty = _member_std_at(predictions, atoms)
        return super().refine(frames, predictions, selection, atoms, rng, pixel_size)

    def split_atoms(self, frames, atoms, rng, pixel_size):
        cfg = self.config
        u = atoms.uncertainty
        if cfg.max_uncertainty is not None:
            limit, how = float(cfg.max_uncertainty), "limit"
        else:
            limit, how = float(np.quantile(u, cfg.uncertainty_quantile)), f"quantile {cfg.uncertainty_quantile}"
        keep = u <= limit
        return keep, [f"atoms with uncertainty > {limit:.3f} dropped ({how}); median uncertainty {np.median(u):.3f}"]


def _member_std_at(predictions: np.ndarray, atoms: AtomTable) -> np.ndarray:
    """Std across all members of the atom's class probability, averaged over its 3x3 neighbourhood."""
    preds = np.asarray(predictions)
    if preds.ndim != 5:
        raise InputError(f"predictions must have shape (M, N, K, H, W), got {preds.shape}")
    if len(atoms) == 0:
        return np.zeros(0)
    _, n, k, h, w = preds.shape
    cls = np.clip(atoms.class_index, 0, k - 1)
    out = np.zeros(len(atoms))
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r = np.clip(np.rint(atoms.row).astype(np.int64) + dr, 0, h - 1)
            c = np.clip(np.rint(atoms.col).astype(np.int64) + dc, 0, w - 1)
            out += preds[:, atoms.frame, cls, r, c].astype(np.float64).std(axis=0)
    return out / 9


STAGES = [GmmPatchRefiner, UncertaintyRefiner]
