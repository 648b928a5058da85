"""Executors: a small ensemble on a 2-process dask LocalCluster equals the local run; a killed worker loses nothing."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from elit.config import load_config
from elit.data import TrainingSet
from elit.errors import ConfigError, ElitError
from elit.executors import DaskExecutor, LocalExecutor, make_executor
from elit_builtins.architectures import CompactUNetArchitecture
from elit_builtins.trainers import MultiSWATrainer

pytest.importorskip("dask.distributed")

ARCH = CompactUNetArchitecture(base_filters=4, depth=2, blocks=(1, 1, 1))
FAST = dict(n_members=3, steps=6, batch_size=4, patch_size=32, eval_every=3, val_patches=4, bn_batches=2, progress=False, threads=1)


def blob_set(n=4, size=40, seed=0) -> TrainingSet:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size), np.float32)
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for r, c in rng.uniform(0, size, (20, 2)):
            d2 = (yy - r) ** 2 + (xx - c) ** 2
            images[i] += np.exp(-d2 / 4.5)
            labels[i][d2 <= 6.25] = 1
        images[i] = (images[i] - images[i].min()) / np.ptp(images[i])
    return TrainingSet(images, labels, ("atom",), 0.2)


def _square(x):
    return x * x


def _slow_square(x):
    time.sleep(0.4)
    return x * x


@pytest.fixture(scope="module")
def cluster():
    ex = DaskExecutor(n_workers=2, threads_per_worker=1, retries=1)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def local_ensemble():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers train with one thread, too
    try:
        return MultiSWATrainer(**FAST).fit(blob_set(), ARCH, seed=11)
    finally:
        torch.set_num_threads(before)


def test_make_executor_from_config():
    assert isinstance(make_executor(None), LocalExecutor)
    cfg = load_config(overrides=["executor.kind=dask", "executor.n_workers=3"])
    ex = make_executor(cfg.executor)
    assert isinstance(ex, DaskExecutor) and ex.n_workers == 3 and ex._client is None  # started lazily
    assert isinstance(make_executor(load_config().executor), LocalExecutor)
    with pytest.raises(ConfigError, match="n_workers"):
        load_config(overrides=["executor.n_workers=0"])


def test_local_executor_yields_indices_of_a_mapping():
    out = dict(LocalExecutor().map_members(_square, {4: 2, 7: 3}))
    assert out == {4: 4, 7: 9}


def test_dask_map_members_with_shared_argument(cluster):
    out = dict(cluster.map_members(np.multiply, {0: 2, 5: 3}, np.arange(3)))
    assert sorted(out) == [0, 5]
    np.testing.assert_array_equal(out[5], [0, 3, 6])
    pids = cluster.worker_pids()
    assert len(pids) == 2 and os.getpid() not in pids.values()  # separate processes


def test_dask_ensemble_equals_local(cluster, local_ensemble):
    arrived = []
    ens = MultiSWATrainer(**FAST).fit(blob_set(), ARCH, seed=11, executor=cluster, on_member=lambda i, m: arrived.append(i))
    assert sorted(arrived) == [0, 1, 2]
    assert [m.seed for m in ens.members] == [m.seed for m in local_ensemble.members]
    for a, b in zip(ens.members, local_ensemble.members):
        assert a.state.keys() == b.state.keys()
        for k in a.state:
            np.testing.assert_allclose(a.state[k], b.state[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(a.history["val_loss"], b.history["val_loss"], rtol=1e-5)
    # different members really differ, so the comparison above means something
    key = next(k for k, v in ens.members[0].state.items() if v.dtype.kind == "f" and v.size > 1)
    assert not np.allclose(ens.members[0].state[key], ens.members[1].state[key])


def test_dask_resume_skips_completed_members(cluster, local_ensemble):
    done = {1: local_ensemble.members[1]}
    trained = []
    ens = MultiSWATrainer(**FAST).fit(blob_set(), ARCH, seed=11, executor=cluster, completed=done, on_member=lambda i, m: trained.append(i))
    assert sorted(trained) == [0, 2]
    assert ens.members[1] is done[1]


def test_killed_worker_task_is_rescheduled(cluster):
    """A worker killed mid-task: its task runs again on another worker and every result arrives."""
    pids = list(cluster.worker_pids().values())
    killer = threading.Timer(0.6, lambda: os.kill(pids[0], signal.SIGKILL))
    killer.start()
    try:
        out = dict(cluster.map_members(_slow_square, list(range(6))))
    finally:
        killer.cancel()
    assert out == {i: i * i for i in range(6)}
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # that worker really died


def test_killed_worker_during_training_keeps_members(cluster, local_ensemble):
    """Kill a worker as the first member arrives (the other members are training then): the
    ensemble still completes and equals the local one; or, if the run stops with an ElitError,
    the members committed so far are kept and resuming completes it."""
    pids = list(cluster.worker_pids().values())
    committed = {}

    def on_member(i, member):
        if not committed:
            os.kill(pids[-1], signal.SIGKILL)
        committed[i] = member

    try:
        ens = MultiSWATrainer(**FAST).fit(blob_set(), ARCH, seed=11, executor=cluster, on_member=on_member)
    except ElitError:
        assert committed, "nothing was kept"
        ens = MultiSWATrainer(**FAST).fit(
            blob_set(), ARCH, seed=11, executor=cluster, completed=dict(committed), on_member=committed.__setitem__
        )
    assert sorted(committed) == [0, 1, 2]
    with pytest.raises(ProcessLookupError):
        os.kill(pids[-1], 0)
    for a, b in zip(ens.members, local_ensemble.members):
        for k in a.state:
            np.testing.assert_allclose(a.state[k], b.state[k], rtol=1e-5, atol=1e-6)


PIPE = {
    "seed": 5,
    "device": "cpu",
    "scale": {"pixel_size": 0.2, "input_pixel_size": 0.2},
    "iterations": {"max_iterations": 0, "n_simulated": 4},
    "simulator": {"name": "graphene", "params": {"image_size": 48}},
    "augmenter": {"name": "standard", "params": {"crop_size": 32}},
    "architecture": {"name": "compact-unet", "params": {"base_filters": 4, "depth": 2}},
    "trainer": {"name": "multi-swa", "params": {**FAST, "n_members": 2, "min_steps": 0}},
    "selector": {"name": "auto", "params": {"k": 1}},
}


def test_pipeline_on_a_scheduler_address_equals_local(cluster, tmp_path):
    from elit.pipeline import Pipeline
    from elit.store import RunStore
    from elit.testing import toy_frames

    frames = toy_frames(3, 48)[0] * 100 + 7
    address = cluster.client.scheduler.address
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tasks run with the driver's thread count: the same summation order on both sides
    try:
        local = Pipeline(PIPE).run(frames, store=tmp_path / "local.h5")
        remote = Pipeline({**PIPE, "executor": {"kind": "dask", "address": address, "frames_per_task": 2}}).run(
            frames, store=tmp_path / "dask.h5")
    finally:
        torch.set_num_threads(before)
    assert RunStore.open(tmp_path / "dask.h5", mode="r").read_config()["executor"]["address"] == address
    for a, b in zip(remote.ensemble.members, local.ensemble.members):
        for k in a.state:
            np.testing.assert_allclose(a.state[k], b.state[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(remote.mean, local.mean, atol=1e-5)
    assert cluster.client.status == "running"  # the pipeline closed its own client, not the cluster


def test_predict_frames_in_chunks_equals_local(cluster, local_ensemble):
    from elit.executors import predict_frames
    from elit.testing import toy_frames

    frames = toy_frames(5, 32)[0]
    want = local_ensemble.predict(frames)
    got = predict_frames(cluster, local_ensemble, frames, chunk=2)
    assert got.shape == want.shape == (3, 5, 1, 32, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(predict_frames(LocalExecutor(), local_ensemble, frames, chunk=2), want)
    with pytest.raises(ConfigError, match="chunk"):
        predict_frames(cluster, local_ensemble, frames, chunk=0)


def _fail_on_one(x):
    if x == 1:
        raise ValueError("boom")
    return x


def test_a_task_that_keeps_failing_stops_with_a_clear_error(cluster):
    got = {}
    with pytest.raises(ElitError, match=r"task 1 failed on the dask cluster \(ValueError: boom\).*resume"):
        for i, value in cluster.map_members(_fail_on_one, {0: 0, 1: 1}):
            got[i] = value
    assert got in ({}, {0: 0})


def test_cli_executor_flags_become_overrides():
    from elit.cli import _executor_overrides, build_parser

    def overrides(*argv):
        return _executor_overrides(build_parser().parse_args(list(argv)))

    assert overrides("run", "--recipe", "graphene") == []
    assert overrides("run", "--recipe", "graphene", "--workers", "3") == ["executor.kind=dask", "executor.n_workers=3"]
    assert overrides("demo", "--scheduler", "tcp://h:8786") == ["executor.kind=dask", 'executor.address="tcp://h:8786"']
    assert overrides("demo", "--executor", "local") == ["executor.kind=local"]
    cfg = load_config(overrides=overrides("run", "--scheduler", "tcp://h:8786", "--workers", "2"))
    assert (cfg.executor.kind, cfg.executor.address, cfg.executor.n_workers) == ("dask", "tcp://h:8786", 2)
    with pytest.raises(ElitError, match="--scheduler needs --executor dask"):
        overrides("run", "--executor", "local", "--scheduler", "tcp://h:8786")


def _threads_seen(_x):
    return torch.get_num_threads()


def test_tasks_run_with_the_drivers_thread_count(cluster):
    from elit.executors import run_pinned

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = dict(cluster.map_members(_threads_seen, [0, 1, 2]))
        assert seen == {0: 2, 1: 2, 2: 2}  # dask starts workers with OMP_NUM_THREADS=1
        assert run_pinned(_threads_seen, 1, 0) == 1
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)


def test_dask_members_are_bitwise_equal_to_local_with_two_threads(cluster):
    # with 2 driver threads and 1-thread workers, these weights differed by ~0.05 after 20 steps
    params = {**FAST, "threads": 0, "n_members": 2, "steps": 12}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        local = MultiSWATrainer(**params).fit(blob_set(n=6, size=48), ARCH, seed=5)
        remote = MultiSWATrainer(**params).fit(blob_set(n=6, size=48), ARCH, seed=5, executor=cluster)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(remote.members, local.members):
        for k in a.state:
            np.testing.assert_array_equal(a.state[k], b.state[k], err_msg=k)


DEMO_SMALL = [
    "trainer.params.n_members=2", "trainer.params.steps=8", "trainer.params.warm_steps=4", "trainer.params.min_steps=0",
    "trainer.params.eval_every=4", "trainer.params.val_patches=4", "trainer.params.bn_batches=2",
    "trainer.params.patch_size=32", "trainer.params.batch_size=4", "iterations.n_simulated=8",
    "iterations.multiclass=false", "architecture.params.base_filters=4",
]


def test_cli_demo_on_dask_writes_the_same_atoms_csv(tmp_path, capsys):
    from elit.cli import main

    sets = [a for s in DEMO_SMALL for a in ("--set", s)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the driver's count differs from the workers' unless tasks are pinned
    try:
        assert main(["-q", "demo", "--out", str(tmp_path / "local"), *sets]) == 0
        assert main(["-q", "demo", "--out", str(tmp_path / "dask"), "--executor", "dask", "--workers", "2", *sets]) == 0
    finally:
        torch.set_num_threads(before)
    local = (tmp_path / "local" / "atoms.csv").read_bytes()
    assert local.count(b"\n") > 10
    assert (tmp_path / "dask" / "atoms.csv").read_bytes() == local
