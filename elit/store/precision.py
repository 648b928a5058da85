"""The precision probability maps are kept in, in memory and in the run file.

A probability in [0, 1] is kept as ``uint8`` (``p = q / 255``, steps of 0.004),
``float16`` or ``float32``.  The pipeline quantizes every member's map as it is
predicted and works on the quantized values from then on, so what the file
holds is exactly what the run used: a resumed run reads back the same values
and finds the same atoms.  :class:`ProbabilityMaps` holds the quantized
``(members, frames, classes, rows, cols)`` stack and hands out float32 slices.

Stored datasets carry the attribute ``quantization`` (``"uint8/255"``); readers
of the run file get float32 probabilities back from
:meth:`elit.store.RunStore.read_image` (``raw=True`` returns the stored values).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from elit.errors import ConfigError

PRECISIONS = ("uint8", "float16", "float32")
_SCALE = np.float32(255.0)
QUANTIZATION_ATTR = "quantization"


def check_precision(name: str) -> str:
    """Return ``name`` if it is one of :data:`PRECISIONS`, else raise ConfigError."""
    if name not in PRECISIONS:
        raise ConfigError(f"probability precision {name!r} is not one of {', '.join(PRECISIONS)}")
    return name


def quantize(p: np.ndarray, precision: str = "uint8") -> np.ndarray:
    """Probabilities (float) in the stored precision (values outside [0, 1] are clipped for uint8)."""
    check_precision(precision)
    p = np.asarray(p)
    if p.dtype == np.dtype(precision):  # already stored values
        return p
    if precision == "uint8":
        return np.rint(np.clip(p, 0.0, 1.0) * _SCALE).astype(np.uint8)
    return p.astype(precision, copy=False)


def dequantize(q: np.ndarray) -> np.ndarray:
    """float32 probabilities from values made by :func:`quantize`."""
    q = np.asarray(q)
    if q.dtype == np.uint8:
        return q.astype(np.float32) / _SCALE
    return q.astype(np.float32, copy=False)


def quantization_label(dtype) -> str:
    """The ``quantization`` attribute written beside a stored map ('' for float32)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return "uint8/255"
    return "" if dtype == np.float32 else dtype.name


class ProbabilityMaps:
    """Member probability maps ``(M, N, K, H, W)`` held in a stored precision.

    Indexing returns float32 probabilities (``maps[:, 10:20]``); ``np.asarray``
    gives the whole stack as float32.  ``values`` is the quantized array.
    """

    def __init__(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        if values.ndim != 5:
            raise ValueError(f"probability maps must be (members, frames, classes, rows, cols), got {values.shape}")
        self.values = values

    @classmethod
    def empty(cls, shape: Sequence[int], precision: str = "uint8") -> ProbabilityMaps:
        """Maps of ``shape`` to be filled with :meth:`put`."""
        return cls(np.zeros(tuple(shape), dtype=check_precision(precision)))

    @classmethod
    def from_chunks(cls, parts, n_frames: int, precision: str = "uint8") -> ProbabilityMaps:
        """Maps of ``n_frames`` frames filled from ``(frame_slice, maps)`` chunks as they arrive.

        ``parts`` is what :meth:`elit.ensemble.Ensemble.predict_chunks` yields; only one
        chunk is held as float32 at a time.
        """
        maps = None
        for sl, pred in parts:
            if maps is None:
                maps = cls.empty((pred.shape[0], n_frames) + tuple(pred.shape[2:]), precision)
            maps.put(sl, pred)
        if maps is None:
            raise ValueError("no frames were predicted")
        return maps

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    @property
    def ndim(self) -> int:
        return 5

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def precision(self) -> str:
        return self.values.dtype.name

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, key) -> np.ndarray:
        return dequantize(self.values[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = dequantize(self.values)
        return out if dtype is None else out.astype(dtype, copy=False)

    def put(self, frames: slice, p: np.ndarray) -> np.ndarray:
        """Quantize float maps ``p`` (M, n, K, H, W) into ``frames``; return them as float32 (the values kept)."""
        self.values[:, frames] = quantize(p, self.precision)
        return self[:, frames]

    def __repr__(self) -> str:
        return f"ProbabilityMaps({self.shape}, {self.precision})"


def as_float(predictions) -> np.ndarray:
    """float32 array of ``predictions`` (a :class:`ProbabilityMaps` or any array)."""
    return np.asarray(predictions, dtype=np.float32)
