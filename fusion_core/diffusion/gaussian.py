"""Gaussian diffusion math: forward noising, the three training targets and conversions, timestep
sampling with noise limiting, loss weighting and the training loss. Plain math, no ``nn.Module``.

Notation (Ho et al. 2020; Salimans & Ho 2022 for v): ``a_t = sqrt(alphas_cumprod[t])``,
``s_t = sqrt(1 - alphas_cumprod[t])``, ``x_t = a_t x0 + s_t eps``, ``v = a_t eps - s_t x0``.

Transfusion (sec. 3.2) trains eps-prediction with one ``t`` per image and caps ``t <= 500`` for
images that precede their caption (noise limiting, sec. 4.4); TransFusion (sec. 3) uses
v-prediction. Both: cosine schedule, ``T = 1000``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .schedules import make_schedule

PREDICTIONS = ("eps", "x0", "v")
MAX_T = 100_000  # diffusion steps (the papers use 1000)
WEIGHTINGS = ("uniform", "min_snr")
T_SAMPLINGS = ("uniform", "logit_normal")

#: ``denoise(x_t, t) -> prediction``: ``x_t`` any shape ``(B, ...)``, ``t`` ``(B,)`` long.
Denoiser = Callable[[Tensor, Tensor], Tensor]


def _bcast(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """Gather ``values[t]`` and shape it ``(B, 1, ..., 1)`` to broadcast against ``like``."""
    out = values.to(like.device)[t.to(like.device)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


class GaussianDiffusion:
    """The diffusion process of one continuous modality.

    Args:
        schedule: name of a schedule (see :mod:`.schedules`) or an ``alphas_cumprod`` array.
        T: number of diffusion steps.
        prediction: what the model predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        weighting: per-sample loss weight, ``"uniform"`` (the papers') or ``"min_snr"``
            (Hang et al. 2023, with ``snr_gamma``); see :meth:`loss_weight`.
        snr_gamma: the SNR clip of ``min_snr``.
        t_sampling: how training draws each span's step: ``"uniform"`` over ``[0, max_t]`` (the
            papers') or ``"logit_normal"`` (Esser et al. 2024, SD3): ``t / T = sigmoid(n)``
            with ``n ~ N(logit_mean, logit_std^2)`` — more of the training signal on the middle
            of the process, where a sample's layout is decided, less on its ends; see
            :meth:`sample_timesteps`.
        logit_mean, logit_std: the ``logit_normal`` parameters.
        t_uniform_mix: the share of training steps drawn uniformly over ``[0, max_t]`` instead of
            from ``t_sampling``'s law (a mixture): with ``logit_normal`` a floor under the ends of
            the process, which the law alone almost never trains (at ``n ~ N(-1, 1)``, 0.03% of
            draws land on ``t <= 10`` of 1000; mixed at 0.1, 0.14%; at 0.5, 0.57%), at the cost of
            that share of the draws in the middle. 0 (the default): the law alone.

    Raises:
        ValueError: an unknown prediction, weighting, schedule or t_sampling; ``T`` outside
            ``[1, 100000]``; a schedule table that is not decreasing in (0, 1]; ``snr_gamma <= 0``;
            ``logit_std <= 0`` or a non-finite ``logit_mean``; ``t_uniform_mix`` outside [0, 1].
    """

    def __init__(self, schedule: str | np.ndarray = "cosine", T: int = 1000, prediction: str = "eps",
                 weighting: str = "uniform", snr_gamma: float = 5.0, t_sampling: str = "uniform",
                 logit_mean: float = 0.0, logit_std: float = 1.0, t_uniform_mix: float = 0.0):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if not (isinstance(snr_gamma, (int, float)) and np.isfinite(snr_gamma) and snr_gamma > 0):
            raise ValueError(f"snr_gamma must be a finite number > 0, got {snr_gamma!r}")
        if t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {t_sampling!r}")
        for key, v, low in (("logit_mean", logit_mean, -np.inf), ("logit_std", logit_std, 0.0)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > low):
                raise ValueError(f"{key} must be a finite number{' > 0' if low == 0 else ''}, got {v!r}")
        if not (isinstance(t_uniform_mix, (int, float)) and not isinstance(t_uniform_mix, bool)
                and 0.0 <= t_uniform_mix <= 1.0):
            raise ValueError(f"t_uniform_mix must be a share in [0, 1], got {t_uniform_mix!r}")
        if isinstance(schedule, str) and not (isinstance(T, int) and not isinstance(T, bool) and 1 <= T <= MAX_T):
            raise ValueError(f"T must be an integer in [1, {MAX_T}], got {T!r}")
        if not isinstance(schedule, str) and np.size(schedule) > MAX_T:
            raise ValueError(f"a schedule table has at most {MAX_T} steps, got {np.size(schedule)}")
        ac = make_schedule(schedule, T) if isinstance(schedule, str) else np.asarray(schedule, np.float64)
        if ac.ndim != 1 or not np.all((ac > 0) & (ac <= 1)) or np.any(np.diff(ac) > 0):
            raise ValueError("alphas_cumprod must be a decreasing 1-D array in (0, 1]")
        self.schedule = schedule if isinstance(schedule, str) else "custom"
        self.prediction, self.weighting, self.snr_gamma = prediction, weighting, float(snr_gamma)
        self.t_sampling, self.logit_mean, self.logit_std = t_sampling, float(logit_mean), float(logit_std)
        self.t_uniform_mix = float(t_uniform_mix)
        self.alphas_cumprod = torch.from_numpy(ac)  # float64, (T,)
        self.T = len(ac)
        self.sqrt_ac = self.alphas_cumprod.sqrt()
        self.sqrt_1m_ac = (1 - self.alphas_cumprod).sqrt()
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    #: the constructor's arguments: what :meth:`config` writes and :meth:`from_args` reads
    CONFIG_KEYS = ("schedule", "T", "prediction", "weighting", "snr_gamma", "t_sampling", "logit_mean", "logit_std",
                   "t_uniform_mix")

    def config(self) -> dict:
        """JSON-able arguments that rebuild this process (a custom schedule as its table)."""
        schedule = self.schedule if self.schedule != "custom" else self.alphas_cumprod.tolist()
        return {"schedule": schedule, "T": self.T, "prediction": self.prediction,
                "weighting": self.weighting, "snr_gamma": self.snr_gamma, "t_sampling": self.t_sampling,
                "logit_mean": self.logit_mean, "logit_std": self.logit_std, "t_uniform_mix": self.t_uniform_mix}

    @classmethod
    def from_config(cls, config: dict) -> "GaussianDiffusion":
        """Inverse of :meth:`config`.

        Raises:
            ValueError: not a mapping, unknown keys, or values the constructor rejects.
        """
        if not isinstance(config, dict):
            raise ValueError(f"a diffusion config is a mapping, got {type(config).__name__}")
        known = set(cls.CONFIG_KEYS)
        if set(config) - known:
            raise ValueError(f"unknown diffusion config keys {sorted(set(config) - known)}; known: {sorted(known)}")
        kw = dict(config)
        if "schedule" in kw and not isinstance(kw["schedule"], str):
            try:
                kw["schedule"] = np.asarray(kw["schedule"], dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise ValueError(f"a schedule table must be a list of numbers ({e})") from None
        return cls(**kw)

    @classmethod
    def from_args(cls, args, where: str = "model") -> "GaussianDiffusion":
        """The process named by the attributes of ``args`` that are :data:`CONFIG_KEYS` (a
        recipe's model args: ``model.schedule``, ``model.t_sampling``, ...); the rest default.

        Raises:
            ValueError: what the constructor rejects, named as ``where.KEY`` (``model.logit_std
                must be ...``), so a config's ``__post_init__`` can call it to check them.
        """
        try:
            return cls(**{k: getattr(args, k) for k in cls.CONFIG_KEYS if hasattr(args, k)})
        except ValueError as e:
            raise ValueError(f"{where}.{e}") from None

    def __eq__(self, other) -> bool:
        """The same process: same schedule table, prediction and loss weighting."""
        if not isinstance(other, GaussianDiffusion):
            return NotImplemented
        return (self.prediction == other.prediction and self.T == other.T and self.weighting == other.weighting
                and self.snr_gamma == other.snr_gamma and self._t_law() == other._t_law()
                and torch.equal(self.alphas_cumprod, other.alphas_cumprod))

    def _t_law(self) -> tuple:
        """The training step distribution (its parameters only where they matter)."""
        if self.t_sampling == "uniform" or self.t_uniform_mix == 1.0:
            return ("uniform",)
        return (self.t_sampling, self.logit_mean, self.logit_std, self.t_uniform_mix)

    __hash__ = None  # mutable tables: compared by value, not hashed

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(schedule={self.schedule!r}, T={self.T}, prediction={self.prediction!r}, "
                f"weighting={self.weighting!r})")

    # -- forward process -----------------------------------------------------------------
    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``a_t, s_t`` shaped to broadcast with ``like``; ``t = -1`` means no noise (1, 0)."""
        a, s = self._tables(like.device)
        t = t.long()
        return _bcast(a, t, like), _bcast(s, t, like)

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``a_t``, ``s_t`` with index -1 → (1, 0), kept on each device they are used on (a
        copy from the CPU in every call would make every training step wait for the GPU)."""
        if device not in self._on_device:
            a = torch.cat([self.sqrt_ac, self.sqrt_ac.new_ones(1)])
            s = torch.cat([self.sqrt_1m_ac, self.sqrt_1m_ac.new_zeros(1)])
            self._on_device[device] = (a.to(device), s.to(device))
        return self._on_device[device]

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample ``x_t ~ q(x_t | x0)`` given the noise: ``a_t x0 + s_t eps``."""
        a, s = self.alpha_sigma(t, x0)
        return a * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target of ``self.prediction``."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        a, s = self.alpha_sigma(t, x0)
        return a * noise - s * x0

    # -- conversions (exact, for a given x_t) ---------------------------------------------
    def to_x0_eps(self, x_t: Tensor, t: Tensor, pred: Tensor, prediction: str | None = None
                  ) -> tuple[Tensor, Tensor]:
        """Any prediction → ``(x0, eps)``."""
        prediction = prediction or self.prediction
        a, s = self.alpha_sigma(t, x_t)
        if prediction == "eps":
            return (x_t - s * pred) / a, pred
        if prediction == "x0":
            return pred, (x_t - a * pred) / s
        if prediction == "v":  # a^2 + s^2 = 1
            return a * x_t - s * pred, s * x_t + a * pred
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")

    def convert(self, x_t: Tensor, t: Tensor, pred: Tensor, to: str, prediction: str | None = None
                ) -> Tensor:
        """Convert a prediction of one parameterization into another (``eps``, ``x0`` or ``v``)."""
        x0, eps = self.to_x0_eps(x_t, t, pred, prediction)
        if to == "x0":
            return x0
        if to == "eps":
            return eps
        if to == "v":
            a, s = self.alpha_sigma(t, x_t)
            return a * eps - s * x0
        raise ValueError(f"to must be one of {PREDICTIONS}, got {to!r}")

    # -- training --------------------------------------------------------------------------
    def sample_timesteps(self, n: int, max_t: Tensor | int | None = None, generator=None,
                         device=None) -> Tensor:
        """A step ``t`` in ``[0, max_t]`` (inclusive) per sample; ``max_t`` defaults to ``T - 1``.
        ``t = floor(u (max_t + 1))`` with ``u`` uniform in [0, 1) or, for ``logit_normal``,
        ``u = sigmoid(n)``, ``n ~ N(logit_mean, logit_std^2)`` — except a ``t_uniform_mix`` share of
        the samples (each a Bernoulli draw), whose ``u`` is uniform.

        ``max_t`` can be a ``(n,)`` tensor: Transfusion's noise limiting caps ``t <= 500`` only for
        images that precede their caption.
        """
        if self._t_law() == ("uniform",):
            u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        else:
            z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
            u = torch.sigmoid(z * self.logit_std + self.logit_mean)
            if self.t_uniform_mix > 0:  # drawn only when asked: a run without it keeps its random stream
                flat = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
                pick = torch.rand(n, generator=generator, device=device, dtype=torch.float64) < self.t_uniform_mix
                u = torch.where(pick, flat, u)
        hi = torch.full((n,), self.T - 1, dtype=torch.long, device=u.device)
        if max_t is not None:
            hi = torch.minimum(hi, torch.as_tensor(max_t, device=u.device).long().expand(n))
            if bool((hi < 0).any()):
                raise ValueError("max_t must be >= 0")
        return (u * (hi + 1).double()).floor().long().clamp_max(hi)

    def snr(self, t: Tensor) -> Tensor:
        ac = self.alphas_cumprod[t.long().cpu()]
        return (ac / (1 - ac)).to(t.device)

    def loss_weight(self, t: Tensor, weighting: str | None = None, gamma: float | None = None) -> Tensor:
        """Per-sample weight ``(B,)`` (default: this process's ``weighting``). ``min_snr`` (Hang
        et al. 2023): the eps/x0/v-space equivalent of weighting the x0 error by
        ``min(SNR, gamma)``."""
        weighting = weighting or self.weighting
        gamma = self.snr_gamma if gamma is None else gamma
        if weighting == "uniform":
            return torch.ones(t.shape, device=t.device)
        if weighting != "min_snr":
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        snr = self.snr(t)
        clipped = snr.clamp(max=gamma)
        w = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[self.prediction]
        return w.float()

    def loss(self, pred: Tensor, target: Tensor, t: Tensor) -> Tensor:
        """Per-sample weighted MSE ``(B,)`` of predictions ``(B, ...)`` against their targets, in
        float32 (what :meth:`training_loss` and ``FusionModel.loss`` both compute)."""
        err = (pred.float() - target.float()).pow(2).reshape(pred.shape[0], -1).mean(1)
        return err if self.weighting == "uniform" else err * self.loss_weight(t).to(err.device)

    def training_loss(self, denoise: Denoiser, x0: Tensor, t: Tensor | None = None,
                      noise: Tensor | None = None, max_t=None, generator=None) -> Tensor:
        """Per-sample weighted MSE ``(B,)`` between the model's prediction and its target.

        Args:
            denoise: the model, ``denoise(x_t, t) -> prediction``.
            x0: clean data ``(B, ...)``.
            t: ``(B,)`` steps; sampled (with ``max_t``) when omitted.
            noise: the Gaussian noise; sampled when omitted.
        """
        B = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(B, max_t, generator=generator, device=x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        return self.loss(denoise(x_t, t), self.target(x0, noise, t), t)
