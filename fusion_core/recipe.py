"""Recipes: named, runnable compositions (config schema + presets + train/sample/evaluate).

Recipes are found through the entry-point group ``fusion_core.recipes`` (ours are declared in
this project's pyproject; third-party packages can add their own), so this package never imports
a concrete recipe. A recipe module exposes ``recipe = Recipe(...)``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from .config import ConfigError, load_config, save_config, to_yaml
from .registry import import_object

GROUP = "fusion_core.recipes"


@dataclass
class Recipe:
    """A runnable recipe.

    Attributes:
        name: what ``fusion run NAME`` takes.
        description: one line for ``fusion ls``.
        config: the config dataclass (its defaults are the base preset).
        presets_dir: folder of ``NAME.yaml`` presets.
        train: ``train(cfg, resume) -> run_dir``.
        sample: ``sample(run_dir, argv)``, or None.
        evaluate: ``evaluate(run_dir, argv)``, or None.
    """

    name: str
    description: str
    config: type
    presets_dir: Path
    train: Callable[[DictConfig, bool], Path]
    sample: Callable[[Path, list[str]], Any] | None = None
    evaluate: Callable[[Path, list[str]], Any] | None = None
    extra: dict = field(default_factory=dict)

    def presets(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(Path(self.presets_dir).glob("*.yaml"))}

    def load_config(self, preset: str | None = None, config_file: str | None = None,
                    overrides: list[str] = ()) -> DictConfig:
        files = []
        if preset is not None:
            known = self.presets()
            if preset not in known:
                raise ConfigError(f"recipe {self.name!r} has no preset {preset!r}; presets: {sorted(known)}")
            files.append(known[preset])
        if config_file is not None:
            files.append(config_file)
        cfg = load_config(self.config, files, overrides)
        cfg.recipe = self.name
        return cfg


def registered_recipes() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``; unknown names list the known ones."""
    known = registered_recipes()
    if name not in known:
        raise ConfigError(f"unknown recipe {name!r}; recipes: {sorted(known)}")
    return import_object(known[name])


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Resolve ``cfg.run_dir`` (default ``runs/<recipe>-<time>``), create it, write the resolved
    config (on resume too: the run's config with that command's overrides, e.g. more steps) and
    start logging to ``run_dir/train.log``."""
    if not cfg.get("run_dir"):
        cfg.run_dir = f"runs/{cfg.recipe}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    setup_logging(run_dir / "train.log")
    return run_dir


def machine_description() -> str:
    """One line naming the hardware and torch build, for reports."""
    import platform

    import torch

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    return f"{dev}, {platform.machine()}, torch {torch.__version__}"


def write_train_time(run_dir: Path, seconds: float) -> None:
    """Record ``train_time.json``: training wall seconds (``Trainer.train_seconds``: every resumed
    segment, carried in the checkpoints) and this machine."""
    from .checkpoint import atomic_write_text

    atomic_write_text(Path(run_dir) / "train_time.json",
                      json.dumps({"seconds": seconds, "machine": machine_description()}))


def read_train_time(run_dir: Path) -> tuple[float, str]:
    """``(seconds, machine)`` of a run's training; ``(nan, "")`` when it never finished."""
    path = Path(run_dir) / "train_time.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    return float(info.get("seconds", float("nan"))), info.get("machine", "")


def setup_logging(path: Path | None = None, level: int = logging.INFO) -> None:
    logger = logging.getLogger("fusion_core")
    logger.setLevel(level)
    if not any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr
               for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(h)
    if path is not None and not any(getattr(h, "baseFilename", None) == str(Path(path).resolve())
                                    for h in logger.handlers):
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(fh)


__all__ = ["Recipe", "get_recipe", "machine_description", "prepare_run_dir", "read_train_time",
           "registered_recipes", "setup_logging", "to_yaml", "write_train_time"]
