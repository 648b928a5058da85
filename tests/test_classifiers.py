"""Tests for the built-in classifiers (intensity, gmm, relative) on synthetic doped graphene and two sublattices."""

import numpy as np
import pytest
from pydantic import ValidationError

from elit.data import AtomTable
from elit.errors import InputError
from elit.lattices import graphene_positions
from elit.testing import check_stage
from elit_builtins.classifiers import (
    GmmClassifier,
    IntensityClassifier,
    RelativeClassifier,
    atom_intensities,
    mixture_1d,
    relative_intensities,
)

PX = 0.2
SHAPE = (96, 96)


def haadf(pos, amplitude, rng, sigma_A=0.35, noise=0.1, background=0.0, shape=SHAPE):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, background, dtype=float)
    s = sigma_A / PX
    for (r, c), a in zip(pos, amplitude):
        img += a * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * s * s))
    return img + rng.normal(0, noise, shape)


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
    [IntensityClassifier(), IntensityClassifier(thresholds=[2.0]), GmmClassifier(), GmmClassifier(patch_features=3),
     RelativeClassifier()],
    ids=["otsu", "fixed", "gmm", "gmm+patches", "relative"],
)
def test_finds_the_bright_dopants(scene, stage):
    frames, atoms, truth = scene
    out = stage.classify(frames, atoms, PX)
    assert out.class_names == ("C", "Si")
    assert np.array_equal(out.class_index, truth)
    assert np.array_equal(out.row, atoms.row) and len(out) == len(atoms)
    assert atoms.class_index.max() == 0  # the input is not modified


@pytest.mark.parametrize("stage", [IntensityClassifier(), GmmClassifier(), RelativeClassifier()],
                         ids=["otsu", "gmm", "relative"])
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


@pytest.mark.parametrize("cls", [IntensityClassifier, GmmClassifier, RelativeClassifier])
def test_conformance(cls):
    check_stage(cls)


def _square_sublattices(rng, gradient: float, dose_ramp: float, noise=0.05, ratio=0.45, size=200):
    """A/B columns of a perovskite-like [001] projection (a = 3.9 A) on a background ramp, dose changing across."""
    a = 3.9 / PX
    g = np.arange(0.5, size / a) * a
    rr, cc = np.meshgrid(g, g, indexing="ij")
    pos_a = np.stack([rr.ravel(), cc.ravel()], axis=1)
    pos_b = pos_a + a / 2
    pos_b = pos_b[(pos_b < size - 1).all(axis=1)]
    pos = np.concatenate([pos_a, pos_b])
    amp = np.r_[np.ones(len(pos_a)), np.full(len(pos_b), ratio)] * rng.normal(1, 0.05, len(pos))
    amp *= 1 + dose_ramp * pos[:, 1] / size  # the beam current drifts during the scan
    x = np.arange(size)[None, :] / size
    img = haadf(pos, amp, rng, noise=noise, shape=(size, size)) + gradient * x + 0.5 * gradient * x.T
    truth = np.r_[np.ones(len(pos_a), int), np.zeros(len(pos_b), int)]  # B (darker) = 0, A = 1
    atoms = AtomTable(np.zeros(len(pos)), pos[:, 0] + rng.normal(0, 0.3, len(pos)), pos[:, 1] + rng.normal(0, 0.3, len(pos)),
                      np.zeros(len(pos)), np.ones(len(pos)), np.zeros(len(pos)))
    return img[None], atoms, truth


def test_relative_classifier_separates_two_populations_under_a_gradient():
    rng = np.random.default_rng(4)
    frames, atoms, truth = _square_sublattices(rng, gradient=1.5, dose_ramp=2.0)
    # the raw intensity does not separate them: the gradient and dose ramp make far B as bright as near A
    raw = atom_intensities(frames, atoms, PX, relative=False)
    assert raw[truth == 0].max() > raw[truth == 1].min()
    out = RelativeClassifier(class_names=["B", "A"]).classify(frames, atoms, PX)
    assert np.mean(out.class_index == truth) >= 0.98
    assert out.class_probability.shape == (len(atoms),) and np.all((out.class_probability >= 0.5) & (out.class_probability <= 1))


