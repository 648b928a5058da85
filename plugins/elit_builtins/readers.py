"""Built-in image readers.

Vendor formats (Velox EMD, TIA, MRC, DigitalMicrograph, TIFF with its
calibrations, HyperSpy hspy/zspy, PNG/JPEG) are read through rosettasciio,
pycroscopy/NSID files through SciFiReaders, NumPy and plain HDF5 files
directly.  Each reader lists a file's signals without reading their data;
:func:`elit.readers.read_image` then chooses one, checks its size, reads it and
checks the frames.  Readers never unpickle and never evaluate strings found in
files.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np

from elit.errors import InputError
from elit.readers import (
    ImageData,
    Signal,
    compact_metadata,
    image_from_signals,
    image_width,
    pixel_size_from_json,
    read_json_file,
    signal_from_axes,
)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class _Deferred:
    """Shape and dtype now, data on ``compute()`` (what :func:`signal_from_axes` needs of lazy data)."""

    def __init__(self, shape, dtype, fn):
        self.shape, self.dtype, self._fn = tuple(int(n) for n in shape), np.dtype(dtype), fn

    def compute(self) -> np.ndarray:
        return np.asarray(self._fn())


def _problem_of_shape(shape: tuple) -> str | None:
    """Why an array of this shape is not an image or stack (validate_frames arranges the rest)."""
    dims = sorted((int(n) for n in shape), reverse=True)
    if len(dims) < 2:
        return f"expected an image (H, W) or a stack (N, H, W), got {len(dims)} dimensions {tuple(shape)}"
    if len(dims) > 4:
        return f"{len(dims)}-D data (shape {tuple(shape)}), not an image or a stack"
    if dims[1] < 16:
        size = f"{shape[-2]}x{shape[-1]} pixels" if len(shape) == 2 else f"shape {tuple(shape)}"
        return f"frames of {size} are too small (at least 16x16)"
    return None


class SignalReader:
    """Base of readers that list a file's signals; ``read`` chooses one (see :func:`elit.readers.choose_signal`)."""

    name = ""
    suffixes: tuple = ()
    description = ""

    @classmethod
    def signals(cls, path) -> list[Signal]:
        raise NotImplementedError

    @classmethod
    def read(cls, path, key=None) -> ImageData:
        return image_from_signals(Path(path), cls.signals(Path(path)), key, cls.name)


# ---------------------------------------------------------------------------- rosettasciio
def rsciio_read(module: str, path: Path, **options) -> list[dict]:
    """``rsciio.<module>.file_reader(path, lazy=True)``: the file's signal dicts, data not read yet."""
    try:
        file_reader = _rsciio_file_reader(module)
    except ImportError as exc:
        raise InputError(f"{path}: reading this format needs rosettasciio ({exc}); pip install rosettasciio") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return file_reader(str(path), **{"lazy": True, **options})


def _rsciio_file_reader(module: str):
    """``rsciio.<module>.file_reader``, imported only when a file of that format is read."""
    if module == "emd":
        from rsciio.emd import file_reader
    elif module == "tia":
        from rsciio.tia import file_reader
    elif module == "mrc":
        from rsciio.mrc import file_reader
    elif module == "digitalmicrograph":
        from rsciio.digitalmicrograph import file_reader
    elif module == "hspy":
        from rsciio.hspy import file_reader
    elif module == "zspy":
        from rsciio.zspy import file_reader
    elif module == "tiff":
        from rsciio.tiff import file_reader
    elif module == "image":
        from rsciio.image import file_reader
    else:
        raise ValueError(f"no rosettasciio reader is wired for {module!r}")
    return file_reader


def rsciio_signals(dicts: list[dict], library: str) -> list[Signal]:
    """:class:`Signal` objects from rosettasciio's signal dicts (``data``, ``axes``, ``metadata``)."""
    out = []
    for i, d in enumerate(dicts):
        md = d.get("metadata") or {}
        title = str((md.get("General") or {}).get("title") or "")
        kind = str((md.get("Signal") or {}).get("signal_type") or "")
        sig = signal_from_axes(i, title, d["data"], [dict(a) for a in d.get("axes") or []], signal_type=kind)
        sig.metadata = {"library": library, "signal_type": kind} if kind else {"library": library}
        out.append(sig)
    return out


def _rsciio_version() -> str:
    try:
        from importlib.metadata import version

        return version("rosettasciio")
    except Exception:  # noqa: BLE001 - only for provenance text
        return "?"


