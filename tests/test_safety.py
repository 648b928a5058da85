"""Safe files: no pickles written or read, names from files never imported or evaluated,
files made with plugins that are not installed still open for reading.

A tiny real run (iteration 0 only) gives a run file and ``elit predict`` a
prediction file (plus a live file when :mod:`elit.live` can make one); every
dataset and attribute of them is scanned for pickled content.  Files from
"another lab" are built with the store API, naming stages and plugins that do
not exist here and strings that would run code if anything evaluated them.
"""

from __future__ import annotations

import pickle  # only to plant a pickle and prove the scanner finds it; nothing is ever unpickled
import re
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import elit
from elit.cli import main
from elit.store import RunStore

ROOT = Path(elit.__file__).resolve().parents[1]

CONFIG_YAML = """\
seed: 5
device: cpu
scale: {pixel_size: 0.2, input_pixel_size: 0.2}
iterations: {max_iterations: 0, n_simulated: 2, multiclass: false}
simulator: {name: graphene, params: {image_size: 48}}
augmenter: null
architecture: {name: compact-unet, params: {base_filters: 4, depth: 2}}
trainer:
  name: multi-swa
  params: {n_members: 2, steps: 2, batch_size: 2, patch_size: 32, min_steps: 0, eval_every: 2,
           val_patches: 1, bn_batches: 1, progress: false, threads: 1}
selector: {name: auto, params: {k: 1}}
"""

# ---------------------------------------------------------------------- the pickle scanner
_PICKLE_MODULE_STRINGS = (
    b"numpy.core.multiarray", b"numpy._core.multiarray", b"torch._utils", b"_rebuild_tensor",
    b"collections\nOrderedDict", b"copy_reg\n_reconstructor", b"copyreg\n_reconstructor", b"__builtin__\n",
)


def _looks_pickled(raw: bytes) -> bool:
    """Pickle protocol 2-5 starts with PROTO (0x80) and a version byte; protocol 0/1 with typical opcodes."""
    if len(raw) >= 2 and raw[0] == 0x80 and 2 <= raw[1] <= 5:
        return True
    return raw.startswith((b"(dp0", b"(lp0", b"ccopy_reg", b"c__builtin__", b"cnumpy", b"ctorch", b"(i__main__"))


def _as_bytes(value) -> list[bytes]:
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, str):
        return [value.encode("utf-8", "surrogateescape")]
    if isinstance(value, np.void) and value.dtype.names:  # a compound: each field (an HDF5 reference's bytes are an address)
        return [b for name in value.dtype.names for b in _as_bytes(value[name])]
    if isinstance(value, np.void):
        return [value.tobytes()]
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSUV":
        return [b for v in value.reshape(-1) for b in _as_bytes(v if value.dtype.kind != "V" else np.void(v))]
    return []


def pickle_findings(path: Path) -> list[str]:
    """Everything in an HDF5 file that is or may hold a pickle: object/opaque dtypes, pickle bytes, pickle module paths."""
    found: list[str] = []

    def check_dtype(where: str, dtype: np.dtype) -> None:
        if dtype.kind == "O":
            vlen = h5py.check_vlen_dtype(dtype)
            if vlen is not None and h5py.check_string_dtype(dtype) is None:
                check_dtype(where, np.dtype(vlen))  # e.g. NSID's DIMENSION_LIST: lists of object references
            elif h5py.check_string_dtype(dtype) is None and h5py.check_ref_dtype(dtype) is None:
                found.append(f"{where}: object dtype {dtype} that is neither a string nor an HDF5 reference")
        if dtype.kind == "V" and dtype.names is None:
            found.append(f"{where}: opaque dtype {dtype}")
        if dtype.names:
            for name in dtype.names:
                check_dtype(f"{where}.{name}", dtype.fields[name][0])

    def check_value(where: str, value) -> None:
        for raw in _as_bytes(value):
            if _looks_pickled(raw):
                found.append(f"{where}: pickle bytes {raw[:12]!r}")

    def visit(name: str, obj) -> None:
        for key in obj.attrs:
            try:
                value = obj.attrs[key]
            except (OSError, TypeError) as exc:  # an attribute h5py cannot even read is suspicious
                found.append(f"/{name}@{key}: unreadable attribute ({exc})")
                continue
            check_value(f"/{name}@{key}", value)
            if isinstance(value, np.ndarray):
                check_dtype(f"/{name}@{key}", value.dtype)
        if isinstance(obj, h5py.Dataset):
            check_dtype(f"/{name}", obj.dtype)
            if obj.dtype.kind in "OSUV" and obj.size:
                value = obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()]
                check_value(f"/{name}", value)

    with h5py.File(path, "r") as f:
        for key in f.attrs:
            check_value(f"/@{key}", f.attrs[key])
        f.visititems(visit)
    raw = path.read_bytes()
    found += [f"file bytes contain {s!r}" for s in _PICKLE_MODULE_STRINGS if s in raw]
    return found


