"""Names, paths and small encoders of the run-file layout (see ``docs/file-format.md``).

Nothing here touches a file; :mod:`elit.store.h5store` does the I/O.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any

import numpy as np

from elit.errors import StoreError

FORMAT_NAME = "elit-run"
"""Value of the root attribute ``format`` of every run file."""

FORMAT_VERSION = 1
"""Layout version written to the root attribute ``format_version``; readers refuse newer files."""

CONFIG = "/config"
SUMMARY = "/summary"
ENVIRONMENT = "/environment"
INPUTS = "/inputs"
ITERATIONS = "/iterations"
MEMBERS = "members"
"""Group, inside a stage, holding members made durable one by one (resume of a trainer)."""

STAGE_INFO_KEYS = ("name", "plugin", "package", "plugin_version", "stage_version", "config", "seed", "used")
"""Keys accepted in the ``info`` dict of :meth:`RunStore.stage`."""

NSID_DATA_TYPES = (
    "UNKNOWN",
    "SPECTRUM",
    "LINE_PLOT",
    "LINE_PLOT_FAMILY",
    "IMAGE",
    "IMAGE_MAP",
    "IMAGE_STACK",
    "SPECTRAL_IMAGE",
    "IMAGE_4D",
    "POINT_CLOUD",
)
"""``sidpy.DataType`` names (kept here so that writing a name needs no sidpy import)."""

SPATIAL_DIMS = ("row", "col", "y", "x")
"""Dimension names taken as spatial (units Å when a pixel size is known)."""

NSID_RESERVED = ("metadata", "original_metadata", "provenance")
"""Group names sidpy writes beside an NSID main dataset."""

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
_KEY_SEGMENT = re.compile(r"^[^/\x00]+$")


def check_name(name: str, what: str = "dataset name") -> str:
    """Return ``name`` if it is a plain identifier (letters, digits, ``_``), else raise StoreError."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoreError(f"{what} {name!r} is not allowed: use letters, digits and '_' (starting with a letter)")
    return name


_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def check_nested_name(name: str, what: str = "dataset name") -> str:
    """Like :func:`check_name`, but ``criteria/dice`` (nested under groups) is allowed too."""
    if not isinstance(name, str):
        raise StoreError(f"{what} {name!r} is not allowed: it must be a string")
    first, *rest = name.split("/")
    check_name(first, what)
    for seg in rest:
        if not _SEGMENT.match(seg):
            raise StoreError(f"{what} {name!r} is not allowed: segment {seg!r} must use letters, digits, '_', '.', '-'")
    return name


def check_kind(kind: str) -> str:
    """Return a stage kind if it is a lower-case identifier, else raise StoreError."""
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise StoreError(f"stage kind {kind!r} is not allowed: use lower-case letters, digits and '_'")
    return kind


def check_array_key(key: str) -> str:
    """Return a relative array key (``member_000/conv.weight``) if every segment is usable in HDF5."""
    segments = key.split("/") if isinstance(key, str) else [""]
    if not segments or any(s in ("", ".", "..") or not _KEY_SEGMENT.match(s) for s in segments):
        raise StoreError(f"array key {key!r} is not allowed: use '/'-separated non-empty names")
    return key


def iteration_path(iteration: int) -> str:
    """``/iterations/iter_000`` for iteration 0."""
    if isinstance(iteration, (bool, np.bool_)) or not isinstance(iteration, (int, np.integer)) or iteration < 0:
        raise StoreError(f"iteration must be a non-negative integer, got {iteration!r}")
    return f"{ITERATIONS}/iter_{int(iteration):03d}"


def parse_iteration(group_name: str) -> int | None:
    """Return the number of an ``iter_NNN`` group name, or None."""
    m = re.fullmatch(r"iter_(\d+)", group_name)
    return int(m.group(1)) if m else None


def stage_path(iteration: int, kind: str) -> str:
    """``/iterations/iter_000/trainer`` for the trainer of iteration 0."""
    return f"{iteration_path(iteration)}/{check_kind(kind)}"


def member_name(index: int) -> str:
    """``member_003`` for member 3."""
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)) or index < 0:
        raise StoreError(f"member index must be a non-negative integer, got {index!r}")
    return f"member_{int(index):03d}"


def now_iso() -> str:
    """Current UTC time as ISO 8601 with microseconds (sortable)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    dump = getattr(obj, "model_dump", None)  # pydantic models (stage configs)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _lenient_default(obj: Any) -> Any:
    try:
        return _json_default(obj)
    except TypeError:
        return str(obj)


def to_json(obj: Any, lenient: bool = False) -> str:
    """Canonical JSON (sorted keys, no spaces) used for every JSON string in the file.

    NaN and infinities are written as ``NaN``/``Infinity`` (Python's JSON dialect).
    With ``lenient``, values JSON cannot hold are stored as their ``str()``
    (for informational metadata); otherwise they raise :class:`StoreError`.
    """
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
            default=_lenient_default if lenient else _json_default,
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store as JSON: {exc}") from None


def from_json(text: Any) -> Any:
    """Decode a JSON string read from the file (bytes accepted); never evaluates code."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if isinstance(text, np.ndarray) and text.shape == ():
        return from_json(text[()])
    if not isinstance(text, str):
        raise StoreError(f"expected a JSON string in the file, found {type(text).__name__}")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StoreError(f"corrupt JSON in the file: {exc}") from None


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def attr_str(value: Any) -> str:
    """An attribute read by h5py as ``str`` (bytes and 0-d arrays decoded)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def attr_str_list(value: Any) -> list[str]:
    """A string-array attribute as a list of ``str``."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [attr_str(value)]
    return [attr_str(v) for v in np.asarray(value).reshape(-1)]


def finite_or_none(value: Any) -> float | None:
    """A float attribute with NaN meaning "unknown" mapped back to None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
