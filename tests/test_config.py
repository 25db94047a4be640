from dataclasses import dataclass, field

import pytest

from fusion_core.engine.config import ConfigError, load_config, to_object, valid_keys
from fusion_core.engine.recipe import get_recipe, registered_recipes


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
    # a value YAML cannot read ('%' opens a directive) is the plain string it is
    assert load_config(Cfg, [], ["name=%d/%m/%Y %H:%M"]).name == "%d/%m/%Y %H:%M"
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


def _recipe_with_presets(tmp_path, **presets):
    """A recipe with the ``Cfg`` schema whose presets folder holds ``NAME.yaml`` = text."""
    from fusion_core.engine.recipe import Recipe

    @dataclass
    class RecipeCfg(Cfg):
        recipe: str = "t"

    for name, text in presets.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return Recipe("t", "test", RecipeCfg, tmp_path, setup=None)


def test_a_preset_starts_from_its_base_and_holds_only_what_it_changes(tmp_path):
    recipe = _recipe_with_presets(
        tmp_path, small="model:\n  depth: 4\nlr: 0.5\n", wide="base: small\nmodel:\n  width: 256\n",
        wider="base: wide\nmodel:\n  width: 512\nname: y\n")
    got = {p: recipe.load_config(p) for p in ("small", "wide", "wider")}
    assert [(c.model.depth, c.model.width, c.lr, c.name) for c in got.values()] == [
        (4, 64, 0.5, "x"), (4, 256, 0.5, "x"), (4, 512, 0.5, "y")]
    # a config file and overrides still sit on top of the whole chain
    y = tmp_path / "mine.yml"
    y.write_text("lr: 0.125\n")
    c = recipe.load_config("wider", str(y), ["model.depth=3"])
    assert (c.model.depth, c.model.width, c.lr) == (3, 512, 0.125)
    assert "base" not in c  # resolved away: a run's config.yaml has no base to follow
    # an unknown key in a base is named with the base's file
    (tmp_path / "small.yaml").write_text("model:\n  dept: 4\n")
    with pytest.raises(ConfigError, match=r"small.yaml: unknown config key 'model.dept'"):
        recipe.load_config("wider")


def test_bad_preset_bases_are_named(tmp_path):
    recipe = _recipe_with_presets(tmp_path, a="base: b\n", b="base: a\n", c="base: nope\n",
                                  d="base: [a]\n", e="- 1\n", f="base: f\n")
    with pytest.raises(ConfigError, match=r"cycle: a -> b -> a"):
        recipe.load_config("a")
    with pytest.raises(ConfigError, match=r"cycle: f -> f"):
        recipe.load_config("f")
    with pytest.raises(ConfigError, match=r"no preset 'nope' \(the base of preset 'c'\); presets: \['a', 'b'"):
        recipe.load_config("c")
    with pytest.raises(ConfigError, match=r"d.yaml: base must be the name of another preset"):
        recipe.load_config("d")
    with pytest.raises(ConfigError, match=r"e.yaml: expected a mapping"):
        recipe.load_config("e")


def test_unknown_preset_and_recipe_list_valid_ones():
    with pytest.raises(ConfigError, match=r"presets: \['quick', 'tiny'\]"):
        get_recipe("toy").load_config("quik")
    with pytest.raises(ConfigError, match=r"recipes: \[.*'toy'"):
        get_recipe("tyo")


@pytest.mark.parametrize("name", ["timeseries", "multimodal_lm", "text_timeseries", "toy"])
def test_every_backbone_arg_is_a_model_key_and_reaches_the_built_model(name, tmp_path):
    """Recipes nest the backbone's own args: every TransformerArgs field is ``model.<field>``."""
    import dataclasses

    from fusion_core.transformer import TransformerArgs

    recipe = get_recipe(name)
    keys = set(valid_keys(recipe.config))
    fields = [f.name for f in dataclasses.fields(TransformerArgs)]
    assert {f"model.{f}" for f in fields} <= keys
    over = ["model.rope_theta=500.0", "model.norm_eps=0.001", "model.init_std=0.05", "model.attn_impl=sdpa",
            "model.ffn_dim=48", "model.dim=32", "model.n_heads=4", "model.n_layers=1"]
    c = to_object(recipe.load_config("tiny", overrides=over))
    import torch

    torch.manual_seed(0)
    model = recipe.setup(c, tmp_path, None).model
    args = model.backbone.args
    assert (args.rope_theta, args.norm_eps, args.init_std, args.attn_impl, args.hidden_dim) == (500.0, 0.001, 0.05,
                                                                                                "sdpa", 48)


