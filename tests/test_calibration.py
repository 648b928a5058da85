"""Ranking and calibration of per-atom uncertainty on constructed cases (elit.calibration)."""

import numpy as np
import pytest

from elit.calibration import (
    Calibration,
    atom_features,
    expected_calibration_error,
    label_atoms,
    reliability_curve,
    roc_auc,
)
from elit.data import AtomTable
from elit.errors import InputError


def test_roc_auc_on_known_cases():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # one of the four positive-negative pairs is misordered
    assert roc_auc([0.1, 0.6, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert np.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_calibrated_probabilities_have_small_ece_and_overconfident_ones_do_not():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    right = rng.uniform(0, 1, p.size) < p  # right with exactly the stated probability
    assert expected_calibration_error(p, right) < 0.02
    curve = reliability_curve(p, right, n_bins=5)
    assert np.allclose(curve["frequency"], curve["mean_probability"], atol=0.03)
    assert curve["count"].sum() == p.size
    overconfident = np.clip(0.5 + 1.8 * (p - 0.5), 0, 1)
    assert expected_calibration_error(overconfident, right) > 0.1
    with pytest.raises(InputError):
        reliability_curve([1.5], [True])


def test_calibration_map_fixes_a_miscalibrated_score_and_keeps_its_ranking():
    rng = np.random.default_rng(1)
    n = 6000
    spread = rng.gamma(2.0, 0.1, n)  # an ensemble spread: large where atoms are wrong
    truth_p = 1 / (1 + np.exp(8 * (spread - 0.35)))
    right = rng.uniform(0, 1, n) < truth_p
    peak = np.clip(0.98 - 0.2 * spread + rng.normal(0, 0.01, n), 0, 1)  # an overconfident "probability"
    feats = {"probability": peak, "uncertainty": spread}
    train, test = slice(0, n // 2), slice(n // 2, n)
    cal = Calibration.fit({k: v[train] for k, v in feats.items()}, right[train])
    p = cal.predict({k: v[test] for k, v in feats.items()})
    assert expected_calibration_error(peak[test], right[test]) > 0.1
    assert expected_calibration_error(p, right[test]) < 0.05
    auc = roc_auc(spread[test], ~right[test])  # the spread ranks the wrong atoms first ...
    assert auc > 0.7 and roc_auc(-p, ~right[test]) == pytest.approx(auc, abs=0.02)  # ... and so does p
    again = Calibration.from_dict(cal.to_dict())
    assert np.allclose(again.predict({k: v[test] for k, v in feats.items()}), p)
    with pytest.raises(InputError, match="both"):
        Calibration.fit(feats, np.ones(n, bool))
    with pytest.raises(InputError, match="needs features"):
        cal.predict({"probability": peak})


def test_label_atoms_and_features():
    truth = AtomTable([0, 0, 1], [1.0, 10.0, 5.0], [1.0, 10.0, 5.0], [0, 0, 0], [1, 1, 1], [0, 0, 0])
    pred = AtomTable([0, 0, 1, 1], [1.3, 30.0, 5.0, 9.0], [1.4, 30.0, 5.0, 9.0], [0] * 4, [0.9, 0.6, 0.8, 0.7],
                     [0.1, 0.4, 0.2, 0.3], fit_residual=[0.1, np.nan, 0.2, 0.3])
    correct, err = label_atoms(pred, truth, max_distance_px=2.0)
    assert correct.tolist() == [True, False, True, False]
    assert err[0] == pytest.approx(0.5) and np.isnan(err[1])
    f = atom_features(pred)
    assert set(f) == {"probability", "uncertainty", "fit_residual"} and f["fit_residual"][1] == pytest.approx(0.2)
