"""The ``fusion`` command.

    fusion ls                                    recipes, presets, registered adapters
    fusion run RECIPE [--preset P] [--config F] [--nproc N] key=value ...
    fusion resume RUN_DIR [--nproc N] key=value  continue from the newest good checkpoint
    fusion config RECIPE [--preset P] key=value  print the resolved config
    fusion sample RUN_DIR [flags] key=value      recipe-specific sampling (config overrides too)
    fusion evaluate RUN_DIR [flags] key=value    recipe-specific evaluation
    fusion export RUN_DIR OUT_DIR                the run's newest model as a from_pretrained folder
    fusion plot-metrics RUN_DIR                  loss curves → RUN_DIR/loss.png
    fusion docs [NAME]                           the guides (docs/), shipped with the package

Overrides are OmegaConf dotlists (``train.steps=100 model.dim=128``), applied after the preset and
the config file. ``--trust-remote-code`` (run, resume, sample, evaluate, export) lets a config or a
model folder name adapter classes outside the registry by dotted path — importing them runs their
code, so use it only for folders and configs you trust.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
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


def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; elsewhere a
    no-op), so a ``kill -9`` of ``fusion run --nproc N`` leaves no launcher or worker behind."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


def _launch(nproc: int, argv: list[str]) -> int:
    """Run ``fusion ARGV`` in ``nproc`` processes under torchrun; the launcher (and, through
    :func:`_die_with_parent` in each worker, every worker) dies with this process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "fusion_core.engine.cli", *argv]
    proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        return proc.wait()


def _trust_args(a) -> list[str]:
    return ["--trust-remote-code"] if getattr(a, "trust_remote_code", False) else []


def cmd_run(a) -> int:
    from .recipe import trusting_remote_code

    recipe = _recipe(a.recipe)
    cfg = recipe.load_config(a.preset, a.config, a.overrides)  # validate before launching
    if a.nproc > 1 and "LOCAL_RANK" not in os.environ:
        argv = ["run", a.recipe] + (["--preset", a.preset] if a.preset else [])
        argv += (["--config", a.config] if a.config else []) + (["--overwrite"] if a.overwrite else [])
        return _launch(a.nproc, argv + _trust_args(a) + list(a.overrides))
    if "LOCAL_RANK" in os.environ:
        _die_with_parent()
    with trusting_remote_code(a.trust_remote_code):
        run_dir = recipe.train(cfg, False, overwrite=a.overwrite)
    print(f"run folder: {run_dir}")
    return 0


def _run_folder(path: str | Path) -> Path:
    """The run folder ``fusion sample/evaluate`` work in, for ``path``: a run folder itself; the
    run around its ``model/``; or, for a model folder on its own (``fusion export``, a model
    someone sent), a new run folder under ``runs/`` that holds the model (hard links, or a copy)
    and the config its export recorded — so outputs never land inside the model folder.

    Raises:
        ConfigError: not a run or model folder, or a model folder that records no recipe config.
    """
    path = Path(path)
    if (path / "config.yaml").is_file():
        return path
    if not (path / "model.json").is_file():
        raise ConfigError(f"{path} is neither a run folder (config.yaml) nor a model folder (model.json)")
    if path.name == "model" and (path.parent / "config.yaml").is_file():
        return path.parent
    import json
    import shutil
    from datetime import datetime

    from ..storage import atomic_write_text, publish_folder

    try:
        meta = json.loads((path / "model.json").read_text()).get("metadata", {})
    except (ValueError, AttributeError) as e:
        raise ConfigError(f"{path / 'model.json'}: not readable ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), str) or not meta.get("recipe"):
        raise ConfigError(f"{path} is a model folder that records no recipe config (saved outside a recipe): "
                          "load it in Python with FusionModel.from_pretrained")
    run = Path("runs") / f"{meta['recipe']}-from-{path.resolve().name}-{datetime.now():%Y%m%d-%H%M%S}"

    def link_model(tmp: Path) -> None:
        for f in path.iterdir():
            if f.name in ("model.json", "model.safetensors", "ema.safetensors") and f.is_file() and not f.is_symlink():
                try:
                    os.link(f, tmp / f.name)
                except OSError:  # another file system: a copy
                    shutil.copy2(f, tmp / f.name)

    publish_folder(run / "model", link_model)
    atomic_write_text(run / "config.yaml", meta["config"])
    print(f"run folder for {path}: {run}", file=sys.stderr)
    return run


def _run_config(run_dir: str, overrides=()):
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    from omegaconf import DictConfig, OmegaConf

    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - YAML and OmegaConf raise many types for a damaged file
        raise ConfigError(f"{path}: not a readable config ({str(e).splitlines()[0]})") from None
    name = loaded.get("recipe") if isinstance(loaded, DictConfig) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path} names no recipe (expected a YAML mapping with `recipe: NAME`)")
    recipe = _recipe(name)
    return recipe, load_config(recipe.config, [path], overrides)


def cmd_resume(a) -> int:
    from .recipe import trusting_remote_code

    recipe, cfg = _run_config(a.run_dir, a.overrides)  # overrides: e.g. train.steps=2000
    if a.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch(a.nproc, ["resume", str(a.run_dir)] + _trust_args(a) + list(a.overrides))
    if "LOCAL_RANK" in os.environ:
        _die_with_parent()
    cfg.run_dir = str(a.run_dir)
    with trusting_remote_code(a.trust_remote_code):
        recipe.train(cfg, True)
    return 0


