"""Recipes: named, runnable compositions (config schema + presets + data + evaluation), and the
one train skeleton they all share.

Recipes are found through the entry-point group ``fusion_core.recipes`` (ours are declared in
this project's pyproject; third-party packages can add their own), so this package never imports
a concrete recipe. A recipe module exposes ``recipe = Recipe(...)``. What a recipe writes is its
config dataclass, ``setup`` (data and model → :class:`TrainJob`) and its sample/evaluate commands;
:meth:`Recipe.train` does the rest, the same way for every recipe:

    distributed init → run folder → seed → recipe.setup → Trainer.fit → export the model
    (``run_dir/model``, a ``from_pretrained`` folder) → training time → evaluate
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ..model import FusionModel
from ..registry import import_object
from ..transformer import PRESETS, preset
from .config import ConfigError, layer_config, load_config, read_yaml, save_config, to_object, to_yaml
from .distributed import init_distributed, shutdown
from .loader import Collate
from .runfolder import RunLock, claim, clean_leftovers
from .trainer import Trainer, seed_everything

GROUP = "fusion_core.recipes"
BACKBONE_SIZES = ("dim", "n_layers", "n_heads", "ffn_dim")  # what a backbone preset sets
log = logging.getLogger("fusion_core")


@dataclass
class TrainJob:
    """What a recipe's ``setup`` hands the train skeleton.

    Attributes:
        model: the model to train (built after seeding: every process builds the same one).
        dataset: ``dataset[i]`` is one example, as ``collate`` takes it.
        collate: ``collate(model, examples, seeds) -> Batch``.
        summary: one line for the log (data sizes).
        save: called once on the main process with the run folder, to keep what evaluation and
            sampling need that the model does not hold (held-out data, column names).
    """

    model: FusionModel
    dataset: Sequence
    collate: Collate
    summary: str = ""
    save: Callable[[Path], None] | None = None


@dataclass
class Recipe:
    """A runnable recipe.

    Attributes:
        name: what ``fusion run NAME`` takes.
        description: one line for ``fusion ls``.
        config: the config dataclass (its defaults are the base preset). It has ``run_dir``,
            ``data``, ``model`` (a ``TransformerArgs`` subclass), ``train`` and ``sample``
            (a :class:`~fusion_core.generation.SampleArgs`).
        presets_dir: folder of ``NAME.yaml`` presets.
        setup: ``setup(config, run_dir, data) -> TrainJob``; ``data`` is what the Python caller
            passed (an array, a DataFrame, a ``datasets.Dataset``, a list of examples) or None
            to read ``config.data.source``.
        sample: ``sample(run_dir, argv)``, or None.
        evaluate: ``evaluate(run_dir, argv)``, or None.
    """

    name: str
    description: str
    config: type
    presets_dir: Path
    setup: Callable[[Any, Path, Any], TrainJob]
    sample: Callable[[Path, list[str]], Any] | None = None
    evaluate: Callable[[Path, list[str]], Any] | None = None
    extra: dict = field(default_factory=dict)

    def presets(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(Path(self.presets_dir).glob("*.yaml"))}

    def preset_layers(self, preset_name: str) -> list[tuple[str, DictConfig]]:
        """A preset's config layers, its bases first. A preset may start from another preset of
        the recipe with a top-level ``base: NAME`` key and hold only what it changes (the
        ``base`` chain may be any length; each layer overrides the one before it).

        Raises:
            ConfigError: an unknown preset (named, with the recipe's presets), a ``base`` that
                is not a preset name, or presets that name each other in a cycle.
        """
        known, chain = self.presets(), []
        name = preset_name
        while name is not None:
            if name not in known:
                at = f" (the base of preset {chain[-1][0]!r})" if chain else ""
                raise ConfigError(f"recipe {self.name!r} has no preset {name!r}{at}; presets: {sorted(known)}")
            if name in (n for n, _ in chain):
                cycle = " -> ".join([n for n, _ in chain] + [name])
                raise ConfigError(f"recipe {self.name!r}: presets name each other as base in a cycle: {cycle}")
            contents = read_yaml(known[name])
            base = contents.pop("base", None)
            if base is not None and not isinstance(base, str):
                raise ConfigError(f"{known[name]}: base must be the name of another preset, got {base!r}")
            chain.append((name, contents))
            name = base
        return [(str(known[n]), contents) for n, contents in reversed(chain)]

    def load_config(self, preset_name: str | None = None, config_file: str | None = None,
                    overrides: Sequence[str] = ()) -> DictConfig:
        """Defaults < recipe preset (its ``base`` presets first) < ``config_file`` <
        ``key=value`` overrides, validated. A backbone preset named by ``model.preset`` puts its
        sizes just under the layer that names it (``model.preset=transfusion-0.16b
        model.n_layers=2`` keeps 2 layers).

        Raises:
            ConfigError: unknown preset, key or value (named, with the valid ones).
        """
        layers: list = []
        if preset_name is not None:
            layers += self.preset_layers(preset_name)
        if config_file is not None:
            layers.append(layer_config(config_file))
        cfg = load_config(self.config, layers, overrides)
        backbone = OmegaConf.select(cfg, "model.preset", default="")
        if backbone:  # again, with the backbone preset's sizes under the layer that named it
            if backbone not in PRESETS:
                raise ConfigError(f"unknown backbone preset model.preset={backbone!r}; known: {sorted(PRESETS)}")
            sizes = dataclasses.asdict(preset(backbone))
            at = len(layers) if any(o.startswith("model.preset=") for o in overrides) else max(
                i for i, (_, c) in enumerate(layers) if OmegaConf.select(c, "model.preset", default=""))
            layers.insert(at, {"model": {k: sizes[k] for k in BACKBONE_SIZES}})
            cfg = load_config(self.config, layers, overrides)
        cfg.recipe = self.name
        return cfg

    def run_config(self, run_dir: str | Path, overrides: Sequence[str] = ()) -> Any:
        """A run's config (``run_dir/config.yaml``) with ``key=value`` overrides for this command
        (``fusion sample/evaluate RUN sample.steps=25``; not written back), as dataclasses."""
        path = Path(run_dir) / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
        return to_object(load_config(self.config, [path], overrides))

    def train(self, cfg: DictConfig, resume: bool = False, data: Any = None, overwrite: bool = False) -> Path:
        """The train skeleton every recipe shares (see the module docstring). The data is loaded
        before the run folder is touched, so bad data leaves no folder behind. While it writes,
        the main process holds the folder's lock (:mod:`fusion_core.runfolder`); a new run
        refuses a folder that holds another run's checkpoints unless ``overwrite`` (which moves
        them aside)."""
        source = OmegaConf.select(cfg, "data.source", default=None)
        if data is not None:
            cfg.data.source = f"python:{type(data).__name__}"
        elif isinstance(source, str) and source.startswith("python:"):
            raise ValueError(f"this run's data came from Python ({source}): pass it again, "
                             f"recipe.train(cfg, resume=True, data=...)")
        if not cfg.get("run_dir"):
            cfg.run_dir = f"runs/{cfg.recipe}-{datetime.now():%Y%m%d-%H%M%S}"
        info = init_distributed(cfg.train.device)
        run_dir = Path(cfg.run_dir)
        c = to_object(cfg)
        seed_everything(c.train.seed, 0, c.train.deterministic)  # the same model on every process
        job = self.setup(c, run_dir, data)
        # everything that can be refused is refused before the folder is touched: the batch
        # against the processes, the step's memory, a resume whose model does not fit its run
        trainer = Trainer(job.model, job.dataset, job.collate, c.train, run_dir, to_yaml(cfg), info)
        if resume:
            trainer.check_resume(cfg)
        lock = None
        try:
            if info.is_main:
                lock = RunLock(run_dir)
                if not resume:
                    claim(run_dir, overwrite)
                clean_leftovers(run_dir)
                prepare_run_dir(cfg)
                n_params = sum(p.numel() for p in job.model.parameters()) / 1e6
                log.info("%s; model %.2fM parameters", job.summary or f"{len(job.dataset)} examples", n_params)
                if job.save is not None:
                    job.save(run_dir)
            trainer.fit(resume=resume)
            trainer.export(run_dir / "model", {"recipe": self.name, "config": to_yaml(cfg)})
            shutdown(info)
            if info.is_main:
                write_train_time(run_dir, trainer.train_seconds, trainer.precision)
                if self.evaluate is not None and getattr(getattr(c, "eval", None), "after_train", False):
                    self.evaluate(run_dir, [])
        finally:
            if lock is not None:
                lock.release()
        return run_dir

    def run(self, preset: str | None = None, overrides: Sequence[str] = (), data: Any = None,
            config_file: str | None = None, overwrite: bool = False) -> Path:
        """Train from Python: ``recipe.run("quick", ["train.steps=100"], data=my_array)``.
        ``data`` replaces ``data.source`` (what a recipe accepts: its ``setup`` says)."""
        return self.train(self.load_config(preset, config_file, overrides), data=data, overwrite=overwrite)


_TRUST_REMOTE_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("trust_remote_code", default=False)


@contextlib.contextmanager
def trusting_remote_code(trust: bool = True):
    """While inside, :func:`load_model` imports adapter classes named by dotted path outside the
    registry (the ``--trust-remote-code`` flag of ``fusion sample/evaluate/resume/export``)."""
    token = _TRUST_REMOTE_CODE.set(bool(trust))
    try:
        yield
    finally:
        _TRUST_REMOTE_CODE.reset(token)


def remote_code_trusted() -> bool:
    """Whether this command may import adapter classes named by dotted path (``--trust-remote-code``,
    or :func:`trusting_remote_code`); recipes that build models from a config ask it."""
    return _TRUST_REMOTE_CODE.get()


def load_model(run_dir: str | Path, c: Any = None, *, weights: str | None = None,
               trust_remote_code: bool | None = None, device=None) -> FusionModel:
    """A run's newest model (its ``model/`` export or newest good checkpoint), EMA weights when
    ``c.sample.use_ema`` and present, on the GPU when there is one. A sharded (FSDP) checkpoint
    is read here — from a run folder — with the restricted reader of :mod:`.sharded`.

    Args:
        run_dir: a run folder (or a saved-model or checkpoint folder).
        c: the run's config (its ``sample.use_ema`` picks the weights); or pass ``weights``.
        trust_remote_code: allow adapter classes outside the registry (default: what
            :func:`trusting_remote_code` set, else False).

    Raises:
        ValueError: see :meth:`FusionModel.from_pretrained`.
    """
    from ..pretrained import is_sharded, resolve
    from .sharded import load_sharded_model

    if weights is None:
        use_ema = getattr(getattr(c, "sample", None), "use_ema", True)
        weights = "auto" if use_ema else "model"
    trust = _TRUST_REMOTE_CODE.get() if trust_remote_code is None else trust_remote_code
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = resolve(run_dir)
    if is_sharded(folder):
        return load_sharded_model(folder, weights=weights, trust_remote_code=trust, device=device)
    return FusionModel.from_pretrained(folder, device=device, weights=weights, trust_remote_code=trust)


def parse_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """``fusion sample/evaluate`` arguments: the command's own flags, then ``key=value`` config
    overrides (anything else is an error that lists the flags)."""
    args, rest = parser.parse_known_args(list(argv))
    bad = [x for x in rest if x.startswith("-") or "=" not in x]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config values are key=value, "
                     "e.g. sample.steps=25)")
    return args, rest


def registered_recipes() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``.

    Raises:
        ConfigError: an unknown name (the message lists the registered recipes).
    """
    known = registered_recipes()
    if name not in known:
        raise ConfigError(f"unknown recipe {name!r}; recipes: {sorted(known)}")
    return import_object(known[name])


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Resolve ``cfg.run_dir`` (default ``runs/<recipe>-<time>``), create it, write the resolved
    config (on resume too: the run's config with that command's overrides, e.g. more steps) and
    start logging to ``run_dir/train.log`` (appended: one log for every segment of a run)."""
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

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    return f"{dev}, {platform.machine()}, torch {torch.__version__}"


class TrainTime(NamedTuple):
    """How a run trained: wall seconds, the machine, and the precision (``Trainer.precision``)."""

    seconds: float
    machine: str
    precision: str

    def __str__(self) -> str:  # "724 s (bf16 autocast)", for reports
        return f"{self.seconds:.0f} s" + (f" ({self.precision})" if self.precision else "")


def write_train_time(run_dir: Path, seconds: float, precision: str = "") -> None:
    """Record ``train_time.json``: training wall seconds (``Trainer.train_seconds``: every resumed
    segment, carried in the checkpoints), this machine and the precision trained in."""
    from .checkpoint import atomic_write_text

    atomic_write_text(Path(run_dir) / "train_time.json",
                      json.dumps({"seconds": seconds, "machine": machine_description(), "precision": precision}))


def read_train_time(run_dir: Path) -> TrainTime:
    """A run's :class:`TrainTime`; ``(nan, "", "")`` when it never finished (runs recorded before
    the precision was kept have ``precision == ""``)."""
    path = Path(run_dir) / "train_time.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    return TrainTime(float(info.get("seconds", float("nan"))), info.get("machine", ""), info.get("precision", ""))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged (tests and notebooks swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        """Ignored: ``StreamHandler.__init__`` assigns a stream; this handler always uses the
        current ``sys.stderr``."""


def setup_logging(path: Path | None = None, level: int = logging.INFO) -> None:
    logger = logging.getLogger("fusion_core")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(h)
    if path is not None and not any(getattr(h, "baseFilename", None) == str(Path(path).resolve())
                                    for h in logger.handlers):
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(fh)


__all__ = ["Recipe", "TrainJob", "get_recipe", "load_model", "remote_code_trusted", "trusting_remote_code",
           "machine_description",
           "parse_command",
           "prepare_run_dir", "read_train_time", "TrainTime", "registered_recipes", "setup_logging", "to_yaml",
           "write_train_time"]
