"""The Pipeline end to end with small stages: two iterations plus a multi-class one, one HDF5 file."""

import h5py
import numpy as np
import pytest
from pydantic import Field

import elit
from elit.data import AtomTable, Refinement, TrainingSet
from elit.pipeline import Pipeline, derive_seed
from elit.testing import tiny_config, toy_frames, toy_training_set

TINY = {**tiny_config(max_iterations=1, multiclass=True), "classifier": {"name": "intensity"}}


class TruthRefiner(elit.Refiner):
    """Test refiner: masks from the toy truth, classes taken from the atoms it is given."""

    name = "truth"
    version = "1"
    description = "test refiner"

    class Config(elit.StageConfig):
        radius: float = Field(2.0, gt=0, description="disc radius in px")

    def refine(self, frames, predictions, selection, atoms, rng, pixel_size):
        ts = toy_training_set(len(frames), frames.shape[-1])
        names = atoms.class_names
        if len(names) > 1:
            labels = ts.labels.copy()
            labels[labels == 1] = 1 + (rng.random() < 2)  # every atom pixel becomes the last class
            ts = TrainingSet(ts.images, labels, names, pixel_size)
        return Refinement(ts, atoms, AtomTable.empty(names), list(range(len(frames))), ["test"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run.h5"
    frames, _ = toy_frames(2, 48)
    seen = []
    pipe = Pipeline(TINY, refiner=TruthRefiner())
    result = pipe.run(frames * 100 + 7, store=path, on_iteration=lambda s, a: seen.append(s.iteration))
    return path, result, seen


def test_runs_every_iteration(run):
    path, result, seen = run
    assert seen == [0, 1, 2]
    assert [s.kind for s in result.iterations] == ["simulated", "experimental", "multi-class"]
    assert result.mean.shape[0] == 2 and result.mean.shape[1] == 2  # two frames, two classes after multi-class
    assert result.path == path


def test_file_holds_every_stage_with_provenance(run):
    path, _, _ = run
    expected = {
        0: {"conditions", "simulator", "augmenter", "trainer", "selector", "predict"},
        1: {"refiner", "trainer", "selector", "predict", "guard"},
        2: {"classifier", "refiner", "trainer", "selector", "predict", "guard"},
    }
    with h5py.File(path, "r") as f:
        assert "config" in f and "environment" in f and "inputs" in f
        for it, kinds in expected.items():
            group = f[f"iterations/iter_{it:03d}"]
            assert set(group) == kinds
            for kind in kinds:
                attrs = group[kind].attrs
                for key in ("name", "plugin", "config", "seed", "started", "finished"):
                    assert key in attrs, f"iter {it} {kind} lacks {key}"
                assert bool(attrs["complete"])
        assert f["iterations/iter_001/refiner"].attrs["plugin"] == "python"
        assert f["iterations/iter_000/simulator"].attrs["plugin"] == "builtins"
        assert f["iterations/iter_000/conditions"].attrs["name"] == "estimate-conditions"
        assert f["iterations/iter_001/guard"].attrs["name"] == "guard"


def test_atoms_are_stored_once_and_read_back_in_working_pixels(run):
    from elit.pipeline import read_working_atoms
    from elit.store import RunStore

    path, result, _ = run
    store = RunStore.open(path)
    for s in result.iterations:
        group = f"/iterations/iter_{s.iteration:03d}/predict"
        assert not store.has(f"{group}/atoms_working")
        working = read_working_atoms(store, group)
        factor = store.read_json(f"{group}/working_scale")["factor"]
        assert factor == pytest.approx(result.input_pixel_size / result.working_pixel_size)
        assert len(working) == s.n_atoms
        on_input = store.read_table(f"{group}/atoms")
        np.testing.assert_allclose(working.scaled(1.0 / factor).positions(), on_input.positions(), atol=1e-9)


def test_long_movies_are_prepared_and_combined_in_chunks_with_the_same_result(run):
    """Frames resampled 16 at a time and mean/std made per chunk equal the whole-stack computation."""
    from elit.config import load_config
    from elit.pipeline import PREPARE_CHUNK, combine_members, prepare_frames
    from elit.scale import normalize, resample
    from elit.store.precision import ProbabilityMaps, quantize

    _, result, _ = run
    rng = np.random.default_rng(0)
    frames = rng.poisson(5.0, size=(PREPARE_CHUNK + 5, 48, 40)).astype(np.float32)
    scale = load_config(overrides=["scale.pixel_size=0.2"]).scale
    working, px, factor = prepare_frames(frames, 0.1, scale)
    np.testing.assert_array_equal(working, normalize(resample(frames, factor)))
    ens = result.ensemble
    predicted = ens.predict(working)
    maps = ProbabilityMaps.empty(predicted.shape)
    maps.put(slice(None), predicted)
    mean, std, atoms = combine_members(ens, maps, None, 0.5, chunk=4)
    whole_mean, whole_std = ens.mean_std(maps)
    assert mean.dtype == np.uint8  # kept in the maps' precision, never as a float32 movie
    np.testing.assert_array_equal(mean, quantize(whole_mean, "uint8"))
    np.testing.assert_array_equal(std, quantize(whole_std, "uint8"))
    _, _, at_once = combine_members(ens, maps, None, 0.5, chunk=len(working))
    np.testing.assert_array_equal(atoms.positions(), at_once.positions())


def test_conditions_are_measured_and_applied(run):
    """The frames' noise is measured and the augmenter's shot noise is set to it, with provenance."""
    import json

    path, _, _ = run
    with h5py.File(path, "r") as f:
        raw = f["iterations/iter_000/conditions/conditions"][()]
        record = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        augmenter = json.loads(f["iterations/iter_000/augmenter"].attrs["config"])
    measured = record["measured"]
    assert measured["dose"] > 0 and len(measured["frames"]) == 2
    assert augmenter["poisson_probability"] == 1.0
    low, high = augmenter["dose_range"]
    assert low <= measured["dose"] * 10 and high >= measured["dose"] / 10
    assert tuple(record["augmenter_params"]["dose_range"]) == (low, high)


def test_seeds_are_derived_per_stage(run):
    path, _, _ = run
    with h5py.File(path, "r") as f:
        assert int(f["iterations/iter_000/trainer"].attrs["seed"]) == derive_seed(3, 0, "trainer")
        assert int(f["iterations/iter_001/trainer"].attrs["seed"]) == derive_seed(3, 1, "trainer")
    assert derive_seed(3, 0, "trainer") != derive_seed(3, 1, "trainer")


def test_sidpy_reads_images_with_dimensions(run):
    path, _, _ = run
    from pyNSID.io.hdf_utils import read_h5py_dataset

    with h5py.File(path, "r") as f:
        ds = read_h5py_dataset(f["iterations/iter_001/predict/mean/mean"])
        assert ds.ndim == 4
        units = [ds._axes[i].units for i in range(ds.ndim)]
        assert "Å" in units[-1] or "A" in units[-1]


def test_no_pickles_in_the_file(run):
    path, _, _ = run
    data = path.read_bytes()
    assert b"\x80\x04\x95" not in data and b"cnumpy" not in data

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            assert obj.dtype.kind != "O" or h5py.check_string_dtype(obj.dtype), f"{name} holds objects"

    with h5py.File(path, "r") as f:
        f.visititems(visit)


def test_ensemble_reloads_with_identical_predictions(run):
    path, result, _ = run
    from elit.store import RunStore

    ens = RunStore.open(path, "r").read_ensemble(2)
    frames = np.random.default_rng(0).random((1, 40, 40)).astype(np.float32)
    assert np.array_equal(ens.predict(frames), result.ensemble.predict(frames))


def test_select_by_hand_continues_the_run(tmp_path):
    from elit.results import continue_with_members
    from elit.store import RunStore

    path = tmp_path / "sel.h5"
    config = {**TINY, "iterations": {"max_iterations": 0, "n_simulated": 4, "multiclass": False}}
    Pipeline(config).run(toy_frames(2, 48)[0], store=path)
    result = continue_with_members(path, [1])
    store = RunStore.open(path, "r")
    assert store.read_config()["selector"] == {"name": "manual", "params": {"members": [1]}}
    assert store.stages(0)["selector"]["name"] == "manual"
    assert result.iterations[0].members == [1]
    with pytest.raises(Exception, match="do not exist"):
        continue_with_members(path, [7])


def test_report_and_gallery_figures(run, tmp_path):
    from elit.report import member_gallery, write_report

    path, _, _ = run
    paths = write_report(path, tmp_path / "report", html=True)
    names = {p.name for p in paths}
    assert {"members_iter000.png", "atoms_last.png", "uncertainty_last.png", "detection.png", "report.html"} <= names
    for p in paths:
        assert p.stat().st_size > 1000
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("<img ") == sum(1 for p in paths if p.suffix == ".png")
    assert "Provenance" in html and "multi-swa" in html
    png = member_gallery(path, tmp_path / "g.png", iteration=0, frames=[1])
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(Exception, match="do not exist"):
        member_gallery(path, tmp_path / "g.png", iteration=0, frames=[9])


def test_locate_classify_names_atoms_and_trains_one_class(tmp_path):
    """With ``locate.classify`` every iteration's atoms get the classifier's classes on the raw frames,
    while the loop still trains a single-class ensemble on them."""
    from elit.results import read_atoms

    seen_classes = []

    class RecordingRefiner(TruthRefiner):
        name = "recording"

        def refine(self, frames, predictions, selection, atoms, rng, pixel_size):
            seen_classes.append(tuple(atoms.class_names))
            return super().refine(frames, predictions, selection, atoms, rng, pixel_size)

    cfg = {**tiny_config(max_iterations=1), "classifier": {"name": "relative", "params": {"class_names": ["C", "Si"]}},
           "locate": {"classify": True}}
    frames, _ = toy_frames(2, 48)
    result = Pipeline(cfg, refiner=RecordingRefiner()).run(frames * 100 + 7, store=tmp_path / "r.h5")
    trained = result.ensemble.class_names
    assert len(trained) == 1 and trained != ("C", "Si") and result.mean.shape[1] == 1
    assert seen_classes == [trained]  # the refiner was given the ensemble's one class
    for it in (0, 1):
        atoms = read_atoms(tmp_path / "r.h5", it)
        assert atoms.class_names == ("C", "Si") and len(atoms) > 0
        assert atoms.class_probability is not None and np.all(np.isfinite(atoms.class_probability))
    again = Pipeline(cfg, refiner=RecordingRefiner()).stages["classifier"].classify(
        frames * 100 + 7, read_atoms(tmp_path / "r.h5"), 0.2)
    np.testing.assert_array_equal(again.class_index, result.atoms.class_index)


def test_predict_file_finishes_atoms_as_the_run_did(tmp_path):
    """`elit predict` with a run's last ensemble on the run's own frames gives the run's atoms: the same
    vacuum filter, fit on the raw frames and classes; its maps are predicted a chunk of frames at a time and
    kept in the run's precision, as the run's were."""
    from elit.results import predict_file, read_atoms
    from elit.store import RunStore

    cfg = {**tiny_config(max_iterations=1, guard=False),
           "classifier": {"name": "relative", "params": {"class_names": ["C", "Si"]}}, "locate": {"classify": True},
           "store": {"frames_per_chunk": 1}}
    frames, _ = toy_frames(2, 48)
    np.save(tmp_path / "f.npy", (frames * 100 + 7).astype(np.float32))
    Pipeline(cfg, refiner=TruthRefiner()).run(frames * 100 + 7, store=tmp_path / "r.h5")
    ran = read_atoms(tmp_path / "r.h5", 1)
    assert predict_file(tmp_path / "r.h5", str(tmp_path / "f.npy"), tmp_path / "p.h5", iteration=1,
                        pixel_size=0.2, device="cpu") == len(ran)
    again = read_atoms(tmp_path / "p.h5")
    assert again.class_names == ("C", "Si") and ran.row_refined is not None
    np.testing.assert_array_equal(again.frame, ran.frame)
    np.testing.assert_array_equal(again.class_index, ran.class_index)
    for name in ("row", "col", "row_refined", "col_refined"):  # both located on the same uint8 maps
        np.testing.assert_allclose(getattr(again, name), getattr(ran, name), atol=1e-9, err_msg=name)
    stored = RunStore.open(tmp_path / "p.h5", mode="r").read_image("/iterations/iter_000/predict/member_probabilities",
                                                                    raw=True)
    assert stored.dtype == np.uint8 and stored.shape[1] == 2
