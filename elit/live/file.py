"""The live HDF5 file: :class:`LiveWriter` appends frames, :func:`read_live` reads them while it grows."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elit.data import ATOM_COLUMNS, AtomTable
from elit.errors import InputError, StoreError
from elit.live.analyzer import LiveResult
from elit.live.indicators import DRIFT_INDICATORS

FORMAT = "elit.live"
FORMAT_VERSION = 1

STATE_RUNNING, STATE_FINISHED, STATE_INTERRUPTED, STATE_FAILED = 0, 1, 2, 3
STATES = {STATE_RUNNING: "running", STATE_FINISHED: "finished", STATE_INTERRUPTED: "interrupted", STATE_FAILED: "failed"}
SOURCE_BYTES = 512
"""Longest stored source name (bytes, UTF-8); longer names keep their end."""


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _encode(text: str, size: int) -> bytes:
    raw = str(text).encode("utf-8", "replace")
    return raw if len(raw) <= size else raw[-size:]


class LiveWriter:
    """Appends :class:`LiveResult` rows to an HDF5 file that readers can open while it grows.

    The file is created at the first :meth:`append` (the map size is known
    then), every dataset is made there, and the file switches to SWMR mode
    (``libver="latest"``): from then on readers opened with
    ``h5py.File(path, "r", libver="latest", swmr=True)`` (or :func:`read_live`)
    see each frame once ``/n_frames`` counts it.  Nothing is pickled.

    Parameters
    ----------
    path : str or Path
        The live file.
    provenance : dict, optional
        JSON-able facts written as root attributes (model file, checksum,
        iteration, config, settings...).
    overwrite : bool
        Replace an existing file.
    """

    def __init__(self, path, provenance: dict | None = None, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not a live file")
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path} already exists; choose another --out or allow overwriting")
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot create {self.path}: folder {self.path.parent} does not exist")
        self.provenance = dict(provenance or {})
        self.overwrite = overwrite
        self._file = None
        self._shape: tuple[int, ...] | None = None
        self._criteria: list[str] = []
        self.n_frames = 0
        self.n_atoms = 0

    # ---------------------------------------------------------------- creation
    def _create(self, r: LiveResult) -> None:
        import h5py

        from elit import __version__

        k, h, w = r.mean.shape
        m = r.n_members
        self._shape = (k, h, w, m)
        self._criteria = sorted(r.criteria)
        if self.path.exists():
            self.path.unlink()
        f = h5py.File(self.path, "w", libver="latest")
        try:
            attrs = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "elit_version": __version__,
                "started": _now_iso(),
                "class_names": json.dumps(list(r.atoms.class_names)),
                "n_members": m,
                "working_pixel_size": float(r.working_pixel_size),
                "input_pixel_size": float(r.input_pixel_size),
                "input_shape": json.dumps(list(r.input_shape)),
                "drift_indicators": json.dumps(list(DRIFT_INDICATORS)),
                "criteria": json.dumps(self._criteria),
                "states": json.dumps({str(k_): v for k_, v in STATES.items()}),
            }
            for key, value in self.provenance.items():
                attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, sort_keys=True, default=str)
            for key, value in attrs.items():
                f.attrs[key] = value

            def grow(name, shape_tail, dtype, chunk_rows=1, **attrs_):
                ds = f.create_dataset(name, shape=(0,) + shape_tail, maxshape=(None,) + shape_tail, dtype=dtype,
                                      chunks=(chunk_rows,) + shape_tail)
                for a, v in attrs_.items():
                    ds.attrs[a] = v
                return ds

            f.create_dataset("n_frames", data=np.zeros(1, np.int64))
            f["n_frames"].attrs["description"] = "frames complete in this file; read only rows below this count"
            f.create_dataset("state", data=np.zeros(1, np.int8))
            f["state"].attrs["description"] = "0 running, 1 finished, 2 interrupted, 3 failed"
            px = float(r.working_pixel_size)
            grow("maps/mean", (k, h, w), np.float32, dims=json.dumps(["frame", "class", "y", "x"]), quantity="probability",
                 pixel_size=px, description="mean probability over the members used, per frame (working scale)")
            grow("maps/uncertainty", (k, h, w), np.float32, dims=json.dumps(["frame", "class", "y", "x"]),
                 quantity="probability std", pixel_size=px, description="standard deviation over the members used")
            grow("frames/source", (), f"S{SOURCE_BYTES}", 64, description="file (and frame within it) of each row, UTF-8")
            grow("frames/sha256", (), "S64", 64, description="sha256 of the source file")
            grow("frames/time", (), np.float64, 64, units="s since 1970-01-01 UTC", description="when the result was written")
            grow("frames/latency", (), np.float64, 64, units="s", description="from receiving the frame to its result")
            grow("frames/n_atoms", (), np.int64, 64, description="atoms found in the frame")
            grow("frames/atom_start", (), np.int64, 64, description="row of the frame's first atom in /atoms")
            grow("frames/needs_retraining", (), np.uint8, 64, description="1: no member scored well enough")
            grow("frames/input_shape", (2,), np.int64, 64, description="rows, cols of the input frame")
            grow("frames/members_used", (m,), np.uint8, 64, description="1 where the member was used for the frame")
            grow("frames/scores", (m,), np.float64, 64, description="every member's selector score on the frame")
            for c in self._criteria:
                grow(f"frames/criteria/{c}", (m,), np.float64, 64, description=f"selector criterion {c!r} per member")
            for name in DRIFT_INDICATORS:
                grow(f"frames/drift/{name}", (), np.float64, 64, description=f"drift indicator {name!r}")
            for col, dtype in zip(ATOM_COLUMNS, (np.int64, np.float64, np.float64, np.int64, np.float64, np.float64)):
                grow(f"atoms/{col}", (), dtype, 4096)
            f["atoms"].attrs["description"] = "atoms of every frame, positions in the input frame's pixels (row, col)"
            f["atoms"].attrs["class_names"] = json.dumps(list(r.atoms.class_names))
            f.swmr_mode = True
        except BaseException:
            f.close()
            raise
        self._file = f

    # ---------------------------------------------------------------- appending
    def append(self, r: LiveResult, sha256: str = "") -> None:
        """Append one frame's result and make it visible to readers."""
        if self._file is None:
            if self.n_frames:
                raise StoreError(f"{self.path} is closed")
            self._create(r)
        k, h, w, m = self._shape
        if r.mean.shape != (k, h, w) or r.n_members != m:
            raise InputError(
                f"{r.source or 'frame'}: maps of shape {r.mean.shape} with {r.n_members} members do not fit this live file "
                f"({(k, h, w)}, {m} members); frames of one session must share their size: start a new live file"
            )
        if sorted(r.criteria) != self._criteria:
            raise InputError(f"{r.source or 'frame'}: selector criteria changed within one live file")
        f = self._file
        n = self.n_frames
        with _defer_sigint():
            used = np.zeros(m, np.uint8)
            used[r.members] = 1
            rows = {
                "maps/mean": r.mean.astype(np.float32),
                "maps/uncertainty": r.std.astype(np.float32),
                "frames/source": np.bytes_(_encode(r.source, SOURCE_BYTES)),
                "frames/sha256": np.bytes_(_encode(sha256, 64)),
                "frames/time": time.time(),
                "frames/latency": r.latency,
                "frames/n_atoms": len(r.atoms),
                "frames/atom_start": self.n_atoms,
                "frames/needs_retraining": int(r.needs_retraining),
                "frames/input_shape": np.asarray(r.input_shape, np.int64),
                "frames/members_used": used,
                "frames/scores": r.scores,
            }
            for c in self._criteria:
                rows[f"frames/criteria/{c}"] = r.criteria[c]
            for name in DRIFT_INDICATORS:
                rows[f"frames/drift/{name}"] = r.drift.get(name, float("nan"))
            for name, value in rows.items():
                ds = f[name]
                ds.resize(n + 1, axis=0)
                ds[n] = value
            a = len(r.atoms)
            if a:
                cols = r.atoms.to_columns()
                for col in ATOM_COLUMNS:
                    ds = f[f"atoms/{col}"]
                    ds.resize(self.n_atoms + a, axis=0)
                    ds[self.n_atoms:] = cols[col]
            f.flush()
            f["n_frames"][0] = n + 1
            f.flush()
            self.n_frames = n + 1
            self.n_atoms += a

    def close(self, state: int = STATE_FINISHED) -> None:
        """Mark the file finished (or interrupted/failed) and close it."""
        if self._file is None:
            return
        try:
            self._file["state"][0] = int(state)
            self._file.flush()
        finally:
            self._file.close()
            self._file = None

    @property
    def created(self) -> bool:
        """Whether the file exists yet (it is made at the first frame)."""
        return self._file is not None or self.n_frames > 0

    def __enter__(self) -> LiveWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close(STATE_FINISHED)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close(STATE_INTERRUPTED)
        else:
            self.close(STATE_FAILED)
        return False


