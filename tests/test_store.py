"""The run store: layout, provenance, round trips, crash safety and the absence of pickles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from elit.data import AtomTable
from elit.errors import StoreError
from elit.store import FORMAT_NAME, FORMAT_VERSION, RunStore
from elit.store import h5store

INFO = {"name": "dummy", "plugin": "builtins", "package": "elit", "plugin_version": "0.1.0",
        "stage_version": "1", "config": {"lr": 0.001, "steps": 3}, "seed": 7, "used": []}


class FakeMember:
    """Stands in for elit.ensemble.Member: to_arrays() -> (spec, arrays)."""

    def __init__(self, seed: int, size: int = 12) -> None:
        self.seed = seed
        self.size = size

    def to_arrays(self):
        rng = np.random.default_rng(self.seed)
        return ({"seed": self.seed, "metrics": {"iou": 0.5 + self.seed / 100, "nan": None}},
                {"conv.weight": rng.random((self.size,), dtype=np.float32),
                 "bn.num_batches_tracked": np.array(3, dtype=np.int64),
                 "history/train_loss": np.linspace(1, 0, 5)})


class FakeEnsemble:
    def __init__(self, n: int) -> None:
        self.members = [FakeMember(i) for i in range(n)]

    def to_arrays(self):
        spec = {"format": "fake", "members": []}
        arrays = {}
        for i, m in enumerate(self.members):
            s, a = m.to_arrays()
            spec["members"].append(s)
            arrays.update({f"member_{i:03d}/{k}": v for k, v in a.items()})
        return spec, arrays


def info(**over):
    return {**INFO, **over}


@pytest.fixture
def store(tmp_path):
    return RunStore.create(tmp_path / "run.h5")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A store with every kind of content (written once: sidpy's import is slow)."""
    path = tmp_path_factory.mktemp("run") / "run.h5"
    s = RunStore.create(path)
    s.write_config({"seed": 1, "stages": {"trainer": {"name": "dummy"}}})
    s.write_environment({"python": "3.11", "numpy": np.__version__, "extras": {"a": 1}},
                        [{"kind": "trainer", "name": "dummy", "plugin": "builtins", "package": "elit", "version": "0.1.0"}])
    rng = np.random.default_rng(0)
    frames = rng.random((2, 40, 48)).astype(np.float32)
    inp = s.write_input("frames", frames, 0.2, source="scan.npy", sha256="ab" * 32, metadata={"reader": "npy"})
    with s.stage(0, "trainer", info(used=[inp])) as st:
        st.add_member(0, FakeMember(0))
        st.add_member(1, FakeMember(1))
        ens = st.add_ensemble(FakeEnsemble(2), derived_from=[inp])
    probs = rng.random((2, 2, 1, 40, 48)).astype(np.float32)
    table = AtomTable([0, 1, 1], [1.5, 2.0, 30.25], [3.0, 4.0, 5.5], [0, 1, 0], [0.9, 0.8, 0.7], [0.1, 0.2, 0.3],
                      class_names=("C", "Si"))
    with s.stage(0, "predict", info(name="ensemble-predict", used=[ens], seed=None)) as st:
        mp = st.add_image("member_probabilities", probs, ["member", "frame", "class", "row", "col"],
                          pixel_size=0.2, derived_from=[inp, ens])
        st.add_image("mean", probs.mean(0), ["frame", "class", "row", "col"], pixel_size=0.2, derived_from=[mp])
        st.add_image("labels", (probs[0, :, 0] > 0.5).astype(np.uint8), ["sample", "y", "x"], "class label", "")
        st.add_table("atoms", table, derived_from=[mp])
        st.add_json("report", {"reasons": ["a", "b"], "value": np.float32(1.5), "code": "__import__('os')"})
        st.add_array("scores", np.array([0.5, 0.25]))
        st.add_array("criteria/dice", np.array([1.0, 2.0]))
    s.write_summary([{"iteration": 0, "n_atoms": 3}])
    return {"path": path, "frames": frames, "probs": probs, "table": table, "mp": mp, "inp": inp, "ens": ens}


# ------------------------------------------------------------------ create / open
def test_create_writes_format_attributes(store):
    with h5py.File(store.path, "r") as f:
        assert f.attrs["format"] == FORMAT_NAME
        assert int(f.attrs["format_version"]) == FORMAT_VERSION
        assert f.attrs["elit_version"]
        assert f.attrs["created"].endswith("+00:00")
    assert store.iterations() == []
    assert not Path(str(store.path) + ".tmp").exists()