class RsciioReader(SignalReader):
    """A format read by one rosettasciio plugin (``module``)."""

    module = ""
    options: dict = {}

    @classmethod
    def signals(cls, path) -> list[Signal]:
        dicts = rsciio_read(cls.module, Path(path), **cls.options)
        return rsciio_signals(dicts, f"rosettasciio {_rsciio_version()} ({cls.module})")


class EmdReader(RsciioReader):
    name = "emd"
    suffixes = (".emd",)
    module = "emd"
    description = "Thermo Fisher Velox and other EMD files (rosettasciio): every image signal, calibrated"


class TiaReader(RsciioReader):
    name = "tia"
    suffixes = (".ser", ".emi")
    module = "tia"
    description = "FEI/TIA .ser + .emi (rosettasciio); the .emi holds the metadata"


class MrcReader(RsciioReader):
    name = "mrc"
    suffixes = (".mrc",)
    module = "mrc"
    description = "MRC images and stacks, e.g. Direct Electron (rosettasciio); pixel size from the header"


class DigitalMicrographReader(RsciioReader):
    name = "dm"
    suffixes = (".dm3", ".dm4")
    module = "digitalmicrograph"
    description = "Gatan DigitalMicrograph .dm3/.dm4 (rosettasciio); pixel size from the calibration"


class HspyReader(RsciioReader):
    name = "hspy"
    suffixes = (".hspy",)
    module = "hspy"
    description = "HyperSpy .hspy (rosettasciio): navigation axes become frames"


class ZspyReader(RsciioReader):
    name = "zspy"
    suffixes = (".zspy",)
    module = "zspy"
    folders = True  # a zarr directory store
    description = "HyperSpy .zspy zarr stores (rosettasciio; needs zarr 2)"

    @classmethod
    def signals(cls, path) -> list[Signal]:
        try:
            import zarr
        except ImportError:
            raise InputError(f"{path}: reading .zspy needs zarr 2 (pip install 'zarr<3')") from None
        if int(zarr.__version__.split(".")[0]) >= 3:
            raise InputError(
                f"{path}: rosettasciio reads .zspy only with zarr 2, and zarr {zarr.__version__} is installed "
                "(abTEM, used by elit-multislice, needs zarr 3); convert the file to .hspy with HyperSpy"
            )
        return super().signals(path)


class TiffReader(RsciioReader):
    """TIFF through rosettasciio (ImageJ, DigitalMicrograph, FEI, Zeiss, Olympus SIS, TVIPS, JEOL calibrations)."""

    name = "tiff"
    suffixes = (".tif", ".tiff")
    module = "tiff"
    description = "TIFF images and stacks (rosettasciio): ImageJ, DM, FEI, Zeiss, Olympus SIS, TVIPS calibrations"

    @classmethod
    def signals(cls, path) -> list[Signal]:
        import tifffile

        path = Path(path)
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                planar_rgb = page.photometric == tifffile.PHOTOMETRIC.RGB and page.planarconfig == 2
                unit = (tif.imagej_metadata or {}).get("unit")
                res_unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 1
                series = tif.series[0]
                shape, dtype = series.shape, series.dtype
        except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
            raise InputError(f"{path} is not a readable TIFF file ({exc})") from None
        if planar_rgb:  # rosettasciio 0.15 mis-shapes planar RGB; tifffile reads (S, H, W): frames
            data = _Deferred(shape, dtype, lambda: tifffile.imread(path))
            sig = signal_from_axes(0, "", data, [{"navigate": True}, {}, {}])
            sig.notes.append("planar RGB TIFF: each sample plane read as a frame")
            sig.metadata = {"library": "tifffile"}
            return [sig]
        dicts = rsciio_read("tiff", path)
        if unit and unit != "micron":  # rosettasciio keeps ImageJ units only when they are "micron"
            unit = {"\\u00B5m": "µm", "\\u00c5": "Å", "A": "Å"}.get(unit, unit)
            for d in dicts:
                for ax in d["axes"][-2:]:
                    if ax.get("units") in (None, "") and float(ax.get("scale", 1)) != 1.0:
                        ax["units"] = unit
        found = rsciio_signals(dicts, f"rosettasciio {_rsciio_version()} (tiff)")
        if res_unit in (2, 3) and all(s.pixel_size is None for s in found):
            # plain resolution tags: trusted only when they give an atomic-scale pixel size
            forced = rsciio_signals(rsciio_read("tiff", path, force_read_resolution=True), "rosettasciio (tiff)")
            for s, f in zip(found, forced):
                if f.pixel_size is not None and 0.001 <= f.pixel_size <= 10:
                    s.pixel_size, s.calibration = f.pixel_size, f.calibration + " (TIFF resolution tags)"
        return found


