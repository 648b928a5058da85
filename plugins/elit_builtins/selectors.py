"""Built-in selectors: choose the ensemble members whose predictions look physical.

``manual``
    The operator names the members (the paper's first route).
``auto``
    Every member is scored on the experimental frames with label-free,
    physics- and artifact-based criteria (the paper's programmatic route):

    ``clarity``
        1 - the share of "foggy" probability: pixels with ``0.2 < p < 0.8``
        among all pixels with ``p > 0.2``.  Clean members draw crisp discs.
    ``blob_shape``
        How much the blobs look like the expected disc of radius
        ``mask_radius_A``: per blob ``min(a/e, e/a) * sqrt(l_min/l_max)`` for
        area ``a`` against expected area ``e`` and the eigenvalues of its
        second moments; averaged over blobs.
    ``spacing``
        Nearest-neighbour distances against ``bond_length_A``: per atom
        ``exp(-((d - b) / (spacing_tolerance * b))**2 / 2)``, averaged.  Skipped
        when ``bond_length_A`` is None.
    ``vacuum``
        1 - the share of atoms found where the image is dark (lightly
        smoothed intensity below ``vacuum_fraction`` of the way from the dark
        level to the typical atom) or, with a bond length, that have no
        neighbour within 1.5 bond lengths.  Catches atoms invented in holes.
        Assumes atoms are bright (HAADF-like contrast).
    ``agreement``
        F1 of the member's atoms against the atoms of the ensemble's
        pixel-wise median prediction (1 for an ensemble of one).
    ``separation``
        1 - the share of blobs that are merged (area above ``merged_area``
        expected discs) or worm-like (second-moment axis ratio below
        ``min_axis_ratio``): the artefact of a member that sees atoms in noise.
    ``density``
        With ``expected_density``: the atoms found per square Angstrom of the
        area that holds material (smoothed intensity above the vacuum level),
        against that density, ``exp(-((n / n_expected - 1) / 0.15)**2 / 2)``.
        Catches members that miss atoms in noisy frames.  Skipped without it.

    Each criterion lies in [0, 1] (higher is better) per member and frame;
    a criterion that cannot be computed in a frame (the member found no atom
    there) is 1 if the median prediction found none either, else 0.  The
    frame score is the weighted mean of the criteria, the member score the
    mean of its frame scores.

    Members that another member beats on every criterion (Pareto-dominated)
    are never kept, unless ``k`` asks for more members than the others.  With
    ``k`` unset, the best member is kept together with every member that is
    not dominated, scores within ``tolerance`` of it and agrees with it
    (atom F1 of at least ``min_agreement``): several members where they agree.
    Why each member was kept or dropped is written into the selection's reasons.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator
from scipy import ndimage
from scipy.spatial import cKDTree

from elit.atoms import blob_statistics, labelled_pixels
from elit.data import Selection
from elit.errors import ConfigError, InputError
from elit.metrics import match_atoms
from elit.stages import Selector, StageConfig

CRITERIA = ("clarity", "blob_shape", "spacing", "vacuum", "agreement", "separation", "density")


def _check_predictions(predictions, frames) -> tuple[np.ndarray, np.ndarray]:
    preds = np.asarray(predictions)
    if preds.ndim != 5:
        raise InputError(f"predictions must have shape (M, N, K, H, W), got {preds.shape}")
    if preds.shape[0] == 0:
        raise InputError("predictions hold no ensemble member")
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.shape != (preds.shape[1],) + preds.shape[3:]:
        raise InputError(f"frames shape {frames.shape} does not match predictions shape {preds.shape} (M, N, K, H, W)")
    return preds, frames


class ManualSelector(Selector):
    """Keep the members an operator chose by looking at their predictions."""

    name = "manual"
    version = "1"
    description = "keep the ensemble members listed in the config"

    class Config(StageConfig):
        members: list[int] = Field(
            [0], description="indices of the members to keep, best first", min_length=1
        )

        @field_validator("members")
        @classmethod
        def _valid_members(cls, value: list[int]) -> list[int]:
            if any(m < 0 for m in value):
                raise ValueError(f"member indices must be non-negative, got {value}")
            if len(set(value)) != len(value):
                raise ValueError(f"member indices must not repeat, got {value}")
            return value

    def select(self, predictions: np.ndarray, frames: np.ndarray, pixel_size: float) -> Selection:
        """Return the configured members; raise if one is beyond the ensemble."""
        preds = np.asarray(predictions)
        if preds.ndim != 5:
            raise InputError(f"predictions must have shape (M, N, K, H, W), got {preds.shape}")
        n_members = preds.shape[0]
        wrong = [m for m in self.config.members if m >= n_members]
        if wrong:
            raise ConfigError(
                f"manual selector: member(s) {wrong} do not exist; the ensemble has {n_members} members "
                f"(indices 0..{n_members - 1})"
            )
        scores = np.zeros(n_members)
        scores[self.config.members] = 1.0
        return Selection(
            members=list(self.config.members),
            scores=scores,
            criteria={},
            frame_scores=None,
            reasons=[f"members {list(self.config.members)} chosen by the operator (manual selector)"],
        )


def _blob_geometry(p: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Centroids, areas and second-moment eigenvalue ratio of the blobs of one map."""
    mask = p >= threshold
    labels, n = ndimage.label(mask)
    if n == 0:
        z = np.zeros(0)
        return {"row": z, "col": z, "area": z, "elongation": z}
    stats = blob_statistics(p, labels, n, threshold)
    lab_in, rr, cc, _ = labelled_pixels(labels)
    area = stats["area"].astype(np.float64)
    mr = np.bincount(lab_in, weights=rr, minlength=n + 1)[1:] / area
    mc = np.bincount(lab_in, weights=cc, minlength=n + 1)[1:] / area
    srr = np.bincount(lab_in, weights=rr * rr, minlength=n + 1)[1:] / area - mr**2 + 1 / 12
    scc = np.bincount(lab_in, weights=cc * cc, minlength=n + 1)[1:] / area - mc**2 + 1 / 12
    src = np.bincount(lab_in, weights=rr * cc, minlength=n + 1)[1:] / area - mr * mc
    half_trace = (srr + scc) / 2
    disc = np.sqrt(np.maximum(((srr - scc) / 2) ** 2 + src**2, 0))
    lmax = half_trace + disc
    lmin = np.maximum(half_trace - disc, 0)
    return {"row": stats["row"], "col": stats["col"], "area": area, "elongation": np.sqrt(lmin / lmax)}