def test_create_refuses_existing_file_unless_overwrite(store):
    with pytest.raises(StoreError, match="already exists"):
        RunStore.create(store.path)
    RunStore.create(store.path, overwrite=True)


def test_create_in_missing_folder(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        RunStore.create(tmp_path / "nope" / "run.h5")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "directory"),
        (lambda p: p.write_text("hello"), "not an HDF5 file"),
        (lambda p: h5py.File(p, "w").close(), "not an elit run file"),
    ],
)
def test_open_refuses_bad_files(tmp_path, make, message):
    path = tmp_path / "x.h5"
    make(path)
    with pytest.raises(StoreError, match=message):
        RunStore.open(path)


def test_open_refuses_truncated_file(store):
    with store.stage(0, "selector", info()) as st:
        st.add_array("scores", np.arange(10000.0))
    data = store.path.read_bytes()
    store.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="damaged or truncated"):
        RunStore.open(store.path)


def test_open_refuses_newer_format(store):
    with h5py.File(store.path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match="newer elit"):
        RunStore.open(store.path)


def test_open_mode_and_read_only(store):
    with pytest.raises(StoreError, match="mode"):
        RunStore.open(store.path, mode="w")
    ro = RunStore.open(store.path)
    with pytest.raises(StoreError, match="read-only"):
        ro.write_config({"a": 1})
    with pytest.raises(StoreError, match="read-only"):
        ro.stage(0, "trainer", info())


def test_open_for_append_removes_stale_tmp(store):
    tmp = Path(str(store.path) + ".tmp")
    tmp.write_bytes(b"half a commit")
    RunStore.open(store.path, mode="a")
    assert not tmp.exists()


def test_constructor_is_private(tmp_path):
    with pytest.raises(TypeError):
        RunStore(tmp_path / "x.h5", "a")


# ------------------------------------------------------------------ config / environment / summary
def test_config_round_trip_and_checksum(store):
    cfg = {"b": [1, 2.5], "a": {"nested": True}, "path": Path("x/y")}
    digest = store.write_config(cfg)
    assert store.read_config() == {"b": [1, 2.5], "a": {"nested": True}, "path": "x/y"}
    with h5py.File(store.path, "r") as f:
        text = f["config"].asstr()[()]
        assert f["config"].attrs["sha256"] == digest
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert store.write_config(dict(cfg)) == digest  # same config: no-op
    with pytest.raises(StoreError, match="different config"):
        store.write_config({"a": 2})
    store.write_config({"a": 2}, overwrite=True)
    assert store.read_config() == {"a": 2}


def test_edited_config_is_detected(store):
    store.write_config({"a": 1})
    with h5py.File(store.path, "r+") as f:
        del f["config"]
        ds = f.create_dataset("config", data='{"a":2}', dtype=h5py.string_dtype())
        ds.attrs["sha256"] = "0" * 64
    with pytest.raises(StoreError, match="sha256"):
        store.read_config()


def test_missing_config(store):
    with pytest.raises(StoreError, match="no config"):
        store.read_config()


def test_environment_keeps_history(store):
    rows = [{"kind": "trainer", "name": "a", "plugin": "builtins", "package": "elit", "version": "1"}]
    store.write_environment({"python": "3.11", "torch": "2.1", "gpus": ["x"]}, rows)
    env, plugins = store.read_environment()
    assert env["python"] == "3.11" and json.loads(env["gpus"]) == ["x"]
    assert plugins == rows
    store.write_environment({"python": "3.12"}, rows + [{**rows[0], "name": "b", "extra": "e"}])
    env, plugins = store.read_environment()
    assert env["python"] == "3.12" and "torch" not in env
    assert [p["name"] for p in plugins] == ["a", "b"] and plugins[1]["extra"] == "e"
    with h5py.File(store.path, "r") as f:
        assert f["environment/history/session_000"].attrs["torch"] == "2.1"
        assert "plugins" in f["environment/history/session_000"]


def test_summary_round_trip(store):
    assert store.read_summary() == []
    store.write_summary([{"iteration": 0, "rate": None}])
    store.write_summary([{"iteration": 0, "rate": 0.5}, {"iteration": 1, "rate": 0.9}])
    assert store.read_summary()[1] == {"iteration": 1, "rate": 0.9}