@contextlib.contextmanager
def _defer_sigint():
    """Hold back Ctrl-C (in the main thread) until the block is done, so a frame is written whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []

    def handler(signum, frame):
        caught.append((signum, frame))

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # not allowed here (e.g. embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


@dataclass
class LiveData:
    """The content of a live file up to its last complete frame (see :func:`read_live`).

    Attributes
    ----------
    n_frames : int
    state : str
        ``running``, ``finished``, ``interrupted`` or ``failed``.
    attrs : dict
        Provenance (JSON attributes decoded).
    frames : dict of str to ndarray
        Per-frame columns: ``source`` (str), ``sha256``, ``time``, ``latency``,
        ``n_atoms``, ``atom_start``, ``needs_retraining`` (bool),
        ``input_shape``, ``members_used`` (bool, frames x members), ``scores``.
    criteria, drift : dict of str to ndarray
        Per-frame selector criteria (frames x members) and drift indicators.
    atoms : AtomTable
        All atoms of the complete frames (input pixels).
    mean, uncertainty : ndarray (frames, K, H, W) or None
        The maps, when read with ``maps=True``.
    """

    n_frames: int
    state: str
    attrs: dict
    frames: dict[str, np.ndarray]
    criteria: dict[str, np.ndarray]
    drift: dict[str, np.ndarray]
    atoms: AtomTable
    mean: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


def read_live(path, maps: bool = False) -> LiveData:
    """Read a live file, also while :class:`LiveWriter` is still appending to it.

    Only frames counted by ``/n_frames`` are returned, so a reader never sees
    half a frame.

    Parameters
    ----------
    path : str or Path
    maps : bool
        Also read the mean and uncertainty maps (may be large).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such live file (it is created when the first frame is done)")
    try:
        f = h5py.File(path, "r", libver="latest", swmr=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the live file ({exc})") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{path} is not an elit live file (format {f.attrs.get('format')!r})")
        if int(f.attrs.get("format_version", 0)) > FORMAT_VERSION:
            raise StoreError(f"{path} was written by a newer elit (live format {f.attrs['format_version']}); upgrade elit")
        for obj in (f["n_frames"], f["state"]):
            obj.refresh()
        n = int(f["n_frames"][0])
        state = STATES.get(int(f["state"][0]), "unknown")
        attrs = {}
        for key, value in f.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, str) and value[:1] in "[{":
                with contextlib.suppress(ValueError):
                    value = json.loads(value)
            attrs[key] = value.item() if isinstance(value, np.generic) else value

        def rows(name, count=n):
            ds = f[name]
            ds.refresh()
            return ds[:count]

        frames = {name: rows(f"frames/{name}") for name in f["frames"] if isinstance(f[f"frames/{name}"], h5py.Dataset)}
        frames["source"] = np.array([s.decode("utf-8", "replace") for s in frames["source"]], dtype=object)
        frames["sha256"] = np.array([s.decode() for s in frames["sha256"]], dtype=object)
        frames["needs_retraining"] = frames["needs_retraining"].astype(bool)
        frames["members_used"] = frames["members_used"].astype(bool)
        criteria = {c: rows(f"frames/criteria/{c}") for c in f["frames/criteria"]}
        drift = {d: rows(f"frames/drift/{d}") for d in f["frames/drift"]}
        n_atoms = int(frames["atom_start"][-1] + frames["n_atoms"][-1]) if n else 0
        cols = {c: rows(f"atoms/{c}", n_atoms) for c in ATOM_COLUMNS}
        names = attrs.get("class_names") or ["atom"]
        atoms = AtomTable(**cols, class_names=tuple(names))
        mean = rows("maps/mean") if maps else None
        unc = rows("maps/uncertainty") if maps else None
    return LiveData(n, state, attrs, frames, criteria, drift, atoms, mean, unc)
