"""Built-in image readers: npy/npz, tif/tiff, png, h5/hdf5 (NSID, HyperSpy, plain), hspy, dm3/dm4.

Each reader returns the raw frames; :func:`elit.readers.read_image` then checks
them, converts to float32 and adds the checksum.  Readers never unpickle and
never evaluate strings found in files.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from elit.errors import InputError
from elit.readers import (
    ImageData,
    compact_metadata,
    guess_pixel_size,
    image_width,
    length_to_angstrom,
    pixel_size_from_json,
    read_json_file,
    to_gray,
)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _square_pixel(sizes: list[float | None], what: str, notes: list[str]) -> float | None:
    """One pixel size from the row and column sizes, if both are known and agree within 1%."""
    if len(sizes) < 2 or any(s is None for s in sizes):
        return None
    a, b = sizes[-2], sizes[-1]
    if abs(a - b) > 0.01 * max(a, b):
        notes.append(f"{what}: pixels are not square ({a:.4g} x {b:.4g} Å); pixel size left unknown")
        return None
    return float(b)


def _sidecar_json(path: Path, shape: tuple[int, ...], meta: dict) -> float | None:
    """Pixel size from ``<stem>.json`` beside the image, if it states a field of view."""
    side = read_json_file(path.with_suffix(".json"))
    if side is None:
        return None
    meta["file_metadata"] = compact_metadata(side)
    px, why = pixel_size_from_json(side, image_width(shape))
    if px is not None:
        meta["pixel_size_source"] = f"{path.with_suffix('.json').name}: {why}"
    elif why:
        meta.setdefault("notes", []).append(f"{path.with_suffix('.json').name}: {why}")
    return px


# ---------------------------------------------------------------------------- NumPy
class NpyReader:
    """NumPy ``.npy``/``.npz`` arrays (never pickles); a ``<stem>.json`` sidecar may give the field of view."""

    name = "npy"
    suffixes = (".npy", ".npz")
    description = "NumPy .npy / .npz arrays (no pickles); pixel size from a <stem>.json sidecar"

    @classmethod
    def read(cls, path, key=None) -> ImageData:
        path = Path(path)
        try:
            loaded = np.load(path, allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise InputError(
                    f"{path} holds Python objects (a pickle); elit never loads pickles: save a plain numeric array"
                ) from None
            raise InputError(f"{path} is not a readable NumPy file ({exc})") from None
        except (OSError, EOFError) as exc:
            raise InputError(f"{path} is not a readable NumPy file ({exc})") from None
        meta: dict = {"reader": cls.name}
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                names = list(loaded.files)
                if key is not None:
                    if key not in names:
                        raise InputError(f"{path} has no array {key!r}; arrays: {', '.join(names)}")
                    chosen = key
                else:
                    images = [n for n in names if loaded[n].ndim >= 2]
                    if len(images) != 1:
                        raise InputError(
                            f"{path} holds {len(images)} image arrays ({', '.join(images) or 'none'}); "
                            f"pick one with {path}:NAME"
                        )
                    chosen = images[0]
                try:
                    arr = loaded[chosen]
                except ValueError:
                    raise InputError(f"{path}: array {chosen!r} holds Python objects; elit never loads pickles") from None
                meta["key"] = chosen
        else:
            if key is not None:
                raise InputError(f"{path} is a single array; drop ':{key}'")
            arr = loaded
        px = _sidecar_json(path, arr.shape, meta)
        return ImageData(arr, px, meta, str(path), dtype=str(arr.dtype))


# ---------------------------------------------------------------------------- TIFF
_TIFF_UNITS = {2: 2.54e8, 3: 1e8}  # ResolutionUnit INCH, CENTIMETER -> Å


class TiffReader:
    """TIFF images and stacks (``tifffile``); pixel size from ImageJ, FEI or physical resolution tags."""

    name = "tiff"
    suffixes = (".tif", ".tiff")
    description = "TIFF images and stacks via tifffile; pixel size from ImageJ/FEI metadata or physical resolution"

    @classmethod
    def read(cls, path, key=None) -> ImageData:
        import tifffile

        path = Path(path)
        meta: dict = {"reader": cls.name}
        notes: list[str] = []
        try:
            with tifffile.TiffFile(path) as tif:
                index = int(key) if key is not None else 0
                if not 0 <= index < len(tif.series):
                    raise InputError(f"{path} has {len(tif.series)} image series; pick 0..{len(tif.series) - 1}")
                series = tif.series[index]
                arr = series.asarray()
                axes = series.axes
                px = cls._pixel_size(tif, series, meta, notes)
        except InputError:
            raise
        except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
            raise InputError(f"{path} is not a readable TIFF file ({exc})") from None
        if "S" in axes and axes.index("S") == len(axes) - 1 and arr.shape[-1] in (2, 3, 4):
            notes.append("converted colour samples to gray (luminance)")
            arr = to_gray(arr)
            axes = axes[:-1]
        if arr.ndim > 3 and axes.endswith("YX"):  # e.g. TZCYX: every plane becomes a frame
            notes.append(f"flattened TIFF axes {axes} into frames")
            arr = arr.reshape(-1, *arr.shape[-2:])
        meta["axes"] = axes
        meta["notes"] = notes
        return ImageData(arr, px, meta, str(path), dtype=str(arr.dtype))

    @staticmethod
    def _pixel_size(tif, series, meta: dict, notes: list[str]) -> float | None:
        page = series.pages[0] if series.pages else tif.pages[0]
        tags = page.tags

        def resolution(tag: str) -> float | None:
            t = tags.get(tag)
            if t is None:
                return None
            num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
            return num / den if num and den else None

        xres, yres = resolution("XResolution"), resolution("YResolution")
        ij = tif.imagej_metadata or {}
        unit = ij.get("unit")
        if unit and xres:
            unit = {"\\u00B5m": "µm", "micron": "µm"}.get(unit, unit)
            px = length_to_angstrom(1.0 / xres, unit)
            if px:
                meta["pixel_size_source"] = f"ImageJ metadata: {1.0 / xres:.6g} {unit}/px"
                return px
        fei = getattr(tif, "fei_metadata", None) or {}
        width = (fei.get("Scan") or {}).get("PixelWidth") if isinstance(fei, dict) else None
        if width:
            px = length_to_angstrom(width, "m")
            if px:
                meta["pixel_size_source"] = f"FEI metadata Scan/PixelWidth = {width} m"
                return px
        runit = tags.get("ResolutionUnit")
        factor = _TIFF_UNITS.get(int(runit.value)) if runit is not None else None
        if factor and xres and yres:
            sizes = [factor / yres, factor / xres]
            px = _square_pixel(sizes, "TIFF resolution", notes)
            if px is not None and 0.001 <= px <= 10:  # only an atomic-scale value is obviously physical
                meta["pixel_size_source"] = f"TIFF resolution tags ({xres:.6g} px per unit {int(runit.value)})"
                return px
        return None


# ---------------------------------------------------------------------------- PNG
class PngReader:
    """PNG images (imageio, else matplotlib); colour is converted to gray.  No pixel size."""

    name = "png"
    suffixes = (".png",)
    description = "PNG images via imageio (16-bit kept) or matplotlib; colour -> gray; no pixel size"

    @classmethod
    def read(cls, path, key=None) -> ImageData:
        path = Path(path)
        if key is not None:
            raise InputError(f"{path} is a single image; drop ':{key}'")
        notes: list[str] = []
        try:
            try:
                import imageio.v3 as iio

                arr = np.asarray(iio.imread(path))
                library = "imageio"
            except ImportError:
                import matplotlib.image as mpimg

                arr = np.asarray(mpimg.imread(path, format="png"))
                library = "matplotlib"
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{path} is not a readable PNG file ({exc})") from None
        dtype = str(arr.dtype)
        if arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):
            channels = arr[..., : min(3, arr.shape[-1])]
            if arr.shape[-1] >= 3 and np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(
                channels[..., 0], channels[..., 2]
            ):
                arr = arr[..., 0]
                notes.append("gray image stored as RGB: took one channel")
            else:
                arr = to_gray(arr)
                notes.append("converted colour to gray (luminance)")
        meta = {"reader": cls.name, "library": library, "notes": notes}
        return ImageData(arr, None, meta, str(path), dtype=dtype)


# ---------------------------------------------------------------------------- HDF5
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


def _is_image_dataset(ds) -> bool:
    shape = ds.shape
    if ds.dtype.kind not in "biuf" or len(shape) not in (2, 3, 4):
        return False
    dims = sorted(shape, reverse=True)
    return dims[1] >= 16


def _image_datasets(group) -> list:
    import h5py

    found: list = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and _is_image_dataset(obj):
            if "CLASS" in obj.attrs:  # dimension scales
                return
            found.append(obj)

    group.visititems(visit)
    return found


def _attr(obj, name, default=None):
    value = obj.attrs.get(name, default)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return value


def _is_hyperspy_experiment(group) -> bool:
    return "data" in group and any(k.startswith("axis-") for k in group)


def _read_hyperspy(group, path: Path) -> ImageData:
    """An ``Experiments/<name>`` group of a HyperSpy file (axes stored in array order)."""
    data = group["data"]
    arr = data[()]
    notes: list[str] = []
    meta: dict = {"reader": "hspy", "key": group.name, "format": "HyperSpy"}
    axes = []
    for i in range(arr.ndim):
        ax = group.get(f"axis-{i}")
        axes.append({k: _attr(ax, k) for k in ax.attrs} if ax is not None else {})
    signal = [i for i, ax in enumerate(axes) if not bool(ax.get("navigate", False))]
    if len(signal) != 2:
        raise InputError(
            f"{path}:{group.name} is not an image: it has {len(signal)} signal axes "
            f"(shape {arr.shape}); elit reads 2-D images and stacks of them"
        )
    nav = [i for i in range(arr.ndim) if i not in signal]
    if nav:
        arr = np.moveaxis(arr, nav, list(range(len(nav)))).reshape(-1, *[arr.shape[i] for i in signal])
    sizes = []
    for i in signal:
        ax = axes[i]
        scale = ax.get("scale", 1.0)
        units = ax.get("units")
        if units in (None, "", "<undefined>", "_None_"):
            px, why = guess_pixel_size(float(scale), ("nm", "Å", "pm", "µm"))
            notes.append(f"axes scale {scale}: {why}")
        else:
            px = length_to_angstrom(scale, units)
        sizes.append(px)
    notes = list(dict.fromkeys(notes))  # both axes usually give the same note
    px = _square_pixel(sizes, "HyperSpy axes", notes)
    if px is not None:
        meta["pixel_size_source"] = f"HyperSpy axes scale {axes[signal[-1]].get('scale')} {axes[signal[-1]].get('units') or '(units not stated)'}"
    general = group.get("metadata/General")
    if general is not None and _attr(general, "title"):
        meta["title"] = str(_attr(general, "title"))
    meta["notes"] = notes
    return ImageData(arr, px, meta, str(path), dtype=str(data.dtype))


def _nsid_pixel_size(ds, notes: list[str]) -> tuple[float | None, list[int]]:
    """Pixel size from the spatial dimension scales of an NSID dataset, and the spatial axes."""
    sizes, spatial = [], []
    for axis, dim in enumerate(ds.dims):
        if len(dim) == 0:
            continue
        scale = dim[0]
        kind = str(_attr(scale, "dimension_type", "")).upper()
        units = _attr(scale, "units", "")
        if kind == "SPATIAL" or (kind == "" and length_to_angstrom(1.0, units)):
            spatial.append(axis)
            values = scale[()]
            step = float(values[1] - values[0]) if len(values) > 1 else None
            sizes.append(length_to_angstrom(step, units) if step else None)
    return _square_pixel(sizes, "NSID dimensions", notes), spatial


def _read_dataset(ds, path: Path, reader: str) -> ImageData:
    """A plain or NSID dataset; AICrystallographer-style JSON metadata is used for the field of view."""
    arr = ds[()]
    notes: list[str] = []
    meta: dict = {"reader": reader, "key": ds.name}
    px = None
    if len(ds.dims) and any(len(d) for d in ds.dims):
        px, spatial = _nsid_pixel_size(ds, notes)
        if len(spatial) == 2 and spatial != [arr.ndim - 2, arr.ndim - 1]:
            others = [i for i in range(arr.ndim) if i not in spatial]
            arr = np.moveaxis(arr, others + spatial, list(range(arr.ndim)))
            notes.append(f"moved spatial axes {spatial} last")
        if px is not None:
            meta["pixel_size_source"] = "NSID dimension scales"
        for key in ("quantity", "units", "data_type", "title", "source"):
            if key in ds.attrs:
                meta[key] = str(_attr(ds, key))
    if px is None:
        text = None
        if "metadata" in ds.attrs:
            text = _attr(ds, "metadata")
        elif "metadata" in ds.parent and getattr(ds.parent["metadata"], "shape", None) == ():
            text = ds.parent["metadata"][()]
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if isinstance(text, str):
            try:
                info = json.loads(text)
            except ValueError:
                info = None
            if isinstance(info, dict):
                meta["file_metadata"] = compact_metadata(info)
                px, why = pixel_size_from_json(info, image_width(arr.shape))
                if px is not None:
                    meta["pixel_size_source"] = f"JSON metadata: {why}"
                elif why:
                    notes.append(f"JSON metadata: {why}")
    meta["notes"] = notes
    return ImageData(arr, px, meta, str(path), dtype=str(ds.dtype))


def _candidates_text(datasets, path: Path) -> str:
    listed = ", ".join(f"{d.name} {d.shape}" for d in datasets[:10])
    more = f" and {len(datasets) - 10} more" if len(datasets) > 10 else ""
    return f"{listed}{more}; pick one with {path}:{datasets[0].name}"


def _read_hdf5(path: Path, key: str | None, reader: str) -> ImageData:
    import h5py

    with _open_hdf5(path) as f:
        if key is not None:
            obj = f.get(key)
            if obj is None:
                found = _image_datasets(f)
                hint = f"; images: {_candidates_text(found, path)}" if found else ""
                raise InputError(f"{path} holds nothing at {key!r}{hint}")
            if isinstance(obj, h5py.Dataset):
                if obj.dtype.kind not in "biuf" or obj.ndim < 2:
                    raise InputError(f"{path}:{key} is not an image (shape {obj.shape}, dtype {obj.dtype})")
                return _read_dataset(obj, path, reader)
            if _is_hyperspy_experiment(obj):
                return _read_hyperspy(obj, path)
            base = obj.name.rsplit("/", 1)[-1]
            if isinstance(obj.get(base), h5py.Dataset):  # NSID group holding its main dataset
                return _read_dataset(obj[base], path, reader)
            group = obj
        else:
            group = f
            if str(_attr(f, "file_format", "")).lower() == "hyperspy" and "Experiments" in f:
                experiments = [g for g in f["Experiments"].values() if isinstance(g, h5py.Group)]
                images = [g for g in experiments if _is_hyperspy_experiment(g)]
                if len(images) == 1:
                    return _read_hyperspy(images[0], path)
                if images:
                    names = ", ".join(g.name for g in images)
                    raise InputError(f"{path} holds {len(images)} HyperSpy signals ({names}); pick one with {path}:NAME")
        found = _image_datasets(group)
        if not found:
            raise InputError(f"{path} holds no image dataset (2-D or 3-D numeric, at least 16x16)")
        if len(found) > 1:
            raise InputError(f"{path} holds {len(found)} image datasets: {_candidates_text(found, path)}")
        return _read_dataset(found[0], path, reader)


class Hdf5Reader:
    """HDF5 files: NSID (sidpy/pyNSID), HyperSpy, AICrystallographer and plain files with one image."""

    name = "hdf5"
    suffixes = (".h5", ".hdf5", ".hdf", ".he5", ".nsid")
    description = (
        "HDF5: sidpy/NSID (pixel size from dimension scales), HyperSpy layout, AICrystallographer "
        "(image_data + JSON metadata), or any file with one 2-D/3-D dataset; file.h5:/path picks one"
    )

    @classmethod
    def read(cls, path, key=None) -> ImageData:
        return _read_hdf5(Path(path), key, cls.name)


class HspyReader:
    """HyperSpy ``.hspy`` files, read with h5py (no HyperSpy needed)."""

    name = "hspy"
    suffixes = (".hspy",)
    description = "HyperSpy .hspy files (Experiments/<name>/data with axes), read with h5py"

    @classmethod
    def read(cls, path, key=None) -> ImageData:
        return _read_hdf5(Path(path), key, cls.name)


# ---------------------------------------------------------------------------- Digital Micrograph
class DigitalMicrographReader:
    """Gatan Digital Micrograph ``.dm3``/``.dm4`` via SciFiReaders (pycroscopy)."""

    name = "dm"
    suffixes = (".dm3", ".dm4")
    description = "Gatan Digital Micrograph .dm3/.dm4 via SciFiReaders (pycroscopy); pixel size from calibration"

    @classmethod
    def read(cls, path, key=None) -> ImageData:
        path = Path(path)
        try:
            from SciFiReaders import DMReader
        except ImportError:
            raise InputError(
                f"{path}: reading Digital Micrograph files needs SciFiReaders (pip install SciFiReaders)"
            ) from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                result = DMReader(str(path)).read()
            except Exception as exc:  # the reader raises many kinds on a damaged file
                raise InputError(f"{path} is not a readable Digital Micrograph file ({type(exc).__name__}: {exc})") from None
        datasets = result if isinstance(result, dict) else {"Channel_000": result}
        images = {k: d for k, d in datasets.items() if d.ndim >= 2}
        if key is not None:
            if key not in datasets:
                raise InputError(f"{path} has no channel {key!r}; channels: {', '.join(datasets)}")
            chosen = key
        elif len(images) == 1:
            chosen = next(iter(images))
        else:
            listed = ", ".join(f"{k} {tuple(d.shape)}" for k, d in images.items()) or "none"
            raise InputError(f"{path} holds {len(images)} images ({listed}); pick one with {path}:NAME")
        ds = datasets[chosen]
        arr = np.asarray(ds.compute() if hasattr(ds, "compute") else ds)
        notes: list[str] = []
        sizes, spatial = [], []
        for axis in range(arr.ndim):
            dim = ds._axes[axis]
            if str(getattr(dim.dimension_type, "name", dim.dimension_type)).upper() == "SPATIAL":
                spatial.append(axis)
                values = np.asarray(dim.values, dtype=float)
                step = float(values[1] - values[0]) if len(values) > 1 else None
                sizes.append(length_to_angstrom(step, dim.units) if step else None)
        if len(spatial) == 2 and spatial != [arr.ndim - 2, arr.ndim - 1]:
            others = [i for i in range(arr.ndim) if i not in spatial]
            arr = np.moveaxis(arr, others + spatial, list(range(arr.ndim)))
        px = _square_pixel(sizes, "DM calibration", notes)
        meta = {
            "reader": cls.name,
            "key": chosen,
            "library": "SciFiReaders",
            "title": str(getattr(ds, "title", "")),
            "quantity": str(getattr(ds, "quantity", "")),
            "units": str(getattr(ds, "units", "")),
            "file_metadata": compact_metadata(dict(getattr(ds, "metadata", {}) or {})),
            "notes": notes,
        }
        if px is not None:
            meta["pixel_size_source"] = f"DM calibration ({ds._axes[spatial[-1]].units})"
        return ImageData(arr, px, meta, str(path), dtype=str(arr.dtype))


READERS = [NpyReader, TiffReader, PngReader, Hdf5Reader, HspyReader, DigitalMicrographReader]