# ------------------------------------------------------------------ full content (NSID etc.)
def test_input_round_trip(full_run):
    s = RunStore.open(full_run["path"])
    frames, px, meta = s.read_input("frames")
    np.testing.assert_array_equal(frames, full_run["frames"])
    assert frames.dtype == np.float32 and px == pytest.approx(0.2)
    assert meta == {"reader": "npy", "source": "scan.npy", "sha256": "ab" * 32}
    assert s.inputs() == ["frames"]
    with pytest.raises(StoreError, match="no input 'other'"):
        s.read_input("other")


def test_images_readable_by_pynsid_with_dims_and_units(full_run):
    from pyNSID.io.hdf_utils import read_h5py_dataset

    with h5py.File(full_run["path"], "r") as f:
        ds = read_h5py_dataset(f[full_run["mp"]])
        assert ds.shape == full_run["probs"].shape
        np.testing.assert_allclose(np.asarray(ds), full_run["probs"])
        assert ds.quantity == "probability" and ds.data_type.name == "IMAGE_STACK"
        names = [ds._axes[i].name for i in range(5)]
        assert names == ["member", "frame", "class", "row", "col"]
        assert ds._axes[3].units == "Å" and ds._axes[3].dimension_type.name == "SPATIAL"
        np.testing.assert_allclose(ds._axes[4].values[:3], [0.0, 0.2, 0.4])
        assert ds._axes[1].dimension_type.name == "TEMPORAL"
        inp = read_h5py_dataset(f[full_run["inp"]])
        assert inp.shape == (2, 40, 48) and inp._axes[1].units == "Å"


def test_image_without_pixel_size_has_pixel_units(full_run):
    with h5py.File(full_run["path"], "r") as f:
        ds = f["/iterations/iter_000/predict/labels/labels"]
        assert ds.dtype == np.uint8
        assert ds.dims[1][0].attrs["units"] == "px"
        assert np.isnan(ds.attrs["pixel_size"])


def test_provenance_attributes(full_run):
    s = RunStore.open(full_run["path"])
    stages = s.stages(0)
    assert list(stages) == ["trainer", "predict"]
    t = stages["trainer"]
    assert t["complete"] is True and t["seed"] == 7 and t["config"] == {"lr": 0.001, "steps": 3}
    assert t["used"] == [full_run["inp"]] and t["kind"] == "trainer" and t["plugin"] == "builtins"
    assert t["started"] <= t["finished"]
    assert stages["predict"]["seed"] is None
    a = s.attrs(full_run["mp"])
    assert a["generated_by"] == "/iterations/iter_000/predict"
    assert a["derived_from"] == [full_run["inp"], full_run["ens"]]
    assert s.attrs("/iterations/iter_000/predict/atoms")["derived_from"] == [full_run["mp"]]
    assert s.attrs("/iterations/iter_000/predict/scores")["derived_from"] == []


def test_reads_round_trip(full_run):
    s = RunStore.open(full_run["path"])
    base = "/iterations/iter_000/predict"
    np.testing.assert_array_equal(s.read_image(full_run["mp"]), full_run["probs"])
    np.testing.assert_array_equal(s.read_image(f"{base}/member_probabilities"), full_run["probs"])  # group path
    t = s.read_table(f"{base}/atoms")
    for col, values in full_run["table"].to_columns().items():
        np.testing.assert_array_equal(getattr(t, col), values)
    assert t.class_names == ("C", "Si")
    assert s.read_json(f"{base}/report") == {"reasons": ["a", "b"], "value": 1.5, "code": "__import__('os')"}
    np.testing.assert_array_equal(s.read_array(f"{base}/criteria/dice"), [1.0, 2.0])
    np.testing.assert_array_equal(s.read_array(f"{base}//scores"), [0.5, 0.25])
    spec, arrays = s.read_arrays(full_run["ens"])
    want_spec, want = FakeEnsemble(2).to_arrays()
    assert spec == json.loads(json.dumps(want_spec)) and list(arrays) == list(want)
    for k in want:
        np.testing.assert_array_equal(arrays[k], want[k])
        assert arrays[k].dtype == want[k].dtype
    with pytest.raises(StoreError, match="holds nothing"):
        s.read_array(f"{base}/nope")
    with pytest.raises(StoreError, match="not an atom table"):
        s.read_table(base)
    assert s.read_summary() == [{"iteration": 0, "n_atoms": 3}]


