"""Multivariate time series: windows ``(length, features)`` as backbone positions.

TransFusion (Sikder et al. 2023, sec. 3): input Linear(features → d_model), sinusoidal positions,
the diffusion step as an extra token in front (sinusoidal → Linear–SiLU–Linear), output
Linear(d_model → features), the step token's output dropped; data min-max scaled to [-1, 1].
Here a window can also be cut into patches of ``k`` steps (fewer positions for long series), and
the step can instead be added to every position or fed to the backbone's adaLN conditioning.

Scaling is fitted on training data (:meth:`TimeSeriesAdapter.fit`), kept in the adapter's state
dict, and inverted by :meth:`decode`. The fit also finds features that are exact copies of an
earlier one in every training row (Stocks' Close and Adj_Close, Energy's rv1 and rv2): decode
writes each such copy from its source, so generated series keep the identity the data has
instead of two independently noisy channels (``tie_duplicates=False`` to learn both).

With ``window_input=True`` each position also receives its window standardized per feature
(``(x - mean) / std`` over the window's steps, instance normalization as in RevIN, Kim et al. 2022):
a channel whose range over the whole record is 1 may move by 0.005 inside a window, the size of the
noise the last diffusion steps remove, and the standardized copy puts that structure (and that
noise) at unit scale before the first layer instead of leaving the network to amplify it.

With ``input_skip=True`` the head's prediction gets a pointwise term ``g(t) * x_t`` beside the
backbone's: ``g`` a linear map of the step embedding, one gain per value of a position, zero at
initialisation (the model starts as without it). At low noise the ideal v/eps prediction is
``(1 - k) (x_t - mu) / s_t`` — the data's own noise in ``x_t``, amplified ~1/s_t, less a smooth
structure ``mu`` — and without the skip that pointwise detail, ~1% of a position's input, has to
cross every block of the backbone. Measured on text_timeseries (#28, docs/results.md): trained
with it, the gains stay near 0 where that path would need 5-12 — the backbone already carries
the pointwise part — so it is off by default and kept to rerun that measurement.

With ``design="unet"`` a window enters through 1-D U-Net down blocks (``log2 k`` halvings to the
patch grid) and leaves through up blocks with skips from the down path (Transfusion's image entry
and exit, sec. 3.2, applied along time; :mod:`fusion_core.modalities.unet`): the exit sees the
noisy window at full resolution, so the values inside a patch are not all drawn from one vector.

Shapes: n windows, T steps, F features, k steps per patch, D width.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from fusion_core.adapter import Adapter, Embedded
from fusion_core.embeddings import TimestepEmbedding, sinusoidal

from .unet import DESIGNS, UNetDown, UNetUp, unet_levels

WINDOW_STD_FLOOR = 1e-3  # window_input: payload units (minmax: [-1, 1]); the last diffusion step's noise is ~6e-3


class UnderfitWarning(UserWarning):
    """A size that keeps the model from fitting its data, whatever the training."""


SCALINGS = ("minmax", "standard", "none")
TIMESTEP_MODES = ("token", "add", "adaln")


def duplicate_sources(x: np.ndarray) -> np.ndarray:
    """For rows ``(N, F)``: ``src[j]`` is the first feature ``i <= j`` equal to feature ``j`` in every
    row (both NaN counts as equal), so ``src[j] == j`` for a feature that copies no earlier one."""
    x = np.asarray(x, dtype=np.float64)
    src = np.arange(x.shape[1])
    for j in range(1, x.shape[1]):
        for i in range(j):
            if src[i] == i and np.array_equal(x[:, i], x[:, j], equal_nan=True):
                src[j] = i
                break
    return src


class SeriesContext(NamedTuple):
    """What :meth:`TimeSeriesAdapter.embed` hands its head: positions per window, the
    ``input_skip`` term ``(positions, k F)`` (``None`` without it), and for ``design="unet"`` the
    step embeddings ``(n, D)`` and the down path's skips per window length (``{positions: skips}``)."""

    lengths: list[int]
    skip: Tensor | None
    temb: Tensor | None = None
    unet: dict[int, list[Tensor]] | None = None


