"""Image readers and frame validation (every file is generated in tmp_path)."""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from elit.errors import InputError
from elit.readers import (
    ImageData,
    find_reader,
    guess_pixel_size,
    length_to_angstrom,
    pixel_size_from_json,
    read_image,
    split_spec,
    supported_suffixes,
    validate_frames,
)
from elit.registry import Registry
from elit_builtins.readers import READERS


def make_registry(*extra) -> Registry:
    reg = Registry()
    for cls in READERS:
        reg.add_reader(cls, "builtins", "elit", "0")
    for cls in extra:
        reg.add_reader(cls, "thirdparty", "other", "1")
    return reg


REG = make_registry()


def read(spec, **kw) -> ImageData:
    return read_image(spec, registry=REG, **kw)


def ramp(h=32, w=40, n=None, dtype=np.float32):
    img = (np.arange(h * w).reshape(h, w) % 97).astype(dtype)
    return img if n is None else np.stack([img + i for i in range(n)])


# ------------------------------------------------------------------ units helpers
@pytest.mark.parametrize(
    "value, units, want",
    [(1, "nm", 10.0), (2, "Å", 2.0), (3, "A", 3.0), (50, "pm", 0.5), (1e-3, "µm", 10.0), (1e-3, "um", 10.0),
     (1, "1/nm", None), (0, "nm", None), (float("nan"), "nm", None), ("x", "nm", None), (1, None, None)],
)
def test_length_to_angstrom(value, units, want):
    got = length_to_angstrom(value, units)
    assert got == (pytest.approx(want) if want is not None else None)


def test_guess_pixel_size_accepts_only_a_unique_reading():
    assert guess_pixel_size(0.0093)[0] == pytest.approx(0.093)  # nm: the only plausible reading
    px, why = guess_pixel_size(0.1)  # 1 Å (nm) or 0.1 Å (Å): ambiguous
    assert px is None and "ambiguous" in why
    assert guess_pixel_size(1e6)[0] is None


def test_pixel_size_from_json():
    scilink = {"experimental_details": {"spatial_info": {"field_of_view_x": 9.0, "field_of_view_units": "nm"}}}
    assert pixel_size_from_json(scilink, 512)[0] == pytest.approx(90 / 512)
    assert pixel_size_from_json({"scan size": "2"}, 256)[0] == pytest.approx(20 / 256)
    assert pixel_size_from_json({"scan size": 2000.0}, 256)[0] == pytest.approx(20 / 256)  # only pm fits
    assert pixel_size_from_json({"nothing": 1}, 256) == (None, "")


# ------------------------------------------------------------------ validate_frames
def test_validate_2d_becomes_one_frame_float32():
    out, notes = validate_frames(ramp(dtype=np.uint16))
    assert out.shape == (1, 32, 40) and out.dtype == np.float32
    assert any("uint16" in n for n in notes)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float16, np.float64, bool])
def test_validate_converts_dtypes(dtype):
    img = ramp() % 2 if dtype is bool else ramp()
    out, _ = validate_frames(img.astype(dtype))
    np.testing.assert_array_equal(out[0], img.astype(dtype).astype(np.float32))


def test_validate_channel_last_stack():
    stack = ramp(n=3)
    out, notes = validate_frames(np.moveaxis(stack, 0, -1))
    np.testing.assert_array_equal(out, stack)
    assert any("channel-last" in n for n in notes)


def test_validate_rgb_uint8_to_gray():
    rgb = np.stack([ramp(), ramp() * 0, ramp() * 0], axis=-1).astype(np.uint8)
    out, notes = validate_frames(rgb)
    assert out.shape == (1, 32, 40)
    np.testing.assert_allclose(out[0], 0.2125 * ramp(), rtol=1e-5)
    assert any("gray" in n for n in notes)


def test_validate_squeezes_unit_axes():
    out, notes = validate_frames(ramp()[None, :, :, None])
    assert out.shape == (1, 32, 40) and any("length 1" in n for n in notes)