def cmd_recipe_command(a) -> int:
    """``fusion sample`` / ``fusion evaluate``: hand the rest of the line to the run's recipe.
    A run folder holding a planted link is refused before the recipe writes anything."""
    from .recipe import trusting_remote_code
    from .runfolder import refuse_links

    args = [x for x in a.args if x != "--trust-remote-code"]
    a.run_dir = _run_folder(a.run_dir)
    recipe, _ = _run_config(a.run_dir)
    fn = getattr(recipe, a.command)
    if fn is None:
        raise ConfigError(f"recipe {recipe.name!r} has no {a.command} command")
    refuse_links(Path(a.run_dir))
    with trusting_remote_code("--trust-remote-code" in a.args):
        fn(Path(a.run_dir), args)
    return 0


def cmd_export(a) -> int:
    """``fusion export RUN_DIR OUT_DIR``: the run's newest model (its ``model/`` export or newest
    good checkpoint, sharded ones consolidated) as a ``from_pretrained`` folder of safetensors."""
    from .recipe import load_model

    model = load_model(a.run_dir, weights="model", trust_remote_code=a.trust_remote_code, device="cpu")
    ema = None
    try:
        ema = load_model(a.run_dir, weights="ema", trust_remote_code=a.trust_remote_code, device="cpu").state_dict()
    except ValueError:  # no EMA weights saved
        pass
    from ..pretrained import resolve

    from ..pretrained import read_config

    meta = read_config(a.run_dir).get("metadata", {})
    keep = {k: meta[k] for k in ("recipe", "config", "step") if k in meta}
    out = model.save_pretrained(a.out_dir, ema=ema, metadata={**keep, "exported_from": str(resolve(a.run_dir))})
    print(f"model folder: {out}")
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _nproc_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--nproc", type=_positive_int, default=1, help="processes on this machine (torchrun)")


def _trust_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--trust-remote-code", action="store_true",
                   help="allow adapter classes named by dotted path outside the registry (runs their code)")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one ``fusion: error:`` line (exit 2) like every other
    user error; ``--help`` still prints the whole usage."""

    def error(self, message: str):
        command = self.prog.removeprefix("fusion").strip()
        self.exit(2, f"fusion: error: {command + ': ' if command else ''}{message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fusion", description="fusion-core: train, sample and evaluate recipes.",
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
            _nproc_arg(s)
            s.add_argument("--overwrite", action="store_true", help="reuse a run_dir that holds another run "
                           "(the whole run is moved aside into previous-<time>/, not deleted)")
            _trust_arg(s)
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
        s.set_defaults(fn=fn)
    s = sub.add_parser("resume", help="continue a run from its newest good checkpoint")
    s.add_argument("run_dir")
    _nproc_arg(s)
    _trust_arg(s)
    s.add_argument("overrides", nargs="*", help="key=value overrides (e.g. train.steps=2000)")
    s.set_defaults(fn=cmd_resume)
    s = sub.add_parser("export", help="write a run's newest model as a from_pretrained folder")
    s.add_argument("run_dir")
    s.add_argument("out_dir", help="a new or empty folder (or an earlier export)")
    _trust_arg(s)
    s.set_defaults(fn=cmd_export)
    for name, helptext in [("sample", "generate from a trained run"), ("evaluate", "evaluate a trained run")]:
        s = sub.add_parser(name, help=helptext, add_help=False,
                           usage=f"fusion {name} RUN_DIR [options] key=value ...",
                           description=f"{helptext[0].upper()}{helptext[1:]}: its options are the run's recipe's, "
                                       f"listed by `fusion {name} RUN_DIR --help`.")
        # -h before RUN_DIR: this page (the recipe's own options need the run to know the recipe)
        s.add_argument("-h", "--help", action="help", help="show this message and exit")
        s.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, or a model folder (its model/, an export)")
        s.add_argument("args", nargs=argparse.REMAINDER, help="the recipe's options and config overrides")
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
            NotADirectoryError, PermissionError, FileExistsError)


DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line: one line, like errors (the traceback-style location is for
    Python callers)."""
    return f"fusion: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run one ``fusion`` command. A user error (:func:`user_errors`: a bad config value, a
    missing or unreadable file, unusable data, a busy run folder) is one line on stderr and exit
    code 2, never a traceback; ``FUSION_DEBUG=1`` re-raises it. Warnings print as one line too
    (for this command only)."""
    import warnings

    before = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = before


def _main(argv: list[str] | None) -> int:
    p = parser()
    try:
        a, extra = p.parse_known_args(argv)
    except SystemExit as e:  # a usage error (one line, see _Parser) or --help
        return int(e.code or 0)
    if extra:  # key=value overrides that followed an option (argparse stops collecting them)
        if not hasattr(a, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            print(f"fusion: error: unrecognized arguments: {' '.join(extra)} (see `fusion --help`)", file=sys.stderr)
            return 2
        a.overrides = list(a.overrides) + extra
    try:
        return a.fn(a)
    except user_errors() as e:
        if os.environ.get("FUSION_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"fusion: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_ERRORS or os.environ.get("FUSION_DEBUG"):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"fusion: error: {os.strerror(e.errno).lower()}{where}; nothing already saved was changed "
              "(checkpoints are written atomically): free some space and resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fusion: interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The ``fusion`` console script: :func:`main`. A torchrun worker (``LOCAL_RANK`` set,
    ``WORLD_SIZE`` > 1) ends through :func:`~fusion_core.engine.distributed.end_worker`, with the
    exit code the interpreter would have given it."""
    if not ("LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1):
        return main()
    try:
        code = main()
    except SystemExit as e:  # as the interpreter would treat it
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # noqa: BLE001 -- reported as the interpreter would
        import traceback

        traceback.print_exc()
        code = 1
    from .distributed import end_worker

    end_worker(code)


if __name__ == "__main__":
    sys.exit(entry())
