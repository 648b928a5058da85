"""The run store: one provenance-tracked, crash-safe HDF5 file per run.

The file is closed between commits and every change is a copy-on-commit
(:mod:`elit.store.commit`): a crash never leaves an unreadable file.  A stage's
content is buffered in memory and committed when its ``with`` block ends;
trainer members are committed one by one as they finish, so a crashed trainer
resumes with its finished members.  See ``docs/file-format.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from elit.data import ATOM_COLUMNS, OPTIONAL_COLUMNS, AtomTable
from elit.errors import StoreError
from elit.store import layout as L
from elit.store import parts as P
from elit.store.commit import _fsync_path, atomic_update, remove_stale_tmp
from elit.store.precision import QUANTIZATION_ATTR, dequantize

FLUSH_ABOVE_BYTES = 256 << 20
"""A stage commits its buffered datasets early (still incomplete) once they exceed this size."""

_STRING = h5py.string_dtype("utf-8")


def _string_array(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=_STRING)


def _write_provenance(obj: h5py.HLObject, generated_by: str, derived_from) -> None:
    obj.attrs["generated_by"] = generated_by
    obj.attrs["derived_from"] = _string_array(derived_from)


_EXTERNAL_PATH = re.compile(r"^[^/:][^:]*:/")


def is_external_path(path: str) -> bool:
    """True for a reference into another file, written ``FILE:/absolute/path`` (e.g. the model a prediction used)."""
    return bool(_EXTERNAL_PATH.match(path))


def _clean_paths(paths, what: str) -> list[str]:
    if isinstance(paths, str):
        paths = [paths]
    out = []
    for p in paths or ():
        if not isinstance(p, str) or not (p.startswith("/") or is_external_path(p)):
            raise StoreError(
                f"{what} must list absolute dataset paths ('/inputs/frames/frames') or FILE:/path in another file, "
                f"got {p!r}"
            )
        out.append(p)
    return out


def _numeric_array(data, what: str) -> np.ndarray:
    arr = np.asarray(data)
    if arr.dtype.kind in "US":
        return arr.astype(_STRING)
    if arr.dtype.kind not in "biufc":
        raise StoreError(f"{what}: dtype {arr.dtype} cannot be stored (numbers, booleans and strings only)")
    return arr


def _arrays_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in arrays.values())


def _check_arrays(spec: Any, arrays: Any, what: str) -> tuple[str, dict[str, np.ndarray]]:
    """Validate a ``to_arrays()`` result; return the spec as JSON and copies of the arrays."""
    if not isinstance(spec, Mapping):
        raise StoreError(f"{what}.to_arrays() must return (spec dict, arrays dict); spec is {type(spec).__name__}")
    if not isinstance(arrays, Mapping):
        raise StoreError(f"{what}.to_arrays() must return (spec dict, arrays dict); arrays is {type(arrays).__name__}")
    out = {}
    for key, value in arrays.items():
        L.check_array_key(key)
        out[key] = np.array(_numeric_array(value, f"{what} array {key!r}"), copy=True)
    keys = list(out)
    for k in keys:  # a key may not be both an array and a group ('a' and 'a/b')
        if any(other.startswith(k + "/") for other in keys):
            raise StoreError(f"{what}: array key {k!r} is also a prefix of another key")
    return L.to_json(dict(spec)), out


def _write_arrays(
    group: h5py.Group, spec_json: str, arrays: dict[str, np.ndarray], reuse: h5py.Group | None = None
) -> None:
    """Write arrays at their keys; an identical dataset at the same key under ``reuse`` is hard-linked, not copied."""
    group.attrs["format"] = "elit-arrays"
    group.attrs["spec"] = spec_json
    group.attrs["keys"] = L.to_json(list(arrays))
    for key, arr in arrays.items():
        old = reuse.get(key) if reuse is not None else None
        if (
            isinstance(old, h5py.Dataset)
            and old.shape == arr.shape
            and old.dtype == arr.dtype
            and np.array_equal(old[()], arr)
        ):
            group[key] = old  # hard link: the member written earlier holds the same weights
        else:
            group.create_dataset(key, data=arr)


def _place(f: h5py.File, run_path: Path, path: str, nbytes: int, fill: Callable[[h5py.Group, str], Any]) -> None:
    """Create the object at ``path`` with ``fill(parent, name)``: in a part file when large, else in ``f``."""
    if nbytes > P.PART_ABOVE_BYTES:
        P.write_part(f, run_path, path, fill)
    else:
        parent, name = path.rsplit("/", 1)
        fill(f[parent or "/"], name)


def _large(arr: np.ndarray, shuffle: bool = True) -> dict:
    """create_dataset keywords of a dataset: chunked and compressed when it is large."""
    return P.chunked(arr.shape, arr.dtype.itemsize, shuffle) if arr.nbytes > P.PART_ABOVE_BYTES else {}


def _read_arrays(group: h5py.Group) -> tuple[dict, dict[str, np.ndarray]]:
    spec = L.from_json(group.attrs.get("spec", "{}"))
    keys = L.from_json(group.attrs["keys"]) if "keys" in group.attrs else None
    if keys is None:
        keys = []
        group.visititems(lambda n, o: keys.append(n) if isinstance(o, h5py.Dataset) else None)
    arrays = {}
    for key in keys:
        ds = group.get(key)
        if not isinstance(ds, h5py.Dataset):
            raise StoreError(f"{group.name}: array {key!r} listed in 'keys' is missing")
        arrays[key] = _read_dataset(ds)
    return spec, arrays


def _read_dataset(ds: h5py.Dataset) -> np.ndarray:
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[()], dtype=object) if ds.shape else ds.asstr()[()]
    return ds[()]


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OS":
            return [L.attr_str(v) for v in value.reshape(-1)]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _stage_attrs(group: h5py.Group) -> dict[str, Any]:
    a = group.attrs
    out = {k: _decode_attr(a[k]) for k in a}
    out["config"] = L.from_json(a["config"]) if "config" in a else {}
    out["used"] = L.attr_str_list(a.get("used"))
    out["complete"] = bool(a.get("complete", False))
    out["seed"] = int(a["seed"]) if "seed" in a else None
    return out


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class RunStore:
    """One run's HDF5 file: config, environment, inputs and every iteration's stages.

    Build with :meth:`create` or :meth:`open`, not the constructor.  The file is
    never held open: reads open it briefly, writes are atomic commits.
    """

    def __init__(self, path: str | Path, mode: str, _token: object = None) -> None:
        if _token is not _TOKEN:
            raise TypeError("use RunStore.create(path) or RunStore.open(path)")
        self._path = Path(path)
        self._mode = mode
        self._active_stage: StageWriter | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False, parts: str | None = None) -> RunStore:
        """Create a new, empty run file (refused if ``path`` exists, unless ``overwrite``).

        ``parts`` names the folder of its large datasets (default ``<file name>.parts``,
        see :mod:`elit.store.parts`).
        """
        from elit import __version__

        path = Path(path)
        if path.is_dir():
            raise StoreError(f"{path} is a directory, not a run file")
        if path.exists() and not overwrite:
            raise StoreError(f"{path} already exists; choose another name or allow overwriting")
        if not path.parent.is_dir():
            raise StoreError(f"cannot create {path}: folder {path.parent} does not exist")
        with atomic_update(path, create=True) as f:
            f.attrs["format"] = L.FORMAT_NAME
            f.attrs["format_version"] = L.FORMAT_VERSION
            f.attrs["elit_version"] = __version__
            f.attrs["created"] = L.now_iso()
            f.attrs[P.PARTS_ATTR] = parts or path.name + ".parts"
            f.create_group("inputs")
            f.create_group("iterations")
        return cls(path, "a", _TOKEN)

    @classmethod
    @contextmanager
    def building(cls, path: str | Path, overwrite: bool = False) -> Iterator[RunStore]:
        """Create a run file whose first contents (config, environment, inputs) appear all at once.

        Yields a store on the side file ``<path>.partial``; when the block ends
        without an error, that file is renamed to ``path`` (atomically, replacing
        it when ``overwrite``).  A crash inside the block leaves ``path`` as it
        was (absent, or the old file), so a run file always holds its config and
        input; a stale side file is replaced by the next attempt.
        """
        path = Path(path)
        if path.is_dir():
            raise StoreError(f"{path} is a directory, not a run file")
        if path.exists() and not overwrite:
            raise StoreError(f"{path} already exists; choose another name or allow overwriting")
        side = path.with_name(path.name + ".partial")
        store = cls.create(side, overwrite=True, parts=path.name + ".parts")
        try:
            yield store
            _fsync_path(side)
            os.replace(side, path)
            _fsync_path(path.parent, directory=True)
        except BaseException:
            remove_stale_tmp(side)
            side.unlink(missing_ok=True)
            if path.exists():
                P.sweep(path)  # the parts the failed build wrote; the old file keeps its own
            else:
                import shutil

                shutil.rmtree(path.with_name(path.name + ".parts"), ignore_errors=True)
            raise

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> RunStore:
        """Open an existing run file for reading (``"r"``) or appending (``"a"``).

        Raises :class:`StoreError` with one line when the file is missing, not
        HDF5, truncated, not an elit run file, or from a newer elit.
        """
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        check_run_file(path)
        if mode == "a":
            remove_stale_tmp(path)
            P.sweep(path)  # parts a crashed commit or a redone stage left unlinked
        return cls(path, mode, _TOKEN)

    @property
    def path(self) -> Path:
        """Path of the run file."""
        return self._path

    @property
    def mode(self) -> str:
        """``"r"`` or ``"a"``."""
        return self._mode

    def __repr__(self) -> str:
        return f"RunStore({str(self._path)!r}, mode={self._mode!r})"

    @contextmanager
    def _read(self) -> Iterator[h5py.File]:
        try:
            f = h5py.File(self._path, "r")
        except FileNotFoundError:
            raise StoreError(f"{self._path}: the run file no longer exists") from None
        except OSError as exc:
            raise StoreError(f"{self._path}: cannot read the run file ({exc})") from None
        try:
            yield f
        finally:
            f.close()

    def _commit(self, change: Callable[[h5py.File], None]) -> None:
        if self._mode != "a":
            raise StoreError(f"{self._path} is open read-only; open it with mode='a' to write")
        if not self._path.exists():
            raise StoreError(f"{self._path}: the run file no longer exists")
        with atomic_update(self._path) as f:
            change(f)

    # ---------------------------------------------------------- config & env
    def write_config(self, config: dict, overwrite: bool = False) -> str:
        """Store the resolved run config as canonical JSON at ``/config``; return its sha256.

        Writing the same config again is a no-op; a different one is refused
        unless ``overwrite``.
        """
        if not isinstance(config, Mapping):
            raise StoreError(f"config must be a dict, got {type(config).__name__}")
        text = L.to_json(dict(config))
        digest = L.sha256_text(text)
        with self._read() as f:
            if "config" in f:
                old = L.attr_str(f["config"].attrs.get("sha256", ""))
                if old == digest:
                    return digest
                if not overwrite:
                    raise StoreError(
                        f"{self._path} already holds a different config (sha256 {old[:12]}…); "
                        "start a new run file or pass overwrite=True"
                    )

        def change(f: h5py.File) -> None:
            if "config" in f:
                del f["config"]
            ds = f.create_dataset("config", data=text, dtype=_STRING)
            ds.attrs["sha256"] = digest
            ds.attrs["format"] = "json"
            ds.attrs["written"] = L.now_iso()

        self._commit(change)
        return digest

    def read_config(self) -> dict:
        """Return the stored config; raise StoreError if absent or if its checksum does not match."""
        with self._read() as f:
            if "config" not in f:
                raise StoreError(f"{self._path} holds no config yet")
            ds = f["config"]
            text = ds.asstr()[()]
            digest = L.attr_str(ds.attrs.get("sha256", ""))
        if L.sha256_text(text) != digest:
            raise StoreError(f"{self._path}: /config does not match its sha256 (the file was edited or damaged)")
        return L.from_json(text)

    def write_environment(self, env: dict, plugins: list[dict]) -> None:
        """Store versions (attributes of ``/environment``) and the table of loaded plugins.

        A second call (a resumed run) moves the previous session under
        ``/environment/history/session_NNN``.
        """
        if not isinstance(env, Mapping):
            raise StoreError(f"env must be a dict, got {type(env).__name__}")
        rows = [dict(r) for r in plugins]
        columns = ["kind", "name", "plugin", "package", "version"]
        for r in rows:
            columns += [k for k in r if k not in columns]

        def change(f: h5py.File) -> None:
            if "environment" in f:
                g = f["environment"]
                hist = g.require_group("history")
                session = f"session_{len(hist):03d}"
                s = hist.create_group(session)
                for k in list(g.attrs):
                    s.attrs[k] = g.attrs[k]
                    del g.attrs[k]
                if "plugins" in g:
                    g.move("plugins", f"history/{session}/plugins")
            else:
                g = f.create_group("environment")
            for key, value in env.items():
                if isinstance(value, str):
                    value = str(value)  # str subclasses (e.g. torch's version) become plain strings
                if isinstance(value, (str, bool, int, float, np.generic)):
                    g.attrs[str(key)] = value
                else:
                    g.attrs[str(key)] = L.to_json(value, lenient=True)
            g.attrs["written"] = L.now_iso()
            t = g.create_group("plugins")
            t.attrs["columns"] = _string_array(columns)
            for c in columns:
                t.create_dataset(c, data=_string_array([r.get(c, "") for r in rows]))

        self._commit(change)

    def read_environment(self) -> tuple[dict, list[dict]]:
        """Return ``(env attributes, plugin rows)`` of the latest session."""
        with self._read() as f:
            if "environment" not in f:
                return {}, []
            g = f["environment"]
            env = {k: _decode_attr(g.attrs[k]) for k in g.attrs}
            rows: list[dict] = []
            if "plugins" in g:
                t = g["plugins"]
                cols = L.attr_str_list(t.attrs.get("columns")) or list(t)
                data = {c: list(t[c].asstr()[()]) for c in cols if c in t}
                n = len(next(iter(data.values()))) if data else 0
                rows = [{c: data[c][i] for c in data} for i in range(n)]
        return env, rows

    def write_summary(self, rows: list[dict]) -> None:
        """Store the run summary (one JSON-able dict per iteration) at ``/summary``, replacing any."""
        text = L.to_json([dict(r) for r in rows])

        def change(f: h5py.File) -> None:
            if "summary" in f:
                del f["summary"]
            ds = f.create_dataset("summary", data=text, dtype=_STRING)
            ds.attrs["format"] = "json"
            ds.attrs["written"] = L.now_iso()

        self._commit(change)

    def read_summary(self) -> list[dict]:
        """The rows stored by :meth:`write_summary` (``[]`` if none)."""
        with self._read() as f:
            if "summary" not in f:
                return []
            return L.from_json(f["summary"].asstr()[()])

    # ------------------------------------------------------------------ inputs
    def write_input(
        self,
        name: str,
        frames: np.ndarray,
        pixel_size: float | None,
        source: str | None = None,
        sha256: str | None = None,
        metadata: dict | None = None,
    ) -> str:
        """Store input frames ``(N, H, W)`` (or one ``(H, W)`` image) as an NSID dataset.

        Returns the dataset path ``/inputs/<name>/<name>``.
        """
        L.check_name(name, "input name")
        arr = _numeric_array(frames, f"input {name!r}")
        if arr.ndim not in (2, 3):
            raise StoreError(f"input {name!r} must be (N, H, W) or (H, W), got shape {arr.shape}")
        px = _check_pixel_size(pixel_size)
        meta_json = L.to_json(dict(metadata or {}), lenient=True)
        path = f"{L.INPUTS}/{name}/{name}"
        if self.has(f"{L.INPUTS}/{name}"):
            raise StoreError(f"{self._path} already holds input {name!r}")
        given_dtype = arr.dtype  # written at once below: no copy (a long movie is not held twice)
        arr = _as_exact_integers(arr)

        def fill(parent: h5py.Group, _name: str) -> None:
            from elit.store.nsid import write_image

            dims = ["frame", "row", "col"] if arr.ndim == 3 else ["row", "col"]
            ds = write_image(
                parent, name, arr, dims, "intensity", "a.u.", px, "IMAGE_STACK" if arr.ndim == 3 else "IMAGE",
                **_large(arr),
            )
            ds.attrs["source"] = source or ""
            ds.attrs["sha256"] = sha256 or ""
            ds.attrs["pixel_size"] = np.nan if px is None else px
            ds.attrs["elit_metadata"] = meta_json
            if arr.dtype != given_dtype:
                ds.attrs["elit_dtype"] = given_dtype.name  # read_input gives this dtype back
            _write_provenance(ds, "", [])

        def change(f: h5py.File) -> None:
            f.require_group("inputs")
            _place(f, self._path, f"{L.INPUTS}/{name}", arr.nbytes, fill)

        self._commit(change)
        return path

    def inputs(self) -> list[str]:
        """Names of the stored inputs."""
        with self._read() as f:
            return list(f["inputs"]) if "inputs" in f else []

    def read_input(self, name: str) -> tuple[np.ndarray, float | None, dict]:
        """Return ``(frames, pixel_size or None, metadata)`` of an input.

        ``metadata`` is the dict given to :meth:`write_input` plus the keys
        ``source`` and ``sha256``.
        """
        L.check_name(name, "input name")
        with self._read() as f:
            ds = f.get(f"{L.INPUTS}/{name}/{name}")
            if not isinstance(ds, h5py.Dataset):
                have = ", ".join(f["inputs"]) if "inputs" in f else ""
                raise StoreError(f"{self._path} holds no input {name!r} (inputs: {have or 'none'})")
            frames = ds[()]
            if "elit_dtype" in ds.attrs:
                frames = frames.astype(L.attr_str(ds.attrs["elit_dtype"]))
            px = L.finite_or_none(ds.attrs.get("pixel_size", np.nan))
            meta = L.from_json(ds.attrs.get("elit_metadata", "{}"))
            meta["source"] = L.attr_str(ds.attrs.get("source", ""))
            meta["sha256"] = L.attr_str(ds.attrs.get("sha256", ""))
        return frames, px, meta

    # ------------------------------------------------------------------ stages
    def stage(self, iteration: int, kind: str, info: dict) -> StageWriter:
        """Begin writing one stage of one iteration; use as a context manager.

        ``info`` holds the stage's provenance: ``name`` (required), ``plugin``,
        ``package``, ``plugin_version``, ``stage_version``, ``config`` (dict),
        ``seed`` and ``used`` (dataset paths read).  An unfinished stage of the
        same ``(iteration, kind)`` left by a crash is replaced, except its
        finished members when the stage is started again with the same name,
        config and seed.  A complete stage is refused (see :meth:`delete_stage`).
        """
        if self._mode != "a":
            raise StoreError(f"{self._path} is open read-only; open it with mode='a' to write")
        if self._active_stage is not None:
            raise StoreError(f"stage {self._active_stage.path} is still open; finish it before starting another")
        path = L.stage_path(iteration, kind)
        clean = _check_info(info, path)
        if self.stage_complete(iteration, kind):
            raise StoreError(
                f"{self._path}: stage {path} is already complete; delete it first (RunStore.delete_stage) to redo it"
            )
        return StageWriter(self, int(iteration), kind, clean)

    def stage_complete(self, iteration: int, kind: str) -> bool:
        """True if the stage exists and was committed complete."""
        path = L.stage_path(iteration, kind)
        with self._read() as f:
            g = f.get(path)
            return isinstance(g, h5py.Group) and bool(g.attrs.get("complete", False))

    def delete_stage(self, iteration: int, kind: str) -> None:
        """Remove a stage (complete or not), e.g. to redo it."""
        path = L.stage_path(iteration, kind)
        if not self.has(path):
            raise StoreError(f"{self._path} holds no stage {path}")

        def change(f: h5py.File) -> None:
            del f[path]

        self._commit(change)
        P.sweep(self._path)

    def discard_from(self, iteration: int, kind: str) -> list[str]:
        """Delete a stage, the stages of its iteration started after it, every later iteration and ``/summary``.

        Used to redo a run from a given step.  If the stage does not exist, only
        later iterations (and the summary) go.  Returns the deleted group paths.
        """
        start_path = L.stage_path(iteration, kind)
        with self._read() as f:
            doomed: list[str] = []
            ig = f.get(L.iteration_path(iteration))
            if ig is not None and kind in ig:
                t0 = L.attr_str(ig[kind].attrs.get("started", ""))
                doomed += [
                    f"{ig.name}/{k}" for k in ig
                    if k == kind or L.attr_str(ig[k].attrs.get("started", "")) >= t0
                ]
            doomed += [L.iteration_path(i) for i in self._iter_numbers(f) if i > iteration]
            if "summary" in f:
                doomed.append(L.SUMMARY)
        if not doomed:
            return []

        def change(f: h5py.File) -> None:
            for p in doomed:
                del f[p]
            ig = f.get(L.iteration_path(iteration))
            if ig is not None and len(ig) == 0:
                del f[ig.name]

        self._commit(change)
        P.sweep(self._path)
        return sorted(set(doomed), key=lambda p: (p != start_path, p))

    def iterations(self) -> list[int]:
        """Iteration numbers present in the file, ascending."""
        with self._read() as f:
            g = f.get(L.ITERATIONS)
            if g is None:
                return []
            return sorted(i for i in (L.parse_iteration(n) for n in g) if i is not None)

    def stages(self, iteration: int) -> dict[str, dict]:
        """``{kind: attributes}`` of one iteration's stages, in the order they were started.

        Attributes are decoded: ``config`` is a dict, ``used`` a list,
        ``complete`` a bool, ``seed`` an int or None.
        """
        with self._read() as f:
            g = f.get(L.iteration_path(iteration))
            if g is None:
                return {}
            out = {k: _stage_attrs(g[k]) for k in g if isinstance(g[k], h5py.Group)}
        return dict(sorted(out.items(), key=lambda kv: str(kv[1].get("started", ""))))

    # ------------------------------------------------------------------ reading
    def has(self, path: str) -> bool:
        """True if ``path`` exists in the file."""
        with self._read() as f:
            return path in f

    def attrs(self, path: str) -> dict[str, Any]:
        """Decoded attributes of a dataset or group (JSON strings are left as strings)."""
        with self._read() as f:
            obj = self._get(f, path)
            return {k: _decode_attr(obj.attrs[k]) for k in obj.attrs if k not in ("DIMENSION_LIST", "REFERENCE_LIST")}

    def _get(self, f: h5py.File, path: str, kind: type | None = None) -> Any:
        obj = f.get(path)
        if obj is None:
            raise StoreError(f"{self._path} holds nothing at {path}")
        if kind is not None and not isinstance(obj, kind):
            what = "a dataset" if kind is h5py.Dataset else "a group"
            raise StoreError(f"{self._path}: {path} is not {what}")
        return obj

    def read_image(self, path: str, raw: bool = False) -> np.ndarray:
        """Return an image dataset (its NSID group's path works too).

        A map stored quantized (attribute ``quantization``, see
        :mod:`elit.store.precision`) comes back as float32 probabilities, unless
        ``raw``, which returns the stored values.
        """
        with self._read() as f:
            obj = self._get(f, path)
            if isinstance(obj, h5py.Group):
                obj = obj.get(path.rstrip("/").rsplit("/", 1)[-1])
                if not isinstance(obj, h5py.Dataset):
                    raise StoreError(f"{self._path}: {path} is a group without an image dataset")
            data = obj[()]
            if not raw and L.attr_str(obj.attrs.get(QUANTIZATION_ATTR, "")):
                data = dequantize(data)
            return data

    def read_array(self, path: str) -> np.ndarray:
        """Return a plain dataset."""
        with self._read() as f:
            return _read_dataset(self._get(f, path, h5py.Dataset))

    def read_json(self, path: str) -> Any:
        """Return the object stored by :meth:`StageWriter.add_json`."""
        with self._read() as f:
            ds = self._get(f, path, h5py.Dataset)
            if h5py.check_string_dtype(ds.dtype) is None:
                raise StoreError(f"{self._path}: {path} is not a JSON string")
            return L.from_json(ds.asstr()[()])

    def read_table(self, path: str) -> AtomTable:
        """Return the :class:`~elit.data.AtomTable` stored by :meth:`StageWriter.add_table`."""
        with self._read() as f:
            g = self._get(f, path, h5py.Group)
            missing = [c for c in ATOM_COLUMNS if c not in g]
            if missing:
                raise StoreError(f"{self._path}: {path} is not an atom table (missing {', '.join(missing)})")
            cols = {c: g[c][()] for c in ATOM_COLUMNS + OPTIONAL_COLUMNS if c in g}
            names = tuple(L.attr_str_list(g.attrs.get("class_names"))) or ("atom",)
        return AtomTable(**cols, class_names=names)

    def read_arrays(self, path: str) -> tuple[dict, dict[str, np.ndarray]]:
        """Return ``(spec, arrays)`` of a group written by ``add_ensemble`` or ``add_member``."""
        with self._read() as f:
            return _read_arrays(self._get(f, path, h5py.Group))

    def read_ensemble(self, iteration: int, kind: str = "trainer", name: str = "ensemble", registry=None):
        """Rebuild the :class:`elit.ensemble.Ensemble` stored in a stage.

        Its architecture is found by name in ``registry`` (default: the installed
        plugins'; see :func:`elit.plugins.with_architecture`).
        """
        from elit.ensemble import Ensemble
        from elit.plugins import with_architecture

        path = f"{L.stage_path(iteration, kind)}/{L.check_name(name, 'ensemble name')}"
        if not self.has(path):
            raise StoreError(f"{self._path} holds no ensemble at {path}")
        spec, arrays = self.read_arrays(path)
        return with_architecture(Ensemble.from_arrays(spec, arrays), registry)

    def read_members(self, iteration: int, kind: str = "trainer", info: dict | None = None) -> dict[int, tuple[dict, dict]]:
        """Members made durable in an unfinished stage: ``{index: (spec, arrays)}``.

        Build members with ``Member.from_arrays(spec, arrays)``.  With ``info``
        (the dict to be passed to :meth:`stage`), members are returned only if
        they were trained with the same stage name, plugin, config and seed.
        Returns ``{}`` when there are none or the stage is complete.
        """
        path = L.stage_path(iteration, kind)
        with self._read() as f:
            g = f.get(path)
            if not isinstance(g, h5py.Group) or bool(g.attrs.get("complete", False)) or L.MEMBERS not in g:
                return {}
            if info is not None and _signature(_stage_attrs(g)) != _signature(_check_info(info, path)):
                return {}
            out = {}
            for key, sub in g[L.MEMBERS].items():
                if isinstance(sub, h5py.Group) and "index" in sub.attrs:
                    out[int(sub.attrs["index"])] = _read_arrays(sub)
        return dict(sorted(out.items()))

    # ------------------------------------------------------------------ inspect
    def tree(self, verbose: bool = False) -> str:
        """A readable summary for ``elit inspect``: provenance of each stage and its datasets."""
        lines: list[str] = []
        with self._read() as f:
            a = f.attrs
            lines.append(
                f"{self._path}  ({L.attr_str(a.get('format', '?'))} v{_decode_attr(a.get('format_version', '?'))}, "
                f"elit {L.attr_str(a.get('elit_version', '?'))}, created {L.attr_str(a.get('created', '?'))}, "
                f"{_fmt_bytes(self._path.stat().st_size)})"
            )
            if "config" in f:
                sha = L.attr_str(f["config"].attrs.get("sha256", ""))
                lines.append(f"config  sha256 {sha[:16]}")
                if verbose:
                    lines += ["  " + ln for ln in _pretty_json(f["config"].asstr()[()]).splitlines()]
            if "environment" in f:
                g = f["environment"]
                env = {k: _decode_attr(g.attrs[k]) for k in g.attrs if k != "written"}
                n = len(g["plugins"]["name"]) if "plugins" in g and "name" in g["plugins"] else 0
                shown = ", ".join(f"{k} {v}" for k, v in env.items())
                lines.append(f"environment  {shown}; {n} plugin stage(s)")
            if "summary" in f:
                rows = L.from_json(f["summary"].asstr()[()])
                lines.append(f"summary  {len(rows)} iteration(s)")
            if "inputs" in f and len(f["inputs"]):
                lines.append("inputs")
                for name in f["inputs"]:
                    ds = f["inputs"][name].get(name)
                    if isinstance(ds, h5py.Dataset):
                        px = L.finite_or_none(ds.attrs.get("pixel_size", np.nan))
                        src = L.attr_str(ds.attrs.get("source", ""))
                        sha = L.attr_str(ds.attrs.get("sha256", ""))
                        lines.append(
                            f"  {name}  {_shape(ds)}  {'%.4g Å/px' % px if px else 'pixel size unknown'}"
                            + (f"  from {src}" if src else "")
                            + (f"  sha256 {sha[:12]}" if sha else "")
                        )
                        lines += _origin_lines(L.from_json(ds.attrs.get("elit_metadata", "{}")), px)
            for it in self._iter_numbers(f):
                lines.append(f"iteration {it}")
                ig = f[L.iteration_path(it)]
                kinds = sorted(ig, key=lambda k: L.attr_str(ig[k].attrs.get("started", "")))
                for kind in kinds:
                    lines += _stage_lines(ig[kind], verbose)
        return "\n".join(lines)

    @staticmethod
    def _iter_numbers(f: h5py.File) -> list[int]:
        g = f.get(L.ITERATIONS)
        return sorted(i for i in (L.parse_iteration(n) for n in (g or [])) if i is not None)

    def missing_plugins(self, registry) -> list[str]:
        """Stages named in the file whose ``(kind, name)`` the registry does not provide.

        Each entry reads ``"trainer 'name' (plugin P, package X 1.0)"``.
        """
        from elit.stages import STAGE_KINDS

        known = set(getattr(registry, "stages", {}))
        missing = set()
        for it in self.iterations():
            for kind, attrs in self.stages(it).items():
                name = attrs.get("name", "")
                if kind in STAGE_KINDS and name and (kind, name) not in known:
                    missing.add(
                        f"{kind} {name!r} (plugin {attrs.get('plugin', '?')}, "
                        f"package {attrs.get('package', '?')} {attrs.get('plugin_version', '')})".replace(" )", ")")
                    )
        return sorted(missing)


_TOKEN = object()


def check_run_file(path: Path) -> None:
    """Raise :class:`StoreError` unless ``path`` is a readable elit run file."""
    if not path.exists():
        raise StoreError(f"{path}: no such file")
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a run file")
    try:
        with h5py.File(path, "r") as f:
            fmt = L.attr_str(f.attrs.get("format", ""))
            version = f.attrs.get("format_version", None)
    except OSError as exc:
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head != b"\x89HDF\r\n\x1a\n":
            raise StoreError(f"{path} is not an HDF5 file") from None
        raise StoreError(f"{path} is damaged or truncated (HDF5 says: {str(exc).splitlines()[0]})") from None
    if fmt != L.FORMAT_NAME:
        raise StoreError(f"{path} is an HDF5 file but not an elit run file (no format='{L.FORMAT_NAME}' attribute)")
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise StoreError(f"{path}: format_version attribute is missing or invalid") from None
    if version > L.FORMAT_VERSION:
        raise StoreError(
            f"{path} was written by a newer elit (run format {version}, this elit reads up to {L.FORMAT_VERSION}); "
            "upgrade elit"
        )


def _check_pixel_size(pixel_size) -> float | None:
    if pixel_size is None:
        return None
    try:
        px = float(pixel_size)
    except (TypeError, ValueError):
        raise StoreError(f"pixel_size must be a number or None, got {pixel_size!r}") from None
    if not np.isfinite(px) or px <= 0:
        raise StoreError(f"pixel_size must be positive, got {pixel_size!r}")
    return px


def _check_info(info: Any, path: str) -> dict[str, Any]:
    if not isinstance(info, Mapping):
        raise StoreError(f"stage info for {path} must be a dict, got {type(info).__name__}")
    unknown = sorted(set(info) - set(L.STAGE_INFO_KEYS))
    if unknown:
        raise StoreError(f"stage info for {path} has unknown keys {unknown}; allowed: {', '.join(L.STAGE_INFO_KEYS)}")
    name = info.get("name")
    if not name or not isinstance(name, str):
        raise StoreError(f"stage info for {path} needs a 'name' (the stage's registered name)")
    config = info.get("config") or {}
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    if not isinstance(config, Mapping):
        raise StoreError(f"stage info 'config' for {path} must be a dict")
    seed = info.get("seed")
    if seed is not None:
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
            raise StoreError(f"stage info 'seed' for {path} must be an integer or None, got {seed!r}")
        seed = int(seed)
    return {
        "name": name,
        "plugin": str(info.get("plugin") or ""),
        "package": str(info.get("package") or ""),
        "plugin_version": str(info.get("plugin_version") or ""),
        "stage_version": str(info.get("stage_version") or ""),
        "config": L.to_json(dict(config)),
        "seed": seed,
        "used": _clean_paths(info.get("used") or [], f"stage info 'used' for {path}"),
    }


def _signature(attrs: Mapping[str, Any]) -> tuple:
    config = attrs.get("config")
    if not isinstance(config, str):
        config = L.to_json(config or {})
    return (attrs.get("name"), attrs.get("plugin"), config, attrs.get("seed"))


def _shape(ds: h5py.Dataset) -> str:
    return f"{ds.shape} {ds.dtype}" if ds.shape else f"scalar {ds.dtype}"


def _origin_lines(meta: dict, px: float | None) -> list[str]:
    """``elit inspect`` lines on where an input came from: its signal and its calibration."""
    if not isinstance(meta, dict) or not meta.get("reader"):
        return []
    lines = []
    if meta.get("signal"):
        lines.append(f"    signal {meta['signal']!r} (#{meta.get('signal_index', 0)}, {meta.get('signal_choice', '')}), read by {meta['reader']}")
    file_px = meta.get("file_pixel_size")
    calib = meta.get("calibration") or meta.get("pixel_size_source")
    text = f"    calibration {calib} = {file_px:.4g} Å/px" if calib and file_px else "    calibration: none in the file"
    if px and (not file_px or abs(px - file_px) > 1e-6 * px):
        text += f"; the run used {px:.4g} Å/px (given or estimated)"
    return lines + [text]


def _pretty_json(text: str) -> str:
    import json

    return json.dumps(L.from_json(text), indent=2, sort_keys=True, ensure_ascii=False)


def _stage_lines(g: h5py.Group, verbose: bool) -> list[str]:
    a = _stage_attrs(g)
    state = "complete" if a["complete"] else "UNFINISHED"
    who = f"{a.get('name', '?')}"
    origin = ", ".join(
        x for x in (
            f"plugin {a.get('plugin')}" if a.get("plugin") else "",
            f"{a.get('package')} {a.get('plugin_version', '')}".strip() if a.get("package") else "",
            f"stage v{a.get('stage_version')}" if a.get("stage_version") else "",
        ) if x
    )
    seed = f"  seed {a['seed']}" if a["seed"] is not None else ""
    when = f"  {a.get('started', '')} → {a.get('finished', '') or '…'}"
    origin = f" ({origin})" if origin else ""
    lines = [f"  {g.name.rsplit('/', 1)[-1]}: {who}{origin}{seed}  {state}{when}"]
    if verbose:
        lines.append(f"    config {L.to_json(a['config'])}")
        if a["used"]:
            lines.append(f"    used {', '.join(a['used'])}")

    def visit(name: str, obj) -> None:
        depth = name.count("/")
        parent = obj.parent
        if depth and set(name.split("/")[1:]) & set(L.NSID_RESERVED):
            return  # sidpy's metadata groups beside an NSID main dataset
        if isinstance(obj, h5py.Group):
            if depth and not verbose and _inside_arrays(parent):
                return
            fmt = L.attr_str(obj.attrs.get("format", ""))
            if fmt == "elit-arrays" and not verbose:
                keys = L.from_json(obj.attrs.get("keys", "[]"))
                total = sum(obj[k].nbytes for k in keys if k in obj)
                lines.append(f"    {name}/  {len(keys)} arrays, {_fmt_bytes(total)}")
            elif fmt == "elit-atom-table":
                lines.append(f"    {name}/  atom table, {int(obj.attrs.get('n_rows', 0))} atoms, classes "
                             f"{', '.join(L.attr_str_list(obj.attrs.get('class_names')))}")
            elif "pyNSID_version" in obj.attrs or "nsid_version" in obj.attrs:
                return  # NSID group: its main dataset is listed
            elif verbose or not _inside_arrays(obj):
                lines.append(f"    {name}/")
            return
        # dataset
        if _inside_arrays(parent) and not verbose:
            return
        if "CLASS" in obj.attrs and L.attr_str(obj.attrs["CLASS"]) == "DIMENSION_SCALE":
            return  # NSID dimension scale
        if parent.name != g.name and L.attr_str(parent.attrs.get("format", "")) == "elit-atom-table":
            return
        extra = ""
        if L.attr_str(obj.attrs.get("format", "")) == "json":
            lines.append(f"    {name}  JSON, {len(obj.asstr()[()])} characters")
            return
        if "units" in obj.attrs and "quantity" in obj.attrs:
            labels = [d.label for d in obj.dims]
            extra = f"  {L.attr_str(obj.attrs['quantity'])} ({L.attr_str(obj.attrs['units'])}) dims {labels}"
        lines.append(f"    {name}  {_shape(obj)}{extra}")
        if verbose:
            derived = L.attr_str_list(obj.attrs.get("derived_from"))
            if derived:
                lines.append(f"      derived from {', '.join(derived)}")

    _walk(g, visit)
    return lines


def _walk(group: h5py.Group, fn: Callable[[str, Any], Any], prefix: str = "", seen: set | None = None) -> None:
    """Like ``group.visititems(fn)``, in insertion order, following external links into part files."""
    seen = set() if seen is None else seen
    for key in group:
        obj = group.get(key)
        if obj is None:
            continue  # a dangling link
        ident = (obj.file.filename, h5py.h5o.get_info(obj.id).addr)
        if ident in seen:
            continue
        seen.add(ident)
        fn(prefix + key, obj)
        if isinstance(obj, h5py.Group):
            _walk(obj, fn, f"{prefix}{key}/", seen)


def _inside_arrays(obj) -> bool:
    """True inside (or at) a group written by add_ensemble/add_member or the members group."""
    while obj is not None and obj.name != "/":
        if L.attr_str(obj.attrs.get("format", "")) == "elit-arrays":
            return True
        obj = obj.parent
    return False


class StageWriter:
    """Writes one stage; obtained from :meth:`RunStore.stage` and used as a context manager.

    Datasets added with ``add_*`` are buffered and committed when the ``with``
    block ends without an exception (then the stage is marked complete).
    :meth:`add_member` commits at once.  If the block raises, nothing buffered
    is written and the stage stays unfinished (``complete=False``) or absent.
    Arrays are copied when added, so the caller may reuse its buffers.
    """

    def __init__(self, store: RunStore, iteration: int, kind: str, info: dict[str, Any]) -> None:
        self._store = store
        self.iteration = iteration
        self.kind = kind
        self.path = L.stage_path(iteration, kind)
        self._info = info
        self._ops: list[Callable[[h5py.File], None]] = []
        self._names: set[str] = set()
        self._pending_bytes = 0
        self._prepared = False
        self._ensemble_added = False
        self._started = L.now_iso()
        self._checks: list[tuple[str, list[str]]] = [(self.path, info["used"])]
        self._open = False

    # -- context manager
    def __enter__(self) -> StageWriter:
        if self._store._active_stage is not None:
            raise StoreError(f"stage {self._store._active_stage.path} is still open")
        self._store._active_stage = self
        self._open = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._store._active_stage = None
        self._open = False
        if exc_type is not None:
            self._ops.clear()
            return False
        self._flush(final=True)
        return False

    # -- internals
    def _require_open(self) -> None:
        if not self._open:
            raise StoreError(f"stage {self.path} is not open: use `with store.stage(...) as st:`")

    def _claim(self, name: str, what: str, nested: bool = False) -> str:
        self._require_open()
        (L.check_nested_name if nested else L.check_name)(name, what)
        if name.split("/")[0] == L.MEMBERS:
            raise StoreError(f"{what} {name!r} is reserved")
        for other in self._names:
            if other == name or other.startswith(name + "/") or name.startswith(other + "/"):
                raise StoreError(f"stage {self.path} already has {other!r}; {name!r} would clash with it")
        self._names.add(name)
        return f"{self.path}/{name}"

    def _queue(self, op: Callable[[h5py.File], None], nbytes: int, path: str, derived_from: list[str]) -> None:
        self._ops.append(op)
        self._checks.append((path, derived_from))
        self._pending_bytes += nbytes
        if self._pending_bytes > FLUSH_ABOVE_BYTES:
            self._flush(final=False)

    def _prepare(self, f: h5py.File) -> h5py.Group:
        info = self._info
        g = f.get(self.path)
        if g is not None:
            if bool(g.attrs.get("complete", False)):
                raise StoreError(f"stage {self.path} was completed by another writer")
            keep_members = _signature(_stage_attrs(g)) == _signature(info)
            for key in list(g):
                if not (keep_members and key == L.MEMBERS):
                    del g[key]
            for key in list(g.attrs):
                del g.attrs[key]
        else:
            ig = f.require_group(L.iteration_path(self.iteration))
            ig.attrs["iteration"] = self.iteration
            g = ig.create_group(self.kind)
        g.attrs["kind"] = self.kind
        for key in ("name", "plugin", "package", "plugin_version", "stage_version", "config"):
            g.attrs[key] = info[key]
        if info["seed"] is not None:
            g.attrs["seed"] = np.int64(info["seed"])
        g.attrs["used"] = _string_array(info["used"])
        g.attrs["started"] = self._started
        g.attrs["finished"] = ""
        g.attrs["complete"] = False
        return g

    def _flush(self, final: bool) -> None:
        ops, checks = list(self._ops), list(self._checks)

        def change(f: h5py.File) -> None:
            g = self._prepare(f) if not self._prepared else f[self.path]
            for op in ops:
                op(f)
            if final:
                if self._ensemble_added and L.MEMBERS in g:
                    del g[L.MEMBERS]  # superseded by the ensemble (which links the same weights)
                for where, paths in checks:
                    lost = [p for p in paths if not is_external_path(p) and p not in f]
                    if lost:
                        raise StoreError(f"{where}: refers to {', '.join(lost)}, which the file does not hold")
                g.attrs["finished"] = L.now_iso()
                g.attrs["complete"] = True

        self._store._commit(change)
        self._prepared = True
        self._ops.clear()
        self._pending_bytes = 0

    # -- public API
    def add_image(
        self,
        name: str,
        data: np.ndarray,
        dims: list[str],
        quantity: str = "probability",
        units: str = "a.u.",
        pixel_size: float | None = None,
        derived_from=(),
        data_type: str = "IMAGE_STACK",
        quantization: str = "",
        copy: bool = True,
        attrs: dict | None = None,
    ) -> str:
        """Add an image-like array as an NSID dataset (dimension scales with units; Å when ``pixel_size``).

        ``dims`` names each axis, e.g. ``["frame", "class", "row", "col"]``;
        ``row``/``col`` are spatial.  ``quantization`` (e.g. ``"uint8/255"``) marks
        probabilities stored quantized (:mod:`elit.store.precision`).  With
        ``copy=False`` the caller promises not to change ``data`` until the stage
        ends (large maps are not held twice).  ``attrs`` are further attributes of
        the dataset (numbers, strings or arrays of them).  Returns the dataset path
        ``<stage>/<name>/<name>``.
        """
        group_path = self._claim(name, "image name")
        arr = _numeric_array(data, f"image {name!r}")
        if arr.dtype.kind not in "biuf":
            raise StoreError(f"image {name!r}: dtype {arr.dtype} is not a real number type")
        dims = [str(d) for d in dims]
        if len(dims) != arr.ndim:
            raise StoreError(f"image {name!r} has {arr.ndim} axes but {len(dims)} dims were named: {dims}")
        for d in dims:
            L.check_name(d, "dimension name")
        if len(set(dims)) != len(dims) or name in dims or set(dims) & set(L.NSID_RESERVED):
            raise StoreError(f"image {name!r}: dims {dims} must be distinct and differ from the image name and "
                             f"{', '.join(L.NSID_RESERVED)}")
        if data_type not in L.NSID_DATA_TYPES:
            raise StoreError(f"data_type {data_type!r} is not one of {', '.join(L.NSID_DATA_TYPES)}")
        px = _check_pixel_size(pixel_size)
        derived = _clean_paths(derived_from, f"derived_from of {name!r}")
        arr = np.array(arr, copy=True) if copy else arr
        stage = self.path
        run_path = self._store.path

        def fill(parent: h5py.Group, _name: str) -> None:
            from elit.store.nsid import write_image

            ds = write_image(parent, name, arr, dims, quantity, units, px, data_type, **_large(arr))
            _write_provenance(ds, stage, derived)
            ds.attrs["pixel_size"] = np.nan if px is None else px
            if quantization:
                ds.attrs[QUANTIZATION_ATTR] = quantization
            for key, value in (attrs or {}).items():
                ds.attrs[str(key)] = value

        def op(f: h5py.File) -> None:
            _place(f, run_path, group_path, arr.nbytes, fill)

        path = f"{group_path}/{name}"
        self._queue(op, arr.nbytes, path, derived)
        return path

    def add_array(self, name: str, data, derived_from=()) -> str:
        """Add a plain dataset (scores, indices, ...); ``name`` may nest (``criteria/dice``). Returns its path."""
        path = self._claim(name, "array name", nested=True)
        arr = np.array(_numeric_array(data, f"array {name!r}"), copy=True)
        derived = _clean_paths(derived_from, f"derived_from of {name!r}")

        def fill(parent: h5py.Group, key: str) -> None:
            kw = _large(arr) if arr.dtype.kind in "biuf" else {}
            _write_provenance(parent.create_dataset(key, data=arr, **kw), self.path, derived)

        def op(f: h5py.File) -> None:
            f.require_group(path.rsplit("/", 1)[0])
            _place(f, self._store.path, path, arr.nbytes, fill)

        self._queue(op, arr.nbytes, path, derived)
        return path

    def add_table(self, name: str, table: AtomTable, derived_from=()) -> str:
        """Add an :class:`~elit.data.AtomTable`: a group with one dataset per column."""
        path = self._claim(name, "table name")
        if not isinstance(table, AtomTable):
            raise StoreError(f"table {name!r} must be an AtomTable, got {type(table).__name__}")
        cols = {c: np.array(v, copy=True) for c, v in table.to_columns().items()}
        class_names = list(table.class_names)
        derived = _clean_paths(derived_from, f"derived_from of {name!r}")

        nbytes = sum(v.nbytes for v in cols.values())
        big = nbytes > P.PART_ABOVE_BYTES

        def fill(parent: h5py.Group, key: str) -> None:
            g = parent.create_group(key)
            g.attrs["format"] = "elit-atom-table"
            g.attrs["columns"] = _string_array(list(cols))
            g.attrs["class_names"] = _string_array(class_names)
            g.attrs["n_rows"] = len(cols["frame"])
            for c, v in cols.items():
                g.create_dataset(c, data=v, **(P.chunked(v.shape, v.dtype.itemsize, True) if big else {}))
            _write_provenance(g, self.path, derived)

        def op(f: h5py.File) -> None:
            _place(f, self._store.path, path, nbytes, fill)

        self._queue(op, nbytes, path, derived)
        return path

    def add_json(self, name: str, obj: Any, derived_from=()) -> str:
        """Add a JSON-serialisable object as a string dataset (``name`` may nest); returns its path."""
        path = self._claim(name, "JSON name", nested=True)
        text = L.to_json(obj)
        derived = _clean_paths(derived_from, f"derived_from of {name!r}")

        def op(f: h5py.File) -> None:
            ds = f.create_dataset(path, data=text, dtype=_STRING)
            ds.attrs["format"] = "json"
            _write_provenance(ds, self.path, derived)

        self._queue(op, len(text), path, derived)
        return path

    def add_ensemble(self, ensemble, name: str = "ensemble", derived_from=()) -> str:
        """Add an ensemble from ``ensemble.to_arrays() -> (spec, arrays)``; never pickled.

        The spec is stored as a JSON attribute, each array as a dataset at its
        key (``member_000/conv.weight``).  Members made durable with
        :meth:`add_member` are dropped when the stage completes.
        """
        path = self._claim(name, "ensemble name")
        spec_json, arrays = _check_arrays(*ensemble.to_arrays(), what="ensemble")
        derived = _clean_paths(derived_from, f"derived_from of {name!r}")

        def op(f: h5py.File) -> None:
            g = f.create_group(path)
            members = f.get(f"{self.path}/{L.MEMBERS}")
            _write_arrays(g, spec_json, arrays, reuse=members)
            _write_provenance(g, self.path, derived)

        self._ensemble_added = True
        self._queue(op, _arrays_bytes(arrays), path, derived)
        return path

    def add_member(self, index: int, member) -> str:
        """Commit one finished member (``member.to_arrays()``) at once, so a crash keeps it."""
        self._require_open()
        path = f"{self.path}/{L.MEMBERS}/{L.member_name(index)}"
        spec_json, arrays = _check_arrays(*member.to_arrays(), what="member")
        ops = list(self._ops)
        finished = L.now_iso()

        def change(f: h5py.File) -> None:
            g = self._prepare(f) if not self._prepared else f[self.path]
            for op in ops:
                op(f)
            members = g.require_group(L.MEMBERS)
            if L.member_name(index) in members:
                del members[L.member_name(index)]
            m = members.create_group(L.member_name(index))
            _write_arrays(m, spec_json, arrays)
            m.attrs["index"] = int(index)
            m.attrs["finished"] = finished
            _write_provenance(m, self.path, [])

        self._store._commit(change)
        self._prepared = True
        self._ops.clear()
        self._pending_bytes = 0
        return path


def _as_exact_integers(arr: np.ndarray) -> np.ndarray:
    """``arr`` as uint8 or uint16 when it is floating point and every value is a whole number that fits.

    Detector counts arrive as floats (the readers give float32) but are whole
    numbers; stored as integers they take half the bytes or less and deflate
    far better, and convert back to the same floats exactly.
    """
    if arr.dtype.kind != "f" or arr.size == 0:
        return arr
    top = 0.0
    for part in arr if arr.ndim == 3 else arr[None]:  # frame by frame: no movie-sized temporaries
        if not (np.all(part >= 0) and np.all(part == np.floor(part))):
            return arr
        top = max(top, float(part.max()))
    if top > 65535:
        return arr
    return arr.astype(np.uint8 if top <= 255 else np.uint16)
