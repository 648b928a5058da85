"""Bad input through the real command line: one clear ``elit: error:`` line, exit code 2, no traceback.

Every case calls :func:`elit.cli.main` as a user would.  Where a case is
*accepted* (integer or float16 data, channel-last stacks, NaNs with
``data.nan_policy=fill``), training is replaced by a stub so that only the
input boundary runs: the test then reads the input the run file stored.
No test here trains a network.
"""

from __future__ import annotations

import csv
import hashlib
import json

import h5py
import numpy as np
import pytest

from elit.cli import main
from elit.data import AtomTable
from elit.errors import ConfigError, ElitError, InputError, StoreError
from elit.readers import MAX_PIXELS, check_size, max_pixels_limit, npy_header_shape
from elit.store import RunStore

# Small enough that building the stages is quick; training never starts in this file.
TINY_YAML = """\
seed: 3
device: cpu
scale: {pixel_size: 0.2, input_pixel_size: 0.2}
iterations: {max_iterations: 1, n_simulated: 2, multiclass: false}
simulator: {name: graphene, params: {image_size: 48}}
augmenter: {name: standard, params: {crop_size: 32}}
architecture: {name: compact-unet, params: {base_filters: 4, depth: 2}}
trainer: {name: multi-swa, params: {n_members: 2, steps: 2, batch_size: 2, patch_size: 32, progress: false}}
selector: {name: auto, params: {k: 1}}
"""


# ---------------------------------------------------------------------- helpers
@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


def image(h=40, w=40, seed=0, dtype=np.float32):
    """A textured test image (never constant)."""
    rng = np.random.default_rng(seed)
    return (rng.random((h, w)) * 100).astype(dtype)


def save_npy(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array, allow_pickle=False)
    return path


