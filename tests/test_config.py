"""Pipeline configs: strict structure, two-step validation, overrides, recipes, schemas."""

import json

import pytest

from elit.config import PipelineConfig, apply_overrides, load_config, recipe_names, resolve_stages
from elit.errors import ConfigError


def test_defaults_resolve_to_builtin_stages():
    stages = resolve_stages(load_config())
    assert set(stages) >= {"simulator", "architecture", "trainer", "selector", "refiner"}


def test_unknown_top_level_field_names_field_and_allowed():
    with pytest.raises(ConfigError) as err:
        load_config(raw={"sed": 1})
    assert "sed" in str(err.value) and "unknown field" in str(err.value) and "seed" in str(err.value)


def test_bad_stage_param_names_stage_field_and_allowed():
    cfg = load_config(overrides=["trainer.params.n_members=0"])
    with pytest.raises(ConfigError) as err:
        resolve_stages(cfg)
    text = str(err.value)
    assert "trainer 'multi-swa'" in text and "n_members" in text and "greater than" in text


def test_unknown_stage_param_lists_accepted_fields():
    cfg = load_config(overrides=["selector.params.colour=1"])
    with pytest.raises(ConfigError, match="accepts: .*"):
        resolve_stages(cfg)


def test_literal_field_lists_allowed_values():
    with pytest.raises(ConfigError, match="allowed: 'auto', 'cpu' or 'cuda'"):
        load_config(raw={"device": "tpu"})


def test_unknown_stage_name():
    from elit.errors import PluginError

    with pytest.raises(PluginError, match="no simulator named 'nope'"):
        resolve_stages(load_config(overrides=["simulator.name=nope"]))


def test_overrides_parse_yaml_values():
    raw = apply_overrides({}, ["trainer.params.n_members=4", "iterations.warm_start=false", "a.b=[1, 2]"])
    assert raw == {"trainer": {"params": {"n_members": 4}}, "iterations": {"warm_start": False}, "a": {"b": [1, 2]}}
    with pytest.raises(ConfigError):
        apply_overrides({}, ["novalue"])


def test_yaml_file_and_recipe(tmp_path):
    assert {"graphene", "perovskite"} <= set(recipe_names())
    p = tmp_path / "c.yaml"
    p.write_text("recipe_free: 1\n")
    with pytest.raises(ConfigError, match="recipe_free"):
        load_config(p)
    p.write_text("seed: 7\ntrainer: {name: multi-swa, params: {n_members: 3}}\n")
    cfg = load_config(p, recipe="graphene")
    assert cfg.seed == 7 and cfg.trainer.params["n_members"] == 3
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_config_json_round_trip_and_checksum():
    cfg = load_config(recipe="graphene")
    again = PipelineConfig.model_validate(json.loads(cfg.to_json()))
    assert again == cfg and again.sha256() == cfg.sha256()


def test_schemas_are_current():
    """`make schemas` output in schemas/ must match what the code generates."""
    from pathlib import Path

    from elit.cli import schemas

    folder = Path(__file__).resolve().parent.parent / "schemas"
    docs = schemas()
    on_disk = {p.name for p in folder.glob("*.schema.json")}
    assert on_disk == set(docs), "schemas/ is stale: run `make schemas`"
    for name, doc in docs.items():
        assert json.loads((folder / name).read_text()) == json.loads(json.dumps(doc)), f"{name} is stale: run `make schemas`"
