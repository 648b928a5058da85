"""The run store: one provenance-tracked, crash-safe HDF5 file per run.

>>> from elit.store import RunStore
>>> store = RunStore.create("run.h5")          # doctest: +SKIP
>>> with store.stage(0, "simulator", {"name": "lattice", "seed": 1}) as st:   # doctest: +SKIP
...     st.add_image("images", images, ["frame", "row", "col"], quantity="intensity", pixel_size=0.2)

See ``docs/file-format.md`` for the layout.
"""

from elit.store.h5store import RunStore, StageWriter, check_run_file
from elit.store.layout import FORMAT_NAME, FORMAT_VERSION

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "RunStore", "StageWriter", "check_run_file"]
