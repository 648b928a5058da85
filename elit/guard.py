"""The retraining guard: keep the previous iteration when a label-free check says the new one is worse.

Retraining on the experiment can go wrong without anyone watching: a refiner
that keeps the wrong atoms teaches the next ensemble to see nothing.  After
every retraining, :func:`judge_iteration` compares the new atoms with those of
the iteration they replace, without labels:

* **atom count**: losing more than ``max_atom_loss`` of the atoms is accepted
  only when the lost atoms were implausible in the previous table (in vacuum,
  far from every other atom, or duplicates closer than ``duplicate_factor``
  times the typical neighbour distance);
* **regularity**: the share of atoms whose nearest neighbour lies within
  ``tol`` of the previous table's typical neighbour distance (a crystal's
  bond) may not fall by more than ``max_regularity_drop``; merged blobs,
  doubled atoms and noise clusters all lower it;
* **detection rate** (when the pipeline knows the lattice's density): it may
  not fall by more than ``max_rate_drop``, unless the lost atoms were
  implausible as above (an iteration that drops noise in vacuum is better).

The pipeline stores each decision as the iteration's ``guard`` step and, when
the new iteration is rejected, stops retraining and reports the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from elit.data import AtomTable
from elit.quality import nearest_neighbour_distances, vacuum_atoms

__all__ = ["GuardDecision", "judge_iteration", "regular_share"]


@dataclass
class GuardDecision:
    """Whether a retrained iteration replaces the previous one, and why."""

    accepted: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {"accepted": self.accepted, "reasons": list(self.reasons), "checks": dict(self.checks)}


def _share_near(distances: np.ndarray, typical_A: float, tol: float) -> float:
    """Share of ``distances`` within ``tol`` (relative) of ``typical_A`` (0 for none or an unknown typical)."""
    if len(distances) == 0 or not np.isfinite(typical_A):
        return 0.0
    return float(np.mean(np.abs(distances - typical_A) <= tol * typical_A))


def regular_share(atoms: AtomTable, pixel_size_A: float, typical_A: float, tol: float = 0.15) -> float:
    """Share of atoms whose nearest neighbour lies within ``tol`` (relative) of ``typical_A``."""
    return _share_near(nearest_neighbour_distances(atoms, pixel_size_A), typical_A, tol)


def _lost(prev: AtomTable, new: AtomTable, radius_px: float) -> np.ndarray:
    """Boolean mask over ``prev``: atoms with no atom of ``new`` within ``radius_px`` in the same frame."""
    lost = np.ones(len(prev), dtype=bool)
    for f in np.unique(prev.frame):
        i_prev = np.flatnonzero(prev.frame == f)
        i_new = np.flatnonzero(new.frame == f)
        if len(i_new) == 0:
            continue
        d, _ = cKDTree(new.positions()[i_new]).query(prev.positions()[i_prev])
        lost[i_prev] = d > radius_px
    return lost


def judge_iteration(
    prev: AtomTable,
    new: AtomTable,
    pixel_size_A: float,
    *,
    max_atom_loss: float = 0.2,
    max_regularity_drop: float = 0.05,
    tol: float = 0.15,
    duplicate_factor: float = 0.6,
    confirm_share: float = 0.8,
    detection_rates: tuple[float | None, float | None] | None = None,
    max_rate_drop: float = 0.0,
) -> GuardDecision:
    """Decide, without labels, whether ``new`` atoms may replace ``prev``.

    Parameters
    ----------
    prev, new : AtomTable
        The previous (accepted) and the new iteration's atoms, in the same pixels.
    pixel_size_A : float
        Angstrom per pixel of those positions.
    max_atom_loss : float
        Largest share of atoms that may be lost without confirmation.
    max_regularity_drop : float
        Largest allowed fall of :func:`regular_share` (absolute).
    tol, duplicate_factor, confirm_share : float
        Relative tolerance of a neighbour distance; distance (× typical) under
        which an atom counts as a duplicate; share of the lost atoms that must
        be implausible for a large loss to be confirmed.
    detection_rates : (float, float) or None
        The previous and the new iteration's detection rates (atoms per expected
        lattice site; None when unknown).
    max_rate_drop : float
        Largest fall of the detection rate accepted without confirmation (a share of the lattice's
        sites).

    Returns
    -------
    GuardDecision
    """
    n_prev, n_new = len(prev), len(new)
    checks: dict[str, Any] = {"atoms_before": n_prev, "atoms_after": n_new}
    reasons: list[str] = []
    if n_prev == 0:
        return GuardDecision(True, ["the previous iteration found no atoms"], checks)
    d_prev = nearest_neighbour_distances(prev, pixel_size_A)
    typical = float(np.nanmedian(d_prev)) if np.isfinite(d_prev).any() else float("nan")
    checks["typical_distance_A"] = None if not np.isfinite(typical) else round(typical, 4)
    accepted = True

    def implausible_share() -> float:
        """Share of the atoms of ``prev`` missing from ``new`` that were in vacuum or duplicates (kept in checks)."""
        if "lost_implausible_share" not in checks:
            radius = 0.5 * typical / pixel_size_A if np.isfinite(typical) else 3.0
            lost = _lost(prev, new, radius)
            implausible = vacuum_atoms(prev, pixel_size_A) | (d_prev < duplicate_factor * typical)
            checks["lost_atoms"] = int(lost.sum())
            checks["lost_implausible_share"] = round(float(implausible[lost].mean()) if lost.any() else 1.0, 4)
        return checks["lost_implausible_share"]

    loss = 1.0 - n_new / n_prev
    checks["atom_loss"] = round(loss, 4)
    if loss > max_atom_loss:
        share = implausible_share()
        if share >= confirm_share:
            reasons.append(
                f"{loss:.0%} of the atoms lost ({n_prev} -> {n_new}), confirmed: {share:.0%} of the lost ones were "
                "in vacuum or duplicates"
            )
        else:
            accepted = False
            reasons.append(
                f"{loss:.0%} of the atoms lost ({n_prev} -> {n_new}, more than {max_atom_loss:.0%}) and only "
                f"{share:.0%} of the lost ones were implausible (vacuum, duplicates): not confirmed"
            )

    before = _share_near(d_prev, typical, tol)
    after = regular_share(new, pixel_size_A, typical, tol)
    checks["regular_share_before"], checks["regular_share_after"] = round(before, 4), round(after, 4)
    if after < before - max_regularity_drop:
        accepted = False
        reasons.append(
            f"atoms at the lattice's neighbour distance fell from {before:.1%} to {after:.1%} "
            f"(more than {max_regularity_drop:.0%})"
        )
    if detection_rates is not None and None not in detection_rates:
        r_prev, r_new = (float(r) for r in detection_rates)
        checks["detection_rate_before"], checks["detection_rate_after"] = round(r_prev, 4), round(r_new, 4)
        if r_new < r_prev - max_rate_drop:
            share = implausible_share()
            if share < confirm_share:
                accepted = False
                reasons.append(
                    f"the detection rate fell from {r_prev:.3f} to {r_new:.3f} ({n_prev} -> {n_new} atoms) and only "
                    f"{share:.0%} of the lost atoms were implausible (vacuum, duplicates)"
                )
    if accepted and not reasons:
        reasons.append(
            f"{n_prev} -> {n_new} atoms; atoms at the lattice's neighbour distance {before:.1%} -> {after:.1%}"
        )
    return GuardDecision(accepted, reasons, checks)
