"""elit-multislice: HAADF STEM training images simulated with abTEM (PRISM).

An external elit plugin.  Installing the package registers the simulator
``multislice`` through the entry-point group ``elit``.
"""

from __future__ import annotations

import elit

from elit_multislice.simulator import MultisliceSimulator

__version__ = "0.1.0"

__all__ = ["MultisliceSimulator", "__version__", "elit_register_stages"]


@elit.hookimpl
def elit_register_stages() -> list[type]:
    """Return the stages of this plugin."""
    return [MultisliceSimulator]