def test_relative_classifier_finds_rare_dopants_across_a_dose_change(scene):
    frames, atoms, truth = scene
    scaled = frames.copy()
    scaled[0, :, 48:] *= 2.5  # the beam current jumped halfway through the scan
    out = RelativeClassifier().classify(scaled, atoms, PX)
    assert np.array_equal(out.class_index, truth)
    assert out.class_probability[truth == 1].min() > 0.9


def test_relative_intensity_of_a_dopant_is_its_contrast(scene):
    frames, atoms, truth = scene
    rel = relative_intensities(frames, atoms, PX)
    assert np.median(rel[truth == 0]) == pytest.approx(1.0, abs=0.05)
    assert 2.5 < np.median(rel[truth == 1]) < 4.0


def test_mixture_merges_components_that_are_not_separated():
    rng = np.random.default_rng(5)
    one = rng.normal(1.0, 0.1, 2000)
    labels, prob, info = mixture_1d(one, 2)
    assert np.all(labels == 0) and len(info["means"]) == 1
    two = np.r_[one, rng.normal(3.0, 0.2, 12)]
    labels, prob, info = mixture_1d(two, 2)
    assert labels[-12:].tolist() == [1] * 12 and labels[:-12].sum() == 0
    assert info["weights"][1] == pytest.approx(12 / len(two), rel=0.05)
    # the class probability falls towards the other class, and is never below a half
    _, p, _ = mixture_1d(two, 2)
    upper = np.argsort(one)[one[np.argsort(one)] > 1.05]
    assert np.all(np.diff(p[upper]) <= 1e-12) and p.min() >= 0.5


def test_mixture_finds_a_rare_bright_class_in_a_skewed_majority():
    """Poisson-like counts: a wide, right-skewed majority (C) and 18 bright atoms (Si), as at low dose."""
    rng = np.random.default_rng(7)
    carbon = rng.poisson(6.0, 3000) / 6.0  # relative intensity, mean 1, skewed
    silicon = rng.poisson(24.0, 18) / 6.0  # ~4x brighter
    x = np.sqrt(np.r_[carbon, silicon])  # the relative classifier's variance-stabilised values
    labels, _, info = mixture_1d(x, 2, 4.0, np.sqrt(2.0))
    assert len(info["means"]) == 2
    found = labels[-18:].sum()
    false = labels[:-18].sum()
    assert found >= 15 and false <= 3, (found, false)
    # without the root, the Gaussian mixture takes the skewed tail for a class or merges everything
    assert mixture_1d(x ** 2, 2, 4.0, 2.0)[0][:-18].sum() > 3 or mixture_1d(x ** 2, 2, 4.0, 2.0)[0][-18:].sum() < 15


def test_mixture_keeps_a_marginal_rare_class_on_strong_evidence_only():
    """18 Si 3.8 standard deviations above 3,000 C (1e4 e/A^2): kept on evidence; carbon alone stays one class."""
    rng = np.random.default_rng(11)
    carbon = rng.normal(1.0, 0.26, 3000)
    x = np.r_[carbon, rng.normal(2.0, 0.27, 18)]
    assert len(mixture_1d(x, 2, 4.0, np.sqrt(2.0))[2]["means"]) == 1  # below min_separation: merged
    labels, _, info = mixture_1d(x, 2, 4.0, np.sqrt(2.0), min_evidence=10.0)
    assert len(info["means"]) == 2
    assert labels[-18:].sum() >= 15 and labels[:-18].sum() <= 3
    for seed in range(3):  # the bright tail of carbon alone is no class
        c = np.random.default_rng(seed).normal(1.0, 0.26, 3000)
        assert len(mixture_1d(c, 2, 4.0, np.sqrt(2.0), min_evidence=10.0)[2]["means"]) == 1


