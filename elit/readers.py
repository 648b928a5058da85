"""Reading experimental images: pick a reader by suffix, check and normalise the frames.

Readers are plugins (hook ``elit_register_readers``): classes with ``name``,
``suffixes``, ``description`` and a class method ``read(path, key=None) ->
ImageData``.  The built-ins (npy/npz, tif/tiff, png, h5/hdf5 incl. NSID and
HyperSpy, hspy, dm3/dm4) live in ``elit_builtins.readers``.

>>> data = read_image("scan.h5:/Measurement_000/Channel_000")   # doctest: +SKIP
>>> data.frames.shape, data.pixel_size                           # doctest: +SKIP
((1, 512, 512), 0.127)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elit.errors import InputError

log = logging.getLogger("elit")

MIN_SIZE = 16
"""Smallest frame side (pixels) accepted."""

MAX_PIXELS = 1 << 30
"""Most pixels (all frames together) accepted: 2**30, i.e. 4 GiB as float32.

The environment variable ``ELIT_MAX_PIXELS`` (an integer) changes it; so does
the ``max_pixels`` argument of :func:`read_image` and :func:`validate_frames`.
"""

MAX_CHANNELS_LAST = 8
"""A 3-D array ``(H, W, n)`` with ``n`` up to this and ``H, W`` larger is read as ``n`` frames stored channel-last."""

PLAUSIBLE_PIXEL_SIZE = (0.01, 2.0)
"""Pixel sizes (Å/px) taken as atomic resolution when guessing units that a file does not state."""

_LENGTH_UNITS = {
    "a": 1.0, "å": 1.0, "Å": 1.0, "angstrom": 1.0, "angstroms": 1.0, "ang": 1.0,
    "nm": 10.0, "nanometer": 10.0, "nanometers": 10.0, "nanometre": 10.0,
    "pm": 0.01, "picometer": 0.01,
    "um": 1e4, "µm": 1e4, "μm": 1e4, "micron": 1e4, "microns": 1e4, "micrometer": 1e4,
    "mm": 1e7, "m": 1e10,
}


@dataclass
class ImageData:
    """Frames read from a file, with what is known about them.

    Attributes
    ----------
    frames : ndarray, shape (N, H, W), float32
        The images (after :func:`read_image`: checked, finite, float32).
    pixel_size : float or None
        Å per pixel, when the file states it.
    metadata : dict
        JSON-compatible facts: ``reader``, ``key``, ``pixel_size_source``,
        ``notes`` (what was changed on reading), and what the file holds.
    source : str
        The path (and ``:key``) read.
    sha256 : str
        Checksum of the whole file.
    dtype : str
        Data type in the file (before conversion to float32).
    """

    frames: np.ndarray
    pixel_size: float | None = None
    metadata: dict = field(default_factory=dict)
    source: str = ""
    sha256: str = ""
    dtype: str = ""

    def __post_init__(self) -> None:
        if not self.dtype:
            self.dtype = str(np.asarray(self.frames).dtype)


# ------------------------------------------------------------------ pixel size helpers
def length_to_angstrom(value: Any, units: Any) -> float | None:
    """Convert a length with units (``"nm"``, ``"Å"``, ``"pm"``, ``"µm"``…) to Å; None if unknown.

    Reciprocal units (``1/nm``) and non-positive or non-finite values give None.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or v <= 0:
        return None
    u = str(units).strip() if units is not None else ""
    factor = _LENGTH_UNITS.get(u) or _LENGTH_UNITS.get(u.lower())
    return v * factor if factor else None