def test_backbone_presets_are_named_and_sit_under_what_the_user_writes():
    recipe = get_recipe("multimodal_lm")
    cfg = recipe.load_config("paper-0.76b")
    assert (cfg.model.dim, cfg.model.n_layers, cfg.model.n_heads) == (1536, 24, 24)  # Table 2, from PRESETS
    cfg = recipe.load_config("paper-0.76b", overrides=["model.n_layers=2"])
    assert (cfg.model.dim, cfg.model.n_layers) == (1536, 2)
    cfg = recipe.load_config("tiny", overrides=["model.preset=transfusion-0.16b"])
    assert (cfg.model.dim, cfg.model.n_layers, cfg.model.n_heads) == (768, 16, 12)
    with pytest.raises(ConfigError, match=r"unknown backbone preset model.preset='huge'; known: \["):
        recipe.load_config("tiny", overrides=["model.preset=huge"])


@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "train.steps must be >= 1, got 0"),
    ("train.ckpt_every=0", "train.ckpt_every must be >= 1"),
    ("train.log_every=-1", "train.log_every must be >= 1"),
    ("train.optim.lr=0", "optim.lr must be a finite number > 0"),
    ("train.ema_decay=1.0", "ema_decay in \\[0, 1\\)"),
    ("data.length=0", "length must be >= 1, got 0"),
    ("data.split=[0.5,0.1]", "data.split must be 3 fractions"),
    ("model.dim=30", "dim=30 must be divisible by n_heads"),
    ("model.prediction=score", "model.prediction must be one of"),
    ("sample.steps=-1", "sample.steps must be an integer >= 1"),
    ("sample.sampler=euler", "sampler must be one of"),
    ("sample.resample=3", "resample=3 needs a one-step cond_sampler"),
    ("eval.metrics=[disc,fidd]", "eval.metrics: unknown \\['fidd'\\]"),
])
def test_bad_config_values_are_rejected_when_the_config_is_built(override, message):
    extra = ["sample.cond_sampler=dpm_solver"] if override.startswith("sample.resample") else []
    with pytest.raises(ConfigError, match=f"invalid config: .*{message}"):
        get_recipe("timeseries").load_config("tiny", overrides=[override, *extra])


@pytest.mark.parametrize("recipe", ["timeseries", "multimodal_lm", "text_timeseries"])
@pytest.mark.parametrize("override, named", [("model.logit_std=0", "model.logit_std must be a finite number > 0"),
                                             ("model.snr_gamma=-1", "model.snr_gamma must be a finite number > 0"),
                                             ("model.logit_mean=nan", "model.logit_mean must be a finite number"),
                                             ("model.t_uniform_mix=1.5", "model.t_uniform_mix must be a share in")])
def test_diffusion_settings_are_checked_with_the_config_and_named(recipe, override, named):
    """Every diffusion setting a recipe's model args carry is checked when the config is loaded
    (not when the model is built, minutes later) and the message names the config key."""
    with pytest.raises(ConfigError, match=named):
        to_object(get_recipe(recipe).load_config("tiny", overrides=[override]))
    # and the settings reach the process the recipe builds
    from fusion_core.diffusion import GaussianDiffusion

    m = to_object(get_recipe(recipe).load_config("tiny", overrides=["model.t_sampling=logit_normal",
                                                                    "model.logit_std=0.7",
                                                                    "model.t_uniform_mix=0.1"])).model
    d = GaussianDiffusion.from_args(m)
    assert (d.t_sampling, d.logit_std, d.t_uniform_mix, d.prediction) == ("logit_normal", 0.7, 0.1, m.prediction)