def test_validate_nan_refused_or_filled():
    img = ramp(n=2)
    img[1, 3, 4] = np.nan
    img[1, 5, 6] = np.inf
    with pytest.raises(InputError, match=r"scan.tif: 2 NaN/Inf pixel\(s\) in frame\(s\) 1"):
        validate_frames(img, source="scan.tif")
    out, notes = validate_frames(img, nan_policy="fill")
    finite = img[1][np.isfinite(img[1])]
    assert out[1, 3, 4] == out[1, 5, 6] == np.float32(np.median(finite))
    assert np.isfinite(out).all() and any("replaced 2" in n for n in notes)
    assert np.isnan(img[1, 3, 4]) and np.isinf(img[1, 5, 6])  # filled in a copy, not in the caller's array


def test_validate_does_not_copy_float32_frames_and_never_writes_to_them():
    movie = ramp(n=3).astype(np.float32)
    out, notes = validate_frames(movie)
    assert np.shares_memory(out, movie) and not notes
    with pytest.raises(ValueError, match="read-only"):
        out[0, 0, 0] = 1.0
    assert movie.flags.writeable  # the caller's array is unchanged


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((0, 32, 32)), "empty"),
        (np.ones(64), "expected an image"),
        (np.ones((2, 2, 32, 32, 5)), "expected an image"),
        (np.ones((2, 8, 64)), "too small"),
        (np.ones((32, 32)), "constant"),
        (np.ones((32, 32)) * (1 + 1j), "complex"),
        (np.array([["a"] * 32] * 32), "not a numeric image"),
        (np.full((32, 32), np.nan), "frame 0 has no finite pixels"),
    ],
)
def test_validate_refuses(frames, message):
    policy = "fill" if "finite" in message else "refuse"
    with pytest.raises(InputError, match=message):
        validate_frames(frames, nan_policy=policy, source="f.npy")


def test_validate_bad_policy():
    with pytest.raises(InputError, match="nan_policy"):
        validate_frames(ramp(), nan_policy="ignore")


# ------------------------------------------------------------------ finding readers
def test_split_spec(tmp_path):
    f = tmp_path / "a.h5"
    f.write_bytes(b"")
    assert split_spec(f"{f}:/g/d") == (f, "/g/d")
    assert split_spec(str(f)) == (f, None)
    odd = tmp_path / "with:colon.npy"
    odd.write_bytes(b"")
    assert split_spec(str(odd)) == (odd, None)
    with pytest.raises(InputError):
        split_spec("")


def test_supported_suffixes_and_unknown_suffix(tmp_path):
    want = {".npy", ".tif", ".tiff", ".png", ".jpg", ".h5", ".hdf5", ".hspy", ".zspy", ".dm3", ".dm4", ".emd",
            ".ser", ".emi", ".mrc"}
    assert want <= set(supported_suffixes(REG))
    f = tmp_path / "x.xyz"
    f.write_bytes(b"...")
    with pytest.raises(InputError, match=r"no reader for suffix \.xyz; supported: .*\.npy"):
        read(f)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read(tmp_path / "none.npy")
    with pytest.raises(InputError, match="is a folder"):
        read(tmp_path)


class ThirdPartyNpy:
    name = "fancy-npy"
    suffixes = (".npy",)
    description = "test"

    @classmethod
    def can_read(cls, path):
        return "fancy" in path.name

    @classmethod
    def read(cls, path, key=None):
        return ImageData(ramp() * 2, 0.5, {"by": "fancy"}, str(path))


class Broken:
    name = "broken"
    suffixes = (".brk",)
    description = "raises"

    @classmethod
    def read(cls, path, key=None):
        raise KeyError("deep inside")