def guess_pixel_size(value: float, candidates=("nm", "Å", "pm")) -> tuple[float | None, str]:
    """Pixel size from a number whose units the file does not state.

    Accepts the reading only if exactly one of ``candidates`` gives an atomic
    resolution pixel size (:data:`PLAUSIBLE_PIXEL_SIZE`).  Returns
    ``(Å/px or None, explanation)``.
    """
    lo, hi = PLAUSIBLE_PIXEL_SIZE
    fits = [(u, length_to_angstrom(value, u)) for u in candidates]
    fits = [(u, a) for u, a in fits if a is not None and lo <= a <= hi]
    if len(fits) == 1:
        u, a = fits[0]
        return a, f"units not stated; read as {u}, the only reading that gives an atomic-resolution pixel size"
    if not fits:
        return None, f"units not stated and {value!r} is not an atomic-resolution pixel size in {', '.join(candidates)}"
    return None, f"units not stated and {value!r} is ambiguous ({' or '.join(u for u, _ in fits)})"


def pixel_size_from_json(meta: Any, width: int) -> tuple[float | None, str]:
    """Pixel size (Å/px) from JSON metadata that states a field of view, and where it came from.

    Understands ``field_of_view``/``field_of_view_x`` with ``field_of_view_units``
    (SciLink/AICrystallographer sidecars) and AICrystallographer's ``"scan size"``
    (nm when plausible; units are not stated).
    """
    if not isinstance(meta, dict) or width <= 0:
        return None, ""
    found = _find_keys(meta, ("field_of_view_x", "field_of_view", "fov_x", "fov"))
    if found:
        holder, key = found
        units = holder.get("field_of_view_units") or holder.get("fov_units") or holder.get("units")
        if units:
            fov = length_to_angstrom(holder[key], units)
            if fov:
                return fov / width, f"JSON {key} = {holder[key]} {units}"
        else:
            try:
                px, why = guess_pixel_size(float(holder[key]) / width)
            except (TypeError, ValueError):
                px, why = None, ""
            return px, f"JSON {key} = {holder[key]} ({why})"
    found = _find_keys(meta, ("scan size", "scan_size"))
    if found:
        holder, key = found
        try:
            per_px = float(holder[key]) / width
        except (TypeError, ValueError):
            return None, ""
        px, why = guess_pixel_size(per_px)
        return px, f"JSON '{key}' = {holder[key]} over {width} px ({why})"
    return None, ""


def _find_keys(meta: dict, keys: tuple[str, ...], depth: int = 0):
    for k in keys:
        if k in meta and not isinstance(meta[k], (dict, list)):
            return meta, k
    if depth < 4:
        for v in meta.values():
            if isinstance(v, dict):
                hit = _find_keys(v, keys, depth + 1)
                if hit:
                    return hit
    return None


def read_json_file(path: Path) -> dict | None:
    """A small JSON sidecar as a dict, or None if absent/unreadable (never evaluates code)."""
    try:
        if path.is_file() and path.stat().st_size < 10_000_000:
            obj = json.loads(path.read_text(encoding="utf-8"))
            return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None
    return None


# ------------------------------------------------------------------ frame checks
def to_gray(arr: np.ndarray) -> np.ndarray:
    """Luminance (float64) of RGB(A) values on the last axis; alpha dropped, gray+alpha gives the gray."""
    arr = np.asarray(arr)
    if arr.shape[-1] in (1, 2):
        return arr[..., 0].astype(np.float64)
    rgb = arr[..., :3].astype(np.float64)
    return rgb @ np.array([0.2125, 0.7154, 0.0721])


def image_width(shape: tuple[int, ...]) -> int:
    """Number of columns of an image or stack of this shape (channel-last stacks understood)."""
    if len(shape) >= 3 and shape[-1] <= MAX_CHANNELS_LAST < shape[-2]:
        return int(shape[-2])
    return int(shape[-1]) if shape else 0


