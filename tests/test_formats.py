"""Microscope file formats end to end: files the tests write, signal choice, calibrations, refusals, size checks.

Every file is written here (tifffile, h5py, rosettasciio's writers, mrcfile); nothing is read from outside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from elit.cli import main
from elit.errors import InputError
from elit.experiments import graphene_movie
from elit.readers import Signal, choose_signal, read_image, signal_from_axes
from elit.registry import Registry
from elit_builtins.readers import READERS

PX = 0.15  # Å/px of the written graphene frames: 0.015 nm

TINY_YAML = """
seed: 0
device: cpu
scale: {pixel_size: 0.2}
iterations: {max_iterations: 1, n_simulated: 2, multiclass: false}
simulator: {name: graphene, params: {image_size: 48}}
augmenter: {name: standard, params: {crop_size: 32}}
architecture: {name: compact-unet, params: {base_filters: 4, depth: 2}}
trainer: {name: multi-swa, params: {n_members: 2, steps: 2, batch_size: 2, patch_size: 32, progress: false}}
selector: {name: auto, params: {k: 1}}
"""


def registry() -> Registry:
    reg = Registry()
    for cls in READERS:
        reg.add_reader(cls, "builtins", "elit", "0")
    return reg


REG = registry()


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Two 64x64 HAADF-like frames of Si-doped graphene at 0.15 Å/px, as 16-bit counts."""
    movie = graphene_movie(n_frames=2, size=64, pixel_size=PX, seed=3, dose=50.0)
    return np.round(movie.frames / movie.frames.max() * 60000).astype(np.uint16)


def hyperspy_dict(data, scale, units, title="HAADF", nav=True, nav_units=""):
    """A signal dict as rosettasciio's writers take it (first axis navigation when ``nav``)."""
    names = ["frame", "y", "x"][-data.ndim:]
    axes = [{"name": n, "size": s, "scale": scale, "offset": 0.0, "units": units, "navigate": False}
            for n, s in zip(names, data.shape)]
    if nav:
        axes[0].update(scale=1.0, units=nav_units, navigate=True)
    return {"data": data, "axes": axes, "metadata": {"General": {"title": title}, "Signal": {"signal_type": ""}},
            "original_metadata": {}, "tmp_parameters": {}, "attributes": {"_lazy": False}, "learning_results": {},
            "models": {}, "package_info": {"name": "elit-tests", "version": "0"}}


def write_imagej_tiff(path, data):
    import tifffile

    tifffile.imwrite(path, data, imagej=True, resolution=(1 / (PX / 10), 1 / (PX / 10)),
                     metadata={"unit": "nm", "axes": "ZYX"})


def write_hspy(path, data):
    from rsciio.hspy import file_writer

    file_writer(str(path), hyperspy_dict(data, PX * 100, "pm"))


def write_zspy(path, data):
    import zarr

    if int(zarr.__version__.split(".")[0]) >= 3:
        pytest.skip(f"rosettasciio writes .zspy only with zarr 2; zarr {zarr.__version__} is installed")
    from rsciio.zspy import file_writer

    file_writer(str(path), hyperspy_dict(data, PX / 10, "nm"))


def write_mrc(path, data):
    mrcfile = pytest.importorskip("mrcfile")
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.voxel_size = PX  # MRC headers are in Å


WRITERS = {"tif": write_imagej_tiff, "hspy": write_hspy, "zspy": write_zspy, "mrc": write_mrc}


# ------------------------------------------------------------------ calibrated files, every writable format
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_calibrated_file_reads_with_its_pixel_size(tmp_path, frames, fmt):
    path = tmp_path / f"graphene.{fmt}"
    WRITERS[fmt](path, frames)
    data = read_image(path, registry=REG)
    assert data.frames.shape == (2, 64, 64)
    np.testing.assert_allclose(data.frames, frames.astype(np.float32))
    assert data.pixel_size == pytest.approx(PX, rel=1e-5)
    assert data.metadata["calibration"] and data.metadata["signal"]


@pytest.mark.parametrize("fmt", ["tif", "hspy", "mrc"])
def test_elit_run_end_to_end_with_the_file_pixel_size(tmp_path, frames, fmt, capsys):
    path = tmp_path / f"graphene.{fmt}"
    WRITERS[fmt](path, frames)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    out = tmp_path / "run.h5"
    assert main(["run", str(cfg), "--data", str(path), "--out", str(out)]) == 0
    from elit.store import RunStore

    _, px, meta = RunStore.open(out, mode="r").read_input("frames")
    assert px == pytest.approx(PX, rel=1e-5) and meta["file_pixel_size"] == pytest.approx(PX, rel=1e-5)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"from {path}" in shown
    assert "signal " in shown and "calibration " in shown and "= 0.15 Å/px" in shown


