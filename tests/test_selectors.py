"""Tests for the built-in selectors (manual, auto) on synthetic graphene predictions."""

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from elit.errors import ConfigError, InputError
from elit.lattices import graphene_positions
from elit.masks import disc_masks
from elit.testing import check_stage
from elit_builtins.selectors import CRITERIA, AutoSelector, ManualSelector

PX = 0.2  # Angstrom per pixel
SHAPE = (80, 80)


def lattice_with_hole(hole_A=3.5):
    pos = graphene_positions((SHAPE[0] * PX, SHAPE[1] * PX), margin=0.0, offset=(0.3, 0.2)) / PX
    in_hole = np.hypot(pos[:, 0] - SHAPE[0] / 2, pos[:, 1] - SHAPE[1] / 2) < hole_A / PX
    return pos, in_hole


def haadf(pos, rng, sigma_A=0.35, noise=0.05):
    rr, cc = np.mgrid[: SHAPE[0], : SHAPE[1]]
    img = np.zeros(SHAPE)
    s = sigma_A / PX
    for r, c in pos:
        img += np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * s * s))
    return img + rng.normal(0, noise, SHAPE)


def disc_probability(pos, radius_A=0.5):
    m = disc_masks(pos, np.zeros(len(pos), int), SHAPE, radius_A / PX, n_classes=1)[0]
    return np.clip(ndimage.gaussian_filter(m.astype(float), 0.6), 0, 1)


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    pos, hole = lattice_with_hole()
    frames = np.stack([haadf(pos[~hole], rng) for _ in range(2)])
    clean = disc_probability(pos[~hole])
    foggy = np.clip(ndimage.gaussian_filter(clean, 1.2) * 1.4, 0, 1)  # soft, ambiguous blobs
    holey = disc_probability(pos)  # invents a lattice inside the hole
    return frames, clean, foggy, holey


def stack(*maps, n_frames=2):
    return np.stack(maps)[:, None, None].repeat(n_frames, axis=1)  # (M, N, K=1, H, W)


def test_auto_prefers_clean_member_over_foggy_and_holey(scene):
    frames, clean, foggy, holey = scene
    sel = AutoSelector(k=1).select(stack(foggy, holey, clean), frames, PX)
    assert sel.members == [2]
    assert set(sel.criteria) == set(CRITERIA) - {"density"}  # density needs expected_density
    assert sel.frame_scores.shape == (3, 2)
    for values in sel.criteria.values():
        assert values.shape == (3,) and np.all((values >= 0) & (values <= 1))
    # the foggy member loses on clarity, the holey one on vacuum detections
    assert sel.criteria["clarity"][0] < sel.criteria["clarity"][2] - 0.1
    assert sel.criteria["vacuum"][1] < sel.criteria["vacuum"][2] - 0.05
    assert sel.criteria["vacuum"][2] == pytest.approx(1.0)
    assert "member 2 kept" in sel.reasons[0]
    assert len(sel.reasons) == 3 and all("dropped" in r for r in sel.reasons[1:])


def test_auto_clean_beats_holey_alone_and_keeps_k(scene):
    frames, clean, _, holey = scene
    sel = AutoSelector(k=2).select(stack(holey, clean, holey), frames, PX)
    assert sel.members[0] == 1 and len(sel.members) == 2
    assert sel.scores[1] > sel.scores[0]


def dominated(a: dict, b: dict, m: int, n: int) -> bool:
    return all(a[c][n] >= a[c][m] for c in a) and any(a[c][n] > a[c][m] for c in a)


@pytest.mark.parametrize("k", [None, 1, 2])
def test_auto_never_keeps_a_member_another_beats_on_every_criterion(scene, k):
    frames, clean, foggy, holey = scene
    sel = AutoSelector(k=k).select(stack(foggy, clean, holey, clean * 0.9), frames, PX)
    for m in sel.members:
        assert not any(dominated(sel.criteria, sel.criteria, m, n) for n in range(4) if n != m)


def test_auto_keeps_several_members_where_they_agree(scene):
    frames, clean, foggy, _ = scene
    sel = AutoSelector().select(stack(foggy, clean, clean, foggy), frames, PX)
    assert sorted(sel.members) == [1, 2]
    assert any("agrees with it" in r for r in sel.reasons)


def test_density_catches_a_member_that_misses_atoms(scene):
    frames, clean, _, _ = scene
    sparse = clean.copy()
    sparse[:, : clean.shape[1] // 2] = 0  # misses the atoms of half the field
    sel = AutoSelector(expected_density=0.382).select(stack(sparse, clean), frames, PX)
    assert sel.criteria["density"][1] > sel.criteria["density"][0] + 0.3
    assert sel.members == [1]


def test_separation_catches_merged_blobs(scene):
    frames, clean, _, _ = scene
    merged = np.clip(ndimage.uniform_filter(clean, 9) * 3, 0, 1)  # neighbouring discs run together
    sel = AutoSelector(k=1).select(stack(merged, clean), frames, PX)
    assert sel.criteria["separation"][0] < sel.criteria["separation"][1] - 0.3


def test_auto_works_with_one_member_and_no_spacing(scene):
    frames, clean, _, _ = scene
    sel = AutoSelector(k=3, bond_length_A=None).select(stack(clean), frames, PX)
    assert sel.members == [0]
    assert "spacing" not in sel.criteria
    assert sel.criteria["agreement"][0] == 1.0
    assert any("all kept" in r for r in sel.reasons)


def test_auto_weights_are_validated():
    with pytest.raises(ValidationError):
        AutoSelector(weights={"nonsense": 1.0})
    with pytest.raises(ValidationError):
        AutoSelector(weights={"clarity": 0.0})
    sel = AutoSelector(weights={"clarity": 1.0})
    assert sel.config.weights == {"clarity": 1.0}


def test_auto_rejects_bad_shapes():
    with pytest.raises(InputError):
        AutoSelector().select(np.zeros((2, 1, 8, 8)), np.zeros((1, 8, 8)), PX)
    with pytest.raises(InputError):
        AutoSelector().select(np.zeros((2, 1, 1, 8, 8)), np.zeros((2, 8, 8)), PX)


def test_manual_selector():
    preds = np.zeros((3, 1, 1, 8, 8))
    sel = ManualSelector(members=[2, 0]).select(preds, np.zeros((1, 8, 8)), PX)
    assert sel.members == [2, 0] and sel.scores.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ConfigError, match="3 members"):
        ManualSelector(members=[3]).select(preds, np.zeros((1, 8, 8)), PX)
    for bad in ([], [-1], [1, 1]):
        with pytest.raises(ValidationError):
            ManualSelector(members=bad)


@pytest.mark.parametrize("cls,params", [(ManualSelector, {"members": [1]}), (AutoSelector, {"k": 2})])
def test_conformance(cls, params):
    check_stage(cls, params)