class TimeSeriesAdapter(Adapter):
    """Windows of a multivariate series in and out of the backbone.

    Args:
        dim: backbone width D.
        features: F, the number of variables.
        patch: k, time steps per position (1 = TransFusion's per-step tokens).
        scaling: ``"minmax"`` (to [-1, 1], the paper's), ``"standard"`` or ``"none"``.
        timestep: how the diffusion step enters: ``"token"`` (prepended, the paper's), ``"add"``
            (added to every position) or ``"adaln"`` (backbone conditioning; set the backbone's
            ``cond_dim`` to ``dim``).
        name: modality name (default ``"timeseries"``).
        tie_duplicates: let :meth:`fit` tie features equal to an earlier feature in every
            training row (NaN where it is NaN) to that feature: :meth:`decode` copies it.
        window_input: also feed every position its window standardized per feature (see the
            module docstring); the input layer then takes twice the values.
        input_skip: add a step-dependent pointwise gain on the noisy input to the prediction (see
            the module docstring).
        design: ``"linear"`` (one linear layer per position in and out) or ``"unet"`` (1-D U-Net
            down blocks in, up blocks out; ``patch`` a power of two).
        unet_channels: the U-Net's widths per level, finest first; ``log2(patch) + 1`` are used.
        unet_linear_entry: with ``"unet"``, also add the linear design's patch embedding to each
            position (the values reach the backbone as in the linear design).
        unet_linear_exit: with ``"unet"``, also add the linear design's output layer to the up
            path's prediction.

    Raises:
        ValueError: an unknown scaling, timestep mode or design; ``features`` or ``patch`` not a
            positive int; for ``"unet"`` a patch that is not a power of two or too few widths.
    """

    kind = "continuous"
    attention = "bidirectional"
    fp32_buffers = ("shift", "scale")  # user units (1013 hPa) need float32's precision under a bf16 model

    def __init__(self, dim: int, features: int, patch: int = 1, scaling: str = "minmax",
                 timestep: str = "token", name: str = "timeseries", tie_duplicates: bool = True,
                 window_input: bool = False, input_skip: bool = False, design: str = "linear",
                 unet_channels: Sequence[int] = (32, 64, 128), unet_linear_entry: bool = False,
                 unet_linear_exit: bool = False):
        super().__init__(dim)
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        if timestep not in TIMESTEP_MODES:
            raise ValueError(f"timestep must be one of {TIMESTEP_MODES}, got {timestep!r}")
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive int, got {features!r}")
        if not isinstance(patch, int) or patch < 1:
            raise ValueError(f"patch must be a positive int, got {patch!r}")
        if design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
        if design != "unet" and (unet_linear_entry or unet_linear_exit):
            raise ValueError("unet_linear_entry / unet_linear_exit add layers beside the U-Net: they need design='unet'")
        if design == "linear" and features * patch > dim:
            warnings.warn(
                f"time-series adapter {name!r}: a position holds patch x features = {patch} x {features} = "
                f"{patch * features} values but the model is {dim} wide, so each position's prediction lies in "
                f"a {dim}-dimensional subspace of its {patch * features} values and ~{1 - dim / (patch * features):.0%} "
                f"of the (isotropic) noise stays unpredictable: use a patch of at most "
                f"{max(1, dim // features)} or a model at least {patch * features} wide",
                UnderfitWarning, stacklevel=2)
        self.name, self.features, self.patch = name, features, patch
        self.scaling, self.timestep, self.tie_duplicates = scaling, timestep, tie_duplicates
        self.window_input = bool(window_input)
        self.design, self.unet_channels = design, tuple(unet_channels)
        self.unet_linear_entry, self.unet_linear_exit = bool(unet_linear_entry), bool(unet_linear_exit)
        in_values = features * (2 if self.window_input else 1)
        if design == "linear":
            self.inp = nn.Linear(in_values * patch, dim)
            self.out = nn.Linear(dim, features * patch)
        else:
            chans = unet_levels(patch, unet_channels)
            self.down = UNetDown(in_values, chans, dim, dims=1)
            self.up = UNetUp(features, chans, dim, dims=1)
            self.to_tokens = nn.Linear(chans[-1], dim)
            if self.unet_linear_entry:
                self.inp = nn.Linear(in_values * patch, dim)
            if self.unet_linear_exit:
                self.out = nn.Linear(dim, features * patch)
            self.from_tokens = nn.Linear(dim, chans[-1])
        self.t_embed = TimestepEmbedding(dim)
        self.input_skip = bool(input_skip)
        if self.input_skip:
            self.skip_gain = nn.Linear(dim, features * patch)
            nn.init.zeros_(self.skip_gain.weight)
            nn.init.zeros_(self.skip_gain.bias)
        # per-feature affine map from user units to payload space: payload = (x - shift) / scale
        self.register_buffer("shift", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))
        self.register_buffer("fitted", torch.tensor(scaling == "none"))
        # tie[j]: the feature decode writes into feature j (j itself unless j copies an earlier one)
        self.register_buffer("tie", torch.arange(features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "tie", torch.arange(self.features))  # saved before ties existed
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def ties(self) -> dict[int, int]:
        """``{copy: source}`` for each feature :meth:`decode` writes from another one."""
        return {j: int(i) for j, i in enumerate(self.tie.tolist()) if i != j}

    # -- scaling ------------------------------------------------------------------------------
    def fit(self, data: Tensor | np.ndarray) -> "TimeSeriesAdapter":
        """Fit the per-feature scaler on training data ``(T, F)`` or ``(n, T, F)`` (NaN ignored)."""
        x = torch.as_tensor(np.asarray(data, dtype=np.float64))
        if x.ndim not in (2, 3) or x.shape[-1] != self.features:
            raise ValueError(f"fit expects (T, {self.features}) or (n, T, {self.features}), got {tuple(x.shape)}")
        x = x.reshape(-1, self.features)
        if self.scaling == "minmax":
            lo = torch.from_numpy(np.nanmin(x.numpy(), 0))
            hi = torch.from_numpy(np.nanmax(x.numpy(), 0))
            shift, scale = (hi + lo) / 2, (hi - lo).clamp_min(1e-12) / 2
        elif self.scaling == "standard":
            shift = torch.from_numpy(np.nanmean(x.numpy(), 0))
            scale = torch.from_numpy(np.nanstd(x.numpy(), 0)).clamp_min(1e-12)
        else:
            shift, scale = torch.zeros(self.features), torch.ones(self.features)
        if not bool(torch.isfinite(shift).all() & torch.isfinite(scale).all()):
            raise ValueError("cannot fit the scaler: a feature has no finite values")
        self.shift.copy_(shift.float())
        self.scale.copy_(scale.float())
        self.tie.copy_(torch.from_numpy(duplicate_sources(x.numpy())) if self.tie_duplicates
                       else torch.arange(self.features))
        self.fitted.fill_(True)
        return self

    # -- protocol ---------------------------------------------------------------------------
    def encode(self, raw: Tensor | np.ndarray, mask: Tensor | np.ndarray | None = None) -> Tensor:
        """A window ``(T, F)`` in user units → scaled payload ``(T, F)``; a batch ``(n, T, F)``
        → ``(n, T, F)``.

        Args:
            mask: optional bool of the same shape, True where a value is observed. Missing
                values (NaN) are allowed only where ``mask`` is False; they become 0 in the payload.

        Raises:
            ValueError: wrong shape, length not divisible by ``patch``, non-numeric data, NaN
                without a mask, scaler not fitted.
        """
        try:
            x = raw.detach().cpu().float() if isinstance(raw, Tensor) else \
                torch.as_tensor(np.array(raw, dtype=np.float64)).float()
        except (TypeError, ValueError) as e:
            raise ValueError(f"time series must be numeric (T, {self.features}): {e}") from e
        if x.ndim not in (2, 3) or x.shape[-1] != self.features:
            raise ValueError(f"window must have shape (T, {self.features}) (or a batch (n, T, {self.features})), "
                             f"got {tuple(x.shape)}")
        if x.shape[-2] % self.patch:
            raise ValueError(f"window length {x.shape[-2]} must be divisible by patch={self.patch}")
        if not bool(self.fitted):
            raise ValueError(f"adapter {self.name!r}: call fit(training_data) before encode")
        missing = ~torch.isfinite(x)
        if mask is not None:
            m = torch.as_tensor(np.asarray(mask, dtype=bool))
            if m.shape != x.shape:
                raise ValueError(f"mask must have the window's shape {tuple(x.shape)}, got {tuple(m.shape)}")
            if bool((missing & m).any()):
                raise ValueError("values marked observed by the mask are NaN/inf")
            missing = missing & ~m
        elif bool(missing.any()):
            raise ValueError(f"window has {int(missing.sum())} NaN/inf values; pass a mask of "
                             "observed values or fill them first")
        x = (x - self.shift.cpu()) / self.scale.cpu()
        return torch.where(missing, torch.zeros_like(x), x)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """A window payload is ``(T, F)`` with ``F = features`` and ``T`` a multiple of ``patch``."""
        shape = tuple(shape)
        if len(shape) != 2 or shape[1] != self.features or shape[0] < 1:
            raise ValueError(f"adapter {self.name!r} takes windows of shape (T, {self.features}) (T steps of "
                             f"{self.features} features), got {shape}")
        if shape[0] % self.patch:
            raise ValueError(f"adapter {self.name!r}: window length {shape[0]} must be divisible by patch={self.patch}")

    def num_positions(self, payload: Tensor) -> int:
        extra = 1 if self.timestep == "token" else 0
        return payload.shape[0] // self.patch + extra

    def describe(self, raw) -> str:
        """``12 steps x 2 features; mean [15.1, 1000.4], range [[9.8, 20.3], [990.2, 1011.0]]``."""
        x = np.asarray(raw, dtype=np.float64)
        if x.ndim != 2:
            return f"an array of shape {x.shape}"
        fmt = lambda v: "[" + ", ".join(f"{a:.3g}" for a in v) + "]"  # noqa: E731
        return (f"{x.shape[0]} steps x {x.shape[1]} features; mean {fmt(x.mean(0))}, min {fmt(x.min(0))}, "
                f"max {fmt(x.max(0))}")

    def render(self, raw, ax) -> bool:
        """Each feature over time (one line each) on a matplotlib Axes."""
        x = np.asarray(raw, dtype=np.float64)
        if x.ndim != 2:
            return False
        ax.plot(x)
        ax.set_xlabel("step")
        return True

    def decode(self, payload: Tensor) -> Tensor:
        """Scaled payload ``(..., T, F)`` → user units (tied features copied from their source)."""
        x = payload * self.scale.to(payload.device) + self.shift.to(payload.device)
        return x[..., self.tie.to(payload.device)]  # the identity order where nothing is tied

    def _inputs(self, payload: Tensor) -> Tensor:
        """``(..., T, F)`` → the values the input layer reads: the payload, and with
        ``window_input`` its window standardized per feature beside it (``(..., T, 2F)``;
        computed in float32, ``std`` floored at 1e-3 in quadrature so a constant window gives 0)."""
        if not self.window_input:
            return payload
        x = payload.float()
        centred = x - x.mean(dim=-2, keepdim=True)
        z = centred * torch.rsqrt(centred.square().mean(dim=-2, keepdim=True) + WINDOW_STD_FLOOR ** 2)
        return torch.cat([x, z], dim=-1).to(payload.dtype)

    def _entry(self, stacked: Tensor, temb: Tensor) -> tuple[Tensor, list[Tensor] | None]:
        """Windows of one length ``(b, T, F)`` → position vectors ``(b, n, D)``, and the down
        path's skips for :meth:`_exit` (``None`` for the linear design)."""
        x = self._inputs(stacked).to(temb.dtype)
        if self.design == "linear":
            return self.inp(rearrange(x, "b (n k) f -> b n (k f)", k=self.patch)), None
        feats, skips = self.down(rearrange(x, "b t f -> b f t"), temb)  # b c n
        tok = self.to_tokens(rearrange(feats, "b c n -> b n c"))
        if self.unet_linear_entry:
            tok = tok + self.inp(rearrange(x, "b (n k) f -> b n (k f)", k=self.patch))
        return tok, skips

    def _exit(self, seq: Tensor, skips: list[Tensor] | None, temb: Tensor) -> Tensor:
        """Position vectors ``(b, n, D)`` → predictions ``(b, n, k F)``."""
        if self.design == "linear":
            return self.out(seq)
        y = self.up(rearrange(self.from_tokens(seq), "b n c -> b c n"), skips, temb)  # b F T
        y = rearrange(y, "b f (n k) -> b n (k f)", k=self.patch)
        return y + self.out(seq) if self.unet_linear_exit else y

    def embed(self, payloads: Sequence[Tensor], t: Tensor | None = None) -> Embedded:
        if t is None:
            raise ValueError("time-series embed needs the diffusion step t")
        ref = self.t_embed.mlp[0].weight
        device, dtype = ref.device, ref.dtype
        lengths = [p.shape[0] // self.patch for p in payloads]
        temb = self.t_embed(t.to(device))  # n D
        gain = self.skip_gain(temb) if self.input_skip else None  # n (k F)
        unet = {} if self.design == "unet" else None
        if len(set(lengths)) == 1:  # all windows alike: one batched pass
            n = lengths[0]
            stacked = torch.stack(list(payloads)).to(device)
            tok, skips = self._entry(stacked, temb.to(dtype))
            if unet is not None:
                unet[n] = skips
            tok = tok + sinusoidal(torch.arange(n, device=device), self.dim).to(dtype)  # b n D
            cond = None
            if self.timestep == "token":
                tok = torch.cat([temb[:, None], tok], dim=1)
            elif self.timestep == "add":
                tok = tok + temb[:, None]
            else:
                cond = temb[:, None].expand(-1, n, -1).reshape(-1, self.dim)
            skip = None
            if gain is not None:
                raw = rearrange(stacked, "b (n k) f -> b n (k f)", k=self.patch)
                skip = (gain[:, None] * raw).reshape(-1, gain.shape[-1])
            return Embedded(tok.reshape(-1, self.dim), cond=cond, context=SeriesContext(lengths, skip, temb, unet))
        per: list[Tensor] = [None] * len(payloads)  # each n_i D
        for n, idx in _group_by_length(lengths).items():
            tok, skips = self._entry(torch.stack([payloads[i] for i in idx]).to(device), temb[idx].to(dtype))
            if unet is not None:
                unet[n] = skips
            tok = tok + sinusoidal(torch.arange(n, device=device), self.dim).to(dtype)
            for j, i in enumerate(idx):
                per[i] = tok[j]
        cond = None
        if self.timestep == "token":
            per = [torch.cat([temb[i : i + 1], seq]) for i, seq in enumerate(per)]
        elif self.timestep == "add":
            per = [seq + temb[i] for i, seq in enumerate(per)]
        else:
            cond = torch.cat([temb[i].expand(n, -1) for i, n in enumerate(lengths)])
        skip = None
        if gain is not None:
            skip = torch.cat([gain[i] * rearrange(p.to(device), "(n k) f -> n (k f)", k=self.patch)
                              for i, p in enumerate(payloads)])
        return Embedded(torch.cat(per), cond=cond, context=SeriesContext(lengths, skip, temb, unet))

    def head(self, hidden: Tensor, embedded: Embedded) -> list[Tensor]:
        lengths, skip, temb, unet = embedded.context
        extra = 1 if self.timestep == "token" else 0
        if len(set(lengths)) == 1:
            seq = hidden.view(len(lengths), lengths[0] + extra, -1)[:, extra:]
            out = self._exit(seq, unet[lengths[0]] if unet else None, temb.to(seq.dtype) if unet else None)
            if skip is not None:
                out = out + skip.view_as(out).to(out.dtype)
            return list(rearrange(out, "b n (k f) -> b (n k) f", k=self.patch))
        per = [seq[extra:] for seq in hidden.split([n + extra for n in lengths])]
        outs: list[Tensor] = [None] * len(lengths)  # each n_i (k F)
        for n, idx in _group_by_length(lengths).items():
            y = self._exit(torch.stack([per[i] for i in idx]), unet[n] if unet else None,
                           temb[idx].to(hidden.dtype) if unet else None)
            for j, i in enumerate(idx):
                outs[i] = y[j]
        if skip is not None:
            outs = [o + sk.to(o.dtype) for o, sk in zip(outs, skip.split(lengths))]
        return [rearrange(o, "n (k f) -> (n k) f", k=self.patch) for o in outs]


def _group_by_length(lengths: Sequence[int]) -> dict[int, list[int]]:
    """``{positions: indices of the windows with that many}``, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return groups