def cli(capsys, *argv):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *fragments):
    """Exit code 2, the first stderr line is ``elit: error: ...`` naming the problem, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert lines, "no error message"
    assert lines[0].startswith("elit: error: "), err
    assert all(ln.startswith("elit: ") for ln in lines), err  # nothing unprefixed (no traceback, no library noise)
    assert len(lines) <= 2, f"expected one line (plus at most one hint line), got:\n{err}"
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), f"{fragment!r} not in {err!r}"


def run_on(capsys, cfg, data, out, *extra):
    return cli(capsys, "run", cfg, "--data", data, "--out", out, *extra)


@pytest.fixture
def no_training(monkeypatch):
    """Replace the ELIT loop by a stub: a run reads, checks and stores its input, then stops."""
    from elit import pipeline
    from elit.data import Selection

    def stub(self):
        return pipeline.RunResult(
            path=None, atoms=AtomTable.empty(), mean=np.zeros((1, 1, 1, 1)), std=np.zeros((1, 1, 1, 1)),
            ensemble=None, selection=Selection(members=[0], scores=np.ones(1)), iterations=[],
        )

    monkeypatch.setattr(pipeline._Runner, "run", stub)


def stored_input(path):
    frames, px, meta = RunStore.open(path).read_input("frames")
    return frames, meta


# ---------------------------------------------------------------------- pixel values
def test_nan_pixels_refused_by_default(tmp_path, capsys, cfg):
    img = image()
    img[3, 4] = np.nan
    out = tmp_path / "o.h5"
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "nan.npy", img), out)
    assert_user_error(code, err, "nan.npy", "NaN/Inf", "nan_policy")
    assert not out.exists()


def test_inf_pixels_refused_by_default(tmp_path, capsys, cfg):
    img = image()
    img[0, 0] = np.inf
    img[5, 5] = -np.inf
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "inf.npy", img), tmp_path / "o.h5")
    assert_user_error(code, err, "2 NaN/Inf pixel(s)")


def test_nan_pixels_filled_with_nan_policy_fill(tmp_path, capsys, cfg, no_training):
    img = image()
    img[3, 4] = np.nan
    img[7, 8] = np.inf
    out = tmp_path / "o.h5"
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "nan.npy", img), out, "--set", "data.nan_policy=fill")
    assert code == 0, err
    frames, meta = stored_input(out)
    assert np.isfinite(frames).all()
    finite = img[np.isfinite(img)]
    assert frames[0, 3, 4] == pytest.approx(np.median(finite))
    assert any("replaced 2 NaN/Inf" in note for note in meta["notes"])


def test_constant_image(tmp_path, capsys, cfg):
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "flat.npy", np.full((32, 32), 7.0)), tmp_path / "o.h5")
    assert_user_error(code, err, "constant")


def test_constant_frame_in_a_stack(tmp_path, capsys, cfg):
    stack = np.stack([image(), np.zeros((40, 40), np.float32)])
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "stack.npy", stack), tmp_path / "o.h5")
    assert_user_error(code, err, "frame(s) 1 are constant")


def test_empty_array(tmp_path, capsys, cfg):
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "empty.npy", np.zeros((0, 32))), tmp_path / "o.h5")
    assert_user_error(code, err, "empty")


def test_one_dimensional_array(tmp_path, capsys, cfg):
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "line.npy", np.arange(400.0)), tmp_path / "o.h5")
    assert_user_error(code, err, "1 dimensions")


def test_four_dimensional_array(tmp_path, capsys, cfg):
    data = np.random.default_rng(1).random((2, 3, 32, 32))
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "cube.npy", data), tmp_path / "o.h5")
    assert_user_error(code, err, "4 dimensions", "(N, H, W)")


def test_tiny_frames(tmp_path, capsys, cfg):
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "tiny.npy", image(8, 12)), tmp_path / "o.h5")
    assert_user_error(code, err, "8x12", "too small")


def test_complex_data(tmp_path, capsys, cfg):
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "c.npy", image().astype(np.complex64)), tmp_path / "o.h5")
    assert_user_error(code, err, "complex")


def test_pickled_object_array_is_not_loaded(tmp_path, capsys, cfg):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    code, _, err = run_on(capsys, cfg, path, tmp_path / "o.h5")
    assert_user_error(code, err, "pickle")


# ---------------------------------------------------------------------- size limits
def test_huge_frames_refused_from_the_npy_header_alone(tmp_path, capsys, cfg):
    """A header claiming 10^10 pixels over a file of a few bytes: refused before anything is allocated."""
    path = tmp_path / "huge.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)})
        fh.write(b"\0" * 64)
    assert npy_header_shape(path) == (100_000, 100_000)
    code, _, err = run_on(capsys, cfg, path, tmp_path / "o.h5")
    assert_user_error(code, err, "huge.npy", "10,000,000,000 pixels", "ELIT_MAX_PIXELS")
    assert not (tmp_path / "o.h5").exists()


def test_pixel_limit_is_configurable(tmp_path, capsys, cfg, monkeypatch):
    monkeypatch.setenv("ELIT_MAX_PIXELS", "1000")
    assert max_pixels_limit() == 1000
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "img.npy", image(40, 40)), tmp_path / "o.h5")
    assert_user_error(code, err, "1,600 pixels", "limit of 1,000")


def test_pixel_limit_default_and_function():
    assert max_pixels_limit() == MAX_PIXELS == 2**30
    check_size((4, 1024, 1024))  # 4 Mpx: fine
    with pytest.raises(InputError, match="exceed the limit"):
        check_size((2**16, 2**15))
    with pytest.raises(InputError, match="exceed the limit of 99"):
        check_size((10, 10), max_pixels=99)


def test_bad_pixel_limit_setting(tmp_path, capsys, cfg, monkeypatch):
    monkeypatch.setenv("ELIT_MAX_PIXELS", "lots")
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "img.npy", image()), tmp_path / "o.h5")
    assert_user_error(code, err, "ELIT_MAX_PIXELS='lots'")


# ---------------------------------------------------------------------- accepted data types and layouts
@pytest.mark.parametrize("dtype", [np.uint16, np.float16, np.int32, np.uint8])
def test_integer_and_float16_inputs_accepted(tmp_path, capsys, cfg, no_training, dtype):
    img = image(dtype=dtype)
    out = tmp_path / "o.h5"
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "img.npy", img), out)
    assert code == 0, err
    frames, meta = stored_input(out)
    assert frames.dtype == np.float32 and frames.shape == (1, 40, 40)
    np.testing.assert_array_equal(frames[0], img.astype(np.float32))


def test_channel_last_stack_transposed_with_a_note(tmp_path, capsys, cfg, no_training, caplog):
    stack = np.stack([image(seed=s) for s in range(3)], axis=-1)  # (40, 40, 3) float: frames stored last
    out = tmp_path / "o.h5"
    with caplog.at_level("INFO", logger="elit"):
        code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "hwn.npy", stack), out)
    assert code == 0, err
    frames, meta = stored_input(out)
    assert frames.shape == (3, 40, 40)
    np.testing.assert_array_equal(frames[2], stack[..., 2])
    assert any("channel-last" in n for n in meta["notes"])
    assert "channel-last" in caplog.text  # the user is told, not only the file


# ---------------------------------------------------------------------- paths and files
def test_nonexistent_path(tmp_path, capsys, cfg):
    code, _, err = run_on(capsys, cfg, tmp_path / "nothere.npy", tmp_path / "o.h5")
    assert_user_error(code, err, "nothere.npy", "no such file")


def test_directory_as_input(tmp_path, capsys, cfg):
    code, _, err = run_on(capsys, cfg, tmp_path, tmp_path / "o.h5")
    assert_user_error(code, err, "is a folder")


def test_truncated_hdf5(tmp_path, capsys, cfg):
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as f:
        f["image"] = image(64, 64)
    data = good.read_bytes()
    bad = tmp_path / "trunc.h5"
    bad.write_bytes(data[: len(data) // 2])
    code, _, err = run_on(capsys, cfg, bad, tmp_path / "o.h5")
    assert_user_error(code, err, "trunc.h5", "truncated")


def test_non_hdf5_file_named_h5(tmp_path, capsys, cfg):
    fake = tmp_path / "fake.h5"
    fake.write_text("this is not HDF5\n")
    code, _, err = run_on(capsys, cfg, fake, tmp_path / "o.h5")
    assert_user_error(code, err, "fake.h5 is not an HDF5 file")


def test_hdf5_without_an_image(tmp_path, capsys, cfg):
    path = tmp_path / "table.h5"
    with h5py.File(path, "w") as f:
        f["counts"] = np.arange(10)
        f.attrs["note"] = "no image here"
    code, _, err = run_on(capsys, cfg, path, tmp_path / "o.h5")
    assert_user_error(code, err, "holds no image")


def test_hdf5_key_that_is_missing(tmp_path, capsys, cfg):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["data/haadf"] = image(64, 64)
    code, _, err = run_on(capsys, cfg, f"{path}:/data/nope", tmp_path / "o.h5")
    assert_user_error(code, err, "/data/nope", "/data/haadf")


def test_unknown_suffix(tmp_path, capsys, cfg):
    path = tmp_path / "scan.xyz"
    path.write_bytes(b"\0" * 100)
    code, _, err = run_on(capsys, cfg, path, tmp_path / "o.h5")
    assert_user_error(code, err, "no reader for suffix .xyz", ".npy")


# ---------------------------------------------------------------------- configs
def test_unknown_stage_name(tmp_path, capsys, cfg):
    code, _, err = cli(capsys, "run", cfg, "--set", "trainer.name=nope", "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "no trainer named 'nope'", "multi-swa")


def test_stage_of_another_kind(tmp_path, capsys, cfg):
    code, _, err = cli(capsys, "run", cfg, "--set", "selector.name=multi-swa", "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "no selector named 'multi-swa'")


def test_unknown_top_level_field(tmp_path, capsys, cfg):
    code, _, err = cli(capsys, "run", cfg, "--set", "bogus=1", "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "bogus: unknown field", "top-level fields are")


def test_unknown_stage_param_in_config_file(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text(TINY_YAML.replace("n_members: 2", "n_member: 2"))
    code, _, err = cli(capsys, "run", path, "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "trainer 'multi-swa'", "n_member: unknown field", "accepts: n_members")


def test_wrong_typed_field(tmp_path, capsys, cfg):
    code, _, err = cli(capsys, "run", cfg, "--set", "seed=abc", "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "seed", "valid integer", "'abc'")


def test_wrong_typed_stage_param(tmp_path, capsys, cfg):
    code, _, err = cli(capsys, "run", cfg, "--set", "trainer.params.n_members=many", "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "n_members", "valid integer")


def test_section_given_as_a_value(tmp_path, capsys, cfg):
    code, _, err = cli(capsys, "run", cfg, "--set", "trainer=nope", "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "trainer", "StageSpec")


@pytest.mark.parametrize(
    "override, words",
    [
        ("simulator.params.image_size=-5", ("image_size", "greater than or equal to 16")),
        ("trainer.params.n_members=0", ("n_members", "greater than or equal to 1")),
        ("scale.pixel_size=-1", ("scale.pixel_size", "greater than")),
        ("iterations.n_simulated=0", ("n_simulated",)),
        ("iterations.threshold=2", ("threshold", "less than 1")),
        ("iterations.max_iterations=-1", ("max_iterations",)),
    ],
    ids=["negative-size", "zero-members", "negative-pixel-size", "zero-images", "threshold-above-1", "negative-iterations"],
)
def test_impossible_values(tmp_path, capsys, cfg, override, words):
    code, _, err = cli(capsys, "run", cfg, "--set", override, "--out", tmp_path / "o.h5")
    assert_user_error(code, err, *words)


def test_negative_pixel_size_option(tmp_path, capsys, cfg):
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "img.npy", image()), tmp_path / "o.h5", "--pixel-size", "-1")
    assert_user_error(code, err, "input_pixel_size")


def test_literal_value_lists_the_allowed_ones(tmp_path, capsys, cfg):
    code, _, err = cli(capsys, "run", cfg, "--set", "data.nan_policy=ignore", "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "data.nan_policy", "allowed: 'refuse' or 'fill'", "'ignore'")


def test_config_file_missing(tmp_path, capsys):
    code, _, err = cli(capsys, "run", tmp_path / "nope.yaml", "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "does not exist")


def test_config_file_not_yaml(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("seed: [1,\n")
    code, _, err = cli(capsys, "run", path, "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "not valid YAML", "line 2")


def test_config_file_not_a_mapping(tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    code, _, err = cli(capsys, "run", path, "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "mapping")


def test_config_from_a_newer_elit(tmp_path, capsys, cfg):
    code, _, err = cli(capsys, "run", cfg, "--set", "schema_version=99", "--out", tmp_path / "o.h5")
    assert_user_error(code, err, "newer than this elit")


# ---------------------------------------------------------------------- --set syntax
@pytest.mark.parametrize(
    "override, words",
    [
        ("seed", ("must look like key.path=value",)),
        ("=3", ("empty key",)),
        ("seed=[1,", ("not valid YAML", "line 1")),
        ("seed.value=1", ("'seed' is not a section",)),
    ],
    ids=["no-equals", "empty-key", "bad-yaml", "not-a-section"],
)
def test_set_syntax_errors(tmp_path, capsys, cfg, override, words):
    code, _, err = cli(capsys, "run", cfg, "--set", override, "--out", tmp_path / "o.h5")
    assert_user_error(code, err, *words)


# ---------------------------------------------------------------------- result files
def _finished_run_file(path, n_atoms=3):
    """A small run file with one finished iteration (no training)."""
    store = RunStore.create(path)
    store.write_config({"seed": 0})
    info = {"name": "ensemble-predict", "plugin": "elit", "config": {}, "seed": 0, "used": []}
    atoms = AtomTable(np.zeros(n_atoms), np.arange(n_atoms) + 1.5, np.arange(n_atoms) + 2.5,
                      np.zeros(n_atoms), np.full(n_atoms, 0.9), np.full(n_atoms, 0.1))
    with store.stage(0, "predict", info) as st:
        st.add_table("atoms", atoms)
    return path


def test_inspect_plain_hdf5(tmp_path, capsys):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    code, _, err = cli(capsys, "inspect", path)
    assert_user_error(code, err, "not an elit run file")


def test_inspect_text_file(tmp_path, capsys):
    path = tmp_path / "notes.h5"
    path.write_text("hello")
    code, _, err = cli(capsys, "inspect", path)
    assert_user_error(code, err, "not an HDF5 file")


def test_inspect_truncated_run_file(tmp_path, capsys):
    path = _finished_run_file(tmp_path / "run.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    code, _, err = cli(capsys, "inspect", path)
    assert_user_error(code, err, "damaged or truncated")


def test_inspect_missing_file(tmp_path, capsys):
    code, _, err = cli(capsys, "inspect", tmp_path / "gone.h5")
    assert_user_error(code, err, "no such file")


def test_atoms_with_no_finished_iteration(tmp_path, capsys):
    path = tmp_path / "run.h5"
    RunStore.create(path).write_config({"seed": 0})
    code, _, err = cli(capsys, "atoms", path, "--out", tmp_path / "a.csv")
    assert_user_error(code, err, "no finished iteration")
    assert not (tmp_path / "a.csv").exists()


def test_atoms_unknown_iteration(tmp_path, capsys):
    path = _finished_run_file(tmp_path / "run.h5")
    code, _, err = cli(capsys, "atoms", path, "--iteration", "4", "--out", tmp_path / "a.csv")
    assert_user_error(code, err, "iteration 4 is not finished", "[0]")


def test_resume_of_a_missing_file(tmp_path, capsys):
    code, _, err = cli(capsys, "run", "--resume", tmp_path / "gone.h5")
    assert_user_error(code, err, "no such file")


def test_select_with_bad_member_list(tmp_path, capsys):
    path = _finished_run_file(tmp_path / "run.h5")
    code, _, err = cli(capsys, "select", path, "--members", "1,two")
    assert_user_error(code, err, "--members", "whole numbers")


# ---------------------------------------------------------------------- existing outputs are never lost
def _precious(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"precious bytes \x00\x01\x02")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_output_exists_without_overwrite(tmp_path, capsys, cfg):
    out, digest = _precious(tmp_path, "result.h5")
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "img.npy", image()), out)
    assert_user_error(code, err, "exists", "--overwrite")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


def test_atoms_output_exists_without_overwrite(tmp_path, capsys):
    run = _finished_run_file(tmp_path / "run.h5")
    out, digest = _precious(tmp_path, "atoms.csv")
    code, _, err = cli(capsys, "atoms", run, "--out", out)
    assert_user_error(code, err, "exists", "--overwrite")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


def test_predict_output_exists_without_overwrite(tmp_path, capsys):
    run = _finished_run_file(tmp_path / "run.h5")
    out, digest = _precious(tmp_path, "pred.h5")
    code, _, err = cli(capsys, "predict", run, save_npy(tmp_path, "img.npy", image()), "--out", out)
    assert_user_error(code, err, "exists", "--overwrite")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


def test_run_with_overwrite_keeps_the_old_file_when_the_input_is_bad(tmp_path, capsys, cfg):
    out, digest = _precious(tmp_path, "result.h5")
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "flat.npy", np.ones((32, 32))), out, "--overwrite")
    assert_user_error(code, err, "constant")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


def test_output_folder_missing(tmp_path, capsys, cfg):
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "img.npy", image()), tmp_path / "no" / "o.h5")
    assert_user_error(code, err, "does not exist")


def test_atoms_csv_written_whole(tmp_path, capsys):
    run = _finished_run_file(tmp_path / "run.h5", n_atoms=5)
    out = tmp_path / "atoms.csv"
    code, stdout, err = cli(capsys, "atoms", run, "--out", out)
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 and rows[0]["x"] == "2.500" and rows[0]["y"] == "1.500"
    assert not list(tmp_path.glob("*.tmp"))


def test_interrupted_atoms_export_leaves_no_output(tmp_path, capsys, monkeypatch):
    """The CSV is written to a side file and renamed: an interruption never leaves a short CSV at --out."""
    import elit.results

    run = _finished_run_file(tmp_path / "run.h5", n_atoms=5)
    out = tmp_path / "atoms.csv"
    real_writer = csv.writer

    class Breaks:
        def __init__(self, fh):
            self.inner, self.rows = real_writer(fh), 0

        def writerow(self, row):
            self.rows += 1
            if self.rows == 3:
                raise KeyboardInterrupt
            self.inner.writerow(row)

    monkeypatch.setattr(elit.results.csv, "writer", Breaks)
    code, _, err = cli(capsys, "atoms", run, "--out", out)
    assert code == 130 and "interrupted" in err
    assert not out.exists()


# ---------------------------------------------------------------------- --debug
def test_debug_shows_the_traceback(tmp_path, cfg):
    with pytest.raises(InputError, match="no such file"):
        main(["--debug", "run", str(cfg), "--data", str(tmp_path / "nothere.npy"), "--out", str(tmp_path / "o.h5")])


def test_debug_shows_config_errors(tmp_path, cfg):
    with pytest.raises(ConfigError):
        main(["--debug", "run", str(cfg), "--set", "seed=abc", "--out", str(tmp_path / "o.h5")])


def test_error_classes_are_user_errors():
    for cls in (ConfigError, InputError, StoreError):
        assert issubclass(cls, ElitError)


def test_stored_config_is_json(tmp_path, capsys, cfg, no_training):
    """What ``elit run`` stores is plain JSON (read back without evaluating anything)."""
    out = tmp_path / "o.h5"
    code, _, err = run_on(capsys, cfg, save_npy(tmp_path, "img.npy", image()), out)
    assert code == 0, err
    with h5py.File(out, "r") as f:
        assert json.loads(f["config"].asstr()[()])["seed"] == 3
