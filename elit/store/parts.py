"""Large datasets in part files beside the run file, linked from it.

A commit of the run file copies it (:mod:`elit.store.commit`), so what the
run file holds directly is copied at every commit.  Datasets above
:data:`PART_ABOVE_BYTES` (frames, probability maps, large atom tables) are
therefore written once, each into its own HDF5 file in the folder
``<run file>.parts/``, and the run file holds an HDF5 external link to it::

    result.h5                         config, provenance, weights, small arrays, links
    result.h5.parts/3f2a...e1.h5      one part: the linked object at its root

A part is written to ``<name>.h5.tmp``, flushed, fsynced and renamed before the
commit that links it; a crash leaves either no part or an unlinked one, and
the next writer deletes parts that no link names (:func:`sweep`).  Reading
needs no care: h5py follows external links (relative to the run file's
folder), and pyNSID reads a linked image like any other.  Copy or move the
run file together with its ``.parts`` folder.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import h5py

from elit.store.commit import _fsync_path

PART_ABOVE_BYTES = 256 << 10
"""Datasets larger than this go into a part file (smaller ones stay in the run file)."""

PARTS_ATTR = "parts"
"""Root attribute of the run file naming its parts folder (relative to the run file's folder)."""

COMPRESSION = dict(compression="gzip", compression_opts=1)
"""Filters of large datasets: deflate level 1 (probability maps are mostly zeros)."""


def parts_folder(run_path: Path, f: h5py.File) -> Path:
    """The parts folder of the run file ``run_path`` (opened as ``f``)."""
    name = f.attrs.get(PARTS_ATTR, run_path.name + ".parts")
    name = name.decode() if isinstance(name, bytes) else str(name)
    return run_path.parent / name


def chunked(shape: tuple[int, ...], itemsize: int, shuffle: bool) -> dict:
    """create_dataset keywords: compressed chunks of about one frame (the last two axes whole)."""
    if len(shape) == 0 or 0 in shape:
        return {}
    chunks = list(shape)
    budget = 1 << 20
    for axis in range(len(shape) - 2 if len(shape) > 2 else 0):
        rest = itemsize
        for n in chunks[axis + 1 :]:
            rest *= n
        chunks[axis] = max(1, min(shape[axis], budget // max(1, rest)))
    return dict(chunks=tuple(chunks), shuffle=shuffle and itemsize > 1, **COMPRESSION)


def write_part(
    f: h5py.File, run_path: Path, link_path: str, fill: Callable[[h5py.File, str], None], durable: bool = True
) -> None:
    """Write one object into a new part file and link it from ``f`` at ``link_path``.

    Parameters
    ----------
    f : h5py.File
        The run file (a commit's clone), open for writing.
    run_path : Path
        The run file's final path (links are relative to its folder).
    link_path : str
        Absolute path of the link in ``f``; its parent group must exist.
    fill : callable
        ``fill(part_file, name)`` creates the object ``/<name>`` in the part file.
    durable : bool
        fsync the part before it is renamed into place.
    """
    folder = parts_folder(run_path, f)
    folder.mkdir(exist_ok=True)
    name = link_path.rstrip("/").rsplit("/", 1)[-1]
    final = folder / f"{uuid.uuid4().hex}.h5"
    tmp = final.with_name(final.name + ".tmp")
    try:
        with h5py.File(tmp, "w", libver=("v110", "v110")) as part:
            fill(part, name)
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, final)
        if durable:
            _fsync_path(folder, directory=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    f[link_path] = h5py.ExternalLink(f"{folder.name}/{final.name}", f"/{name}")


def linked_parts(f: h5py.File) -> set[str]:
    """File names (relative to the run file's folder) of every part ``f`` links to."""
    found: set[str] = set()

    def visit(_name: str, link) -> None:
        if isinstance(link, h5py.ExternalLink):
            found.add(link.filename)

    f.visititems_links(visit)
    return found


def sweep(run_path: Path) -> list[Path]:
    """Delete the part files of ``run_path`` that it does not link (left by a crash or a redone stage)."""
    try:
        with h5py.File(run_path, "r") as f:
            folder = parts_folder(run_path, f)
            keep = {os.path.normpath(p) for p in linked_parts(f)}
    except (OSError, FileNotFoundError):
        return []
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if p.is_file() and os.path.normpath(f"{folder.name}/{p.name}") not in keep:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