def test_members_superseded_by_ensemble(full_run):
    s = RunStore.open(full_run["path"])
    assert not s.has("/iterations/iter_000/trainer/members")
    assert s.read_members(0) == {}


def test_tree_lists_stages_and_datasets(full_run):
    s = RunStore.open(full_run["path"])
    text = s.tree()
    for needle in ("elit-run", "config  sha256", "frames  (2, 40, 48)", "iteration 0", "trainer: dummy",
                   "seed 7", "complete", "member_probabilities/member_probabilities  (2, 2, 1, 40, 48)",
                   "atom table, 3 atoms, classes C, Si", "ensemble/  6 arrays", "criteria/dice", "summary  1"):
        assert needle in text, needle
    assert "provenance" not in text and "metadata/" not in text
    verbose = s.tree(verbose=True)
    assert '"lr":0.001' in verbose and "derived from /inputs/frames/frames" in verbose
    assert "ensemble/member_001/conv.weight" in verbose


def test_file_holds_no_pickles_or_opaque_types(full_run):
    """Every dataset and attribute is a number, bool, string or an HDF5 dimension-scale reference."""
    allowed_refs = {"DIMENSION_LIST", "REFERENCE_LIST"}
    problems = []

    def check_dtype(where, dt):
        if dt.kind == "V" and dt.names is None:
            problems.append(f"{where}: opaque {dt}")
        if dt.kind == "O" and h5py.check_string_dtype(dt) is None:
            problems.append(f"{where}: object dtype {dt}")

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            check_dtype(name, obj.dtype)
        for key in obj.attrs:
            if key in allowed_refs:
                continue
            value = obj.attrs[key]
            dt = obj.attrs.get_id(key).dtype
            check_dtype(f"{name}@{key}", dt)
            if isinstance(value, bytes) and value[:1] == b"\x80":
                problems.append(f"{name}@{key}: looks like a pickle")

    with h5py.File(full_run["path"], "r") as f:
        f.visititems(visit)
    assert problems == []
    raw = full_run["path"].read_bytes()
    for marker in (b"\x80\x04\x95", b"\x80\x05\x95", b"cnumpy.core", b"_reconstruct", b"c__builtin__"):
        assert marker not in raw, marker
    assert b"__import__('os')" in raw  # strings are stored as data, never evaluated


# ------------------------------------------------------------------ stage life cycle
def test_stage_exception_writes_nothing(store):
    with pytest.raises(RuntimeError):
        with store.stage(0, "selector", info()) as st:
            st.add_array("scores", np.ones(3))
            raise RuntimeError("boom")
    assert not store.has("/iterations/iter_000/selector")
    assert not Path(str(store.path) + ".tmp").exists()
    with store.stage(0, "selector", info()) as st:  # can start again
        st.add_array("scores", np.ones(3))
    assert store.stage_complete(0, "selector")


def test_complete_stage_is_refused_then_redone_after_delete(store):
    with store.stage(2, "refiner", info()) as st:
        st.add_array("x", np.ones(2))
    assert store.iterations() == [2]
    with pytest.raises(StoreError, match="already complete"):
        store.stage(2, "refiner", info())
    store.delete_stage(2, "refiner")
    assert not store.stage_complete(2, "refiner")
    with store.stage(2, "refiner", info()) as st:
        st.add_array("y", np.ones(2))
    assert store.has("/iterations/iter_002/refiner/y") and not store.has("/iterations/iter_002/refiner/x")


def test_one_stage_at_a_time_and_only_inside_with(store):
    writer = store.stage(0, "trainer", info())
    with pytest.raises(StoreError, match="not open"):
        writer.add_array("x", np.ones(2))
    with writer as st:
        with pytest.raises(StoreError, match="still open"):
            store.stage(0, "selector", info())
        st.add_array("x", np.ones(2))
    with pytest.raises(StoreError, match="not open"):
        writer.add_array("late", np.ones(2))


