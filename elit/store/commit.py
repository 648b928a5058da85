"""Crash-safe updates of an HDF5 file by copy-on-commit.

HDF5 files can be left unreadable when a process dies while one is open for
writing.  The run file is therefore never open for writing: a commit clones the
file to ``<path>.tmp``, applies the change there, flushes, fsyncs and atomically
renames the clone over the original (``os.replace``).  A crash at any moment
leaves either the old or the new file, and at worst a stale ``.tmp`` that the
next writer removes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from elit.errors import StoreError

CREATE_KWARGS = dict(libver=("v110", "v110"), fs_strategy="fsm", fs_persist=True, track_order=True)
"""File creation settings: HDF5 1.10 format (large attributes, persistent free-space
tracking so space freed by a redone stage is reused), insertion-ordered groups."""

_FICLONE = 0x40049409  # Linux ioctl: reflink copy (btrfs, XFS); falls back to a byte copy


def tmp_path(path: Path) -> Path:
    """The clone a commit writes to: ``<path>.tmp``."""
    return path.with_name(path.name + ".tmp")


def remove_stale_tmp(path: Path) -> None:
    """Remove a clone left by a crashed commit (one writer per file is assumed)."""
    try:
        tmp_path(path).unlink()
    except FileNotFoundError:
        pass


def _clone(src: Path, dst: Path) -> None:
    try:
        import fcntl

        with open(src, "rb") as fs, open(dst, "wb") as fd:
            fcntl.ioctl(fd.fileno(), _FICLONE, fs.fileno())
        return
    except (ImportError, OSError):
        pass
    shutil.copyfile(src, dst)


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms cannot open directories; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_update(path: Path, create: bool = False, durable: bool = True) -> Iterator[h5py.File]:
    """Open a writable clone of ``path``; on success it atomically replaces ``path``.

    Parameters
    ----------
    path : Path
        The run file.
    create : bool
        Start from an empty file instead of a clone (``path`` may not exist).
    durable : bool
        fsync the clone and its directory before and after the rename.

    Yields
    ------
    h5py.File
        The clone, open for writing.  If the body raises, the clone is deleted
        and ``path`` is left untouched.
    """
    tmp = tmp_path(path)
    remove_stale_tmp(path)
    try:
        if create:
            f = h5py.File(tmp, "w", **CREATE_KWARGS)
        else:
            _clone(path, tmp)
            f = h5py.File(tmp, "r+", libver=CREATE_KWARGS["libver"])
    except OSError as exc:
        remove_stale_tmp(path)
        raise StoreError(f"cannot write {path}: {exc}") from None
    try:
        yield f
        f.flush()
    except BaseException:
        f.close()
        remove_stale_tmp(path)
        raise
    f.close()
    try:
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync_path(path.parent, directory=True)
    except OSError as exc:
        remove_stale_tmp(path)
        raise StoreError(f"cannot write {path}: {exc}") from None


def commit(path: Path, change: Callable[[h5py.File], None], create: bool = False) -> None:
    """Apply ``change(file)`` to ``path`` atomically (see :func:`atomic_update`)."""
    with atomic_update(path, create=create) as f:
        change(f)
