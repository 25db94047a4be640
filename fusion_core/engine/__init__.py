"""The training engine: what every recipe trains, checkpoints and reports with, so recipes cannot
drift (DESIGN.md, "Library first", layer 4). It builds on the model layer (``fusion_core.model``,
``fusion_core.pretrained``) and nothing below imports it.

- configs: :mod:`.config` (structured OmegaConf: defaults < YAML < ``key=value``);
- the loop: :mod:`.trainer` (:class:`Trainer`, :class:`TrainArgs`), :mod:`.optim`, :mod:`.ema`,
  :mod:`.loader` (data-loading workers), :mod:`.data` (streams, ``hf:`` sources);
- what a run leaves on disk: :mod:`.checkpoint` (atomic, verified, exact resume), :mod:`.sharded`
  (FSDP2 shards), :mod:`.runfolder` (one run per folder, its lock), :mod:`.metrics` (JSONL);
- processes: :mod:`.distributed` (torchrun, DDP, FSDP2);
- recipes: :mod:`.recipe` (the one train skeleton), :mod:`.stats` (evaluation statistics),
  :mod:`.cli` (the ``fusion`` command).
"""

from .config import ConfigError, load_config
from .optim import OptimArgs
from .recipe import Recipe, TrainJob, get_recipe
from .trainer import Trainer, TrainArgs, TrainingDiverged, seed_everything

__all__ = ["ConfigError", "OptimArgs", "Recipe", "TrainArgs", "TrainJob", "Trainer", "TrainingDiverged",
           "get_recipe", "load_config", "seed_everything"]
