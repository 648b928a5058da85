"""Noise, dose and peak-width estimates read from the frames (elit.conditions)."""

import numpy as np
import pytest

from elit.conditions import (
    estimate_conditions,
    estimate_noise,
    estimate_peak_sigma,
    high_band_share,
    match_stages,
    poisson_like_augmenter,
)
from elit.errors import InputError
from elit.scale import normalize, resample
from elit_builtins.simulators import GrapheneSimulator

CLEAN = dict(hole_probability=0, amorphous_probability=0, probe_tail_range=(0, 0), background_range=(0, 0),
             atom_sigma_range=(0.3, 0.3), probe_sigma_range=(0.4, 0.4))


def _pair(ts):
    return ts.images, ts.labels


_SET = GrapheneSimulator(image_size=160, **CLEAN).simulate(3, np.random.default_rng(0), 0.2)
LABELS = _SET.labels


@pytest.fixture(scope="module")
def clean():
    return _SET.images


@pytest.mark.parametrize("gain", [0.5, 1.0, 4.0])
def test_shot_noise_gain_of_raw_counts(clean, gain):
    """Poisson counts times a detector gain: the variance grows with the signal at that gain."""
    rng = np.random.default_rng(1)
    frame = gain * rng.poisson(40 * clean[0] + 5).astype(np.float64)
    est = estimate_noise(frame, high_band_share(1.0), min_distance_px=5)
    assert est.slope == pytest.approx(gain, rel=0.2)


@pytest.mark.parametrize("dose", [8.0, 60.0, 400.0])
def test_known_dose_is_recovered_within_20_percent(clean, dose):
    """Frames made with the augmenter's shot noise at a known dose: matching finds that dose again."""
    rng = np.random.default_rng(2)
    frames = poisson_like_augmenter(clean, LABELS, dose, 0.3, rng)
    cond = estimate_conditions(frames, 0.2, 1.0)
    sim = GrapheneSimulator(image_size=160, **CLEAN)
    _, aug, _ = match_stages(cond, sim, 0.2, np.random.default_rng(3), match_width=False, dose_spread=1.0)
    low, high = aug["dose_range"]
    assert np.sqrt(low * high) == pytest.approx(dose, rel=0.2)


def test_resampled_frames_are_measured_at_the_working_scale(clean):
    """Raw counts at 0.1 A/px shrunk to 0.2 A/px: the resampling's noise filtering is accounted for."""
    rng = np.random.default_rng(4)
    raw = GrapheneSimulator(image_size=320, **CLEAN).simulate(1, np.random.default_rng(5), 0.1).images
    counts = rng.poisson(30 * raw + 3).astype(np.float32)
    working = normalize(resample(counts, 0.5))
    share = high_band_share(0.5)
    assert 0 < share < high_band_share(1.0)
    direct = estimate_conditions(working, 0.2, 0.5)
    naive = estimate_conditions(working, 0.2, 1.0)
    assert direct.dose < naive.dose  # the filtered high band alone would make the noise look weaker


def test_peak_width_follows_the_blur():
    sims = [GrapheneSimulator(image_size=160, **{**CLEAN, "probe_sigma_range": (p, p)}) for p in (0.3, 0.6)]
    widths = [estimate_peak_sigma(s.simulate(2, np.random.default_rng(6), 0.2).images, 0.2) for s in sims]
    assert widths[0] < widths[1]


def test_matching_scales_the_simulated_widths(clean):
    wide = GrapheneSimulator(image_size=160, **{**CLEAN, "probe_sigma_range": (0.65, 0.65)})
    frames = poisson_like_augmenter(*_pair(wide.simulate(2, np.random.default_rng(7), 0.2)), 500, 0.2, np.random.default_rng(8))
    cond = estimate_conditions(frames, 0.2, 1.0)
    sim_params, _, notes = match_stages(cond, GrapheneSimulator(image_size=160, **CLEAN), 0.2, np.random.default_rng(9))
    assert sim_params["probe_sigma_range"][0] > 0.4 and any("scaled" in n for n in notes)


def test_tiny_frames_are_refused():
    with pytest.raises(InputError, match="16 x 16"):
        estimate_noise(np.zeros((8, 8)), 0.5)