def test_scanner_finds_planted_pickles(tmp_path):
    path = tmp_path / "planted.h5"
    blob = pickle.dumps({"weights": [1, 2, 3]}, protocol=4)
    with h5py.File(path, "w") as f:
        f["opaque"] = np.void(blob)
        f["clean"] = np.arange(4.0)
        f["clean"].attrs["model"] = np.void(pickle.dumps(np.arange(3), protocol=2))
        f.attrs["state"] = np.void(blob)
        f["clean"].attrs["table"] = np.array([(blob[:40], 1)], dtype=[("payload", "S40"), ("n", "<i4")])
        f["scale"] = np.arange(4.0)  # a dimension scale: compound REFERENCE_LIST attributes (references, not bytes)
        f["scale"].make_scale()
        f["clean"].dims[0].attach_scale(f["scale"])
    findings = pickle_findings(path)
    assert any("/clean@table" in x for x in findings)  # a compound's bytes field is read
    assert not any("/scale" in x for x in findings)
    assert any("/opaque" in x for x in findings)
    assert any("/clean@model" in x for x in findings)
    assert any("/@state" in x for x in findings)
    assert any("numpy" in x for x in findings)  # the pickled ndarray names its numpy module


# ---------------------------------------------------------------------- real files elit writes
@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A run file, a prediction file and (when possible) a live file, all from elit's own commands."""
    import torch

    from elit.experiments import graphene_movie

    work = tmp_path_factory.mktemp("safety")
    frames = graphene_movie(n_frames=2, size=48, pixel_size=0.2).frames
    np.save(work / "frames.npy", frames, allow_pickle=False)
    (work / "config.yaml").write_text(CONFIG_YAML)
    threads = torch.get_num_threads()
    try:
        run = work / "run.h5"
        assert main(["-q", "run", str(work / "config.yaml"), "--data", str(work / "frames.npy"), "--out", str(run)]) == 0
        pred = work / "pred.h5"
        assert main(["-q", "predict", str(run), str(work / "frames.npy"), "--out", str(pred), "--device", "cpu"]) == 0
        files = {"run": run, "prediction": pred}
        live = _live_file(run, work, frames)
        if live is not None:
            files["live"] = live
    finally:
        torch.set_num_threads(threads)
    return files


def _live_file(run: Path, work: Path, frames: np.ndarray) -> Path | None:
    """A live file from :func:`elit.live.watch`, if that module is present and its API fits; else None."""
    try:
        from elit.live import watch
    except ImportError:
        return None
    folder = work / "incoming"
    folder.mkdir()
    np.save(folder / "frame_000.npy", frames[0], allow_pickle=False)
    out = work / "live.h5"
    try:
        watch(run, folder, pattern="*.npy", out=out, poll=0.05, max_frames=1, timeout=60, log=None, device="cpu")
    except TypeError:
        return None
    return out if out.exists() else None


