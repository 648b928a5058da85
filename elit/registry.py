"""The registry: stage and reader classes keyed by name, with the plugin that provided them."""

from __future__ import annotations

from dataclasses import dataclass

import pluggy

from elit.errors import PluginError
from elit.plugins import plugin_distributions
from elit.stages import STAGE_KINDS, Stage


@dataclass(frozen=True)
class Entry:
    """A registered class and where it came from."""

    cls: type
    plugin: str
    package: str
    package_version: str


class Registry:
    """Stage classes keyed by ``(kind, name)`` and reader classes keyed by name.

    Duplicates are refused with an error naming both plugins.
    """

    def __init__(self) -> None:
        self.stages: dict[tuple[str, str], Entry] = {}
        self.readers: dict[str, Entry] = {}

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> Registry:
        """Collect every class the plugins of ``pm`` register."""
        reg = cls()
        dists = plugin_distributions(pm)
        for impl in pm.hook.elit_register_stages.get_hookimpls():
            name = impl.plugin_name
            pkg, ver = dists.get(name, (name, "unknown"))
            for stage_cls in impl.function() or []:
                reg.add_stage(stage_cls, name, pkg, ver)
        for impl in pm.hook.elit_register_readers.get_hookimpls():
            name = impl.plugin_name
            pkg, ver = dists.get(name, (name, "unknown"))
            for reader_cls in impl.function() or []:
                reg.add_reader(reader_cls, name, pkg, ver)
        return reg

    def add_stage(self, stage_cls: type, plugin: str, package: str = "", package_version: str = "") -> None:
        """Register a stage class; raise :class:`PluginError` on a bad class or a duplicate."""
        if not (isinstance(stage_cls, type) and issubclass(stage_cls, Stage)):
            raise PluginError(f"plugin {plugin!r} registered {stage_cls!r}, which is not an elit Stage subclass")
        kind, name = stage_cls.kind, stage_cls.name
        if kind not in STAGE_KINDS:
            raise PluginError(
                f"plugin {plugin!r}: {stage_cls.__name__} has kind {kind!r}; allowed: {', '.join(STAGE_KINDS)}"
            )
        if not name:
            raise PluginError(f"plugin {plugin!r}: {stage_cls.__name__} has no name")
        key = (kind, name)
        if key in self.stages:
            other = self.stages[key]
            raise PluginError(
                f"{kind} {name!r} is registered twice: by plugin {other.plugin!r} ({other.cls.__module__}) "
                f"and by plugin {plugin!r} ({stage_cls.__module__}); block one with ELIT_BLOCK_PLUGINS"
            )
        self.stages[key] = Entry(stage_cls, plugin, package or plugin, package_version or "unknown")

    def add_reader(self, reader_cls: type, plugin: str, package: str = "", package_version: str = "") -> None:
        """Register a reader class; raise :class:`PluginError` on a duplicate name."""
        name = getattr(reader_cls, "name", "")
        if not name or not hasattr(reader_cls, "read"):
            raise PluginError(f"plugin {plugin!r} registered reader {reader_cls!r} without a name or read()")
        if name in self.readers:
            other = self.readers[name]
            raise PluginError(f"reader {name!r} is registered twice: by plugin {other.plugin!r} and by {plugin!r}")
        self.readers[name] = Entry(reader_cls, plugin, package or plugin, package_version or "unknown")

    def names(self, kind: str) -> list[str]:
        """Sorted names of the registered stages of one kind."""
        return sorted(n for k, n in self.stages if k == kind)

    def entry(self, kind: str, name: str) -> Entry:
        """Return the entry of a stage, or raise :class:`PluginError` listing what exists."""
        if kind not in STAGE_KINDS:
            raise PluginError(f"unknown stage kind {kind!r}; kinds are: {', '.join(STAGE_KINDS)}")
        try:
            return self.stages[(kind, name)]
        except KeyError:
            avail = ", ".join(self.names(kind)) or "none"
            raise PluginError(
                f"no {kind} named {name!r} is installed; available {kind}s: {avail} (see `elit plugins`)"
            ) from None

    def get_stage(self, kind: str, name: str) -> type[Stage]:
        """Return the stage class registered as ``(kind, name)``."""
        return self.entry(kind, name).cls

    def rows(self) -> list[dict[str, str]]:
        """One row per stage for ``elit plugins``."""
        return [
            {
                "kind": kind,
                "name": name,
                "plugin": e.plugin,
                "package": e.package,
                "version": e.package_version,
                "stage_version": str(getattr(e.cls, "version", "")),
                "description": e.cls.description,
            }
            for (kind, name), e in sorted(self.stages.items(), key=lambda kv: (list(STAGE_KINDS).index(kv[0][0]), kv[0][1]))
        ]
