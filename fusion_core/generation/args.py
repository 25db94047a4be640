"""What generation is configured with (:class:`SampleArgs`, the ``sample.*`` config of every
recipe) and what interleaved generation returns (:class:`Generated`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..diffusion import SAMPLERS, Guidance, Sampler, make_sampler
from ..diffusion.respacing import SPACINGS
from ..validation import check_finite_number, check_int


@dataclass
class SampleArgs:
    """How to sample — the one sampler config every recipe nests (``sample.*``, ``eval.sample.*``).

    Attributes:
        sampler: ``ddpm`` (ancestral), ``ddim`` or ``dpm_solver`` (DPM-Solver++ 2M).
        steps: model evaluations per span, 1 to the process's T (T for full ancestral sampling).
        spacing: which of the T steps ``sampler`` visits (:func:`~fusion_core.diffusion.respace`:
            ``trailing``, ``linspace``, ``leading``, ``logsnr`` — even in log-SNR, the fine steps
            near the data); empty = the sampler's own default (DDPM ``trailing``, DDIM
            ``linspace``, DPM-Solver ``logsnr``).
        clip_x0: clamp each predicted x0 to ``[-clip_x0, clip_x0]``; 0 = off.
        guidance: classifier-free guidance scale for conditioned spans; 0 = off.
        guidance_interval: ``[lo, hi]`` fractions of T where guidance applies (elsewhere the
            conditional prediction); ``[0, 1]`` = every step (:class:`~fusion_core.diffusion.Guidance`).
        guidance_rescale: ``0..1``: match the guided x0's spread to the conditional one's.
        use_ema: sample with the EMA weights when the model has them.
        temperature: text sampling temperature; 0 = greedy.
        top_k: sample text among the k likeliest tokens; 0 = all.
        max_new_tokens: tokens each row may write.
        chunk: spans drawn per batch (bounds memory).
        cuda_graphs: replay the denoiser of prompt-less spans (the TransFusion model) as a CUDA
            graph per chunk shape (:class:`~fusion_core.graphs.GraphedCall`); ignored off CUDA.
        cond_sampler, cond_steps, resample: forecasts, imputation and long series (RePaint):
            a one-step sampler, its steps, and how many times each step is drawn.
        seed: seeds every random draw.
    """

    sampler: str = "dpm_solver"
    steps: int = 50
    spacing: str = ""
    clip_x0: float = 1.0
    guidance: float = 0.0
    guidance_interval: list = field(default_factory=lambda: [0.0, 1.0])
    guidance_rescale: float = 0.0
    use_ema: bool = True
    temperature: float = 0.0
    top_k: int = 0
    max_new_tokens: int = 48
    chunk: int = 256
    cuda_graphs: bool = False
    cond_sampler: str = "ddim"
    cond_steps: int = 25
    resample: int = 10
    seed: int = 0

    def __post_init__(self):
        for key in ("sampler", "cond_sampler"):
            if getattr(self, key) not in SAMPLERS:
                raise ValueError(f"{key} must be one of {sorted(SAMPLERS)}, got {getattr(self, key)!r}")
        for key, low in (("steps", 1), ("cond_steps", 1), ("max_new_tokens", 0), ("top_k", 0),
                         ("chunk", 1), ("resample", 1)):
            check_int(f"sample.{key}", getattr(self, key), low=low)
        for key in ("clip_x0", "guidance", "temperature"):
            check_finite_number(f"sample.{key}", getattr(self, key), low=0)
        if self.spacing and self.spacing not in SPACINGS:
            raise ValueError(f"sample.spacing must be one of {list(SPACINGS)} or empty (the sampler's default), "
                             f"got {self.spacing!r}")
        self.guidance_args  # checks the interval and the rescale
        if self.resample > 1 and SAMPLERS[self.cond_sampler].multistep:
            raise ValueError(f"resample={self.resample} needs a one-step cond_sampler (ddpm or ddim), "
                             f"got {self.cond_sampler!r}")

    def make(self, diffusion) -> Sampler:
        """The sampler for ``diffusion`` (a ``GaussianDiffusion``).

        Raises:
            ValueError: ``steps`` exceeds the process's T.
        """
        return make_sampler(self.sampler, diffusion, _steps("sample.steps", self.steps, diffusion),
                            spacing=self.spacing or None, clip_x0=self.clip_x0 or None)

    def make_conditional(self, diffusion) -> Sampler:
        """The sampler for forecasts, imputation and long series."""
        return make_sampler(self.cond_sampler, diffusion, _steps("sample.cond_steps", self.cond_steps, diffusion),
                            clip_x0=self.clip_x0 or None)

    @property
    def guidance_args(self) -> Guidance | None:
        """What the generation functions' ``guidance=`` takes: ``None`` when ``guidance`` is 0."""
        g = Guidance(self.guidance or 1.0, tuple(self.guidance_interval), self.guidance_rescale)
        return g if self.guidance else None


def _steps(key: str, steps: int, diffusion) -> int | None:
    if steps > diffusion.T:
        raise ValueError(f"{key}={steps} exceeds the {diffusion.T} steps of the diffusion process "
                         f"({key}={diffusion.T} is full ancestral sampling)")
    return None if steps == diffusion.T else steps


@dataclass
class Generated:
    """One row's output.

    Attributes:
        segments: ``(modality, value)`` in order: the writer's text as ``str``, spans decoded
            to user units.
        stop: why the row ended: ``"eos"``, ``"max_new_tokens"`` or ``"max_len"`` (the cap).
        new_tokens: how many tokens the row wrote (markers and ``<eos>`` included).
    """

    segments: list[tuple[str, Any]] = field(default_factory=list)
    stop: str = ""
    new_tokens: int = 0
    writer: str = ""  # the writer's modality name: what :attr:`text` joins

    @property
    def text(self) -> str:
        """The writer's text segments, joined."""
        return "".join(v for m, v in self.segments if isinstance(v, str) and (m == self.writer or not self.writer))

    def spans(self, modality: str) -> list:
        """The decoded spans of ``modality``."""
        return [v for m, v in self.segments if m == modality and not isinstance(v, str)]
