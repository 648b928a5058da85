"""Watching a folder: :func:`watch` and :func:`watch_folder` analyse image files as they are written."""

from __future__ import annotations

import fnmatch
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from elit.errors import ConfigError, InputError
from elit.live.analyzer import LiveAnalyzer, LiveResult
from elit.live.figures import drift_figure
from elit.live.file import STATE_FAILED, STATE_FINISHED, STATE_INTERRUPTED, LiveWriter, _sha256_file


def model_provenance(result_path, iteration: int, config=None) -> dict[str, Any]:
    """Provenance attributes naming the run file an ensemble came from."""
    p = Path(result_path)
    prov: dict[str, Any] = {
        "model_file": str(p.resolve()),
        "model_sha256": _sha256_file(p),
        "model_iteration": int(iteration),
    }
    if config is not None:
        prov["config"] = config.to_json() if hasattr(config, "to_json") else json.dumps(config, sort_keys=True)
        if hasattr(config, "sha256"):
            prov["config_sha256"] = config.sha256()
    return prov


class _FolderScanner:
    """Finds files matching a pattern that are completely written, each once, in (mtime, name) order."""

    def __init__(self, folder: Path, pattern: str, exclude: Sequence[Path] = (), skip_existing: bool = False,
                 give_up: float = 30.0) -> None:
        self.folder = folder
        self.pattern = pattern
        self.exclude = {p.resolve() for p in exclude}
        self.seen: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) at the last poll
        self.done: set[str] = set()
        self.first_failure: dict[str, float] = {}
        self.give_up = give_up
        if skip_existing:
            for name, _sig, _ in self._listing():
                self.done.add(name)

    def _listing(self):
        out = []
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            raise InputError(f"{self.folder}: the watched folder no longer exists") from None
        for e in entries:
            if not fnmatch.fnmatchcase(e.name.lower(), self.pattern.lower()) or e.name.startswith("."):
                continue
            try:
                if not e.is_file():
                    continue
                st = e.stat()
            except FileNotFoundError:
                continue
            p = Path(e.path)
            if p.resolve() in self.exclude:
                continue
            out.append((e.name, (st.st_size, st.st_mtime_ns), st.st_mtime_ns))
        return out

    def ready(self) -> list[Path]:
        """Files whose size and mtime did not change since the last poll and that were not done yet."""
        now = {}
        ready = []
        for name, sig, mtime in self._listing():
            if name in self.done:
                continue
            now[name] = sig
            if sig[0] > 0 and self.seen.get(name) == sig:
                ready.append((mtime, name))
        self.seen = now
        return [self.folder / name for _, name in sorted(ready)]

    def unchanged(self, path: Path) -> bool:
        """True when the file's size and mtime are still those it was found ready with."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        return self.seen.get(path.name) == (st.st_size, st.st_mtime_ns)

    def failed(self, path: Path) -> bool:
        """Record a failed read; True when the file has failed for ``give_up`` seconds and should be skipped."""
        t = self.first_failure.setdefault(path.name, time.monotonic())
        return time.monotonic() - t >= self.give_up

    def mark_done(self, path: Path) -> None:
        self.done.add(path.name)
        self.first_failure.pop(path.name, None)


def watch_folder(
    analyzer: LiveAnalyzer,
    folder,
    pattern: str = "*.tif",
    out=None,
    *,
    provenance: dict | None = None,
    poll: float = 0.5,
    max_frames: int | None = None,
    timeout: float | None = None,
    stop_when_idle: float | None = None,
    log: Callable[[str], Any] | None = print,
    overwrite: bool = False,
    skip_existing: bool = False,
    give_up: float = 30.0,
    stop_event: threading.Event | None = None,
    on_result: Callable[[LiveResult], Any] | None = None,
    figure=None,
    signal: str | None = None,
) -> int:
    """Watch ``folder`` with a ready :class:`LiveAnalyzer`; see :func:`watch` for the parameters.

    ``stop_event`` (set it from another thread) and ``on_result`` (called
    with each :class:`LiveResult`) are for programs that embed the watcher;
    ``give_up`` is how long (seconds) a file that stays unreadable is retried.
    """
    from elit.readers import read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder to watch")
    if not poll > 0:
        raise ConfigError(f"poll must be positive, got {poll}")
    if max_frames is not None and int(max_frames) < 1:
        raise ConfigError(f"max_frames must be at least 1, got {max_frames}")
    say = log or (lambda _line: None)
    out = Path(out) if out is not None else folder / time.strftime("elit-live-%Y%m%d-%H%M%S.h5")
    prov = dict(provenance or {})
    prov.update({"watch": {"folder": str(folder.resolve()), "pattern": pattern, "poll": poll},
                 "live_settings": analyzer.settings(), "ensemble": _ensemble_summary(analyzer.ensemble)})
    writer = LiveWriter(out, prov, overwrite=overwrite)
    scanner = _FolderScanner(folder, pattern, exclude=[out], skip_existing=skip_existing, give_up=give_up)
    say(f"watching {folder} for {pattern}; results go to {out} (created with the first frame); Ctrl-C stops")
    start = last_new = time.monotonic()
    processed = 0
    state = STATE_FINISHED
    why = "stopped"
    try:
        while True:
            files = scanner.ready()
            for path in files:
                try:
                    image = read_image(path, signal=signal)
                except InputError as err:
                    first = path.name not in scanner.first_failure
                    if scanner.failed(path):
                        say(f"skipping {path.name}: {err}")
                        scanner.mark_done(path)
                    elif first:
                        say(f"waiting for {path.name}: not readable yet, retrying for up to {give_up:g} s ({err})")
                    continue
                if not scanner.unchanged(path):
                    continue  # written to while we read it: read it again once it is stable
                scanner.mark_done(path)
                last_new = time.monotonic()
                n_in_file = len(image.frames)
                for i in range(n_in_file):
                    source = path.name if n_in_file == 1 else f"{path.name}[{i}]"
                    try:
                        result = analyzer.process(image.frames[i], source=source, pixel_size=image.pixel_size)
                        writer.append(result, sha256=image.sha256)
                    except InputError as err:
                        say(f"skipping {source}: {err}")
                        continue
                    processed += 1
                    say(result.summary())
                    if on_result is not None:
                        on_result(result)
                    if max_frames is not None and processed >= max_frames:
                        break
                if max_frames is not None and processed >= max_frames:
                    why = f"{processed} frames done"
                    break
            else:
                now = time.monotonic()
                if stop_event is not None and stop_event.is_set():
                    why = "asked to stop"
                elif timeout is not None and now - start >= timeout:
                    why = f"timeout after {timeout:g} s"
                elif stop_when_idle is not None and now - last_new >= stop_when_idle:
                    why = f"no new frame for {stop_when_idle:g} s"
                else:
                    time.sleep(poll)
                    continue
            break
    except KeyboardInterrupt:
        state = STATE_INTERRUPTED
        why = "interrupted"
    except BaseException:
        writer.close(STATE_FAILED)
        raise
    writer.close(state)
    say(f"{why}: {processed} frame(s) analysed" + (f", results in {out}" if writer.created else ", no live file written"))
    if figure is not None and writer.created:
        say(f"wrote drift report {drift_figure(out, figure)}")
    return processed


def _ensemble_summary(ensemble) -> dict[str, Any]:
    return {
        "architecture": getattr(ensemble, "architecture", ""),
        "architecture_params": getattr(ensemble, "architecture_params", {}),
        "n_members": len(ensemble),
        "class_names": list(getattr(ensemble, "class_names", ())),
        "pixel_size": float(getattr(ensemble, "pixel_size", float("nan"))),
        "activation": getattr(ensemble, "activation", ""),
        "member_seeds": [int(getattr(m, "seed", -1)) for m in getattr(ensemble, "members", [])],
    }


def watch(
    result_path,
    folder,
    pattern: str = "*.tif",
    out=None,
    poll: float = 0.5,
    max_frames: int | None = None,
    timeout: float | None = None,
    stop_when_idle: float | None = None,
    log: Callable[[str], Any] | None = print,
    *,
    iteration: int | str = "last",
    device: str | None = None,
    pixel_size: float | None = None,
    k: int | None = None,
    min_score: float | None = None,
    tolerance: float | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
    figure=None,
    signal: str | None = None,
    **analyzer_options,
) -> int:
    """Analyse image files as they appear in a folder; return the number of frames analysed.

    Each completely written file matching ``pattern`` (its size and
    modification time unchanged between two polls, and readable) is processed
    exactly once, oldest first (then by name); every frame of a stack is a
    frame.  Each frame gets one log line (atoms found, members in use, drift
    indicators, latency) and one row in the live HDF5 file ``out``.

    Parameters
    ----------
    result_path : str or Path
        A finished run file; its ensemble (of ``iteration``) does the work.
    folder : str or Path
        The folder the microscope writes into.
    pattern : str
        Shell pattern of the files to analyse (``*.tif``, ``frame_*.npy``...), matched
        regardless of case (``*.tif`` also takes ``IMG.TIF``).
    out : str or Path, optional
        The live file; default ``FOLDER/elit-live-YYYYmmdd-HHMMSS.h5``.
    poll : float
        Seconds between looks at the folder.
    max_frames : int, optional
        Stop after this many frames.
    timeout : float, optional
        Stop after this many seconds.
    stop_when_idle : float, optional
        Stop when no new file came for this many seconds.
    log : callable or None
        Receives each log line (default ``print``).
    iteration : int or "last"
        The run's iteration whose ensemble is used.
    device : str, optional
        ``cpu``, ``cuda`` or ``auto`` (default: the run's config).
    pixel_size : float, optional
        Input pixel size in Angstrom/px (default: the file's metadata, else estimated once).
    k, min_score, tolerance
        Member choice per frame (see :class:`LiveAnalyzer`).
    overwrite : bool
        Replace ``out`` if it exists.
    skip_existing : bool
        Ignore files already in the folder when watching starts.
    figure : str or Path, optional
        Draw the drift report (:func:`drift_figure`) into this PNG at the end.
    signal : str, optional
        Signal to read from files holding several (name or index; default: the HAADF/ADF image).
    **analyzer_options
        More :class:`LiveAnalyzer` settings (``max_drop``, ``reference_frames``,
        ``predict_options``, ``threshold``, ``score_size``).

    Returns
    -------
    int
        Frames analysed.  Ctrl-C stops cleanly: the live file is closed and
        marked ``interrupted``, and stays readable.
    """
    from elit.results import load_ensemble

    ensemble, config, it = load_ensemble(result_path, iteration)
    opts = dict(analyzer_options)
    for name, value in (("k", k), ("min_score", min_score), ("tolerance", tolerance)):
        if value is not None:
            opts[name] = value
    analyzer = LiveAnalyzer(ensemble, config, device=device or config.device, input_pixel_size=pixel_size, **opts)
    provenance = model_provenance(result_path, it, config)
    return watch_folder(
        analyzer, folder, pattern, out, provenance=provenance, poll=poll, max_frames=max_frames, timeout=timeout,
        stop_when_idle=stop_when_idle, log=log, overwrite=overwrite, skip_existing=skip_existing, figure=figure,
        signal=signal,
    )