def test_third_party_reader_first_when_it_can_read(tmp_path):
    reg = make_registry(ThirdPartyNpy, Broken)
    fancy, plain = tmp_path / "fancy.npy", tmp_path / "plain.npy"
    np.save(fancy, ramp())
    np.save(plain, ramp())
    assert find_reader(fancy, reg) is ThirdPartyNpy
    assert find_reader(plain, reg).name == "npy"
    assert find_reader(plain, reg, reader="fancy-npy") is ThirdPartyNpy
    data = read_image(fancy, registry=reg)
    assert data.pixel_size == 0.5 and data.metadata["reader"] == "fancy-npy"
    with pytest.raises(InputError, match="no reader named 'nope'"):
        find_reader(plain, reg, reader="nope")
    (tmp_path / "x.brk").write_bytes(b"1")
    with pytest.raises(InputError, match=r"x.brk: cannot read as broken \(KeyError"):
        read_image(tmp_path / "x.brk", registry=reg)


# ------------------------------------------------------------------ npy / npz
def test_npy_round_trip_checksum_and_metadata(tmp_path):
    f = tmp_path / "scan.npy"
    np.save(f, ramp(dtype=np.float64))
    data = read(f)
    assert data.frames.shape == (1, 32, 40) and data.frames.dtype == np.float32
    assert data.dtype == "float64" and data.pixel_size is None
    assert data.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    assert data.source == str(f) and data.metadata["reader"] == "npy"
    assert "converted float64 to float32" in data.metadata["notes"]


def test_npy_pickle_is_refused(tmp_path):
    f = tmp_path / "objects.npy"
    np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickle"):
        read(f)


def test_npy_sidecar_json_pixel_size(tmp_path):
    f = tmp_path / "mos2.npy"
    np.save(f, ramp(64, 64))
    (tmp_path / "mos2.json").write_text(json.dumps(
        {"experimental_details": {"spatial_info": {"field_of_view_x": 1.28, "field_of_view_units": "nm"}}}))
    data = read(f)
    assert data.pixel_size == pytest.approx(0.2)
    assert "mos2.json" in data.metadata["pixel_size_source"]
    assert data.metadata["file_metadata"]["experimental_details"]["spatial_info"]["field_of_view_x"] == 1.28


def test_npz_single_several_and_key(tmp_path):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    np.savez(one, image=ramp(), scalar=np.float64(3))
    np.savez(two, a=ramp(), b=ramp(n=2))
    assert read(one).frames.shape == (1, 32, 40)
    d = read(two)  # several images: the first, with a note naming the others
    assert d.metadata["signal"] == "a" and "holds 2 signals (0 a, 1 b)" in d.metadata["notes"][0]
    assert read(f"{two}:b").frames.shape == (2, 32, 40)
    assert read(two, signal="1").frames.shape == (2, 32, 40)
    with pytest.raises(InputError, match="has no signal 'c'; signals: 0 a, 1 b"):
        read(f"{two}:c")


def test_npy_too_large_refused_from_the_header(tmp_path):
    f = tmp_path / "big.npy"
    np.lib.format.open_memmap(f, mode="w+", dtype=np.uint8, shape=(64, 64))
    with pytest.raises(InputError, match=r"4,096 pixels .* exceed the limit of 1,000"):
        read(f, max_pixels=1000)


def test_truncated_npy(tmp_path):
    f = tmp_path / "t.npy"
    np.save(f, ramp())
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(InputError, match="t.npy"):
        read(f)


# ------------------------------------------------------------------ tiff / png
def test_tiff_stack_and_imagej_pixel_size(tmp_path):
    import tifffile

    f = tmp_path / "stack.tif"
    stack = ramp(n=3, dtype=np.uint16)
    tifffile.imwrite(f, stack, imagej=True, resolution=(1 / 0.025, 1 / 0.025), metadata={"unit": "nm", "axes": "ZYX"})
    data = read(f)
    np.testing.assert_array_equal(data.frames, stack.astype(np.float32))
    assert data.pixel_size == pytest.approx(0.25) and data.dtype == "uint16"
    assert data.metadata["calibration"] == "0.025 nm/px" and "rosettasciio" in data.metadata["library"]