@pytest.mark.parametrize("kind", ["run", "prediction", "live"])
def test_written_files_hold_no_pickles(written, kind):
    if kind not in written:
        pytest.skip(f"no {kind} file could be made here")
    path = written[kind]
    assert pickle_findings(path) == []
    with h5py.File(path, "r") as f:
        assert f.attrs.get("format") is not None


def test_weights_are_plain_arrays(written):
    with h5py.File(written["run"], "r") as f:
        group = f["iterations/iter_000/trainer/ensemble"]
        datasets = []
        group.visititems(lambda n, o: datasets.append(o) if isinstance(o, h5py.Dataset) else None)
        assert datasets
        assert all(d.dtype.kind in "biuf" for d in datasets)


# ---------------------------------------------------------------------- the code base
_FORBIDDEN = [
    (r"^\s*(import|from)\s+(pickle|cPickle|_pickle|dill|cloudpickle|shelve|marshal|joblib)\b", "a pickle module"),
    (r"allow_pickle\s*=\s*True", "allow_pickle=True"),
    (r"torch\.save\(", "torch.save (pickles)"),
    (r"(?<![\w.])(eval|exec)\(", "eval/exec"),
    (r"yaml\.(load|full_load|unsafe_load)\(|Loader\s*=\s*yaml\.(Unsafe)?Loader", "unsafe YAML loading"),
    (r"importlib\.import_module\(|__import__\(", "importing by a name"),
    (r"(?<![\w.])pd\.read_pickle|\.read_pickle\(", "read_pickle"),
]


def _sources() -> list[Path]:
    files = sorted((ROOT / "elit").rglob("*.py")) + sorted((ROOT / "plugins").rglob("*.py"))
    return [p for p in files if "tests" not in p.relative_to(ROOT).parts and "build" not in p.parts]


def test_code_base_never_pickles_or_evaluates():
    problems = []
    sources = _sources()
    assert len(sources) > 20
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for pattern, what in _FORBIDDEN:
            for m in re.finditer(pattern, text, flags=re.MULTILINE):
                line = text.count("\n", 0, m.start()) + 1
                problems.append(f"{path.relative_to(ROOT)}:{line}: {what}")
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : m.start() + 300].split(")\n")[0]
            if "weights_only=True" not in call:
                problems.append(f"{path.relative_to(ROOT)}: torch.load without weights_only=True")
        for m in re.finditer(r"np\.load\(", text):
            call = text[m.start() : m.start() + 200].split("\n")[0]
            if "allow_pickle=False" not in call:
                problems.append(f"{path.relative_to(ROOT)}: np.load without an explicit allow_pickle=False")
    assert problems == []


# ---------------------------------------------------------------------- files from another lab
EVIL_MODULE = "elit_evil_probe_mod"


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """An importable module that leaves a marker file if anything imports it."""
    marker = tmp_path / "IMPORTED"
    pkg = tmp_path / "evil_site"
    pkg.mkdir()
    (pkg / f"{EVIL_MODULE}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "class Trainer:\n    pass\nclass Net:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(pkg))
    sys.modules.pop(EVIL_MODULE, None)
    yield marker
    sys.modules.pop(EVIL_MODULE, None)


def _foreign_run_file(path: Path, marker: Path, trainer_name: str) -> Path:
    """A run file "from another lab": its config names a trainer that is no registered stage here."""
    evil_call = f"__import__('os').system('touch {marker}')"
    config = {
        "seed": 0,
        "device": "cpu",
        "scale": {"pixel_size": 0.2, "input_pixel_size": 0.2},
        "data": {"path": f"{EVIL_MODULE}:Trainer"},
        "simulator": {"name": "graphene", "params": {"image_size": 48}},
        "trainer": {"name": trainer_name, "params": {"hook": evil_call}},
    }
    store = RunStore.create(path)
    store.write_config(config)
    store.write_environment(
        {"python": "3.11", "note": evil_call},
        [{"kind": "trainer", "name": trainer_name, "plugin": "evil-plugin", "package": EVIL_MODULE, "version": "6.6.6"}],
    )
    rng = np.random.default_rng(0)
    store.write_input("frames", rng.random((1, 32, 32)).astype(np.float32), pixel_size=0.2)
    info = {"name": trainer_name, "plugin": "evil-plugin", "package": EVIL_MODULE, "plugin_version": "6.6.6",
            "config": {"hook": evil_call}, "seed": 1, "used": []}
    with store.stage(0, "trainer", info) as st:
        st.add_json("notes", {"run": evil_call})
    return path


