"""Gaussian refinement of atom positions on the raw frame (elit.localize)."""

import numpy as np
import pytest

from elit.data import AtomTable
from elit.errors import InputError
from elit.localize import fit_gaussians, recentre_network, refine_on_frames, window_radius


def _peaks(shape, rows, cols, sigma, amplitude=1.0, background=0.3):
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.full(shape, background, dtype=np.float64)
    amplitude = np.broadcast_to(amplitude, rows.shape)
    for r, c, a in zip(rows, cols, amplitude):
        img += a * np.exp(-((y - r) ** 2 + (x - c) ** 2) / (2 * sigma**2))
    return img


def _lattice(rng, size=160, spacing=14.0, margin=10):
    rr, cc = np.mgrid[margin : size - margin : spacing, margin : size - margin : spacing].astype(float)
    return rr.ravel() + rng.uniform(-0.5, 0.5, rr.size), cc.ravel() + rng.uniform(-0.5, 0.5, rr.size)


def test_overlapping_gaussian_peaks_recovered_to_002_px():
    rng = np.random.default_rng(0)
    tr, tc = _lattice(rng)
    img = _peaks((160, 160), tr, tc, sigma=3.5)
    start_r, start_c = tr + rng.normal(0, 1.0, tr.size), tc + rng.normal(0, 1.0, tc.size)
    fit = fit_gaussians(img, start_r, start_c, pixel_size=0.1)
    assert fit.ok.all()
    assert np.abs(fit.row - tr).max() < 0.02 and np.abs(fit.col - tc).max() < 0.02
    assert np.allclose(fit.sigma, 3.5, atol=0.05)
    # without subtracting the neighbours their tails pull the positions by several times as much
    lone = fit_gaussians(img, start_r, start_c, pixel_size=0.1, neighbour_passes=0)
    assert np.abs(lone.row - tr).max() > 0.04


def test_background_gradient_and_line_offsets_do_not_pull_positions():
    rng = np.random.default_rng(1)
    tr, tc = _lattice(rng)
    y, x = np.mgrid[0:160, 0:160]
    img = _peaks((160, 160), tr, tc, sigma=3.5) + 0.004 * x + 0.003 * y
    img += rng.normal(0, 0.05, (160, 1))  # a random offset per scan line
    fit = fit_gaussians(img, tr + 0.8, tc - 0.8, pixel_size=0.1)
    err = np.hypot(fit.row - tr, fit.col - tc)
    assert fit.ok.all() and np.sqrt(np.mean(err**2)) < 0.03
    plain = fit_gaussians(img, tr + 0.8, tc - 0.8, pixel_size=0.1, tilt=False, line_offsets=False)
    assert np.sqrt(np.mean(np.hypot(plain.row - tr, plain.col - tc) ** 2)) > 2 * np.sqrt(np.mean(err**2))


def test_poisson_noise_unbiased():
    rng = np.random.default_rng(2)
    tr, tc = _lattice(rng, size=200)
    clean = _peaks((200, 200), tr, tc, sigma=3.5)
    noisy = rng.poisson(clean * 100).astype(float)
    fit = fit_gaussians(noisy, tr + rng.normal(0, 1, tr.size), tc + rng.normal(0, 1, tc.size), pixel_size=0.1)
    dr, dc = fit.row - tr, fit.col - tc
    assert fit.ok.mean() > 0.98
    assert abs(dr[fit.ok].mean()) < 0.05 and abs(dc[fit.ok].mean()) < 0.05
    assert np.sqrt(np.mean(dr[fit.ok] ** 2 + dc[fit.ok] ** 2)) < 0.4


def test_atoms_at_and_beyond_the_edges_stay_inside_the_image():
    rows = np.array([0.0, -0.4, 31.3, 15.0, 31.9, -3.0, 40.0])
    cols = np.array([0.2, 16.0, 31.6, -0.3, 5.0, 8.0, -9.0])
    img = _peaks((32, 32), rows[:5], cols[:5], sigma=2.0)
    fit = fit_gaussians(img, rows, cols, pixel_size=0.1)
    assert np.all((fit.row >= 0) & (fit.row <= 31) & (fit.col >= 0) & (fit.col <= 31))
    assert np.isfinite(fit.row).all() and np.isfinite(fit.col).all()