class ImageReader(SignalReader):
    """PNG, JPEG, BMP, GIF through rosettasciio; colour becomes gray.  These formats hold no pixel size."""

    name = "png"
    suffixes = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
    description = "PNG/JPEG/BMP/GIF images (rosettasciio, imageio); colour -> gray; no pixel size"

    @classmethod
    def signals(cls, path) -> list[Signal]:
        import imageio.v3 as iio

        path = Path(path)
        props = iio.improps(path)  # header only: the size is checked before decoding
        shape = tuple(props.shape)

        def load():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return rsciio_read("image", path, lazy=False)[0]["data"]

        sig = Signal(0, "", shape, str(props.dtype), load, problem=_problem_of_shape(shape[:2]))
        if len(shape) == 3 and shape[-1] >= 3:
            sig.notes.append("converted colour to gray")
        sig.metadata = {"library": f"rosettasciio {_rsciio_version()} (image)"}
        return [sig]


# ---------------------------------------------------------------------------- NumPy
def _sidecar_json(path: Path, shape: tuple[int, ...], sig: Signal) -> None:
    """Pixel size from ``<stem>.json`` beside the image, if it states a field of view."""
    side = read_json_file(path.with_suffix(".json"))
    if side is None:
        return
    sig.metadata["file_metadata"] = compact_metadata(side)
    px, why = pixel_size_from_json(side, image_width(shape))
    name = path.with_suffix(".json").name
    if px is not None:
        sig.pixel_size, sig.calibration = px, f"{name}: {why}"
        sig.metadata["pixel_size_source"] = f"{name}: {why}"
    elif why:
        sig.notes.append(f"{name}: {why}")


def _npy_header(fh) -> tuple[tuple, np.dtype]:
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = read(fh)
    return tuple(int(n) for n in shape), dtype


