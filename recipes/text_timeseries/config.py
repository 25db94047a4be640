"""The text_timeseries recipe's config: data, model (the backbone's own args plus the time-series
adapter, its diffusion and Transfusion's loss weights), training, sampling and evaluation. Every
field is a ``key=value`` override of ``fusion run`` / ``sample`` / ``evaluate``.

The model is Transfusion's (Zhou et al. 2024) with TransFusion's modality: ``L = L_LM + lambda
L_DDPM``, caption-first and series-first pairs (the series' noise capped when it comes first,
Transfusion sec. 4.4), caption dropout for classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusion_core.engine.config import check_fraction
from fusion_core.generation import SampleArgs
from fusion_core.engine.trainer import OptimArgs, TrainArgs

from ..timeseries.config import TSModelArgs
from .properties import ALL_COMBINATIONS, check_family

SOURCES = ("synthetic", "real")  # built in; else a .jsonl / .csv of (caption, series) pairs
TOKENIZERS = ("words", "bytes")
CLIP = 5.0  # predicted x0 clamped to +-5 standard deviations (standard scaling; min-max would use 1)


@dataclass
class TTSDataArgs:
    # synthetic (built in) | real (windows of packaged real series) | pairs.jsonl / pairs.csv
    source: str = "synthetic"
    length: int = 64  # steps per series
    features: int = 1  # channels per series (synthetic)
    # what captions leave open (properties.FAMILIES): basic (straight trends, pure sines, white
    # noise) | wide (bent trends, second harmonics, AR(1) noise; its estimator measures them). Also
    # the estimator that measures generated series and captions real windows
    family: str = "basic"
    # synthetic training pairs; 0: train.steps x train.batch_size, a new pair for every sample (with
    # 50000 pairs seen 6.4 times, seed 0's generated cycles lost their period: docs/results.md)
    examples: int = 0
    held_out_combinations: int = 12  # property combinations never trained on (synthetic)
    combination_seed: int = 0
    # share of pairs in captioning order (series, then caption): the two directions share one
    # budget; more captioning pairs help captions and cost text → series (docs/results.md)
    series_first: float = 0.4
    # t cap for series that precede their caption (Transfusion's is 500 for images): the cleaner the
    # series, the sooner captions learn where an event is (seed 0, event in captions: 0.733 at
    # t <= 200, 0.963 at 100, 0.973 at 50); 0 = off
    noise_limit: int = 50
    max_len: int = 128  # packed row length (a pair takes ~41 positions)
    stride: int = 4  # real series: steps between training windows
    held_out: float = 0.1  # your pairs: share kept out of training for `fusion evaluate`

    def __post_init__(self):
        if self.source not in SOURCES and not self.source.endswith((".jsonl", ".csv")) \
                and not self.source.startswith("python:"):
            raise ValueError(f"data.source must be one of {SOURCES} or a .jsonl / .csv file of caption/series "
                             f"pairs, got {self.source!r}")
        if self.length < 32:
            raise ValueError(f"data.length must be >= 32 (the longest period is 24 steps), got {self.length}")
        for key in ("features", "max_len", "stride"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if self.examples < 0:
            raise ValueError(f"data.examples must be >= 0 (0: train.steps x train.batch_size), got {self.examples}")
        if not 0 <= self.held_out_combinations < len(ALL_COMBINATIONS) // 2:
            raise ValueError(f"data.held_out_combinations must be in [0, {len(ALL_COMBINATIONS) // 2}), "
                             f"got {self.held_out_combinations}")
        check_family(self.family)
        if self.family == "kinked":
            raise ValueError("data.family=kinked is the held-out family of shapes (eval.unseen_family): "
                             "train on basic or wide")
        check_fraction("data.series_first", self.series_first)
        check_fraction("data.held_out", self.held_out, upper_open=True)
        if self.noise_limit < 0:
            raise ValueError(f"data.noise_limit must be >= 0 (0 = off), got {self.noise_limit}")


@dataclass
class TTSModelArgs(TSModelArgs):
    """Every :class:`~fusion_core.transformer.TransformerArgs` field and the time-series adapter's
    and diffusion's (as the timeseries recipe), plus the loss weight and caption dropout."""

    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int | None = None
    dropout: float = 0.0
    qk_norm: bool = True
    patch: int = 4
    timestep: str = "add"
    # unit variance per channel: the properties (a noise level of 0.03 vs 0.16 of the data's std)
    # stay visible next to the diffusion noise; min-max to [-1, 1] shrinks them 4x more
    scaling: str = "standard"
    # words: a word-level vocabulary fitted on the training captions, bytes for anything else
    # (~21 positions per caption instead of ~92); bytes: the byte tokenizer
    tokenizer: str = "words"
    diffusion_weight: float = 5.0  # lambda
    cond_dropout: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        check_fraction("model.cond_dropout", self.cond_dropout, upper_open=True)
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"model.tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.diffusion_weight < 0:
            raise ValueError(f"model.diffusion_weight must be >= 0, got {self.diffusion_weight}")


def _sample_args() -> SampleArgs:
    """DPM-Solver++ 25 steps; guidance 4 on the less noisy half of the process (t <= T/2) with its
    x0 spread half matched to the conditional one's: the captions' properties as often as plain
    CFG 3 (lowest seen property 0.91-0.95 in 2 models x 2 draws), event sizes and cycle
    amplitudes within 10% of real instead of 17-30% above (docs/results.md, bench/tts_guidance.py)."""
    return SampleArgs(sampler="dpm_solver", steps=25, guidance=4.0, guidance_interval=[0.0, 0.5],
                      guidance_rescale=0.5, max_new_tokens=160, clip_x0=CLIP)


@dataclass
class TTSEvalArgs:
    n: int = 300  # test pairs per group (seen / held-out combinations) for both directions
    sample: SampleArgs = field(default_factory=lambda: _sample_args())
    history: int = 40  # forecasting: steps given; the rest is forecast
    forecasts: int = 200  # test windows to forecast (with and without their caption); 0 = none
    disc_iters: int = 1000  # discriminative score classifier steps
    # series → text on a family of shapes training never draws (synthetic data; "" = none): kinked
    # trends (two straight pieces) with harmonics and AR(1) noise, from the seen combinations
    unseen_family: str = "kinked"
    fidelity: bool = True  # fidelity measures and per-group discriminative scores (fidelity.py)
    grid: int = 8  # captions in the report's grid (3 generated series each beside the real one)
    after_train: bool = True
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        for key in ("n", "history", "disc_iters", "grid"):
            if getattr(self, key) < 1:
                raise ValueError(f"eval.{key} must be >= 1, got {getattr(self, key)}")
        if self.forecasts < 0:
            raise ValueError(f"eval.forecasts must be >= 0 (0: no forecasting), got {self.forecasts}")
        if self.unseen_family:
            check_family(self.unseen_family)


@dataclass
class TTSConfig:
    recipe: str = "text_timeseries"
    run_dir: str = ""
    data: TTSDataArgs = field(default_factory=TTSDataArgs)
    model: TTSModelArgs = field(default_factory=TTSModelArgs)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(
        steps=5400, batch_size=64, ckpt_every=500, log_every=50, ema_decay=0.999,
        optim=OptimArgs(lr=2e-3, min_lr=1e-4, warmup=200, weight_decay=0.1)))
    sample: SampleArgs = field(default_factory=lambda: _sample_args())
    eval: TTSEvalArgs = field(default_factory=TTSEvalArgs)

    @property
    def training_pairs(self) -> int:
        """Synthetic training pairs to draw: ``data.examples``, or one per training sample."""
        return self.data.examples or self.train.steps * self.train.batch_size
