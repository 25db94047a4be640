"""The mixed recipe's config: the modalities by name (registry class + kwargs + diffusion + loss
weight), the data source, training, sampling and evaluation. Every field is a ``key=value``
override of ``fusion run`` / ``sample`` / ``evaluate``; a modality is added from the command line
with ``'model.adapters.pen={class: pen, kwargs: {points: 4}}'``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from fusion_core.diffusion import PREDICTIONS, SCHEDULES, T_SAMPLINGS, WEIGHTINGS, GaussianDiffusion
from fusion_core.engine.config import check_choice, check_fraction
from fusion_core.engine.trainer import OptimArgs, TrainArgs
from fusion_core.generation import SampleArgs
from fusion_core.transformer import TransformerArgs

SPEC_KEYS = ("class", "kwargs", "diffusion", "loss_weight")
# the built-in data's modalities, when model.adapters names none
BUILTIN_ADAPTERS = {"text": {"class": "text"}, "image": {"class": "image", "kwargs": {"channels": 1, "patch_size": 2}}}
DIFFUSION_KEYS = GaussianDiffusion.CONFIG_KEYS


def check_adapter_specs(adapters: dict[str, Any]) -> None:
    """``model.adapters``: ``{NAME: {class: REGISTERED_NAME, kwargs: {...}, diffusion: {...},
    loss_weight: w}}``, each key checked (with a did-you-mean) before anything is built.

    Raises:
        ValueError: an empty mapping, a spec that is not a mapping, a missing class, unknown keys,
            a diffusion setting of an unknown name or value, a negative loss weight.
    """
    for name, spec in adapters.items():
        where = f"model.adapters.{name}"
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be a mapping with 'class' (a registered adapter), got {spec!r:.60}")
        unknown = set(spec) - set(SPEC_KEYS)
        if unknown:
            key = sorted(unknown)[0]
            close = difflib.get_close_matches(key, SPEC_KEYS, n=1)
            raise ValueError(f"{where}.{key} is not a setting{f' (did you mean {close[0]!r}?)' if close else ''}; "
                             f"settings: {list(SPEC_KEYS)}")
        if not isinstance(spec.get("class"), str) or not spec["class"]:
            raise ValueError(f"{where}.class must name a registered adapter (`fusion ls` lists them), "
                             f"got {spec.get('class')!r}")
        if not isinstance(spec.get("kwargs", {}) or {}, dict):
            raise ValueError(f"{where}.kwargs must be a mapping of constructor arguments")
        diff = spec.get("diffusion") or {}
        if not isinstance(diff, dict) or set(diff) - set(DIFFUSION_KEYS):
            raise ValueError(f"{where}.diffusion takes {list(DIFFUSION_KEYS)}, got {diff!r:.80}")
        if "prediction" in diff:
            check_choice(f"{where}.diffusion.prediction", diff["prediction"], PREDICTIONS)
        if "schedule" in diff:
            check_choice(f"{where}.diffusion.schedule", diff["schedule"], SCHEDULES)
        if "weighting" in diff:
            check_choice(f"{where}.diffusion.weighting", diff["weighting"], WEIGHTINGS)
        if "t_sampling" in diff:
            check_choice(f"{where}.diffusion.t_sampling", diff["t_sampling"], T_SAMPLINGS)
        w = spec.get("loss_weight", None)
        if w is not None and not (isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0):
            raise ValueError(f"{where}.loss_weight must be a number >= 0, got {w!r}")


@dataclass
class MixedDataArgs:
    # builtin:digits (8x8 digits with captions, text + image) | file.jsonl | shards/*.jsonl | file.parquet | hf:NAME
    source: str = "builtin:digits"
    max_len: int = 256  # packed row length
    held_out: float = 0.05  # share of examples kept out of training for `fusion evaluate`
    streaming: bool = False  # read as training goes (JSONL shards or hf:), every k-th record held out
    examples: int = 4000  # built-in data: examples to draw

    def __post_init__(self):
        if self.max_len < 4 or self.examples < 1:
            raise ValueError(f"need data.max_len >= 4 and data.examples >= 1, got {self.max_len}, {self.examples}")
        check_fraction("data.held_out", self.held_out, upper_open=True)


@dataclass
class MixedModelArgs(TransformerArgs):
    """Every :class:`~fusion_core.transformer.TransformerArgs` field, plus the modalities."""

    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    qk_norm: bool = True
    preset: str = ""
    # NAME: {class: REGISTERED_NAME, kwargs: {...}, diffusion: {prediction, schedule, T, ...}, loss_weight};
    # empty = the built-in data's modalities (text + 8x8 grey images)
    adapters: dict[str, Any] = field(default_factory=dict)
    writer: str = "text"  # the discrete adapter that writes and marks the others' spans
    cond_dropout: float = 0.1  # classifier-free guidance training
    diffusion_weight: float = 5.0  # lambda, for continuous modalities without a loss_weight

    def __post_init__(self):
        super().__post_init__()
        check_adapter_specs(dict(self.adapters))
        names = sorted(self.adapters or BUILTIN_ADAPTERS)
        if self.writer not in names:
            raise ValueError(f"model.writer={self.writer!r} is not among model.adapters {names}")
        check_fraction("model.cond_dropout", self.cond_dropout, upper_open=True)
        if not self.diffusion_weight >= 0:
            raise ValueError(f"model.diffusion_weight must be >= 0, got {self.diffusion_weight}")


@dataclass
class MixedSampleArgs(SampleArgs):
    # per continuous modality, the shape of a span generate() draws (default: the commonest shape
    # in the training data, recorded in the run folder), e.g. {pen: [12, 2]}
    shapes: dict[str, Any] = field(default_factory=dict)
    n: int = 4  # rows per prompt


@dataclass
class MixedEvalArgs:
    batches: int = 8  # held-out batches scored (losses at fixed diffusion steps and noise)
    batch_size: int = 16
    samples: int = 4  # prompts continued for the report
    after_train: bool = True
    seed: int = 0

    def __post_init__(self):
        for key in ("batches", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"eval.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class MixedConfig:
    recipe: str = "mixed"
    run_dir: str = ""
    data: MixedDataArgs = field(default_factory=MixedDataArgs)
    model: MixedModelArgs = field(default_factory=MixedModelArgs)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(
        steps=2000, batch_size=32, ckpt_every=500, log_every=50,
        optim=OptimArgs(lr=2e-3, min_lr=1e-4, warmup=100, weight_decay=0.1)))
    sample: MixedSampleArgs = field(default_factory=lambda: MixedSampleArgs(sampler="ddim", steps=25, guidance=0.0,
                                                                          temperature=0.0, max_new_tokens=48))
    eval: MixedEvalArgs = field(default_factory=MixedEvalArgs)