def compact_metadata(meta: Any, max_items: int = 40, depth: int = 0) -> Any:
    """A JSON-safe copy of metadata with large nested tables summarised (to keep run files small)."""
    if isinstance(meta, dict):
        if depth > 3 or len(meta) > max_items:
            return f"<{len(meta)} entries omitted>"
        return {str(k): compact_metadata(v, max_items, depth + 1) for k, v in meta.items()}
    if isinstance(meta, (list, tuple)):
        if len(meta) > max_items:
            return f"<{len(meta)} items omitted>"
        return [compact_metadata(v, max_items, depth + 1) for v in meta]
    if isinstance(meta, np.ndarray):
        return meta.tolist() if meta.size <= max_items else f"<array {meta.shape} omitted>"
    if isinstance(meta, np.generic):
        return meta.item()
    if isinstance(meta, bytes):
        return meta.decode("utf-8", "replace")
    if meta is None or isinstance(meta, (str, int, float, bool)):
        return meta
    return str(meta)


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else ``$ELIT_MAX_PIXELS``, else :data:`MAX_PIXELS`."""
    if max_pixels is not None:
        return int(max_pixels)
    text = os.environ.get("ELIT_MAX_PIXELS", "").strip()
    if not text:
        return MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise InputError(f"ELIT_MAX_PIXELS={text!r} is not a number of pixels") from None
    if value <= 0:
        raise InputError(f"ELIT_MAX_PIXELS={text!r} must be positive")
    return value


def check_size(shape: tuple[int, ...], source: str = "image", max_pixels: int | None = None) -> None:
    """Refuse data with more pixels than :func:`max_pixels_limit` allows (before it is read, when possible).

    Raises
    ------
    InputError
        Naming the shape, the pixel count and how to raise the limit.
    """
    limit = max_pixels_limit(max_pixels)
    count = math.prod(int(n) for n in shape)
    if count > limit:
        raise InputError(
            f"{source}: {count:,} pixels (shape {tuple(int(n) for n in shape)}) exceed the limit of {limit:,}; "
            "crop or bin the data, or raise the limit with ELIT_MAX_PIXELS"
        )


def npy_header_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """Shape declared in a ``.npy`` file's header, read without loading (or unpickling) any data; None if unknown."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, _ = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
    except (OSError, ValueError, SyntaxError):
        return None  # the reader reports what is wrong with the file
    return tuple(int(n) for n in shape)


