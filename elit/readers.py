"""Reading experimental images: pick a reader by suffix, choose a signal, check and normalise the frames.

Readers are plugins (hook ``elit_register_readers``): classes with ``name``,
``suffixes``, ``description`` and a class method ``read(path, key=None) ->
ImageData``; a reader that can also describe a file's datasets before reading
them has ``signals(path) -> list[Signal]``, and then :func:`read_image` chooses
the signal (:func:`choose_signal`) and refuses one that is too large before
any data is read.  The built-ins (vendor formats through rosettasciio, NSID
through SciFiReaders, npy/npz and plain HDF5) live in ``elit_builtins.readers``.

>>> data = read_image("velox.emd", signal="HAADF")   # doctest: +SKIP
>>> data.frames.shape, data.pixel_size               # doctest: +SKIP
((1, 512, 512), 0.127)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
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
            big = max((float(np.abs(f[np.isfinite(f)]).max(initial=0)) for f in arr), default=0.0)
            if big > np.finfo(np.float32).max:
                raise InputError(f"{source}: values up to {big:.3g} do not fit in float32")
        notes.append(f"converted {arr.dtype} to float32")
    # float32 frames are not copied (a long movie would be held twice); the view is read-only
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if np.may_share_memory(out, frames):
        out = out.view()
        out.flags.writeable = False
    bad_count = [int((~np.isfinite(f)).sum()) for f in out]  # frame by frame: no full-size mask
    frames_bad = [i for i, c in enumerate(bad_count) if c]
    if frames_bad:
        count = sum(bad_count)
        where = ", ".join(map(str, frames_bad[:10])) + (" …" if len(frames_bad) > 10 else "")
        if nan_policy == "refuse":
            raise InputError(
                f"{source}: {count} NaN/Inf pixel(s) in frame(s) {where}; fix the data or use nan_policy='fill' "
                "(replace them by the frame's median)"
            )
        if not out.flags.writeable:
            out = out.copy()  # filled in a copy, never in the caller's array
        for i in frames_bad:
            bad = ~np.isfinite(out[i])
            good = out[i][~bad]
            if good.size == 0:
                raise InputError(f"{source}: frame {i} has no finite pixels")
            out[i][bad] = np.median(good)
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
    return out, notes


# ------------------------------------------------------------------ signals
_NO_UNITS = {"", "<undefined>", "_none_", "none", "px", "pixel", "pixels"}
_HAADF = re.compile(r"haadf", re.IGNORECASE)
_ADF = re.compile(r"(?<![a-z])a?df(?![a-z0-9])", re.IGNORECASE)  # ADF, DF, DF-S; not DF4-A (one segment)


def square_pixel(sizes: list, what: str, notes: list[str]) -> float | None:
    """One pixel size from the row and column sizes (Å), if both are known and agree within 1%."""
    if len(sizes) < 2 or any(s is None for s in sizes):
        return None
    a, b = sizes[-2], sizes[-1]
    if abs(a - b) > 0.01 * max(a, b):
        notes.append(f"{what}: pixels are not square ({a:.4g} x {b:.4g} Å); pixel size left unknown")
        return None
    return float(b)


def _units(axis: dict) -> str | None:
    u = axis.get("units")
    if u is None or str(u).strip().lower() in _NO_UNITS:
        return None
    return str(u).strip()


def _is_reciprocal(units: str | None) -> bool:
    u = (units or "").replace(" ", "").lower()
    return u.startswith("1/") or u.endswith("^-1") or u.endswith("-1") or u in ("rad", "mrad")


@dataclass
class Signal:
    """One dataset of a file (image, stack, spectrum…), described before its data is read.

    Attributes
    ----------
    index : int
        Position in the file (what ``--signal 2`` means).
    name : str
        Title from the file ('' when it gives none).
    shape : tuple of int
        Shape in the file; its product is what :func:`check_size` compares.
    dtype : str
        Data type in the file.
    pixel_size : float or None
        Å per pixel from the file's calibration.
    calibration : str
        The calibration as the file states it (e.g. ``"0.2485 nm/px"``), '' if none.
    problem : str or None
        Why elit cannot analyse it (None: an image or a stack of images).
    loader : callable
        Returns the data with the image axes last (``(H, W)`` or ``(N, H, W)``).
    notes : list of str
        What reading changes or assumes (logged and kept in the metadata).
    """

    index: int
    name: str
    shape: tuple
    dtype: str
    loader: Any = None
    pixel_size: float | None = None
    calibration: str = ""
    problem: str | None = None
    notes: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def label(self) -> str:
        """The name, or ``"signal N"`` when the file gives none."""
        return self.name or f"signal {self.index}"

    def summary(self) -> dict:
        """JSON-safe description (for ``elit info --json`` and the run file)."""
        return {"index": self.index, "name": self.label(), "shape": list(self.shape), "dtype": self.dtype,
                "pixel_size": self.pixel_size, "calibration": self.calibration, "problem": self.problem}

    def load(self) -> np.ndarray:
        """Read the data (only after its size was checked)."""
        arr = self.loader()
        if hasattr(arr, "compute"):
            arr = arr.compute()
        arr = np.asarray(arr)
        if arr.dtype.names:  # RGB(A) stored as a structured array (HyperSpy's convention)
            arr = to_gray(np.stack([arr[n] for n in arr.dtype.names], axis=-1))
            self.notes.append("converted RGB colour to gray (luminance)")
        return arr


def signal_from_axes(index: int, name: str, data: Any, axes: list[dict], source: str = "",
                     signal_type: str = "") -> Signal:
    """A :class:`Signal` from (lazy) ``data`` and HyperSpy-style axes (``scale``, ``units``, ``navigate``).

    Navigation axes become frames; two signal axes in length units make an
    image, with the pixel size in Å.  Spectra, diffraction patterns, 4-D STEM
    scans and complex data get a ``problem``.  ``axes[i]`` describes
    ``data.shape[i]``.
    """
    shape = tuple(int(n) for n in data.shape)
    dtype = np.dtype(data.dtype)
    if len(axes) != len(shape):
        axes = [{"navigate": i < len(shape) - 2} for i in range(len(shape))]
    sig = [i for i, ax in enumerate(axes) if not ax.get("navigate", False)]
    nav = [i for i in range(len(shape)) if i not in sig]
    notes: list[str] = []
    px, calibration, problem = None, "", None
    names = [str(axes[i].get("name") or i) for i in sig]
    if len(sig) == 2:
        units = [_units(axes[i]) for i in sig]
        if any(_is_reciprocal(u) for u in units) or "diffraction" in signal_type.lower():
            problem = f"a diffraction pattern (axes in {units[-1]}), not a real-space image"
        else:
            px, calibration = _axes_pixel_size([axes[i] for i in sig], notes)
            if len(nav) >= 2 and all(length_to_angstrom(1.0, _units(axes[i])) for i in nav[-2:]):
                problem = "a scan of 2-D patterns over a spatial grid (4-D STEM), not a stack of images"
        h, w = shape[sig[0]], shape[sig[1]]
        if problem is None and (h < MIN_SIZE or w < MIN_SIZE):
            problem = f"frames of {h}x{w} pixels are too small (at least {MIN_SIZE}x{MIN_SIZE})"
    elif len(sig) == 1:
        problem = f"a spectrum or profile (one signal axis, {names[0]}), not an image"
    else:
        problem = f"{len(sig)} signal axes (shape {shape}); elit reads 2-D images and stacks of them"
    if dtype.kind == "c":
        problem = f"complex data ({dtype}); export the magnitude or the phase as a real image"
    elif dtype.names is None and dtype.kind not in "biuf":
        problem = f"data of type {dtype} is not a numeric image"

    def loader():
        arr = data.compute() if hasattr(data, "compute") else np.asarray(data)
        if len(sig) == 2 and nav:
            arr = np.moveaxis(arr, nav, list(range(len(nav)))).reshape(-1, shape[sig[0]], shape[sig[1]])
        elif len(sig) == 2 and sig != [arr.ndim - 2, arr.ndim - 1]:
            arr = np.moveaxis(arr, sig, [-2, -1])
        return arr

    if len(nav) > 1 and problem is None:
        notes.append(f"flattened navigation axes {tuple(shape[i] for i in nav)} into {math.prod(shape[i] for i in nav)} frames")
    shown = f"{''.join(dtype.names)} {dtype[0]}" if dtype.names else str(dtype)  # RGB uint8
    return Signal(index, name, shape, shown, loader, px, calibration, problem, notes)


def _axes_pixel_size(axes: list[dict], notes: list[str]) -> tuple[float | None, str]:
    """Å/px and the stated calibration of the two image axes (row, column)."""
    sizes, stated = [], ""
    for ax in axes:
        scale, units = ax.get("scale", 1.0), _units(ax)
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            sizes.append(None)
            continue
        if units is None:
            if scale == 1.0:
                sizes.append(None)  # uncalibrated
                continue
            a, why = guess_pixel_size(scale, ("nm", "Å", "pm", "µm"))
            notes.append(f"axis scale {scale:g}: {why}")
            stated = f"{scale:.6g} (no units)/px"
        else:
            a = length_to_angstrom(scale, units)
            stated = f"{scale:.6g} {units}/px"
        sizes.append(a)
    notes[:] = list(dict.fromkeys(notes))  # both axes usually give the same note
    return square_pixel(sizes, "axes", notes), stated


def _match(signals: list[Signal], key) -> Signal | None:
    text = str(key).strip()
    if text.lstrip("-").isdigit():
        i = int(text)
        return signals[i] if -len(signals) <= i < len(signals) else None
    low = text.lower()
    for s in signals:
        if s.label().lower() == low:
            return s
    group = text.rstrip("/")
    for s in signals:  # an NSID group names its main dataset: /inputs/frames -> /inputs/frames/frames
        if s.name and s.name == f"{group}/{group.rsplit('/', 1)[-1]}":
            return s
    return None


def listing(signals: list[Signal], most: int = 12) -> str:
    """``"0 HAADF, 1 BF, …"`` for messages."""
    text = ", ".join(f"{s.index} {s.label()}" for s in signals[:most])
    return text + (f" and {len(signals) - most} more" if len(signals) > most else "")


def choose_signal(signals: list[Signal], key=None, source: str = "file") -> tuple[Signal, str]:
    """The signal to analyse and why: ``key`` (name or index) if given, else the HAADF/ADF image.

    Without ``key``, only signals without a ``problem`` count: one titled HAADF,
    else one titled ADF/DF, else the first.

    Raises
    ------
    InputError
        ``key`` names no signal, or names one elit cannot use, or no signal is an image.
    """
    if not signals:
        raise InputError(f"{source} holds no image dataset")
    if key is not None:
        chosen = _match(signals, key)
        if chosen is None:
            raise InputError(f"{source} has no signal {str(key)!r}; signals: {listing(signals)}")
        if chosen.problem:
            raise InputError(f"{source}: signal {chosen.label()!r}: {chosen.problem}")
        return chosen, "chosen with --signal"
    usable = [s for s in signals if s.problem is None]
    if not usable:
        if len(signals) == 1:
            raise InputError(f"{source} holds no image elit can read: {signals[0].problem}")
        why = "; ".join(f"{s.label()}: {s.problem}" for s in signals[:4]) + ("; …" if len(signals) > 4 else "")
        raise InputError(f"{source}: none of its {len(signals)} signals is an image elit can read ({why})")
    for pattern, why in ((_HAADF, "its title says HAADF"), (_ADF, "its title says ADF/DF")):
        hits = [s for s in usable if pattern.search(s.name)]
        if hits:
            return hits[0], why
    if len(usable) == 1:
        return usable[0], "the only image" + (f" among {len(signals)} signals" if len(signals) > 1 else "")
    calibrated = [s for s in usable if s.pixel_size is not None]
    if calibrated and len(calibrated) < len(usable):
        return calibrated[0], f"no HAADF/ADF signal: the first calibrated image of {len(usable)}"
    return usable[0], f"no HAADF/ADF signal: the first of {len(usable)} images"


def image_from_signals(path: Path, signals: list[Signal], key=None, reader: str = "",
                       max_pixels: int | None = None) -> ImageData:
    """Choose a signal (:func:`choose_signal`), check its size, then read it into :class:`ImageData`."""
    sig, why = choose_signal(signals, key, str(path))
    check_size(sig.shape, f"{path} ({sig.label()})" if len(signals) > 1 else str(path), max_pixels)
    arr = sig.load()
    meta: dict = {"reader": reader, **sig.metadata, "signal": sig.label(), "signal_index": sig.index,
                  "signal_choice": why}
    if sig.calibration:
        meta["calibration"] = sig.calibration
    if sig.pixel_size is not None:
        meta.setdefault("pixel_size_source", f"file calibration {sig.calibration}")
    notes = list(sig.notes)
    if len(signals) > 1:
        note = (f"{path.name} holds {len(signals)} signals ({listing(signals)}); read {sig.label()!r} ({why}); "
                "choose another with --signal NAME_OR_INDEX")
        log.info("%s", note)
        notes.insert(0, note)
        meta["signals"] = [s.summary() for s in signals[:50]]
    meta["notes"] = notes
    return ImageData(arr, sig.pixel_size, meta, str(path), dtype=sig.dtype)


# ------------------------------------------------------------------ reading
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (of a folder store such as ``.zspy``: of its files' names and bytes)."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(p.relative_to(path).as_posix().encode())
        with open(p, "rb") as fh:
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
            if os.path.exists(head):
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


def _call_reader(cls, path: Path, what: str, fn):
    """Run a reader's ``fn()``; a library's error becomes one InputError line naming the file."""
    try:
        return fn()
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: too large to read into memory") from None
    except Exception as exc:  # a reader's library error becomes one line naming the file
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot {what} as {cls.name} ({type(exc).__name__}: {msg})") from exc


def _open_path(spec, registry, reader, signal) -> tuple[Path, str | None, type]:
    path, key = split_spec(spec)
    if signal is not None and str(signal) != "":
        if key is not None and key != str(signal):
            raise InputError(f"{spec}: give the signal once, either as FILE:{key} or as --signal {signal}")
        key = str(signal)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    cls = find_reader(path, registry, reader) if (path.is_file() or path.suffix) else None
    if path.is_dir() and not getattr(cls, "folders", False):
        raise InputError(f"{path} is a folder; give an image file")
    return path, key, cls


def list_signals(spec: str | os.PathLike, registry=None, reader: str | None = None) -> tuple[Path, type, list[Signal]]:
    """Every signal of a file without reading its data: ``(path, reader class, signals)``.

    A reader without ``signals(path)`` is read whole and shown as one signal.
    """
    path, _key, cls = _open_path(spec, registry, reader, None)
    if hasattr(cls, "signals"):
        return path, cls, _call_reader(cls, path, "list the signals", lambda: cls.signals(path))
    data = _call_reader(cls, path, "read", lambda: cls.read(path))
    arr = np.asarray(data.frames)
    sig = Signal(0, str(data.metadata.get("title", "")), arr.shape, data.dtype or str(arr.dtype), lambda: arr,
                 data.pixel_size, str(data.metadata.get("pixel_size_source", "")))
    return path, cls, [sig]


def read_image(
    spec: str | os.PathLike, registry=None, nan_policy: str = "refuse", reader: str | None = None,
    max_pixels: int | None = None, signal: str | int | None = None,
) -> ImageData:
    """Read an image file into checked ``(N, H, W)`` float32 frames.

    Parameters
    ----------
    spec : str or path
        A file, or ``FILE:SIGNAL`` (e.g. ``file.h5:/path/to/dataset``).
    registry : Registry, optional
        Where readers come from; default :func:`elit.plugins.default_registry`.
    nan_policy : {"refuse", "fill"}
        See :func:`validate_frames`.
    reader : str, optional
        Use this reader (by name) whatever the suffix.
    max_pixels : int, optional
        Refuse larger data (default :func:`max_pixels_limit`), checked on the
        shape the file declares before any data is read.
    signal : str or int, optional
        For a file of several signals: the name or index to read (default: the
        HAADF/ADF image, see :func:`choose_signal`).

    Raises
    ------
    InputError
        One line naming the file: missing, a folder, unknown suffix, unreadable,
        no image inside, too large, or frames that fail :func:`validate_frames`.
    """
    path, key, cls = _open_path(spec, registry, reader, signal)
    if hasattr(cls, "signals"):
        data = _call_reader(cls, path, "read", lambda: image_from_signals(path, cls.signals(path), key, cls.name, max_pixels))
    else:
        data = _call_reader(cls, path, "read", lambda: cls.read(path, key=key))
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
    metadata["file_pixel_size"] = None if px is None else float(px)
    return ImageData(
        frames=frames,
        pixel_size=float(px) if px is not None else None,
        metadata=metadata,
        source=source,
        sha256=file_sha256(path),
        dtype=original_dtype,
    )