def test_inspect_says_when_the_run_used_another_pixel_size(tmp_path, frames, capsys):
    path = tmp_path / "graphene.tif"
    write_imagej_tiff(path, frames)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    out = tmp_path / "run.h5"
    assert main(["run", str(cfg), "--data", str(path), "--out", str(out), "--pixel-size", "0.2"]) == 0
    capsys.readouterr()
    main(["inspect", str(out)])
    assert "the run used 0.2 Å/px" in capsys.readouterr().out


# ------------------------------------------------------------------ several signals
def _three_detectors(path, frames):
    with h5py.File(path, "w") as f:
        f["BF"] = frames[0]
        f["DF4-A"] = frames[0] // 2
        f["HAADF"] = frames[1]


def test_haadf_is_chosen_and_others_listed(tmp_path, frames):
    path = tmp_path / "detectors.h5"
    _three_detectors(path, frames)
    data = read_image(path, registry=REG)
    np.testing.assert_array_equal(data.frames[0], frames[1])
    assert data.metadata["signal"] == "/HAADF" and data.metadata["signal_choice"] == "its title says HAADF"
    assert "holds 3 signals (0 /BF, 1 /DF4-A, 2 /HAADF)" in data.metadata["notes"][0]
    assert "--signal" in data.metadata["notes"][0]
    bf = read_image(path, registry=REG, signal="/BF")
    np.testing.assert_array_equal(bf.frames[0], frames[0])
    assert read_image(path, registry=REG, signal="0").metadata["signal"] == "/BF"


def _sig(i, name, problem=None, px=None):
    return Signal(i, name, (64, 64), "uint16", lambda: np.zeros((64, 64)), pixel_size=px, problem=problem)


@pytest.mark.parametrize(
    "names, want, why",
    [
        (["BF", "ADF", "HAADF"], "HAADF", "HAADF"),
        (["BF", "DF-S", "iDPC"], "DF-S", "ADF/DF"),
        (["BF", "DF4-A", "DF4-B"], "BF", "first of 3"),  # one segment of a segmented detector is not ADF
    ],
)
def test_signal_choice_by_title(names, want, why):
    chosen, reason = choose_signal([_sig(i, n) for i, n in enumerate(names)])
    assert chosen.name == want and why in reason


def test_signal_choice_skips_unusable_and_prefers_calibrated():
    sigs = [_sig(0, "thumbnail"), _sig(1, "", px=0.24), _sig(2, "HAADF", problem="too small")]
    chosen, why = choose_signal(sigs)
    assert chosen.index == 1 and "calibrated" in why
    with pytest.raises(InputError, match="signal 'HAADF': too small"):
        choose_signal(sigs, "haadf")
    with pytest.raises(InputError, match="has no signal 'ABF'; signals: 0 thumbnail, 1 signal 1, 2 HAADF"):
        choose_signal(sigs, "ABF")


