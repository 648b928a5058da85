"""The conventional baseline recipe builds and is what it says: 6 members, 16 filters, the data's scale, no iterations."""

from elit.config import build_stages, load_config, recipe_names


def _stages(config):
    kinds = ("simulator", "augmenter", "architecture", "trainer", "selector", "refiner")
    return build_stages({k: getattr(config, k) for k in kinds})


def test_conventional_recipe_is_the_atomai_style_baseline():
    assert "conventional" in recipe_names()
    config = load_config(None, recipe="conventional")
    stages = _stages(config)
    assert config.scale.pixel_size == 0.1
    assert config.iterations.max_iterations == 0 and not config.iterations.multiclass
    assert not config.conditions.match and not config.conditions.match_width
    assert stages["trainer"].config.n_members == 6
    assert stages["architecture"].config.base_filters == 16
    assert stages["selector"].config.k >= stages["trainer"].config.n_members  # every member is averaged
    assert stages["simulator"].name == "graphene"
    assert stages["augmenter"].config.poisson_probability == 1.0


def test_conventional_noise_is_set_by_overrides():
    config = load_config(
        None,
        recipe="conventional",
        overrides=["augmenter.params.dose_range=[3.5,6.2]", "augmenter.params.poisson_background_range=[0.1,0.2]"],
    )
    aug = _stages(config)["augmenter"].config
    assert tuple(aug.dose_range) == (3.5, 6.2)
    assert tuple(aug.poisson_background_range) == (0.1, 0.2)
