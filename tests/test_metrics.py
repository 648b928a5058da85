"""Tests for elit.metrics."""

import numpy as np
import pytest

from elit.data import AtomTable
from elit.errors import InputError
from elit.lattices import graphene_positions
from elit.metrics import (
    GRAPHENE_DENSITY_PER_A2,
    detection_rate,
    detection_scores,
    iou_per_class,
    match_atoms,
    neighbour_stats,
)


def table(frame, rc, cls=None, names=("atom",)):
    rc = np.asarray(rc, dtype=float).reshape(-1, 2)
    n = len(rc)
    cls = np.zeros(n, int) if cls is None else cls
    return AtomTable(np.broadcast_to(frame, (n,)), rc[:, 0], rc[:, 1], cls, np.ones(n), np.zeros(n), names)


def test_match_is_one_to_one_and_optimal_where_greedy_fails():
    true = np.array([[0.0, 0.0], [0.0, 2.0]])
    pred = np.array([[0.0, 1.1], [0.0, -1.0]])
    # greedy by distance would pair true 1 with pred 0 (0.9) and leave true 0 with nothing in reach
    pairs, d = match_atoms(true, pred, 1.5)
    assert pairs.tolist() == [[0, 1], [1, 0]]
    assert d == pytest.approx([1.0, 0.9])


def test_match_handles_empty_and_identical_inputs():
    pairs, d = match_atoms(np.zeros((0, 2)), np.ones((3, 2)), 1.0)
    assert pairs.shape == (0, 2) and d.shape == (0,)
    pts = np.array([[1.0, 2.0], [5.0, 5.0]])
    pairs, d = match_atoms(pts, pts, 0.5)
    assert pairs.tolist() == [[0, 0], [1, 1]] and np.all(d == 0)
    with pytest.raises(InputError):
        match_atoms(np.zeros((3, 3)), pts, 1.0)


def test_match_scales_to_thousands():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 800, (4000, 2))
    pred = np.r_[true[:3600] + rng.normal(0, 0.3, (3600, 2)), rng.uniform(0, 800, (200, 2))]
    pairs, d = match_atoms(true, pred, 2.0)
    assert len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))
    assert 3600 <= len(pairs) <= 3700
    assert d.max() <= 2.0


def test_detection_scores_counts_and_classes():
    true = AtomTable.concatenate(
        [table(0, [[0, 0], [5, 5], [10, 10]], np.array([0, 1, 0]), ("C", "Si")),
         table(1, [[3, 3]], np.array([0]), ("C", "Si"))]
    )
    pred = AtomTable.concatenate(
        [table(0, [[0.3, 0.4], [10, 10], [20, 20]], np.array([0, 0, 0]), ("C", "Si")),
         table(1, [[3, 3]], np.array([1]), ("C", "Si"))]
    )
    s = detection_scores(true, pred, 1.0)
    assert (s["tp"], s["fp"], s["fn"]) == (3, 1, 1)
    assert s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx(0.75)
    assert s["rmse"] == pytest.approx(np.sqrt(0.25 / 3))
    assert s["frames"] == [0, 1] and s["tp_per_frame"] == [2, 1]
    assert s["recall_per_class"] == {"C": 1.0, "Si": 0.0}  # the dopant was missed
    assert s["class_accuracy"] == pytest.approx(2 / 3)


def test_detection_scores_empty_prediction():
    s = detection_scores(table(0, [[1, 1]]), AtomTable.empty(), 1.0)
    assert s["recall"] == 0 and s["f1"] == 0 and np.isnan(s["rmse"])
    s = detection_scores(AtomTable.empty(), AtomTable.empty(), 1.0)
    assert s["f1"] == 1.0


def test_iou_leaves_background_out():
    true = np.zeros((10, 10), int)
    pred = np.zeros((10, 10), int)
    true[0:2, 0:2] = 1
    pred[0:2, 0:1] = 1
    true[5, 5] = 2
    iou = iou_per_class(pred, true, 3)
    assert iou[0] == pytest.approx(0.5)
    assert iou[1] == 0.0
    assert np.isnan(iou[2])
    assert set(iou) == {0, 1, 2}


def test_neighbour_stats_on_graphene():
    pos = graphene_positions((30.0, 30.0), margin=0.0)
    perfect = neighbour_stats(pos, edge_margin_A=2.0)
    assert perfect == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    spoiled = np.r_[pos, rng.uniform(0, 30, (len(pos) // 3, 2))]
    assert neighbour_stats(spoiled, edge_margin_A=2.0) < 0.8
    assert np.isnan(neighbour_stats(np.zeros((0, 2))))


def test_detection_rate():
    area = 100.0 * 100.0
    expected = area * GRAPHENE_DENSITY_PER_A2
    assert GRAPHENE_DENSITY_PER_A2 == pytest.approx(0.382, abs=1e-3)
    assert detection_rate(expected, area) == pytest.approx(1.0)
    rates = detection_rate([expected / 2, expected], area)
    assert rates.tolist() == pytest.approx([0.5, 1.0])
    with pytest.raises(InputError):
        detection_rate(10, 0.0)


def test_class_recall_counts_only_atoms_found_with_their_class():
    from elit.data import AtomTable
    from elit.metrics import detection_scores

    z = np.zeros(3)
    true = AtomTable(z, [0.0, 10.0, 20.0], [0.0, 10.0, 20.0], [0, 1, 1], z + 1, z, class_names=("C", "Si"))
    pred = AtomTable(z, [0.1, 10.1, 20.1], [0.0, 10.0, 20.0], [0, 1, 0], z + 1, z, class_names=("C", "Si"))
    s = detection_scores(true, pred, 1.0)
    assert s["recall_per_class"]["Si"] == 1.0  # both Si atoms were found ...
    assert s["class_recall_per_class"]["Si"] == 0.5  # ... but only one as Si
    assert s["class_recall_per_class"]["C"] == 1.0
