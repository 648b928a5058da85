"""Plugin loading and the stage registry."""

import pytest
from pydantic import Field

import elit
from elit.errors import PluginError
from elit.plugins import make_plugin_manager
from elit.registry import Registry


class DummySelector(elit.Selector):
    name = "dummy"
    version = "1"
    description = "test selector"

    class Config(elit.StageConfig):
        k: int = Field(1, ge=1, description="members")


class Plugin:
    @elit.hookimpl
    def elit_register_stages(self):
        return [DummySelector]


def test_builtins_register_every_kind():
    reg = Registry.from_plugin_manager(make_plugin_manager(autoload=False))
    kinds = {k for k, _ in reg.stages}
    assert kinds == {"simulator", "augmenter", "architecture", "trainer", "selector", "refiner", "classifier"}
    assert all(e.plugin == "builtins" for e in reg.stages.values())


def test_extra_plugin_is_registered_with_its_name():
    reg = Registry.from_plugin_manager(make_plugin_manager(autoload=False, extra=[Plugin()]))
    assert reg.get_stage("selector", "dummy") is DummySelector


def test_duplicate_names_both_plugins():
    class Twin:
        @elit.hookimpl
        def elit_register_stages(self):
            return [DummySelector]

    pm = make_plugin_manager(autoload=False)
    pm.register(Plugin(), name="first-plugin")
    pm.register(Twin(), name="second-plugin")
    with pytest.raises(PluginError) as err:
        Registry.from_plugin_manager(pm)
    assert "first-plugin" in str(err.value) and "second-plugin" in str(err.value)


def test_unknown_stage_lists_available():
    reg = Registry.from_plugin_manager(make_plugin_manager(autoload=False))
    with pytest.raises(PluginError, match="available selectors: .*auto"):
        reg.get_stage("selector", "nope")


def test_non_stage_class_refused():
    class Bad:
        @elit.hookimpl
        def elit_register_stages(self):
            return [dict]

    with pytest.raises(PluginError, match="not an elit Stage"):
        Registry.from_plugin_manager(make_plugin_manager(autoload=False, extra=[Bad()]))


def test_block_and_disable_autoload(monkeypatch):
    reg = Registry.from_plugin_manager(make_plugin_manager(autoload=True))
    assert ("selector", "median-agreement") in reg.stages  # the example plugin, via its entry point
    monkeypatch.setenv("ELIT_BLOCK_PLUGINS", "example")
    reg = Registry.from_plugin_manager(make_plugin_manager())
    assert ("selector", "median-agreement") not in reg.stages
    monkeypatch.delenv("ELIT_BLOCK_PLUGINS")
    monkeypatch.setenv("ELIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = Registry.from_plugin_manager(make_plugin_manager())
    assert ("selector", "median-agreement") not in reg.stages
    assert ("selector", "auto") in reg.stages


def test_hookspecs_are_documented():
    import inspect

    from elit import hookspecs

    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("elit_"):
            assert fn.__doc__ and "Returns" in fn.__doc__, f"hook {name} lacks a documented return"
            doc = open("docs/plugins.md").read()
            assert name in doc, f"hook {name} is not described in docs/plugins.md"


def test_config_can_use_the_example_plugin():
    from elit.config import load_config, resolve_stages
    from elit.plugins import make_plugin_manager

    reg = Registry.from_plugin_manager(make_plugin_manager(autoload=True))
    stages = resolve_stages(load_config(overrides=["selector.name=median-agreement", "selector.params.k=2"]), reg)
    assert type(stages["selector"]).__module__ == "elit_example"
    assert stages["selector"].config.k == 2