def test_stage_arrays_are_copied_when_added(store):
    data = np.zeros(4)
    with store.stage(0, "selector", info()) as st:
        p = st.add_array("scores", data)
        data[:] = 9
    np.testing.assert_array_equal(store.read_array(p), np.zeros(4))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda st: st.add_array("bad name", np.ones(2)), "not allowed"),
        (lambda st: st.add_array("members", np.ones(2)), "reserved"),
        (lambda st: st.add_array("obj", np.array([{}], dtype=object)), "cannot be stored"),
        (lambda st: st.add_image("img", np.ones((2, 16, 16)), ["row", "col"]), "3 axes but 2 dims"),
        (lambda st: st.add_image("img", np.ones((16, 16)), ["row", "row"]), "distinct"),
        (lambda st: st.add_image("img", np.ones((16, 16)), ["row", "col"], data_type="PICTURE"), "data_type"),
        (lambda st: st.add_image("img", np.ones((16, 16)), ["row", "col"], pixel_size=-1), "positive"),
        (lambda st: st.add_image("img", np.ones((16, 16)) * 1j, ["row", "col"]), "real number"),
        (lambda st: st.add_array("x", np.ones(2), derived_from=["relative/path"]), "absolute"),
        (lambda st: st.add_table("t", {"frame": []}), "AtomTable"),
        (lambda st: st.add_json("j", {"x": object()}), "JSON"),
        (lambda st: st.add_ensemble(type("E", (), {"to_arrays": lambda self: ({}, {"a/../b": np.ones(1)})})()), "key"),
        (lambda st: st.add_member(-1, FakeMember(0)), "non-negative"),
    ],
)
def test_bad_additions_are_refused(store, call, message):
    with store.stage(0, "trainer", info()) as st:
        with pytest.raises(StoreError, match=message):
            call(st)


def test_duplicate_and_clashing_names(store):
    with store.stage(0, "selector", info()) as st:
        st.add_array("criteria/dice", np.ones(2))
        with pytest.raises(StoreError, match="clash"):
            st.add_array("criteria", np.ones(2))
        with pytest.raises(StoreError, match="clash"):
            st.add_json("criteria/dice", {})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"plugin": "x"}, "needs a 'name'"),
        ({**INFO, "colour": "red"}, "unknown keys"),
        ({**INFO, "seed": 1.5}, "integer"),
        ({**INFO, "config": [1]}, "must be a dict"),
        ({**INFO, "used": ["no-slash"]}, "absolute"),
    ],
)
def test_bad_stage_info(store, bad, message):
    with pytest.raises(StoreError, match=message):
        store.stage(0, "trainer", bad)


@pytest.mark.parametrize("iteration, kind", [(-1, "trainer"), (0, "Trainer"), (0, "../x"), (True, "trainer")])
def test_bad_stage_address(store, iteration, kind):
    with pytest.raises(StoreError):
        store.stage(iteration, kind, info())


def test_dangling_derived_from_is_refused_at_commit(store):
    with pytest.raises(StoreError, match="does not hold"):
        with store.stage(0, "selector", info()) as st:
            st.add_array("x", np.ones(2), derived_from=["/inputs/missing/missing"])
    assert not store.has("/iterations/iter_000/selector")


def test_large_stage_flushes_early_but_completes_once(store, monkeypatch):
    monkeypatch.setattr(h5store, "FLUSH_ABOVE_BYTES", 1000)
    with store.stage(0, "simulator", info()) as st:
        st.add_array("a", np.zeros(200))  # 1600 bytes: flushed now, stage still unfinished
        assert store.has("/iterations/iter_000/simulator/a")
        assert not store.stage_complete(0, "simulator")
        st.add_array("b", np.ones(3), derived_from=["/iterations/iter_000/simulator/a"])
    assert store.stage_complete(0, "simulator")
    np.testing.assert_array_equal(store.read_array("/iterations/iter_000/simulator/b"), np.ones(3))