def test_mixture_keeps_a_single_bright_atom():
    """One dopant in a small image (real G-Si: one Si among 155 C) is its own class."""
    rng = np.random.default_rng(8)
    x = np.r_[rng.normal(1.0, 0.09, 154), 2.04]
    labels, _, info = mixture_1d(x, 2, 4.0, np.sqrt(2.0))
    assert labels[-1] == 1 and labels[:-1].sum() == 0


def test_class_weights_balance_rare_classes():
    from elit.data import TrainingSet, class_weights

    w = class_weights([100_000, 3000, 18], max_ratio=1000)
    assert w[2] / w[1] == pytest.approx(np.sqrt(3000 / 18), rel=1e-6)
    assert np.sum(w * [100_000, 3000, 18]) / 103_018 == pytest.approx(1.0)
    assert np.allclose(class_weights([5, 5, 5]), 1.0)
    assert class_weights([1000, 1], power=1.0, max_ratio=10)[1] / class_weights([1000, 1], power=1.0, max_ratio=10)[0] == pytest.approx(10)
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 0, :4] = 1
    labels[1, 1, :1] = 2
    ts = TrainingSet(np.zeros((2, 8, 8)), labels, ("C", "Si"))
    tw = ts.class_weights(power=1.0, max_ratio=1000)
    assert tw[2] > tw[1] > tw[0]
    with pytest.raises(ValueError):
        class_weights([-1, 2])


def _doped_movie(seed, n_frames=5, same_dopants=True, amp_si=2.5, noise=0.5):
    """A drifting doped graphene movie at low signal; with ``same_dopants=False`` a stack of separate images instead."""
    rng = np.random.default_rng(seed)
    base = graphene_positions((SHAPE[0] * PX, SHAPE[1] * PX), margin=0.0, offset=(0.3, 0.2)) / PX
    n = len(base)
    dopants = rng.choice(n, 6, replace=False)
    frames, rows, truth = [], [], []
    for f in range(n_frames):
        if not same_dopants:
            dopants = rng.choice(n, 6, replace=False)
        amp = np.ones(n)
        amp[dopants] = amp_si
        pos = base + np.array([0.15, -0.1]) / PX * f
        frames.append(haadf(pos, amp, rng, noise=noise))
        rows.append(pos + rng.normal(0, 0.2, pos.shape))  # located positions are not exact
        truth.append(np.isin(np.arange(n), dopants).astype(int))
    pos = np.concatenate(rows)
    m = len(pos)
    atoms = AtomTable(np.repeat(np.arange(n_frames), n), pos[:, 0], pos[:, 1], np.zeros(m), np.ones(m), np.zeros(m))
    return np.stack(frames), atoms, np.concatenate(truth)


def test_a_movie_decides_each_atoms_class_on_all_its_sightings():
    missed_alone = 0
    for seed in range(3):
        frames, atoms, truth = _doped_movie(seed)
        alone = RelativeClassifier(RelativeClassifier.Config(combine_frames=0)).classify(frames, atoms, PX)
        combined = RelativeClassifier().classify(frames, atoms, PX)
        missed_alone += int(np.sum((alone.class_index == 0) & (truth == 1)))
        assert np.array_equal(combined.class_index, truth), seed
    assert missed_alone >= 3  # one frame alone misses dopants at this signal


def test_a_stack_of_separate_images_is_not_combined():
    from elit_builtins.classifiers import combine_over_frames

    frames, atoms, truth = _doped_movie(0, same_dopants=False, noise=0.2)
    alone = RelativeClassifier(RelativeClassifier.Config(combine_frames=0)).classify(frames, atoms, PX)
    out = RelativeClassifier().classify(frames, atoms, PX)
    assert np.array_equal(out.class_index, alone.class_index) and np.array_equal(out.class_index, truth)
    loglik = np.zeros((len(atoms), 2))
    assert combine_over_frames(loglik, truth, atoms, PX, window=3)[1] == 0
    movie_frames, movie_atoms, movie_truth = _doped_movie(0, noise=0.2)
    assert combine_over_frames(loglik, movie_truth, movie_atoms, PX, window=3)[1] > 0
