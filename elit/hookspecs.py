"""Hook specifications: every hook a plugin can implement.

A plugin is a module (or object) with functions marked ``@elit.hookimpl`` and
registered under the entry-point group ``elit``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("elit")


@hookspec
def elit_register_stages() -> list[type]:
    """Return the stage classes this plugin provides.

    Each class subclasses one of the kinds in :mod:`elit.stages` and sets
    ``name``, ``version``, ``description`` and a nested pydantic ``Config``.
    Two plugins providing the same ``(kind, name)`` is an error.

    Returns
    -------
    list of type
        Stage classes.
    """


@hookspec
def elit_register_readers() -> list[type]:
    """Return the image reader classes this plugin provides.

    A reader class has ``name`` (str), ``suffixes`` (tuple of lower-case file
    suffixes such as ``".tif"``), ``description`` (str) and a class method
    ``read(path, key=None) -> elit.readers.ImageData``.  Two plugins providing
    the same reader name is an error.

    Returns
    -------
    list of type
        Reader classes.
    """