# ------------------------------------------------------------------ members and resume
def test_members_are_durable_at_once_and_resume(store):
    with pytest.raises(KeyboardInterrupt):
        with store.stage(0, "trainer", info()) as st:
            st.add_member(0, FakeMember(10))
            # visible to another reader before the stage ends
            assert set(RunStore.open(store.path).read_members(0)) == {0}
            st.add_member(2, FakeMember(12))
            raise KeyboardInterrupt
    assert store.stages(0)["trainer"]["complete"] is False
    members = store.read_members(0)
    assert sorted(members) == [0, 2]
    spec, arrays = members[2]
    assert spec["seed"] == 12 and spec["metrics"]["nan"] is None
    np.testing.assert_array_equal(arrays["conv.weight"], FakeMember(12).to_arrays()[1]["conv.weight"])
    assert list(arrays) == ["conv.weight", "bn.num_batches_tracked", "history/train_loss"]
    assert sorted(store.read_members(0, info=info())) == [0, 2]
    assert store.read_members(0, info=info(seed=8)) == {}
    assert "UNFINISHED" in store.tree()
    # resume with the same settings keeps members, replaces the rest
    with store.stage(0, "trainer", info()) as st:
        st.add_member(1, FakeMember(11))
        assert sorted(store.read_members(0)) == [0, 1, 2]
        st.add_array("log", np.ones(1))
    assert store.stage_complete(0, "trainer")
    assert store.read_members(0) == {}  # complete: nothing to resume
    assert store.has("/iterations/iter_000/trainer/members/member_002")  # no ensemble added: members stay


def test_ensemble_links_member_weights_instead_of_copying(store):
    members = [FakeMember(i, size=100_000) for i in range(4)]  # 400 kB of weights each
    ens = FakeEnsemble(0)
    ens.members = members
    with store.stage(0, "trainer", info()) as st:
        for i, m in enumerate(members):
            st.add_member(i, m)
        st.add_ensemble(ens)
    assert store.path.stat().st_size < 1.4 * 4 * 400_000  # stored once, not twice
    _, arrays = store.read_arrays("/iterations/iter_000/trainer/ensemble")
    np.testing.assert_array_equal(arrays["member_003/conv.weight"], members[3].to_arrays()[1]["conv.weight"])


def test_large_spec_attribute(store):
    class Big:
        def to_arrays(self):
            return {"notes": "x" * 200_000}, {"w": np.ones(2)}

    with store.stage(0, "trainer", info()) as st:
        st.add_member(0, Big())
    spec, _ = store.read_arrays("/iterations/iter_000/trainer/members/member_000")
    assert spec["notes"] == "x" * 200_000


def test_resume_with_other_settings_drops_members(store):
    with pytest.raises(RuntimeError):
        with store.stage(0, "trainer", info()) as st:
            st.add_member(0, FakeMember(0))
            raise RuntimeError
    with store.stage(0, "trainer", info(config={"lr": 0.1})) as st:
        st.add_member(5, FakeMember(5))
        assert sorted(store.read_members(0)) == [5]
    assert store.stages(0)["trainer"]["config"] == {"lr": 0.1}


def test_discard_from(store):
    for kind in ("simulator", "trainer", "selector", "predict"):
        with store.stage(0, kind, info()) as st:
            st.add_array("x", np.ones(1))
        time.sleep(0.002)
    with store.stage(1, "refiner", info()) as st:
        st.add_array("x", np.ones(1))
    store.write_summary([{"iteration": 0}])
    gone = store.discard_from(0, "selector")
    assert gone[0] == "/iterations/iter_000/selector"
    assert set(gone) == {"/iterations/iter_000/selector", "/iterations/iter_000/predict", "/iterations/iter_001",
                         "/summary"}
    assert list(store.stages(0)) == ["simulator", "trainer"] and store.iterations() == [0]
    assert store.discard_from(0, "selector") == []


def test_missing_plugins(store):
    with store.stage(0, "trainer", info(name="fancy", plugin="extra", package="elit-extra", plugin_version="2.0")) as st:
        st.add_array("x", np.ones(1))
    with store.stage(0, "selector", info(name="known")) as st:
        st.add_array("x", np.ones(1))
    with store.stage(0, "predict", info(name="ensemble-predict")) as st:  # not a stage kind: never "missing"
        st.add_array("x", np.ones(1))

    class Registry:
        stages = {("selector", "known"): object()}

    assert store.missing_plugins(Registry()) == ["trainer 'fancy' (plugin extra, package elit-extra 2.0)"]