@pytest.mark.parametrize("img", [np.zeros((40, 40)), np.random.default_rng(0).normal(5, 1, (40, 40))])
def test_failed_fit_keeps_the_start_position(img):
    fit = fit_gaussians(img, np.array([20.3]), np.array([10.7]), pixel_size=0.1)  # nothing to fit
    assert not fit.ok[0] and fit.row[0] == 20.3 and fit.col[0] == 10.7 and fit.volume[0] == 0


def test_refine_on_frames_keeps_network_positions_and_adds_columns():
    rng = np.random.default_rng(3)
    tr, tc = _lattice(rng, size=96)
    frames = np.stack([_peaks((96, 96), tr, tc, 3.0), _peaks((96, 96), tr + 1, tc - 1, 3.0)])
    n = tr.size
    atoms = AtomTable(np.repeat([0, 1], n), np.r_[tr, tr + 1] + 0.6, np.r_[tc, tc - 1] - 0.4,
                      np.zeros(2 * n), np.ones(2 * n), np.zeros(2 * n))
    out = refine_on_frames(frames, atoms, pixel_size_A=0.1, smooth_A=0.0)
    assert np.allclose(out.row_network, atoms.row) and np.allclose(out.col_network, atoms.col)
    assert np.abs(out.row - np.r_[tr, tr + 1]).max() < 0.05
    assert np.all(out.intensity > 0) and np.all(np.isfinite(out.fit_residual))
    again = refine_on_frames(frames, out, pixel_size_A=0.1)  # starts from the network's positions again
    assert np.allclose(again.row_network, atoms.row)
    assert len(refine_on_frames(frames, atoms.select(np.zeros(2 * n, bool)), 0.1)) == 0


def test_window_radius_is_half_the_nearest_neighbour_distance():
    r = window_radius(np.array([0.0, 0.0, 30.0]), np.array([0.0, 10.0, 30.0]), pixel_size=0.1, max_A=1.2)
    assert np.allclose(r, [5.0, 5.0, 12.0])


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="2-D"):
        fit_gaussians(np.zeros(5), [1.0], [1.0], 0.1)
    with pytest.raises(InputError, match="pixel_size"):
        fit_gaussians(np.zeros((5, 5)), [1.0], [1.0], 0.0)
    atoms = AtomTable([3], [1.0], [1.0], [0], [1.0], [0.0])
    with pytest.raises(InputError, match="frame"):
        refine_on_frames(np.zeros((2, 8, 8)), atoms, 0.1)


def _with_fits(net_offset, n=600, fit_noise=1.0, seed=0):
    """Atoms whose fits scatter round the truth and whose network positions share ``net_offset``."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(10, 200, (n, 2))
    net = truth + np.asarray(net_offset) + rng.normal(0, 0.3, (n, 2))
    fit = truth + rng.normal(0, fit_noise, (n, 2))
    fit[:20] += 15.0  # a few fits run off to a neighbour
    fit[20:40] = np.nan  # and a few fail
    t = AtomTable(np.zeros(n, int), net[:, 0].copy(), net[:, 1].copy(), np.zeros(n, int), np.ones(n), np.zeros(n))
    t.row_network, t.col_network = net[:, 0], net[:, 1]
    t.row_refined, t.col_refined = fit[:, 0], fit[:, 1]
    return t, truth


def test_recentre_removes_the_network_offset_and_leaves_an_unbiased_one():
    t, truth = _with_fits((0.25, -0.15))
    before = t.row_network.copy()
    out, shift = recentre_network(t)
    assert shift[0] == pytest.approx(-0.25, abs=0.1) and shift[1] == pytest.approx(0.15, abs=0.1)
    bias = np.stack([out.row_network, out.col_network], 1).mean(0) - truth.mean(0)
    assert np.all(np.abs(bias) < 0.1)
    assert np.array_equal(t.row_network, before)  # the input is not changed
    t0, _ = _with_fits((0.0, 0.0), seed=3)
    assert recentre_network(t0)[1] == (0.0, 0.0)  # no significant offset: no shift
    few, _ = _with_fits((0.5, 0.5), n=49)
    assert recentre_network(few)[1] == (0.0, 0.0)  # 29 fits left: too few to tell
