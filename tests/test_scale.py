"""Tests for elit.scale: normalisation, resampling, coordinate mapping and pixel-size estimation."""

import numpy as np
import pytest

from elit.errors import InputError
from elit.lattices import graphene_positions, perovskite_positions, render_atoms
from elit.scale import (
    estimate_pixel_size,
    normalize,
    positions_to_input,
    positions_to_working,
    resample,
    to_working,
    to_working_scale,
)


def test_normalize_range_dtype_and_frames():
    rng = np.random.default_rng(0)
    frames = np.stack([rng.normal(100, 5, (32, 32)), rng.normal(-3, 0.1, (32, 32))])
    out = normalize(frames)
    assert out.dtype == np.float32 and out.shape == frames.shape
    assert out.min() == 0.0 and out.max() == 1.0
    for i in range(2):  # per frame: each frame spans [0, 1] on its own
        assert np.percentile(out[i], 50) == pytest.approx(0.5, abs=0.1)
    np.testing.assert_allclose(normalize(frames[1]), out[1])
    ints = normalize((rng.random((16, 16)) * 255).astype(np.uint8))
    assert ints.dtype == np.float32 and ints.max() == 1.0


def test_normalize_robust_to_hot_pixels_constant_and_nan():
    image = np.zeros((100, 100))
    image[::10, ::10] = 1.0  # 1 % bright pixels keep the scale
    image[0, 0] = 1e6  # one hot pixel does not
    out = normalize(image)
    assert out[10, 10] == 1.0 and out[5, 5] == 0.0
    assert not normalize(np.full((8, 8), 3.0)).any()
    with_nan = np.arange(64, dtype=float).reshape(8, 8)
    with_nan[2, 3] = np.nan
    out = normalize(with_nan)
    assert np.isfinite(out).all() and out[2, 3] == 0.0 and out.max() == 1.0
    assert not normalize(np.full((4, 4), np.nan)).any()
    with pytest.raises(InputError):
        normalize(np.zeros(5))


def _blob(shape, r, c, sigma):
    return render_atoms([[r, c]], [1.0], shape, sigma)


def _centroid(image):
    rr, cc = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    w = np.clip(image - 0.05 * image.max(), 0, None)
    return (w * rr).sum() / w.sum(), (w * cc).sum() / w.sum()


@pytest.mark.parametrize("factor", [0.375, 0.5, 0.8, 1.7, 2.5])
def test_resample_shape_and_positions_agree(factor):
    shape = (120, 90)
    r, c = 57.3, 41.8
    image = _blob(shape, r, c, 4.0)
    out = resample(image, factor)
    assert out.shape == (round(120 * factor), round(90 * factor)) and out.dtype == np.float32
    expected = positions_to_working(r, c, factor)
    got = _centroid(out)
    assert got[0] == pytest.approx(float(expected[0]), abs=0.05)
    assert got[1] == pytest.approx(float(expected[1]), abs=0.05)
    back = positions_to_input(*got, factor)
    assert back[0] == pytest.approx(r, abs=0.05 / min(factor, 1)) and back[1] == pytest.approx(c, abs=0.05 / min(factor, 1))


def test_resample_stack_antialias_and_identity():
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
    small = resample(checker, 0.25)
    assert small.shape == (16, 16)
    assert small.std() < 0.05  # the pixel-level pattern is averaged away, not aliased
    stack = np.stack([checker, 1 - checker])
    assert resample(stack, 0.5).shape == (2, 32, 32)
    np.testing.assert_array_equal(resample(checker, 1.0), checker)
    with pytest.raises(InputError):
        resample(checker, 0.0)


def test_to_working_scale_and_inverse_mapping():
    frames = np.random.default_rng(1).random((2, 100, 100))
    out, factor = to_working_scale(frames, 0.075, 0.2)
    assert factor == pytest.approx(0.375) and out.shape == (2, round(100 * factor), round(100 * factor))
    rows, cols = positions_to_working(np.array([0.0, 99.0]), np.array([-0.5, 50.0]), factor)
    back = positions_to_input(rows, cols, factor)
    np.testing.assert_allclose(back, [[0.0, 99.0], [-0.5, 50.0]], atol=1e-9)
    assert cols[0] == pytest.approx(-0.5)  # outer edges stay outer edges
    with pytest.raises(InputError):
        to_working_scale(frames, -1.0, 0.2)


def _phase_swing(image):
    """Max over min of the per-column variance: how much the noise varies with the sample points' phase."""
    var = image[4:-4, 4:-4].var(axis=0)
    return float(var.max() / var.min())


def test_a_shrink_to_the_working_scale_keeps_the_noise_even_across_pixels():
    """At 0.13 -> 0.2 A/px (factor 0.65) linear interpolation alone leaves the noise stronger on the
    columns that fall on an input pixel; the working scale's least smoothing narrows that swing.  The
    training images' own resampling, and shrinks by 0.5 or less, are not changed."""
    noise = np.random.default_rng(3).standard_normal((4000, 400)).astype(np.float32)
    assert _phase_swing(resample(noise, 0.65)) > 1.95  # 2.09: a column on an input pixel keeps all its variance
    assert _phase_swing(to_working(noise, 0.65)) < 1.8  # 1.72
    np.testing.assert_array_equal(to_working(noise[:200], 0.5), resample(noise[:200], 0.5))
    np.testing.assert_array_equal(to_working(noise[:200], 1.0), noise[:200])


def _graphene_image(pixel_size, size, seed, noise=0.3):
    rng = np.random.default_rng(seed)
    extent = size * pixel_size
    pos = graphene_positions((extent, extent), rotation=rng.uniform(0, np.pi), offset=rng.uniform(0, 3, 2))
    image = render_atoms(pos / pixel_size - 0.5, 1.0, (size, size), 0.45 / pixel_size)
    return image + rng.normal(0, noise, image.shape)


@pytest.mark.parametrize("pixel_size,size", [(0.2, 128), (0.1, 256), (0.075, 256), (0.35, 128), (0.05, 256)])
def test_estimate_pixel_size_graphene(pixel_size, size):
    estimate, confidence = estimate_pixel_size(_graphene_image(pixel_size, size, seed=int(pixel_size * 1000)))
    assert estimate == pytest.approx(pixel_size, rel=0.03)
    assert confidence > 0.5


def test_estimate_pixel_size_stack_and_noise():
    stack = np.stack([_graphene_image(0.15, 128, seed=s, noise=1.0) for s in range(3)])
    estimate, _ = estimate_pixel_size(stack)
    assert estimate == pytest.approx(0.15, rel=0.03)
    _, noise_confidence = estimate_pixel_size(np.random.default_rng(0).normal(size=(128, 128)))
    assert noise_confidence < 0.3


def test_estimate_pixel_size_perovskite_and_errors():
    rng = np.random.default_rng(3)
    pixel_size, size = 0.2, 192
    pos, sub = perovskite_positions((size * pixel_size,) * 2, rotation=0.3, offset=(1.0, 2.0))
    image = render_atoms(pos / pixel_size, np.where(sub == 0, 1.0, 0.5), (size, size), 0.5 / pixel_size)
    image += rng.normal(0, 0.2, image.shape)
    estimate, confidence = estimate_pixel_size(image, "perovskite")
    assert estimate == pytest.approx(pixel_size, rel=0.03) and confidence > 0.5
    with pytest.raises(InputError):
        estimate_pixel_size(image, "hexagonal-boron-nitride")
    with pytest.raises(InputError):
        estimate_pixel_size(image, "square")  # needs spacing_A
    with pytest.raises(InputError):
        estimate_pixel_size(np.zeros((8, 8)))
