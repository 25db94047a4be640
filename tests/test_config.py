from dataclasses import dataclass, field

import pytest

from fusion_core.config import ConfigError, load_config, to_object, valid_keys
from fusion_core.recipe import get_recipe, registered_recipes


@dataclass
class Model:
    depth: int = 2
    width: int = 64


@dataclass
class Cfg:
    model: Model = field(default_factory=Model)
    lr: float = 1e-3
    name: str = "x"


def test_merge_order_defaults_then_yaml_then_overrides(tmp_path):
    y = tmp_path / "p.yaml"
    y.write_text("model:\n  depth: 4\nlr: 0.5\n")
    cfg = load_config(Cfg, [y], ["lr=0.25"])
    assert (cfg.model.depth, cfg.model.width, cfg.lr) == (4, 64, 0.25)
    assert isinstance(to_object(cfg), Cfg)


def test_unknown_key_names_path_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.dept'.*did you mean model.depth"):
        load_config(Cfg, [], ["model.dept=3"])
    with pytest.raises(ConfigError, match="did you mean lr"):
        load_config(Cfg, [], ["lrr=3"])


def test_unknown_key_in_yaml_and_wrong_type(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("model:\n  widht: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'model.widht'.*model.width"):
        load_config(Cfg, [y])
    with pytest.raises(ConfigError, match=r"bad value for 'model.depth'"):
        load_config(Cfg, [], ["model.depth=deep"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Cfg, [], ["--lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, [tmp_path / "missing.yaml"])


def test_valid_keys_are_dotted_paths():
    assert set(valid_keys(Cfg)) == {"model", "model.depth", "model.width", "lr", "name"}


def test_every_shipped_preset_loads_and_validates():
    names = registered_recipes()
    assert "toy" in names
    for name in names:
        recipe = get_recipe(name)
        assert recipe.presets(), f"recipe {name} ships no presets"
        for preset in recipe.presets():
            cfg = recipe.load_config(preset)
            to_object(cfg)  # full validation against the dataclasses
            assert cfg.recipe == name


def test_unknown_preset_and_recipe_list_valid_ones():
    with pytest.raises(ConfigError, match=r"presets: \['quick', 'tiny'\]"):
        get_recipe("toy").load_config("quik")
    with pytest.raises(ConfigError, match=r"recipes: \[.*'toy'"):
        get_recipe("tyo")