def test_elit_info_lists_every_signal_and_the_choice(tmp_path, frames, capsys):
    path = tmp_path / "detectors.h5"
    _three_detectors(path, frames)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[1]: ln for ln in out.splitlines()[2:5]}
    assert set(rows) == {"/BF", "/DF4-A", "/HAADF"}
    assert "<- chosen" in rows["/HAADF"] and "64x64" in rows["/BF"] and "uint16" in rows["/BF"]
    assert "elit reads #2 '/HAADF': its title says HAADF" in out
    assert main(["info", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["chosen"] == 2 and [s["name"] for s in doc["signals"]] == ["/BF", "/DF4-A", "/HAADF"]
    assert main(["info", str(path), "--signal", "ABF"]) == 2
    assert "has no signal 'ABF'" in capsys.readouterr().err


def test_elit_info_shows_the_pixel_size_in_angstrom(tmp_path, frames, capsys):
    path = tmp_path / "g.hspy"
    write_hspy(path, frames)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0.15 Å" in out and "15 pm/px" in out and "2x64x64" in out


def test_elit_info_on_a_file_with_nothing_to_analyse(tmp_path, capsys):
    from rsciio.hspy import file_writer

    path = tmp_path / "tiny.hspy"
    file_writer(str(path), hyperspy_dict(np.arange(4, dtype=np.float32).reshape(2, 2), 1.0, "nm", nav=False))
    assert main(["info", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "2x2" in out and "1 nm/px" in out
    assert "elit: error: elit cannot analyse tiny.hspy: frames of 2x2 pixels are too small" in err


# ------------------------------------------------------------------ calibration units
@pytest.mark.parametrize(
    "scale, units, want",
    [(0.015, "nm", 0.15), (15.0, "pm", 0.15), (0.15, "Å", 0.15), (1.5e-5, "µm", 0.15), (1.5e-11, "m", 0.15),
     (0.0093, None, 0.093), (0.015, None, None), (1.0, None, None), (0.015, "px", None)],
)
def test_calibration_units_to_angstrom(scale, units, want):
    axes = [{"scale": scale, "units": units, "navigate": False}] * 2
    sig = signal_from_axes(0, "", np.zeros((32, 32)), axes)
    assert sig.pixel_size == (pytest.approx(want) if want else None)
    if units is None and scale != 1.0:  # units not stated: guessed only when one reading fits, and said so
        assert any(("read as nm" if want else "ambiguous") in n for n in sig.notes)


def test_non_square_pixels_leave_the_size_unknown():
    axes = [{"scale": 0.01, "units": "nm", "navigate": False}, {"scale": 0.02, "units": "nm", "navigate": False}]
    sig = signal_from_axes(0, "", np.zeros((32, 32)), axes)
    assert sig.pixel_size is None and any("not square" in n for n in sig.notes)


# ------------------------------------------------------------------ refusals
def _refused(tmp_path, name, signal_dict):
    from rsciio.hspy import file_writer

    path = tmp_path / name
    file_writer(str(path), signal_dict)
    with pytest.raises(InputError) as err:
        read_image(path, registry=REG)
    return str(err.value)


def test_spectrum_is_refused(tmp_path):
    d = hyperspy_dict(np.ones((4, 4, 300), np.float32), 1.0, "eV", title="EELS")
    d["axes"][0].update(navigate=True, units="nm")
    d["axes"][1].update(navigate=True, units="nm")
    assert "a spectrum or profile (one signal axis" in _refused(tmp_path, "eels.hspy", d)


def test_diffraction_pattern_is_refused(tmp_path):
    d = hyperspy_dict(np.ones((64, 64), np.float32), 0.01, "1/nm", title="SAED", nav=False)
    assert "a diffraction pattern (axes in 1/nm)" in _refused(tmp_path, "saed.hspy", d)


def test_four_d_stem_is_refused(tmp_path):
    d = hyperspy_dict(np.ones((3, 3, 32, 32), np.float32), 0.05, "nm", title="scan")
    d["axes"] = [{"name": n, "size": s, "scale": 0.5, "offset": 0.0, "units": "nm", "navigate": i < 2}
                 for i, (n, s) in enumerate(zip("abyx", (3, 3, 32, 32)))]
    assert "4-D STEM" in _refused(tmp_path, "scan.hspy", d)


def test_complex_data_is_refused(tmp_path):
    d = hyperspy_dict((np.ones((32, 32)) * (1 + 1j)).astype(np.complex64), 0.01, "nm", title="DPC", nav=False)
    assert "complex data (complex64)" in _refused(tmp_path, "dpc.hspy", d)


def test_zspy_without_zarr_2_says_why(tmp_path):
    zarr = pytest.importorskip("zarr")
    if int(zarr.__version__.split(".")[0]) < 3:
        pytest.skip("zarr 2 is installed: .zspy is read")
    store = tmp_path / "x.zspy"
    store.mkdir()
    with pytest.raises(InputError, match="reads .zspy only with zarr 2"):
        read_image(store, registry=REG)


# ------------------------------------------------------------------ size checked before reading
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak RSS read from /proc (Linux)")
def test_expanded_size_is_refused_before_reading_under_500_mb(tmp_path):
    """A 40000² gzip dataset of zeros (about 1 kB on disk, 6.4 GB as float32) is refused from its shape."""
    path = tmp_path / "zeros.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("zeros", shape=(40000, 40000), dtype="float32", chunks=(1000, 1000), compression="gzip")
    assert path.stat().st_size < 100_000
    code = textwrap.dedent(f"""
        from elit.errors import InputError
        from elit.readers import read_image
        from elit.registry import Registry
        from elit_builtins.readers import READERS
        reg = Registry()
        for cls in READERS:
            reg.add_reader(cls, "builtins", "elit", "0")
        try:
            read_image({str(path)!r}, registry=reg)
            print("READ")
        except InputError as err:
            print("REFUSED", err)
        status = open("/proc/self/status").read().split("VmHWM:")[1]  # this process's peak RSS (ru_maxrss
        print(int(status.split()[0]))                                   # would include the forking parent's)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert lines and lines[0].startswith("REFUSED") and "1,600,000,000 pixels" in lines[0], done.stdout + done.stderr
    peak_mb = int(lines[-1]) / 1024  # kB
    assert peak_mb < 500, f"peak RSS {peak_mb:.0f} MB"