def test_real_ensemble_round_trip(store):
    ensemble_mod = pytest.importorskip("elit.ensemble")
    if not hasattr(ensemble_mod.Ensemble, "from_arrays"):
        pytest.skip("elit.ensemble has no from_arrays yet")
    Member, Ensemble = ensemble_mod.Member, ensemble_mod.Ensemble
    rng = np.random.default_rng(3)
    members = [Member(state={"conv.weight": rng.random((2, 1, 3, 3), dtype=np.float32),
                             "bn.num_batches_tracked": np.array(4, dtype=np.int64)},
                      seed=i, history={"train_loss": [1.0, 0.5]}, metrics={"iou/atom": 0.75, "bad": float("nan")})
               for i in range(2)]
    ens = Ensemble("compact-unet", {"filters": 4}, 1, 1, ("C",), members, 0.2, "sigmoid", metadata={"k": 1})
    with store.stage(0, "trainer", info()) as st:
        st.add_member(0, members[0])
        st.add_ensemble(ens)
    back = store.read_ensemble(0)
    assert isinstance(back, Ensemble) and len(back) == 2
    assert back.class_names == ("C",) and back.pixel_size == 0.2 and back.metadata == {"k": 1}
    for a, b in zip(members, back.members):
        assert a.seed == b.seed and a.history == b.history
        assert set(a.state) == set(b.state)
        for k in a.state:
            np.testing.assert_array_equal(a.state[k], b.state[k])
    with pytest.raises(StoreError, match="no ensemble"):
        store.read_ensemble(1)