def test_tiff_dpi_is_not_a_pixel_size_and_rgb_is_gray(tmp_path):
    import tifffile

    f = tmp_path / "rgb.tiff"
    rgb = np.stack([ramp(), ramp(), ramp() // 2], axis=-1).astype(np.uint8)
    tifffile.imwrite(f, rgb, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    data = read(f)
    assert data.frames.shape == (1, 32, 40) and data.pixel_size is None
    np.testing.assert_allclose(data.frames[0], rgb[..., :3].astype(float) @ [0.2125, 0.7154, 0.0721], rtol=1e-5)


def test_tiff_centimetre_resolution_when_physical(tmp_path):
    import tifffile

    f = tmp_path / "cm.tif"
    tifffile.imwrite(f, ramp(), resolution=(1e8 / 0.3, 1e8 / 0.3), resolutionunit="CENTIMETER")
    assert read(f).pixel_size == pytest.approx(0.3)


def test_tiff_planar_float_stack_is_frames(tmp_path):
    import tifffile

    f = tmp_path / "planar.tif"
    stack = ramp(n=3)
    tifffile.imwrite(f, stack)  # tifffile tags a (3, H, W) array as planar RGB
    np.testing.assert_array_equal(read(f).frames, stack)


def test_not_a_tiff(tmp_path):
    f = tmp_path / "fake.tif"
    f.write_text("not a tiff")
    with pytest.raises(InputError, match="fake.tif is not a readable TIFF"):
        read(f)


def test_png_gray_rgb_and_16_bit(tmp_path):
    import imageio.v3 as iio

    gray, rgb, deep = tmp_path / "g.png", tmp_path / "c.png", tmp_path / "d.png"
    img8 = ramp().astype(np.uint8)
    iio.imwrite(gray, img8)
    iio.imwrite(rgb, np.stack([img8, img8 // 2, img8 // 3], axis=-1))
    iio.imwrite(deep, (ramp() * 600).astype(np.uint16))
    np.testing.assert_array_equal(read(gray).frames[0], img8)
    c = read(rgb)
    assert c.frames.shape == (1, 32, 40) and any("gray" in n for n in c.metadata["notes"])
    d = read(deep)
    assert d.dtype == "uint16" and d.frames.max() == (ramp() * 600).max()
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="bad.png"):
        read(tmp_path / "bad.png")


# ------------------------------------------------------------------ HDF5 family
def test_plain_hdf5_single_several_and_key(tmp_path):
    one, two = tmp_path / "one.h5", tmp_path / "two.hdf5"
    with h5py.File(one, "w") as f:
        f["deep/group/img"] = ramp(n=2)
        f["line"] = np.arange(100.0)
    with h5py.File(two, "w") as f:
        f["a"] = ramp()
        f["b/c"] = ramp() * 2
    d = read(one)
    assert d.frames.shape == (2, 32, 40) and d.metadata["signal"] == "/deep/group/img"
    d = read(two)
    assert d.metadata["signal"] == "/a" and "holds 2 signals (0 /a, 1 /b/c)" in d.metadata["notes"][0]
    assert read(f"{two}:/b/c").source == f"{two}:/b/c"
    np.testing.assert_array_equal(read(two, signal="/b/c").frames[0], ramp() * 2)
    with pytest.raises(InputError, match="has no signal '/zz'; signals: 0 /a, 1 /b/c"):
        read(f"{two}:/zz")
    with pytest.raises(InputError, match=r"signal '/line': expected an image \(H, W\) or a stack \(N, H, W\), got 1 dimensions"):
        read(f"{one}:/line")
    with pytest.raises(InputError, match="give the signal once"):
        read(f"{two}:/a", signal="/b/c")


def test_hdf5_without_image_truncated_and_fake(tmp_path):
    empty, small, cut, fake = tmp_path / "empty.h5", tmp_path / "small.h5", tmp_path / "cut.h5", tmp_path / "fake.h5"
    with h5py.File(empty, "w") as f:
        f.create_group("nothing")
    with pytest.raises(InputError, match="holds no image dataset"):
        read(empty)
    with h5py.File(small, "w") as f:
        f["line"] = np.arange(10)
        f["tiny"] = np.ones((4, 4))
    with pytest.raises(InputError, match="none of its 2 signals is an image elit can read.*too small"):
        read(small)
    with h5py.File(cut, "w") as f:
        f["img"] = ramp(256, 256)
    cut.write_bytes(cut.read_bytes()[:3000])
    with pytest.raises(InputError, match="cut.h5 is a damaged or truncated HDF5 file"):
        read(cut)
    fake.write_text("hello")
    with pytest.raises(InputError, match="fake.h5 is not an HDF5 file"):
        read(fake)


def test_aicrystallographer_layout(tmp_path):
    f = tmp_path / "G-Si.hdf5"
    meta = {"type of data": "HAADF", "scan size": "2", "all microscope parameters": {str(i): i for i in range(500)}}
    with h5py.File(f, "w") as h:
        h["image_data"] = ramp(256, 256, dtype=np.float64)
        h["metadata"] = json.dumps(meta)
    d = read(f)
    assert d.frames.shape == (1, 256, 256) and d.pixel_size == pytest.approx(20 / 256)
    assert "scan size" in d.metadata["pixel_size_source"]
    assert d.metadata["file_metadata"]["all microscope parameters"] == "<500 entries omitted>"
    json.dumps(d.metadata)  # JSON-safe, so the store can keep it


def test_nsid_from_run_file(tmp_path):
    """Images in an elit run file (NSID, through SciFiReaders) read back with their pixel size."""
    from elit.store import RunStore

    run = tmp_path / "run.h5"
    store = RunStore.create(run)
    frames = ramp(n=2) + np.float32(0.25)  # not whole numbers: stays float32 (counts are stored as uint8/uint16)
    store.write_input("frames", frames, 0.2)
    d = read(f"{run}:/inputs/frames")
    np.testing.assert_array_equal(d.frames, frames)
    assert d.dtype == "float32"  # read with h5py: not SciFiReaders' float64 copy
    assert d.pixel_size == pytest.approx(0.2) and d.metadata["pixel_size_source"] == "NSID dimension scales"
    assert read(f"{run}:/inputs/frames/frames").pixel_size == pytest.approx(0.2)
    assert read(run).frames.shape == (2, 32, 40)  # only one image in the file so far
    with store.stage(0, "predict", {"name": "p"}) as st:
        st.add_image("mean", frames[:, None], ["frame", "class", "row", "col"], pixel_size=0.2)
    assert "holds 2 signals" in read(run).metadata["notes"][0]
    m = read(f"{run}:/iterations/iter_000/predict/mean")
    assert m.frames.shape == (2, 32, 40) and m.pixel_size == pytest.approx(0.2)


def test_damaged_dm_file(tmp_path):
    f = tmp_path / "broken.dm3"
    f.write_bytes(b"\x00\x00\x00\x03" + b"\x00" * 64)
    with pytest.raises(InputError, match="broken.dm3"):
        read(f)


# ------------------------------------------------------------------ property: round trips
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=hst.integers(1, 3),
    h=hst.integers(16, 40),
    w=hst.integers(16, 40),
    dtype=hst.sampled_from(["uint8", "uint16", "int16", "int32", "float32", "float64", "float16"]),
    fmt=hst.sampled_from(["npy", "tif"]),
    seed=hst.integers(0, 2**16),
)
def test_round_trip_property(tmp_path, n, h, w, dtype, fmt, seed):
    import tifffile

    rng = np.random.default_rng(seed)
    data = (rng.random((n, h, w)) * 200).astype(dtype)
    data.flat[0], data.flat[1] = 0, 100  # never constant
    if n > 1:
        data[:, 0, 0], data[:, 0, 1] = 0, 100
    f = tmp_path / f"img_{n}_{h}_{w}_{dtype}.{fmt}"
    if fmt == "npy":
        np.save(f, data if n > 1 else data[0])
    else:
        tifffile.imwrite(f, data if n > 1 else data[0])
    got = read(f)
    assert got.frames.dtype == np.float32 and got.frames.shape == (n, h, w)
    np.testing.assert_array_equal(got.frames, data.astype(np.float32))
    assert got.dtype == dtype
