"""The ``fusion`` command.

    fusion ls                                    recipes, presets, registered adapters
    fusion run RECIPE [--preset P] [--config F] [--nproc N] key=value ...
    fusion resume RUN_DIR                        continue from the newest good checkpoint
    fusion config RECIPE [--preset P] key=value  print the resolved config
    fusion sample RUN_DIR [flags] key=value      recipe-specific sampling (config overrides too)
    fusion evaluate RUN_DIR [flags] key=value    recipe-specific evaluation
    fusion plot-metrics RUN_DIR                  loss curves → RUN_DIR/loss.png
    fusion docs [NAME]                           the guides (docs/), shipped with the package

Overrides are OmegaConf dotlists (``train.steps=100 model.dim=128``), applied after the preset and
the config file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .config import ConfigError, load_config, to_yaml


def _recipe(name: str):
    from .recipe import get_recipe

    return get_recipe(name)


def cmd_ls(a) -> int:
    from .recipe import registered_recipes
    from ..registry import registered_adapters

    print("recipes:")
    for name in sorted(registered_recipes()):
        r = _recipe(name)
        print(f"  {name:14s} {r.description}")
        print(f"  {'':14s} presets: {', '.join(r.presets()) or '(none)'}")
    print("adapters:")
    for name, path in sorted(registered_adapters().items()):
        print(f"  {name:14s} {path}")
    return 0


def cmd_config(a) -> int:
    cfg = _recipe(a.recipe).load_config(a.preset, a.config, a.overrides)
    print(to_yaml(cfg), end="")
    return 0


def cmd_run(a) -> int:
    recipe = _recipe(a.recipe)
    cfg = recipe.load_config(a.preset, a.config, a.overrides)  # validate before launching
    if a.nproc and a.nproc > 1 and "LOCAL_RANK" not in os.environ:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={a.nproc}", "-m", "fusion_core.engine.cli", "run", a.recipe]
        argv += (["--preset", a.preset] if a.preset else []) + (["--config", a.config] if a.config else [])
        argv += ["--overwrite"] if a.overwrite else []
        return subprocess.call(argv + list(a.overrides))
    run_dir = recipe.train(cfg, False, overwrite=a.overwrite)
    print(f"run folder: {run_dir}")
    return 0


def _run_config(run_dir: str, overrides=()):
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    from omegaconf import OmegaConf

    name = OmegaConf.load(path).get("recipe")
    if not name:
        raise ConfigError(f"{path} names no recipe")
    recipe = _recipe(name)
    return recipe, load_config(recipe.config, [path], overrides)


def cmd_resume(a) -> int:
    recipe, cfg = _run_config(a.run_dir, a.overrides)  # overrides: e.g. train.steps=2000
    cfg.run_dir = str(a.run_dir)
    recipe.train(cfg, True)
    return 0


def cmd_recipe_command(a) -> int:
    """``fusion sample`` / ``fusion evaluate``: hand the rest of the line to the run's recipe."""
    recipe, _ = _run_config(a.run_dir)
    fn = getattr(recipe, a.command)
    if fn is None:
        raise ConfigError(f"recipe {recipe.name!r} has no {a.command} command")
    fn(Path(a.run_dir), a.args)
    return 0


def docs_folder() -> Path:
    """The guides: shipped in the package as ``fusion_core.docs`` (the repository's docs/)."""
    from importlib.resources import files

    return Path(str(files("fusion_core.docs")))


def cmd_docs(a) -> int:
    folder = docs_folder()
    pages = sorted(p.stem for p in folder.glob("*.md"))
    if not a.page:
        print(f"guides in {folder}:")
        for name in pages:
            print(f"  {name}")
        print("read one with: fusion docs NAME")
        return 0
    name = a.page[:-3] if a.page.endswith(".md") else a.page
    if name not in pages:
        raise ConfigError(f"no guide {a.page!r}; guides: {pages}")
    print((folder / f"{name}.md").read_text(), end="")
    return 0


def cmd_plot(a) -> int:
    from .metrics import plot_metrics

    print(plot_metrics(Path(a.run_dir), a.out))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusion", description="fusion-core: train, sample and evaluate recipes.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("ls", help="list recipes, presets and adapters")
    s.set_defaults(fn=cmd_ls)
    for name, fn, helptext in [("run", cmd_run, "train a recipe"),
                               ("config", cmd_config, "print a recipe's resolved config")]:
        s = sub.add_parser(name, help=helptext)
        s.add_argument("recipe", help="recipe name (see `fusion ls`)")
        s.add_argument("--preset", help="a preset of the recipe (see `fusion ls`)")
        s.add_argument("--config", help="a YAML config file, applied after the preset")
        if name == "run":
            s.add_argument("--nproc", type=int, default=0, help="processes on this machine (torchrun)")
            s.add_argument("--overwrite", action="store_true", help="reuse a run_dir that holds another run "
                           "(its checkpoints and metrics are moved aside into previous-<time>/, not deleted)")
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
        s.set_defaults(fn=fn)
    s = sub.add_parser("resume", help="continue a run from its newest good checkpoint")
    s.add_argument("run_dir")
    s.add_argument("overrides", nargs="*", help="key=value overrides (e.g. train.steps=2000)")
    s.set_defaults(fn=cmd_resume)
    for name, helptext in [("sample", "generate from a trained run"), ("evaluate", "evaluate a trained run")]:
        s = sub.add_parser(name, help=helptext, add_help=False)
        s.add_argument("run_dir")
        s.add_argument("args", nargs=argparse.REMAINDER, help="recipe-specific options (try --help)")
        s.set_defaults(fn=cmd_recipe_command)
    s = sub.add_parser("docs", help="list the guides, or print one")
    s.add_argument("page", nargs="?", help="a guide's name, e.g. python-api")
    s.set_defaults(fn=cmd_docs)
    s = sub.add_parser("plot-metrics", help="render a run's loss curves to PNG")
    s.add_argument("run_dir")
    s.add_argument("--out", help="output PNG (default RUN_DIR/loss.png)")
    s.set_defaults(fn=cmd_plot)
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises: a config, file, data or run-folder problem the user can fix.
    Everything else is a bug and keeps its traceback."""
    from .checkpoint import CheckpointError
    from .trainer import TrainingDiverged

    return (ValueError, CheckpointError, TrainingDiverged, FileNotFoundError, IsADirectoryError,
            NotADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    """Run one ``fusion`` command. A user error (:func:`user_errors`: a bad config value, a
    missing or unreadable file, unusable data, a busy run folder) is one line on stderr and exit
    code 2, never a traceback; ``FUSION_DEBUG=1`` re-raises it."""
    p = parser()
    a, extra = p.parse_known_args(argv)
    if extra:  # key=value overrides that followed an option (argparse stops collecting them)
        if not hasattr(a, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        a.overrides = list(a.overrides) + extra
    try:
        return a.fn(a)
    except user_errors() as e:
        if os.environ.get("FUSION_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"fusion: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fusion: interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The ``fusion`` console script: :func:`main`."""
    return main()


if __name__ == "__main__":
    sys.exit(entry())
