"""The retraining guard: a worse iteration is rejected, recorded, and never becomes the result."""

import logging

import numpy as np
import pytest

import elit
from elit.data import AtomTable, Refinement, TrainingSet
from elit.guard import judge_iteration, regular_share
from elit.lattices import graphene_positions


def table(frame, row, col):
    n = len(row)
    return AtomTable(np.asarray(frame), np.asarray(row, float), np.asarray(col, float), np.zeros(n, int), np.ones(n), np.zeros(n))


def lattice(n_frames=2, size=40.0, px=0.2, seed=0):
    """Graphene atoms (pixels of ``px``) in a ``size`` A square, ``n_frames`` frames."""
    rng = np.random.default_rng(seed)
    pos = graphene_positions((size, size), rotation=0.3, offset=(0.3, 0.7), margin=0.0)  # (n, 2) rows, cols in A
    tables = []
    for f in range(n_frames):
        p = pos / px + rng.normal(0, 0.1, pos.shape)
        tables.append(table(np.full(len(p), f), p[:, 0], p[:, 1]))
    return AtomTable.concatenate(tables)


def test_losing_real_atoms_is_rejected():
    prev = lattice()
    keep = np.random.default_rng(1).random(len(prev)) > 0.5  # half of the lattice lost, scattered
    d = judge_iteration(prev, prev.select(keep), 0.2)
    assert not d.accepted
    assert d.checks["atom_loss"] > 0.4
    assert any("not confirmed" in r for r in d.reasons)


def test_losing_vacuum_noise_is_confirmed():
    prev = lattice()
    rng = np.random.default_rng(2)
    n_noise = len(prev) // 3  # noise detections far from the lattice (in vacuum), then lost
    noise = table(np.zeros(n_noise, int), rng.uniform(-400, -300, n_noise), np.arange(n_noise) * 30.0)
    d = judge_iteration(AtomTable.concatenate([prev, noise]), prev, 0.2)
    assert d.accepted, d.reasons
    assert d.checks["lost_implausible_share"] >= 0.8


def test_merged_blobs_lower_the_regular_share_and_are_rejected():
    prev = lattice(seed=3)
    rng = np.random.default_rng(4)
    # same count, but a third of the atoms displaced by half a bond: merged / doubled blobs
    moved = rng.random(len(prev)) < 0.35
    row, col = prev.row.copy(), prev.col.copy()
    row[moved] += 3.5 * np.cos(rng.uniform(0, 2 * np.pi, moved.sum()))
    col[moved] += 3.5 * np.sin(rng.uniform(0, 2 * np.pi, moved.sum()))
    new = table(prev.frame, row, col)
    typical = 1.42
    assert regular_share(new, 0.2, typical) < regular_share(prev, 0.2, typical) - 0.05
    d = judge_iteration(prev, new, 0.2)
    assert not d.accepted
    assert any("neighbour distance fell" in r for r in d.reasons)


def test_an_equal_or_better_iteration_is_accepted():
    prev = lattice(seed=5)
    assert judge_iteration(prev, prev, 0.2).accepted
    fewer = prev.select(np.arange(len(prev)) % 10 != 0)  # 10 % fewer: within the allowed loss
    assert judge_iteration(prev, fewer, 0.2).accepted


def test_a_fall_in_the_detection_rate_is_rejected_unless_the_lost_atoms_were_noise():
    prev = lattice(seed=6)
    fewer = prev.select(np.arange(len(prev)) % 50 != 0)  # 2 % of the lattice lost: within max_atom_loss
    assert judge_iteration(prev, fewer, 0.2).accepted  # without rates, a small loss passes
    d = judge_iteration(prev, fewer, 0.2, detection_rates=(0.95, 0.93))
    assert not d.accepted and any("detection rate fell" in r for r in d.reasons)
    assert d.checks["detection_rate_after"] == 0.93
    assert judge_iteration(prev, fewer, 0.2, detection_rates=(0.95, 0.93), max_rate_drop=0.05).accepted
    few = prev.select(np.arange(len(prev)) % 200 != 0)  # 0.5 % lost: rejected unless a tolerance is given
    assert not judge_iteration(prev, few, 0.2, detection_rates=(0.95, 0.945)).accepted
    assert judge_iteration(prev, few, 0.2, detection_rates=(0.95, 0.945), max_rate_drop=0.01).accepted
    assert judge_iteration(prev, prev, 0.2, detection_rates=(0.95, 0.96)).accepted  # a rise is fine
    assert judge_iteration(prev, fewer, 0.2, detection_rates=(None, 0.93)).accepted  # unknown: not judged
    rng = np.random.default_rng(7)  # noise in vacuum, dropped by the new iteration: a confirmed fall
    noise = table(np.zeros(20, int), rng.uniform(-400, -300, 20), np.arange(20) * 30.0)
    assert judge_iteration(AtomTable.concatenate([prev, noise]), prev, 0.2, detection_rates=(0.97, 0.95)).accepted


