"""Tests for the built-in classifiers (intensity, gmm) on synthetic doped graphene."""

import numpy as np
import pytest
from pydantic import ValidationError

from elit.data import AtomTable
from elit.errors import InputError
from elit.lattices import graphene_positions
from elit.testing import check_stage
from elit_builtins.classifiers import GmmClassifier, IntensityClassifier, atom_intensities

PX = 0.2
SHAPE = (96, 96)


def haadf(pos, amplitude, rng, sigma_A=0.35, noise=0.1, background=0.0):
    rr, cc = np.mgrid[: SHAPE[0], : SHAPE[1]]
    img = np.full(SHAPE, background, dtype=float)
    s = sigma_A / PX
    for (r, c), a in zip(pos, amplitude):
        img += a * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * s * s))
    return img + rng.normal(0, noise, SHAPE)


@pytest.fixture(scope="module")
def scene():
    """Frame 0: graphene with 6 bright Si dopants on a sloped background; frame 1: pure carbon, other scale."""
    rng = np.random.default_rng(0)
    pos = graphene_positions((SHAPE[0] * PX, SHAPE[1] * PX), margin=0.0, offset=(0.3, 0.2)) / PX
    n = len(pos)
    dopants = rng.choice(n, 6, replace=False)
    amp = np.ones(n)
    amp[dopants] = 3.5
    slope = np.linspace(0, 0.6, SHAPE[1])[None, :]
    frames = np.stack([haadf(pos, amp, rng) + slope, 3 * haadf(pos, np.ones(n), rng) + 10])
    jitter = rng.normal(0, 0.3, (2 * n, 2))  # located positions are not exact
    atoms = AtomTable(
        np.r_[np.zeros(n), np.ones(n)], np.r_[pos[:, 0], pos[:, 0]] + jitter[:, 0],
        np.r_[pos[:, 1], pos[:, 1]] + jitter[:, 1], np.zeros(2 * n), np.ones(2 * n), np.zeros(2 * n),
    )
    truth = np.zeros(2 * n, dtype=int)
    truth[dopants] = 1
    return frames, atoms, truth


def test_intensities_are_relative_to_the_median_atom(scene):
    frames, atoms, truth = scene
    v = atom_intensities(frames, atoms, PX)
    assert np.median(v[atoms.frame == 1]) == pytest.approx(1.0)
    assert v[truth == 1].min() > 2.0
    assert v[truth == 0].max() < 1.6


@pytest.mark.parametrize(
    "stage",
    [IntensityClassifier(), IntensityClassifier(thresholds=[2.0]), GmmClassifier(), GmmClassifier(patch_features=3)],
    ids=["otsu", "fixed", "gmm", "gmm+patches"],
)
def test_finds_the_bright_dopants(scene, stage):
    frames, atoms, truth = scene
    out = stage.classify(frames, atoms, PX)
    assert out.class_names == ("C", "Si")
    assert np.array_equal(out.class_index, truth)
    assert np.array_equal(out.row, atoms.row) and len(out) == len(atoms)
    assert atoms.class_index.max() == 0  # the input is not modified


@pytest.mark.parametrize("stage", [IntensityClassifier(), GmmClassifier()], ids=["otsu", "gmm"])
def test_no_dopants_invents_none(scene, stage):
    frames, atoms, _ = scene
    carbon_only = atoms.in_frame(1)
    out = stage.classify(frames, carbon_only, PX)
    assert np.all(out.class_index == 0)


def test_three_classes_with_multi_otsu():
    rng = np.random.default_rng(1)
    pos = graphene_positions((SHAPE[0] * PX, SHAPE[1] * PX), margin=0.0) / PX
    n = len(pos)
    amp = np.ones(n)
    idx = rng.permutation(n)
    amp[idx[:30]] = 2.5
    amp[idx[30:50]] = 6.0
    frame = haadf(pos, amp, rng, noise=0.05)[None]
    atoms = AtomTable(np.zeros(n), pos[:, 0], pos[:, 1], np.zeros(n), np.ones(n), np.zeros(n))
    out = IntensityClassifier(class_names=["C", "Si", "Hf"]).classify(frame, atoms, PX)
    expected = np.zeros(n, int)
    expected[idx[:30]] = 1
    expected[idx[30:50]] = 2
    assert np.mean(out.class_index == expected) > 0.98


def test_config_validation_and_bad_inputs(scene):
    frames, atoms, _ = scene
    with pytest.raises(ValidationError):
        IntensityClassifier(thresholds=[1.0, 2.0])  # two classes need one threshold
    with pytest.raises(ValidationError):
        IntensityClassifier(class_names=["A", "B", "C"], thresholds=[2.0, 1.0])
    with pytest.raises(InputError):
        IntensityClassifier().classify(frames[:1], atoms, PX)  # atoms refer to frame 1
    empty = IntensityClassifier().classify(frames, AtomTable.empty(), PX)
    assert len(empty) == 0 and empty.class_names == ("C", "Si")


@pytest.mark.parametrize("cls", [IntensityClassifier, GmmClassifier])
def test_conformance(cls):
    check_stage(cls)