def validate_frames(
    frames: Any, nan_policy: str = "refuse", source: str = "image", color: bool | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Check frames and bring them to ``(N, H, W)`` float32; return ``(frames, notes)``.

    Parameters
    ----------
    frames : array-like
        ``(H, W)``, ``(N, H, W)``, channel-last ``(H, W, n)`` with small ``n``,
        RGB(A) ``(H, W, 3|4)`` or ``(N, H, W, 3|4)``; any real dtype.
    nan_policy : {"refuse", "fill"}
        NaN/Inf pixels raise :class:`InputError`, or are replaced by the
        frame's median (reported in ``notes``).
    source : str
        Named in every error message (the file).
    color : bool, optional
        Whether a last axis of 3 or 4 holds colour; default: only for 8-bit
        data (PNG/JPEG-like), otherwise such an axis is read as frames.
    max_pixels : int, optional
        Refuse more pixels than this (default :func:`max_pixels_limit`).

    Raises
    ------
    InputError
        Wrong number of dimensions, empty, tiny or too large frames, complex or
        non-numeric data, constant frames, NaN/Inf with ``nan_policy="refuse"``.

    Notes
    -----
    Every change made (dtype conversion, transposed channel-last stack, filled
    pixels) is returned in ``notes`` and logged on the ``elit`` logger.
    """
    if nan_policy not in ("refuse", "fill"):
        raise InputError(f"nan_policy must be 'refuse' or 'fill', got {nan_policy!r}")
    arr = np.asarray(frames)
    notes: list[str] = []
    if arr.dtype.kind == "c":
        raise InputError(f"{source}: complex data ({arr.dtype}); give the magnitude or phase as a real image")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{source}: data of type {arr.dtype} is not a numeric image")
    if arr.size == 0:
        raise InputError(f"{source}: the image is empty (shape {arr.shape})")
    if arr.ndim > 2 and 1 in arr.shape:
        squeezed = arr.squeeze()
        if squeezed.ndim >= 2:
            if not (arr.ndim == 3 and arr.shape[0] == 1):
                notes.append(f"dropped axes of length 1: {arr.shape} -> {squeezed.shape}")
            arr = squeezed
    is_color_axis = arr.ndim in (3, 4) and arr.shape[-1] in (3, 4) and (
        color if color is not None else arr.dtype == np.uint8
    )
    if is_color_axis:
        notes.append(f"converted {'RGBA' if arr.shape[-1] == 4 else 'RGB'} colour to gray (luminance)")
        arr = to_gray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        n0, n1, n2 = arr.shape
        if n2 <= MAX_CHANNELS_LAST and n0 >= MIN_SIZE and n1 >= MIN_SIZE and n0 > n2 and n1 > n2:
            notes.append(f"read shape {arr.shape} as {n2} frames stored channel-last (H, W, N)")
            arr = np.moveaxis(arr, -1, 0)
    else:
        raise InputError(
            f"{source}: expected an image (H, W) or a stack (N, H, W), got {arr.ndim} dimensions {arr.shape}"
        )
    n, h, w = arr.shape
    if h < MIN_SIZE or w < MIN_SIZE:
        raise InputError(f"{source}: frames of {h}x{w} pixels are too small (at least {MIN_SIZE}x{MIN_SIZE})")
    check_size(arr.shape, source, max_pixels)
    if arr.dtype != np.float32:
        if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
            big = np.nanmax(np.abs(arr[np.isfinite(arr)])) if np.isfinite(arr).any() else 0
            if big > np.finfo(np.float32).max:
                raise InputError(f"{source}: values up to {big:.3g} do not fit in float32")
        notes.append(f"converted {arr.dtype} to float32")
    out = np.array(arr, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        frames_bad = sorted({int(i) for i in np.nonzero(bad.any(axis=(1, 2)))[0]})
        count = int(bad.sum())
        where = ", ".join(map(str, frames_bad[:10])) + (" …" if len(frames_bad) > 10 else "")
        if nan_policy == "refuse":
            raise InputError(
                f"{source}: {count} NaN/Inf pixel(s) in frame(s) {where}; fix the data or use nan_policy='fill' "
                "(replace them by the frame's median)"
            )
        for i in frames_bad:
            good = out[i][~bad[i]]
            if good.size == 0:
                raise InputError(f"{source}: frame {i} has no finite pixels")
            out[i][bad[i]] = np.median(good)
        notes.append(f"replaced {count} NaN/Inf pixel(s) in frame(s) {where} by the frame median")
    flat = out.reshape(n, -1)
    constant = np.nonzero(flat.max(axis=1) == flat.min(axis=1))[0]
    if len(constant):
        which = ", ".join(map(str, constant[:10].tolist())) + (" …" if len(constant) > 10 else "")
        raise InputError(
            f"{source}: frame(s) {which} are constant (every pixel {flat[constant[0], 0]:g}); nothing to find there"
        )
    for note in notes:
        (log.warning if "channel-last" in note else log.info)("%s: %s", source, note)
    return np.ascontiguousarray(out), notes


# ------------------------------------------------------------------ reading
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def split_spec(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """Split ``"file.h5:/group/dataset"`` into ``(Path("file.h5"), "/group/dataset")``.

    A spec that names an existing path is taken whole (so ``C:\\data\\x.tif`` works).
    """
    text = os.fspath(spec)
    if not text:
        raise InputError("no image file given")
    if os.path.exists(text):
        return Path(text), None
    for i, ch in enumerate(text):
        if ch == ":" and i > 0:
            head, key = text[:i], text[i + 1 :]
            if os.path.isfile(head):
                return Path(head), key or None
    return Path(text), None


def _reader_table(registry) -> dict[str, list]:
    table: dict[str, list] = {}
    entries = sorted(registry.readers.values(), key=lambda e: e.plugin == "builtins")  # third-party first
    for entry in entries:
        for suffix in getattr(entry.cls, "suffixes", ()):
            table.setdefault(str(suffix).lower(), []).append(entry.cls)
    return table


def supported_suffixes(registry=None) -> list[str]:
    """File suffixes some installed reader handles."""
    if registry is None:
        from elit.plugins import default_registry

        registry = default_registry()
    return sorted(_reader_table(registry))


def find_reader(path: Path, registry=None, reader: str | None = None) -> type:
    """The reader class for ``path``: by name if ``reader`` is given, else by suffix.

    Among several readers of one suffix, third-party ones are tried first and a
    reader whose optional ``can_read(path)`` returns False is skipped.
    """
    if registry is None:
        from elit.plugins import default_registry

        registry = default_registry()
    if reader is not None:
        try:
            return registry.readers[reader].cls
        except KeyError:
            names = ", ".join(sorted(registry.readers)) or "none"
            raise InputError(f"no reader named {reader!r} is installed; readers: {names}") from None
    table = _reader_table(registry)
    suffixes = [s.lower() for s in path.suffixes]
    candidates = []
    for i in range(len(suffixes)):  # ".ome.tif" before ".tif"
        candidates += table.get("".join(suffixes[i:]), [])
    if not candidates:
        what = path.suffix or "(none)"
        raise InputError(f"{path}: no reader for suffix {what}; supported: {', '.join(sorted(table)) or 'none'}")
    for cls in candidates:
        can_read = getattr(cls, "can_read", None)
        if can_read is None or can_read(path):
            return cls
    return candidates[-1]


def read_image(
    spec: str | os.PathLike, registry=None, nan_policy: str = "refuse", reader: str | None = None,
    max_pixels: int | None = None,
) -> ImageData:
    """Read an image file into checked ``(N, H, W)`` float32 frames.

    Parameters
    ----------
    spec : str or path
        A file, or ``file.h5:/path/to/dataset`` for one dataset of an HDF5 file
        (for DM files: ``file.dm4:Channel_001``).
    registry : Registry, optional
        Where readers come from; default :func:`elit.plugins.default_registry`.
    nan_policy : {"refuse", "fill"}
        See :func:`validate_frames`.
    reader : str, optional
        Use this reader (by name) whatever the suffix.
    max_pixels : int, optional
        Refuse larger data (default :func:`max_pixels_limit`); a ``.npy``
        header is checked before anything is loaded.

    Raises
    ------
    InputError
        One line naming the file: missing, a folder, unknown suffix, unreadable,
        no image inside, or frames that fail :func:`validate_frames`.
    """
    path, key = split_spec(spec)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give an image file")
    cls = find_reader(path, registry, reader)
    if path.suffix.lower() == ".npy":
        declared = npy_header_shape(path)
        if declared is not None:
            check_size(declared, str(path), max_pixels)
    try:
        data = cls.read(path, key=key)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: too large to read into memory") from None
    except Exception as exc:  # a reader's library error becomes one line naming the file
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read as {cls.name} ({type(exc).__name__}: {msg})") from exc
    if not isinstance(data, ImageData):
        raise InputError(f"{path}: reader {cls.name!r} returned {type(data).__name__}, not ImageData")
    source = f"{path}:{key}" if key else str(path)
    original_dtype = data.dtype or str(np.asarray(data.frames).dtype)
    frames, notes = validate_frames(data.frames, nan_policy=nan_policy, source=source, max_pixels=max_pixels)
    metadata = dict(data.metadata)
    metadata.setdefault("reader", cls.name)
    metadata["notes"] = list(metadata.get("notes", [])) + notes
    px = data.pixel_size
    if px is not None and not (isinstance(px, (int, float)) and math.isfinite(px) and px > 0):
        metadata["notes"].append(f"ignored pixel size {px!r} (not a positive number)")
        px = None
    return ImageData(
        frames=frames,
        pixel_size=float(px) if px is not None else None,
        metadata=metadata,
        source=source,
        sha256=file_sha256(path),
        dtype=original_dtype,
    )