class AutoSelector(Selector):
    """Score members with label-free physical and artifact criteria; keep the best ``k``."""

    name = "auto"
    version = "1"
    description = "score members by fog, blob shape, spacing, detections in vacuum and agreement; keep the best k"

    class Config(StageConfig):
        k: int | None = Field(
            None, description="number of members to keep (all when the ensemble is smaller); None: the best member and "
            "every member that scores within tolerance of it and agrees with it", ge=1,
        )
        tolerance: float = Field(0.05, description="with k unset: how far below the best score a kept member may be", ge=0, le=1)
        min_agreement: float = Field(
            0.9, description="with k unset: the atom F1 against the best member that a kept member needs", ge=0, le=1
        )
        merged_area: float = Field(1.8, description="a blob larger than this many expected discs counts as merged", gt=1)
        min_axis_ratio: float = Field(0.55, description="a blob whose minor/major axis ratio is below this counts as worm-like", gt=0, lt=1)
        expected_density: float | None = Field(
            None, description="expected atoms per square Angstrom of material (graphene 0.382); None skips the density test",
            gt=0,
        )
        threshold: float = Field(0.5, description="probability above which a pixel belongs to an atom blob", gt=0, lt=1)
        mask_radius_A: float = Field(
            0.5, description="radius of the disc the networks were trained to draw, Angstrom", gt=0, le=5
        )
        bond_length_A: float | None = Field(
            1.42,
            description="expected nearest-neighbour distance, Angstrom (graphene 1.42); None skips the spacing test",
            gt=0, le=20,
        )
        spacing_tolerance: float = Field(
            0.15, description="relative width of the accepted nearest-neighbour distance", gt=0, le=1
        )
        vacuum_fraction: float = Field(
            0.3,
            description="an atom whose smoothed intensity lies below this fraction of the way from the dark level "
            "to the typical atom counts as found in vacuum",
            ge=0, le=1,
        )
        weights: dict[str, float] = Field(
            {c: 1.0 for c in CRITERIA},
            description=f"weight of each criterion ({', '.join(CRITERIA)}); missing ones weigh 0",
        )

        @field_validator("weights")
        @classmethod
        def _valid_weights(cls, value: dict[str, float]) -> dict[str, float]:
            unknown = sorted(set(value) - set(CRITERIA))
            if unknown:
                raise ValueError(f"unknown criteria {unknown}; known: {', '.join(CRITERIA)}")
            if any(v < 0 for v in value.values()):
                raise ValueError("criterion weights must be non-negative")
            if not sum(value.values()) > 0:
                raise ValueError("at least one criterion weight must be positive")
            return value

    def select(self, predictions: np.ndarray, frames: np.ndarray, pixel_size: float) -> Selection:
        """Score every member on every frame and keep the best ``k``."""
        return self.select_chunks([(predictions, frames)], pixel_size)

    def select_chunks(self, chunks, pixel_size: float) -> Selection:
        """The same selection as :meth:`select` on all frames; every frame is scored alone, a chunk at a time."""
        if not pixel_size > 0:
            raise InputError(f"pixel_size must be positive, got {pixel_size}")
        cfg = self.config
        parts = [self._criteria(p, f, pixel_size) for p, f in chunks]
        if not parts:
            raise InputError("auto selector: no frames to score")
        crit = {c: np.concatenate([part[0][c] for part in parts], axis=1) for c in parts[0][0]}
        counts = sum(part[1] for part in parts)
        n_members = len(next(iter(crit.values())))
        bond_px = cfg.bond_length_A / pixel_size if cfg.bond_length_A is not None else None
        return self._decide(crit, n_members, bond_px, counts)

    def _criteria(self, predictions, frames, pixel_size: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each criterion's ``(members, frames)`` scores on a chunk of frames, and the members' pairwise atom matches.

        The second result, ``(M, M, 3)``, holds for every pair of members the matched
        atoms and each member's atom count, summed over the chunk's frames.
        """
        preds, frames = _check_predictions(predictions, frames)
        cfg = self.config
        n_members, n_frames = preds.shape[:2]
        # class-agnostic atom probability: a pixel is "atom" if any class says so
        atom_p = np.nan_to_num(preds.max(axis=2).astype(np.float64))  # (M, N, H, W)
        consensus = np.median(atom_p, axis=0)  # (N, H, W)
        radius_px = cfg.mask_radius_A / pixel_size
        expected_area = np.pi * radius_px**2
        bond_px = cfg.bond_length_A / pixel_size if cfg.bond_length_A is not None else None
        match_px = 0.5 * bond_px if bond_px is not None else max(2 * radius_px, 1.5)
        smooth = ndimage.gaussian_filter(
            frames.astype(np.float64), sigma=(0, max(0.5, 0.2 / pixel_size), max(0.5, 0.2 / pixel_size))
        )

        crit = {c: np.zeros((n_members, n_frames)) for c in CRITERIA}
        counts = np.zeros((n_members, n_members, 3))
        for f in range(n_frames):
            cons = _blob_geometry(consensus[f], cfg.threshold)
            cons_rc = np.stack([cons["row"], cons["col"]], axis=1)
            dark = float(np.percentile(smooth[f], 1.0))
            geometry = [_blob_geometry(atom_p[m, f], cfg.threshold) for m in range(n_members)]
            members_rc = [np.stack([g["row"], g["col"]], axis=1) for g in geometry]
            counts += _pair_counts(members_rc, match_px)
            # the typical atom's brightness: at the consensus atoms, else at all members' atoms
            ref_rc = cons_rc if len(cons_rc) else np.concatenate(members_rc)
            ref_level = float(np.median(_sample(smooth[f], ref_rc))) if len(ref_rc) else dark
            material_area = None
            if cfg.expected_density is not None:
                broad = ndimage.gaussian_filter(frames[f].astype(np.float64), max(1.0, 1.0 / pixel_size))
                material = broad - dark >= cfg.vacuum_fraction * (float(np.median(broad[broad > np.median(broad)])) - dark)
                material_area = float(material.sum()) * pixel_size**2
            for m in range(n_members):
                p = atom_p[m, f]
                g = geometry[m]
                rc = members_rc[m]
                some = np.count_nonzero(p > 0.2)
                fog = np.count_nonzero((p > 0.2) & (p < 0.8))
                crit["clarity"][m, f] = 1.0 - fog / some if some else float(len(cons_rc) == 0)
                empty_value = float(len(cons_rc) == 0)
                if len(rc) == 0:
                    for c in ("blob_shape", "spacing", "vacuum", "separation"):
                        crit[c][m, f] = empty_value
                else:
                    size = np.minimum(g["area"] / expected_area, expected_area / g["area"])
                    crit["blob_shape"][m, f] = float(np.mean(size * g["elongation"]))
                    bad = (g["area"] > cfg.merged_area * expected_area) | (g["elongation"] < cfg.min_axis_ratio)
                    crit["separation"][m, f] = 1.0 - float(np.mean(bad))
                    nn = _nearest_distance(rc)
                    if bond_px is not None:
                        z = (nn - bond_px) / (cfg.spacing_tolerance * bond_px)
                        crit["spacing"][m, f] = float(np.mean(np.exp(-0.5 * z**2)))
                    in_vacuum = _sample(smooth[f], rc) - dark < cfg.vacuum_fraction * (ref_level - dark)
                    if bond_px is not None:
                        in_vacuum |= nn > 1.5 * bond_px
                    crit["vacuum"][m, f] = 1.0 - float(np.mean(in_vacuum))
                if material_area is not None:
                    expected = cfg.expected_density * material_area
                    ratio = len(rc) / expected if expected > 0 else float(len(rc) == 0)
                    crit["density"][m, f] = float(np.exp(-0.5 * ((ratio - 1.0) / 0.15) ** 2))
                if len(rc) == 0 and len(cons_rc) == 0:
                    crit["agreement"][m, f] = 1.0
                else:
                    pairs, _ = match_atoms(cons_rc, rc, match_px)
                    crit["agreement"][m, f] = 2 * len(pairs) / (len(cons_rc) + len(rc))
        return crit, counts

    def _decide(self, crit: dict[str, np.ndarray], n_members: int, bond_px: float | None, counts: np.ndarray) -> Selection:
        """Weigh the criteria, rank the members and keep the best ``k``."""
        cfg = self.config
        crit = dict(crit)
        if bond_px is None:
            crit.pop("spacing")
        if cfg.expected_density is None:
            crit.pop("density")
        weights = {c: float(cfg.weights.get(c, 0.0)) for c in crit}
        total = sum(weights.values())
        if total <= 0:
            raise ConfigError("auto selector: every criterion that can be computed has weight 0")
        frame_scores = sum(weights[c] * crit[c] for c in crit) / total
        scores = frame_scores.mean(axis=1)
        criteria = {c: v.mean(axis=1) for c, v in crit.items()}
        chosen, reasons = self._choose(scores, criteria, weights, counts)
        return Selection(members=chosen, scores=scores, criteria=criteria, frame_scores=frame_scores, reasons=reasons)

    def _choose(self, scores, criteria, weights, counts) -> tuple[list[int], list[str]]:
        """Keep the best members (see the module docstring); say why each member was kept or dropped."""
        cfg = self.config
        n_members = len(scores)
        used = [c for c in criteria if weights[c] > 0]
        table = np.stack([criteria[c] for c in used], axis=1)  # (M, C)
        dominated_by = {}
        for m in range(n_members):
            better = np.all(table >= table[m], axis=1) & np.any(table > table[m], axis=1)
            if better.any():
                dominated_by[m] = int(np.flatnonzero(better)[np.argmax(scores[better])])
        order = [int(i) for i in np.argsort(-scores, kind="stable")]
        free = [m for m in order if m not in dominated_by]
        summary = {m: f"score {scores[m]:.3f}; " + ", ".join(f"{c} {criteria[c][m]:.3f}" for c in criteria) for m in order}
        reasons: dict[int, str] = {}
        if cfg.k is not None:
            k = min(cfg.k, n_members)
            chosen = (free + [m for m in order if m in dominated_by])[:k]
            for m in order:
                if m in chosen:
                    why = f"member {m} kept (rank {order.index(m) + 1} of {n_members}"
                    why += f", dominated by member {dominated_by[m]}: k={cfg.k} asks for more)" if m in dominated_by else ")"
                elif m in dominated_by:
                    why = f"member {m} dropped: member {dominated_by[m]} is as good or better on every criterion"
                else:
                    why = f"member {m} dropped: only the best k={cfg.k} are kept"
                reasons[m] = f"{why}: {summary[m]}"
            if cfg.k > n_members:
                reasons[-1] = f"asked for {cfg.k} members but the ensemble has {n_members}: all kept"
        else:
            best = free[0]
            chosen = [best]
            reasons[best] = f"member {best} kept as the best: {summary[best]}"
            for m in order:
                if m == best:
                    continue
                if m in dominated_by:
                    reasons[m] = f"member {m} dropped: member {dominated_by[m]} is as good or better on every criterion: {summary[m]}"
                    continue
                if scores[m] < scores[best] - cfg.tolerance:
                    reasons[m] = f"member {m} dropped: score more than {cfg.tolerance} below the best: {summary[m]}"
                    continue
                pairs, n_a, n_b = counts[best, m]
                agree = 1.0 if n_a + n_b == 0 else 2 * pairs / (n_a + n_b)
                if agree < cfg.min_agreement:
                    reasons[m] = f"member {m} dropped: its atoms agree with the best member's at F1 {agree:.3f} < {cfg.min_agreement}: {summary[m]}"
                    continue
                chosen.append(m)
                reasons[m] = f"member {m} kept: within {cfg.tolerance} of the best and agrees with it (F1 {agree:.3f}): {summary[m]}"
        lines = [reasons[m] for m in chosen] + [reasons[m] for m in order if m not in chosen]
        if -1 in reasons:
            lines.append(reasons[-1])
        return chosen, lines


def _pair_counts(members_rc: list[np.ndarray], match_px: float) -> np.ndarray:
    """``(M, M, 3)``: matched atoms and both members' atom counts for every pair of members in one frame."""
    n = len(members_rc)
    out = np.zeros((n, n, 3))
    for a in range(n):
        for b in range(a, n):
            matched = len(members_rc[a]) if a == b else len(match_atoms(members_rc[a], members_rc[b], match_px)[0])
            out[a, b] = (matched, len(members_rc[a]), len(members_rc[b]))
            out[b, a] = (matched, len(members_rc[b]), len(members_rc[a]))
    return out


def _nearest_distance(rc: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest other point (inf when alone)."""
    if len(rc) < 2:
        return np.full(len(rc), np.inf)
    d, _ = cKDTree(rc).query(rc, k=2)
    return d[:, 1]


def _sample(image: np.ndarray, rc: np.ndarray) -> np.ndarray:
    """Bilinear image values at sub-pixel positions (clamped to the image)."""
    if len(rc) == 0:
        return np.zeros(0)
    return ndimage.map_coordinates(image, [rc[:, 0], rc[:, 1]], order=1, mode="nearest")


STAGES = [ManualSelector, AutoSelector]
