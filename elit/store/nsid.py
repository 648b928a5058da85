"""Images written as NSID datasets (sidpy ``Dataset`` + ``pyNSID``), readable by the pycroscopy tools.

``sidpy``/``pyNSID`` take ~5 s to import, so they are imported only when an image
is written.  Layout written by ``pyNSID.hdf_io.write_nsid_dataset``::

    <parent>/<name>/                 group (sidpy/pyNSID book-keeping attributes)
    <parent>/<name>/<name>           main dataset (quantity, units, data_type, ...)
    <parent>/<name>/<dim>            one 1-D dimension scale per axis (name, units, quantity,
                                     dimension_type), attached to the main dataset
    <parent>/<name>/metadata, provenance   groups written by sidpy
"""

from __future__ import annotations

import warnings

import h5py
import numpy as np

from elit.store.layout import SPATIAL_DIMS

_DIM_TYPES = {"frame": "TEMPORAL", "time": "TEMPORAL", "class": "CHANNEL", "channel": "CHANNEL", "member": "CHANNEL"}


def dimension_type(name: str) -> str:
    """The sidpy ``DimensionType`` name used for a dimension called ``name``."""
    if name in SPATIAL_DIMS:
        return "SPATIAL"
    return _DIM_TYPES.get(name, "UNKNOWN")


class _Sliced:
    """An array's shape, dtype and slices, and nothing that tells dask to copy it first."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        return self.array[key]


def write_image(
    group: h5py.Group,
    name: str,
    data: np.ndarray,
    dims: list[str],
    quantity: str,
    units: str,
    pixel_size: float | None,
    data_type: str,
    title: str | None = None,
    **h5kw,
) -> h5py.Dataset:
    """Write ``data`` as an NSID main dataset ``group/name/name`` and return it.

    Spatial dimensions (``row``, ``col``, ``y``, ``x``) get values ``i * pixel_size``
    in Å when ``pixel_size`` is given, else pixel indices in ``px``; the others get
    indices with units ``index``.  ``h5kw`` go to ``create_dataset`` (chunks, compression).
    """
    import dask
    import pyNSID
    import sidpy

    import dask.array as da

    data = np.ascontiguousarray(data)
    # sidpy and dask copy a NumPy array whole; a dask array over a view is written chunk by chunk without one
    chunks = h5kw.get("chunks") or "auto"
    ds = sidpy.Dataset.from_array(da.from_array(_Sliced(data), chunks=chunks, asarray=True), title=title or name)
    ds.data_type = data_type
    ds.quantity = quantity or "generic"
    ds.units = units or "a.u."
    ds.source = "elit"
    for axis, dim in enumerate(dims):
        kind = dimension_type(dim)
        index = np.arange(data.shape[axis], dtype=np.float64)
        if kind == "SPATIAL":
            values, dim_units = (index * pixel_size, "Å") if pixel_size else (index, "px")
            quantity_dim = "length"
        else:
            values, dim_units, quantity_dim = index, "index", dim
        ds.set_dimension(axis, sidpy.Dimension(values, dim, quantity=quantity_dim, units=dim_units, dimension_type=kind))
    with warnings.catch_warnings(), dask.config.set(scheduler="synchronous"):
        warnings.simplefilter("ignore")
        return pyNSID.hdf_io.write_nsid_dataset(ds, group, main_data_name=name, **h5kw)
