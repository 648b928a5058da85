"""elit's built-in stages and readers, registered like any third-party plugin.

Each module holds the stages of one kind and lists them in ``STAGES``
(readers in ``READERS``).  This package imports only elit's public API.
"""

from __future__ import annotations

import elit


@elit.hookimpl
def elit_register_stages():
    from elit_builtins import (
        architectures,
        augmenters,
        classifiers,
        refiners,
        selectors,
        simulators,
        trainers,
    )

    modules = (simulators, augmenters, architectures, trainers, selectors, refiners, classifiers)
    return [cls for module in modules for cls in module.STAGES]


@elit.hookimpl
def elit_register_readers():
    from elit_builtins import readers

    return list(readers.READERS)