# --------------------------------------------------------------------------------- in the pipeline


class BlankRefiner(elit.Refiner):
    """A refiner gone wrong: it keeps every atom but teaches background everywhere."""

    name = "blank"
    version = "1"
    description = "test refiner that labels nothing"

    class Config(elit.StageConfig):
        pass

    def refine(self, frames, predictions, selection, atoms, rng, pixel_size):
        images = np.repeat(frames[:, None], 1, axis=1)[:, 0].astype(np.float32)
        images = (images - images.mean()) / (images.std() + 1e-6)
        labels = np.zeros(images.shape, dtype=np.uint8)
        ts = TrainingSet(images, labels, atoms.class_names, pixel_size)
        return Refinement(ts, atoms, AtomTable.empty(atoms.class_names), list(range(len(frames))), ["blank labels"])


class DroppingRefiner(BlankRefiner):
    """A refiner that keeps a small minority of the atoms (the gmm-patches failure on a real image)."""

    name = "dropping"

    def refine(self, frames, predictions, selection, atoms, rng, pixel_size):
        ref = super().refine(frames, predictions, selection, atoms, rng, pixel_size)
        keep = np.arange(len(atoms)) % 10 == 0
        return Refinement(ref.training_set, atoms.select(keep), atoms.select(~keep), ref.frames_used, ["kept 10 %"])


@pytest.fixture(scope="module")
def frames():
    from elit.testing import toy_frames

    f, _ = toy_frames(2, 48)
    return f * 100 + 7


def _config(**iterations):
    from elit.testing import tiny_config

    cfg = tiny_config(**{"max_iterations": 2, **iterations})
    cfg["trainer"]["params"].update(steps=12, warm_steps=12)
    return cfg


def test_guard_keeps_the_previous_iteration_when_retraining_is_worse(frames, tmp_path, caplog):
    from elit.pipeline import Pipeline
    from elit.results import read_atoms, rejected_iterations
    from elit.store import RunStore

    path = tmp_path / "run.h5"
    with caplog.at_level(logging.WARNING, logger="elit"):
        result = Pipeline(_config(), refiner=BlankRefiner()).run(frames, store=path)
    first = result.iterations[0]
    assert first.n_atoms > 10, "iteration 0 should find the toy atoms"
    assert len(result.iterations) == 2, "retraining stops at the rejected iteration"
    worse = result.iterations[1]
    assert worse.n_atoms < 0.8 * first.n_atoms and not worse.accepted
    assert len(result.atoms) == first.n_atoms  # the result is iteration 0's atoms
    store = RunStore.open(path, mode="r")
    assert rejected_iterations(store) == [1]
    decision = store.read_json("/iterations/iter_001/guard/decision")
    assert decision["accepted"] is False and decision["step"] == "predict"
    assert len(read_atoms(path)) == first.n_atoms  # `elit atoms` exports the result, not the rejected iteration
    assert len(read_atoms(path, 1)) == worse.n_atoms  # which stays readable by number
    assert any("rejected" in r.message for r in caplog.records)
    assert [s["accepted"] for s in store.read_summary()] == [True, False]


def test_guard_off_lets_a_worse_iteration_through_and_says_so(frames, tmp_path, caplog):
    from elit.pipeline import Pipeline
    from elit.store import RunStore

    with caplog.at_level(logging.WARNING, logger="elit"):
        result = Pipeline(_config(guard=False, max_iterations=1), refiner=BlankRefiner()).run(frames, store=tmp_path / "r.h5")
    assert result.iterations[-1].accepted
    assert len(result.atoms) == result.iterations[-1].n_atoms < result.iterations[0].n_atoms
    # a result with fewer atoms than the best iteration is said on stderr and in the file
    assert any("fewer than iteration 0's" in r.message for r in caplog.records)
    summary = RunStore.open(tmp_path / "r.h5", mode="r").read_summary()
    assert summary[0]["note"] == ""
    assert "fewer than iteration 0's" in summary[1]["note"] and "guard is off" in summary[1]["note"]


def test_a_refinement_that_keeps_a_minority_is_not_trained_on(frames, tmp_path, caplog):
    from elit.pipeline import Pipeline
    from elit.store import RunStore

    path = tmp_path / "run.h5"
    with caplog.at_level(logging.WARNING, logger="elit"):
        result = Pipeline(_config(), refiner=DroppingRefiner()).run(frames, store=path)
    assert len(result.iterations) == 1 and len(result.atoms) == result.iterations[0].n_atoms
    store = RunStore.open(path, mode="r")
    assert not store.stage_complete(1, "trainer")
    decision = store.read_json("/iterations/iter_001/guard/decision")
    assert decision["step"] == "refiner" and not decision["accepted"]
    assert any("kept" in r.message and "not trained on" in r.message for r in caplog.records)
    # a resumed run does not train on it either
    again = Pipeline(_config(), refiner=DroppingRefiner()).run(store=path, resume=True)
    assert len(again.atoms) == len(result.atoms)
