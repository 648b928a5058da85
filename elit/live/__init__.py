"""Automated-experiment mode: analyse frames as the microscope writes them, re-selecting members per frame.

In an automated experiment the imaging conditions drift (dose, focus,
contamination, a growing hole).  Instead of stopping to relabel and retrain,
elit scores every ensemble member on each incoming frame with the ``auto``
selector's label-free criteria and uses, for that frame, the members that
still behave (the paper's answer to drift: switch members, not retrain).
A frame on which no member scores well enough is flagged
(``needs_retraining``): the signal to schedule a retraining on those frames.

Three layers:

:class:`LiveAnalyzer` (:mod:`elit.live.analyzer`)
    ``process(frame) -> LiveResult`` for acquisition scripts (no file I/O).
:class:`LiveWriter` / :func:`read_live` (:mod:`elit.live.file`)
    An HDF5 file that grows by one frame at a time and can be read while it
    grows (HDF5 single-writer/multiple-reader, SWMR).  See ``docs/automated-experiments.md``
    for its layout.
:func:`watch` (:mod:`elit.live.watcher`)
    Polls a folder for new, completely written image files and runs the two
    above, with one log line per frame (``elit watch``).

:func:`drift_figure` (:mod:`elit.live.figures`) draws per-frame scores, members used, atoms found,
uncertainty and the drift indicators (:mod:`elit.live.indicators`) from a live file.

Everything is importable from ``elit.live`` itself.
"""

from __future__ import annotations

from elit.live.analyzer import LiveAnalyzer, LiveResult
from elit.live.figures import drift_figure
from elit.live.file import (
    FORMAT,
    FORMAT_VERSION,
    SOURCE_BYTES,
    STATE_FAILED,
    STATE_FINISHED,
    STATE_INTERRUPTED,
    STATE_RUNNING,
    STATES,
    LiveData,
    LiveWriter,
    _sha256_file as _sha256_file,  # re-exported: imported from elit.live elsewhere
    read_live,
)
from elit.live.indicators import DRIFT_INDICATORS, frame_indicators
from elit.live.watcher import model_provenance, watch, watch_folder

__all__ = [
    "DRIFT_INDICATORS",
    "FORMAT",
    "FORMAT_VERSION",
    "SOURCE_BYTES",
    "STATES",
    "STATE_FAILED",
    "STATE_FINISHED",
    "STATE_INTERRUPTED",
    "STATE_RUNNING",
    "LiveAnalyzer",
    "LiveData",
    "LiveResult",
    "LiveWriter",
    "drift_figure",
    "frame_indicators",
    "model_provenance",
    "read_live",
    "watch",
    "watch_folder",
]