@pytest.mark.parametrize("trainer_name", [f"{EVIL_MODULE}:Trainer", f"{EVIL_MODULE}.Trainer", "os.system", "os:system"])
def test_names_in_a_file_are_never_imported(tmp_path, capsys, evil_module, trainer_name):
    path = _foreign_run_file(tmp_path / "foreign.h5", evil_module, trainer_name)
    # reading works, and says what is missing
    assert main(["inspect", "-v", str(path)]) == 0
    out = capsys.readouterr().out
    assert "plugins not installed here" in out and trainer_name in out and "evil-plugin" in out
    # running it is refused with a clear message naming the stage
    assert main(["run", "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("elit: error: ") and f"no trainer named {trainer_name!r}" in err and "Traceback" not in err
    assert not evil_module.exists(), "a name from the file was imported or evaluated"
    assert EVIL_MODULE not in sys.modules


def test_stage_params_from_a_file_are_validated_not_evaluated(tmp_path, capsys, evil_module):
    path = _foreign_run_file(tmp_path / "foreign.h5", evil_module, "multi-swa")
    assert main(["run", "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert "hook: unknown field" in err
    assert not evil_module.exists() and EVIL_MODULE not in sys.modules


def test_architecture_named_in_stored_weights_is_looked_up_not_imported(written, tmp_path, capsys, evil_module):
    """An ensemble whose stored spec names an import path: refused by name, nothing imported."""
    import json

    copy = tmp_path / "tampered.h5"
    shutil.copyfile(written["run"], copy)
    with h5py.File(copy, "r+") as f:
        group = f["iterations/iter_000/trainer/ensemble"]
        spec = json.loads(group.attrs["spec"])
        spec["architecture"] = f"{EVIL_MODULE}:Net"
        group.attrs["spec"] = json.dumps(spec)
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(1).random((48, 48)).astype(np.float32), allow_pickle=False)
    code = main(["predict", str(copy), str(img), "--out", str(tmp_path / "p.h5"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"no architecture named '{EVIL_MODULE}:Net'" in err
    assert not evil_module.exists() and EVIL_MODULE not in sys.modules


def test_file_with_missing_plugins_still_exports_atoms(written, tmp_path, capsys):
    """A finished run made with a plugin not installed here: inspect names it, atoms still export."""
    copy = tmp_path / "other-lab.h5"
    shutil.copyfile(written["run"], copy)
    with h5py.File(copy, "r+") as f:
        sel = f["iterations/iter_000/selector"]
        sel.attrs["name"] = "fancy-select"
        sel.attrs["plugin"] = "elit-fancy"
        sel.attrs["package"] = "elit-fancy"
        sel.attrs["plugin_version"] = "2.0"
    assert main(["inspect", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "selector 'fancy-select' (plugin elit-fancy, package elit-fancy 2.0)" in out
    assert main(["atoms", str(copy), "--out", str(tmp_path / "atoms.csv")]) == 0
    assert (tmp_path / "atoms.csv").read_text().startswith("frame,x,y,class")


def test_npz_with_pickled_member_is_refused(tmp_path, capsys):
    path = tmp_path / "mixed.npz"
    np.savez(path, image=np.random.default_rng(0).random((32, 32)), meta=np.array([{"x": 1}], dtype=object))
    code = main(["run", "--recipe", "graphene", "--data", f"{path}:meta", "--out", str(tmp_path / "o.h5"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "pickle" in err
