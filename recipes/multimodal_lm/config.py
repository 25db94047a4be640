"""The multimodal_lm recipe's config: data, model (the backbone's own args plus the image adapter
and its diffusion), training, sampling and evaluation. Every field is a ``key=value`` override of
``fusion run`` / ``sample`` / ``evaluate``.

Defaults follow Transfusion (Zhou et al. 2024) at small scale: ``L = L_LM + 5 L_DDPM``
(eps-prediction, cosine schedule, T = 1000, one t per image), 80% caption-first / 20% image-first
pairs with the image's noise capped at t <= 500, caption dropout 10% for classifier-free
guidance; AdamW (0.9, 0.95), lr 3e-4, 4k warmup, cosine to 1.5e-5, weight decay 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusion_core.diffusion import PREDICTIONS, SCHEDULES, T_SAMPLINGS, WEIGHTINGS, GaussianDiffusion
from fusion_core.engine.config import check_image_fits_row, check_choice, check_fraction
from fusion_core.generation import SampleArgs
from fusion_core.modalities.image import DESIGNS
from fusion_core.engine.trainer import OptimArgs, TrainArgs
from fusion_core.transformer import TransformerArgs


@dataclass
class MMDataArgs:
    source: str = "digits"  # digits (built in) | file.jsonl | hf:NAME
    examples: int = 20000  # examples per epoch of built-in data
    text_fraction: float = 0.3  # share of prose-only examples
    image_first: float = 0.2  # share of image-caption pairs in captioning order
    noise_limit: int = 500  # t cap for images that precede their caption (Transfusion sec. 4.4); 0 = off
    text_only: bool = False  # the text-only baseline (same model, prose only)
    max_len: int = 256  # packed row length
    prose_chunk: int = 160
    image_size: int = 8  # images are image_size x image_size (digits: 8)
    channels: int = 1  # 1 = grayscale, 3 = RGB
    held_out: float = 0.05  # your data: share of examples kept out of training for `fusion evaluate`
    # your data, too large to encode up front: JSONL shards (data.source=shards/*.jsonl) or hf:
    # read as training goes, in order (every k-th record held out, k = 1 / data.held_out)
    streaming: bool = False

    def __post_init__(self):
        for key in ("examples", "max_len", "prose_chunk", "image_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        check_choice("data.channels", self.channels, (1, 3))
        check_fraction("data.text_fraction", self.text_fraction)
        check_fraction("data.image_first", self.image_first)
        check_fraction("data.held_out", self.held_out, upper_open=True)
        if self.noise_limit < 0:
            raise ValueError(f"data.noise_limit must be >= 0 (0 = off), got {self.noise_limit}")


@dataclass
class MMModelArgs(TransformerArgs):
    """Every :class:`~fusion_core.transformer.TransformerArgs` field, plus ``preset`` (a backbone
    preset's sizes), the image adapter's and the diffusion's settings and the loss weights."""

    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    qk_norm: bool = True
    preset: str = ""
    patch_size: int = 2
    image_design: str = "linear"  # linear | unet
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    image_attention: str = "bidirectional"  # bidirectional | causal (Table 5 ablation)
    schedule: str = "cosine"
    T: int = 1000
    prediction: str = "eps"
    weighting: str = "uniform"  # uniform | min_snr
    snr_gamma: float = 5.0
    t_sampling: str = "uniform"  # uniform | logit_normal (training steps; SD3's, mid-process heavy)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    t_uniform_mix: float = 0.0  # share of training steps drawn uniformly instead (a floor under logit_normal's ends)
    diffusion_weight: float = 5.0  # lambda
    cond_dropout: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        check_choice("model.image_design", self.image_design, DESIGNS)
        check_choice("model.image_attention", self.image_attention, ("bidirectional", "causal"))
        check_choice("model.schedule", self.schedule, SCHEDULES)
        check_choice("model.prediction", self.prediction, PREDICTIONS)
        check_choice("model.weighting", self.weighting, WEIGHTINGS)
        check_choice("model.t_sampling", self.t_sampling, T_SAMPLINGS)
        GaussianDiffusion.from_args(self)  # the rest of the constructor's checks, named model.KEY
        check_fraction("model.cond_dropout", self.cond_dropout, upper_open=True)
        if self.patch_size < 1 or self.T < 1 or self.diffusion_weight < 0:
            raise ValueError(f"need model.patch_size >= 1, model.T >= 1, model.diffusion_weight >= 0; got "
                             f"{self.patch_size}, {self.T}, {self.diffusion_weight}")


@dataclass
class MMEvalArgs:
    # the paper samples with 250 DDPM steps; evaluation uses the fast solver
    sample: SampleArgs = field(default_factory=lambda: SampleArgs(sampler="dpm_solver", steps=25, guidance=3.0))
    per_digit: int = 20  # text→image samples per digit
    captions: int = 297  # held-out digits to caption (all by default)
    after_train: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.per_digit < 1 or self.captions < 1:
            raise ValueError(f"eval.per_digit and eval.captions must be >= 1, got {self.per_digit}, {self.captions}")


@dataclass
class MMConfig:
    recipe: str = "multimodal_lm"
    run_dir: str = ""
    data: MMDataArgs = field(default_factory=MMDataArgs)
    model: MMModelArgs = field(default_factory=MMModelArgs)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(
        steps=3000, batch_size=32, ckpt_every=1000, log_every=50, ema_decay=0.0,
        optim=OptimArgs(lr=3e-4, min_lr=1.5e-5, warmup=4000, weight_decay=0.1)))
    sample: SampleArgs = field(default_factory=lambda: SampleArgs(sampler="ddpm", steps=250, guidance=3.0))
    eval: MMEvalArgs = field(default_factory=MMEvalArgs)

    def __post_init__(self):
        check_image_fits_row(self.data.image_size, self.model.patch_size, self.data.max_len)