class NpyReader(SignalReader):
    """NumPy ``.npy``/``.npz`` arrays (never pickles); a ``<stem>.json`` sidecar may give the field of view."""

    name = "npy"
    suffixes = (".npy", ".npz")
    description = "NumPy .npy / .npz arrays (no pickles); pixel size from a <stem>.json sidecar"

    @classmethod
    def signals(cls, path) -> list[Signal]:
        path = Path(path)
        headers = []
        try:
            if path.suffix.lower() == ".npz":
                with zipfile.ZipFile(path) as z:
                    for member in z.namelist():
                        if member.endswith(".npy"):
                            with z.open(member) as fh:
                                headers.append((member[:-4], *_npy_header(fh)))
            else:
                with open(path, "rb") as fh:
                    headers.append(("", *_npy_header(fh)))
        except (OSError, ValueError, SyntaxError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(f"{path} is not a readable NumPy file ({exc})") from None
        out = []
        for i, (member, shape, dtype) in enumerate(headers):
            def load(member=member):
                loaded = np.load(path, allow_pickle=False)
                if member:
                    with loaded:
                        return loaded[member]
                return loaded

            problem = _problem_of_shape(shape)
            if dtype.hasobject:
                problem = "Python objects (a pickle); elit never loads pickles: save a plain numeric array"
            sig = Signal(i, member, shape, str(dtype), load, problem=problem)
            _sidecar_json(path, shape, sig)
            out.append(sig)
        return out


# ---------------------------------------------------------------------------- HDF5
def _attr(obj, name, default=None):
    value = obj.attrs.get(name, default)
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _open_hdf5(path: Path):
    import h5py

    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None
    if head != _HDF5_MAGIC:
        raise InputError(f"{path} is not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path} is a damaged or truncated HDF5 file ({str(exc).splitlines()[0]})") from None


def _h5_loader(path: Path, name: str):
    def load():
        import h5py

        with h5py.File(path, "r") as f:
            return f[name][()]

    return load


def _json_pixel_size(ds, sig: Signal) -> None:
    """AICrystallographer-style JSON metadata (an attribute, or a scalar ``metadata`` dataset beside)."""
    text = _attr(ds, "metadata") if "metadata" in ds.attrs else None
    if text is None and "metadata" in ds.parent and getattr(ds.parent["metadata"], "shape", None) == ():
        text = ds.parent["metadata"][()]
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        info = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        info = None
    if isinstance(info, dict):
        sig.metadata["file_metadata"] = compact_metadata(info)
        px, why = pixel_size_from_json(info, image_width(ds.shape))
        if px is not None:
            sig.pixel_size, sig.calibration = px, f"JSON metadata: {why}"
            sig.metadata["pixel_size_source"] = f"JSON metadata: {why}"
        elif why:
            sig.notes.append(f"JSON metadata: {why}")


def _plain_signals(path: Path, f) -> list[Signal]:
    import h5py

    found: list = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biufc" and "CLASS" not in obj.attrs and obj.ndim:
            found.append(obj)

    f.visititems(visit)
    out = []
    for i, ds in enumerate(found):
        problem = _problem_of_shape(ds.shape)
        if ds.dtype.kind == "c":
            problem = f"complex data ({ds.dtype}); export the magnitude or the phase as a real image"
        sig = Signal(i, ds.name, tuple(ds.shape), str(ds.dtype), _h5_loader(path, ds.name), problem=problem)
        _json_pixel_size(ds, sig)
        out.append(sig)
    return out


def _is_nsid(ds) -> bool:
    """Whether a dataset is an NSID main dataset (pyNSID writes these attributes)."""
    return all(k in ds.attrs for k in ("data_type", "quantity", "main_data_name"))


def _nsid_signals(path: Path) -> list[Signal]:
    """Main datasets of a pycroscopy/NSID file (SciFiReaders), with the pixel size from their dimensions."""
    try:
        from SciFiReaders import NSIDReader
    except ImportError:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets = NSIDReader(str(path)).read()
    out = []
    for i, ds in enumerate((datasets or {}).values()):
        h5 = ds.h5_dataset
        axes, spatial = [], []
        for a in range(ds.ndim):
            dim = ds._axes[a]
            kind = str(getattr(dim.dimension_type, "name", dim.dimension_type)).upper()
            values = np.asarray(dim.values, dtype=float)
            step = float(values[1] - values[0]) if len(values) > 1 else 1.0
            if kind == "SPATIAL":
                spatial.append(a)
            axes.append({"name": dim.name, "units": dim.units, "scale": step, "navigate": kind != "SPATIAL"})
        data = _Deferred(h5.shape, h5.dtype, _h5_loader(path, h5.name))
        sig = signal_from_axes(i, h5.name, data, axes)
        data_type = str(getattr(ds.data_type, "name", ds.data_type))
        if data_type not in ("IMAGE", "IMAGE_STACK") and len(spatial) != 2:
            sig.problem = f"NSID {data_type} data (shape {h5.shape}), not an image or a stack"
        sig.metadata = {"library": "SciFiReaders (NSID)", "quantity": str(ds.quantity), "data_type": data_type}
        if sig.pixel_size is not None:
            sig.metadata["pixel_size_source"] = "NSID dimension scales"
        out.append(sig)
    return out


class Hdf5Reader(SignalReader):
    """HDF5 files: HyperSpy (rosettasciio), NSID (SciFiReaders), AICrystallographer and plain datasets."""

    name = "hdf5"
    suffixes = (".h5", ".hdf5", ".hdf", ".he5", ".nsid")
    description = (
        "HDF5: HyperSpy layout (rosettasciio), sidpy/NSID (SciFiReaders; pixel size from dimension scales), "
        "AICrystallographer (image_data + JSON metadata) or plain datasets; FILE:/path picks one"
    )

    @classmethod
    def signals(cls, path) -> list[Signal]:
        path = Path(path)
        with _open_hdf5(path) as f:
            if str(_attr(f, "file_format", "")).lower() == "hyperspy":
                hyperspy, plain = True, []
            else:
                hyperspy, plain = False, _plain_signals(path, f)
                nsid = any(_is_nsid(f[s.name]) for s in plain)
        if hyperspy:
            return rsciio_signals(rsciio_read("hspy", path), f"rosettasciio {_rsciio_version()} (hspy)")
        return (_nsid_signals(path) if nsid else []) or plain


READERS = [NpyReader, TiffReader, ImageReader, Hdf5Reader, HspyReader, ZspyReader, DigitalMicrographReader,
           EmdReader, TiaReader, MrcReader]