# ------------------------------------------------------------------ crash safety
CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from elit.store import RunStore

    class M:
        def __init__(self, i): self.i = i
        def to_arrays(self): return {"i": self.i}, {"w": np.full(150_000, self.i, dtype=np.float32)}

    store = RunStore.create(sys.argv[1], overwrite=True)
    info = {"name": "t", "seed": 1}
    with store.stage(0, "simulator", info) as st:
        st.add_array("images", np.arange(1000.0))
    print("stage-done", flush=True)
    with store.stage(0, "trainer", info) as st:
        for i in range(10_000):
            st.add_member(i, M(i))
            print("member", i, flush=True)
    """
)


@pytest.mark.parametrize("kills_after", [1, 4])
def test_sigkill_mid_stage_leaves_readable_file(tmp_path, kills_after):
    """Kill a writer at an arbitrary point in its commit loop: the file opens with every committed member."""
    path = tmp_path / "run.h5"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    seen = -1
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if line.startswith("member"):
            seen = int(line.split()[1])
            if seen >= kills_after:
                time.sleep(0.003 * kills_after)  # land somewhere inside the next commit
                break
        assert time.monotonic() < deadline, "child too slow"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store = RunStore.open(path, mode="a")  # also removes a half-written .tmp
    assert store.stage_complete(0, "simulator")
    np.testing.assert_array_equal(store.read_array("/iterations/iter_000/simulator/images"), np.arange(1000.0))
    assert store.stages(0)["trainer"]["complete"] is False
    members = store.read_members(0)
    assert set(range(seen + 1)) <= set(members)  # every member reported committed is there
    for i, (spec, arrays) in members.items():
        assert spec == {"i": i} and arrays["w"][0] == i
    assert not Path(str(path) + ".tmp").exists()


# ---------------------------------------------------------------- part files and precision
def test_large_images_go_to_part_files_and_read_back(store, monkeypatch):
    import elit.store.parts as parts
    from pyNSID.io.hdf_utils import read_h5py_dataset

    monkeypatch.setattr(parts, "PART_ABOVE_BYTES", 64 << 10)
    big = np.random.default_rng(0).random((4, 1, 96, 96)).astype(np.float32)  # 144 KiB
    with store.stage(0, "predict", info()) as st:
        p_big = st.add_image("mean", big, ["frame", "class", "row", "col"], pixel_size=0.2)
        p_small = st.add_image("small", big[:1, :, :8, :8], ["frame", "class", "row", "col"])
    folder = store.path.with_name(store.path.name + ".parts")
    assert len(list(folder.iterdir())) == 1
    assert store.path.stat().st_size < big.nbytes  # the run file holds a link, not the map
    np.testing.assert_array_equal(store.read_image(p_big), big)
    np.testing.assert_array_equal(store.read_image(p_small), big[:1, :, :8, :8])
    with h5py.File(store.path, "r") as f:
        assert isinstance(f.get("/iterations/iter_000/predict/mean", getlink=True), h5py.ExternalLink)
        ds = f[p_big]
        assert ds.compression == "gzip" and ds.chunks is not None
        sid = read_h5py_dataset(ds)  # pycroscopy tools read a linked image as any other
        assert sid.shape == big.shape and sid.quantity == "probability"
    assert "mean" in store.tree() and "(4, 1, 96, 96)" in store.tree()
    store.delete_stage(0, "predict")
    assert list(folder.iterdir()) == []  # the stage's part went with it


def test_commit_cost_does_not_grow_with_the_parts(store, monkeypatch):
    import elit.store.parts as parts

    monkeypatch.setattr(parts, "PART_ABOVE_BYTES", 64 << 10)
    sizes = []
    for it in range(3):
        with store.stage(it, "predict", info()) as st:
            st.add_image("maps", np.ones((8, 128, 128), np.float32) * it, ["frame", "row", "col"])
        sizes.append(store.path.stat().st_size)
    assert sizes[-1] - sizes[0] < 64 << 10  # 512 KiB of maps per stage, a few KiB of run file


def test_unlinked_parts_are_swept_by_the_next_writer(store):
    folder = store.path.with_name(store.path.name + ".parts")
    folder.mkdir()
    (folder / "deadbeef.h5").write_bytes(b"left by a crash")
    (folder / "feedface.h5.tmp").write_bytes(b"half written")
    RunStore.open(store.path, mode="r")
    assert len(list(folder.iterdir())) == 2  # readers touch nothing
    RunStore.open(store.path, mode="a")
    assert list(folder.iterdir()) == []


def test_quantized_maps_round_trip():
    from elit.errors import ConfigError
    from elit.store.precision import ProbabilityMaps, dequantize, quantization_label, quantize

    p = np.random.default_rng(1).random((3, 2, 1, 5, 5)).astype(np.float32)
    q = quantize(p)
    assert q.dtype == np.uint8 and np.abs(dequantize(q) - p).max() <= 0.5 / 255 + 1e-7
    np.testing.assert_array_equal(quantize(dequantize(q)), q)  # quantizing again changes nothing
    assert quantize(np.array([-0.2, 1.3])).tolist() == [0, 255]
    maps = ProbabilityMaps.empty(p.shape)
    kept = maps.put(slice(0, 2), p)
    np.testing.assert_array_equal(kept, dequantize(q))
    np.testing.assert_array_equal(np.asarray(maps), maps[:, :])
    assert maps[:, 1:].shape == (3, 1, 1, 5, 5) and maps.nbytes == p.size
    assert quantization_label(np.uint8) == "uint8/255" and quantization_label(np.float32) == ""
    assert quantize(p, "float16").dtype == np.float16
    with pytest.raises(ConfigError, match="precision"):
        quantize(p, "int4")


def test_read_image_dequantizes_stored_probabilities(store):
    from elit.store.precision import quantize

    p = np.linspace(0, 1, 2 * 16).reshape(2, 1, 4, 4).astype(np.float32)
    with store.stage(0, "predict", info()) as st:
        path = st.add_image("mean", quantize(p), ["frame", "class", "row", "col"], quantization="uint8/255")
    assert store.read_image(path, raw=True).dtype == np.uint8
    got = store.read_image(path)
    assert got.dtype == np.float32 and np.abs(got - p).max() <= 0.5 / 255 + 1e-7


def test_ensemble_mean_std_of_quantized_maps_equals_the_array_path():
    from elit.ensemble import Ensemble
    from elit.store.precision import ProbabilityMaps, quantize

    q = quantize(np.random.default_rng(2).random((4, 40, 1, 6, 6)))
    maps = ProbabilityMaps(q)
    for members in (None, [1, 3]):
        a = Ensemble.mean_std(np.asarray(maps), members)
        b = Ensemble.mean_std(maps, members)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_whole_number_inputs_are_stored_as_integers_and_read_back_exactly(tmp_path):
    """Counts given as floats take uint8/uint16 in the file; read_input gives the same floats back."""
    import h5py

    counts = np.random.default_rng(0).poisson(3.0, (2, 16, 16)).astype(np.float32)
    counts[0, 0, 0] = 300.0
    fractional = counts + 0.5
    s = RunStore.create(tmp_path / "r.h5")
    s.write_input("frames", counts, 0.1)
    s.write_input("other", fractional, 0.1)
    back, _, _ = s.read_input("frames")
    assert back.dtype == np.float32 and np.array_equal(back, counts)
    again, _, _ = s.read_input("other")
    assert again.dtype == np.float32 and np.array_equal(again, fractional)
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["inputs/frames/frames"].dtype == np.uint16 and f["inputs/other/other"].dtype == np.float32
