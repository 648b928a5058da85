"""Loading plugins: the pluggy manager for the entry-point group ``elit``.

Environment switches, for hermetic runs:

``ELIT_DISABLE_PLUGIN_AUTOLOAD=1``
    load only the built-in stages, no third-party entry points;
``ELIT_BLOCK_PLUGINS=name1,name2``
    never load these plugins (entry-point names).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache

import pluggy

from elit import hookspecs

ENTRY_POINT_GROUP = "elit"
BUILTIN_PLUGIN = "builtins"


def _blocked_from_env() -> frozenset[str]:
    raw = os.environ.get("ELIT_BLOCK_PLUGINS", "")
    return frozenset(p.strip() for p in raw.split(",") if p.strip())


def make_plugin_manager(
    block: Iterable[str] = (), autoload: bool | None = None, extra: Iterable[object] = ()
) -> pluggy.PluginManager:
    """Create a plugin manager with the built-ins and (optionally) the installed plugins.

    Parameters
    ----------
    block : iterable of str
        Entry-point names not to load (added to ``ELIT_BLOCK_PLUGINS``).
    autoload : bool, optional
        Load third-party entry points; default: unless ``ELIT_DISABLE_PLUGIN_AUTOLOAD`` is set.
    extra : iterable of objects
        Plugin objects or modules to register as well (programmatic composition, tests).
    """
    pm = pluggy.PluginManager("elit")
    pm.add_hookspecs(hookspecs)
    blocked = set(block) | _blocked_from_env()
    for name in blocked:
        pm.set_blocked(name)
    if autoload is None:
        autoload = not os.environ.get("ELIT_DISABLE_PLUGIN_AUTOLOAD")
    if autoload:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    if not pm.has_plugin(BUILTIN_PLUGIN) and not pm.is_blocked(BUILTIN_PLUGIN):
        import elit_builtins

        pm.register(elit_builtins, name=BUILTIN_PLUGIN)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm


def plugin_distributions(pm: pluggy.PluginManager) -> dict[str, tuple[str, str]]:
    """Map each registered plugin name to ``(package, version)`` for provenance."""
    from importlib.metadata import version

    out: dict[str, tuple[str, str]] = {}
    for plugin, dist in pm.list_plugin_distinfo():
        out[pm.get_name(plugin)] = (dist.metadata["name"], dist.version)
    for name, plugin in pm.list_name_plugin():
        if name not in out:
            if name == BUILTIN_PLUGIN:
                from elit import __version__

                out[name] = ("elit", __version__)
            else:
                mod = getattr(plugin, "__name__", type(plugin).__name__)
                pkg = mod.split(".")[0]
                try:
                    out[name] = (pkg, version(pkg))
                except Exception:
                    out[name] = (pkg, "unknown")
    return out


@lru_cache(maxsize=1)
def default_registry():
    """The registry of the default plugin manager (built once per process)."""
    from elit.registry import Registry

    return Registry.from_plugin_manager(make_plugin_manager())


def with_architecture(ensemble, registry=None):
    """Let a stored ``ensemble`` find the Architecture stage it names in ``registry`` (default: the plugins').

    Saved files hold the architecture's name and settings, never import paths;
    this is where the name is looked up, when the networks are first built (an
    ensemble whose plugin is missing can still be read and inspected).  Returns
    ``ensemble``.
    """
    name, params = ensemble.architecture, dict(ensemble.architecture_params)

    def find():
        return (registry or default_registry()).get_stage("architecture", name)(params)

    ensemble.stage = find
    return ensemble
