"""Spans on their own (TransFusion) or after prompts, in user units: :func:`sample`,
:func:`impute` and :func:`forecast` (replacement with RePaint resampling,
:mod:`fusion_core.diffusion.repaint`), :func:`sample_long`. Observed values come back exactly."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..adapter import Adapter
from ..diffusion import Sampler
from ..diffusion.repaint import check_resample, repaint
from ..model import FusionModel
from .prompts import Prompt, _positions, _prompt_items, _with_begin, writer_of


def _decode(adapter: Adapter, payloads: Tensor):
    values = [adapter.decode(p) for p in payloads]
    return torch.stack(values) if values and all(isinstance(v, Tensor) for v in values) else values


def _encode_masked(adapter: Adapter, values, mask) -> tuple[Tensor, Tensor]:
    """User values ``(n, ...)`` with NaN (or ``mask`` False) where unknown → payloads and the
    payload-space mask. Needs an adapter whose payload has the raw data's shape."""
    x = torch.as_tensor(np.asarray(values, dtype=np.float32))
    m = torch.isfinite(x) if mask is None else torch.as_tensor(np.asarray(mask, dtype=bool))
    if m.shape != x.shape:
        raise ValueError(f"mask has shape {tuple(m.shape)}, the values {tuple(x.shape)}")
    if bool((m & ~torch.isfinite(x)).any()):
        raise ValueError("values marked observed are NaN/inf")
    filled = torch.where(m, x, torch.zeros_like(x))
    payload = torch.stack([adapter.encode(v) for v in filled]) if len(filled) else filled
    if payload.shape != x.shape:
        raise ValueError(f"adapter {adapter.name!r} maps values of shape {tuple(x.shape[1:])} to payloads of "
                         f"{tuple(payload.shape[1:])}: masks in user units need a payload of the same shape")
    return payload, m


def _like(out: Tensor, ref):
    return out.numpy() if isinstance(ref, np.ndarray) else out


def _denoiser(model: FusionModel, modality: str, prompts, start: int, n: int, writer):
    """The denoiser for spans ``start : start + n``: the span alone, or after their prompts."""
    if prompts is None:
        return model.span_denoiser(modality)
    w = writer_of(model, writer, modality)
    rows = [_with_begin(_prompt_items(model, p, w), w, modality) for p in prompts[start : start + n]]
    cache, _ = model.prefill(rows, max_len=max(_positions(model, r) for r in rows))
    return lambda x, t: model.denoise_step(x, t, cache, modality)


def _check_prompts(prompts, n: int):
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} spans")


@torch.no_grad()
def sample(model: FusionModel, modality: str, n: int, shape: Sequence[int], sampler: Sampler, *,
           prompts: Sequence[Prompt] | None = None, seed: int = 0, chunk: int = 256,
           progress: bool = False, decode: bool = True, writer: str | None = None) -> Tensor:
    """``n`` spans of ``modality`` with payload shape ``shape``, ``chunk`` at a time (memory stays
    bounded): on their own (the TransFusion model) or each after its prompt.

    Returns:
        ``(n, ...)`` in user units (``decode``) or payloads, on the CPU.
    """
    if n < 0 or chunk < 1:
        raise ValueError(f"need n >= 0 and chunk >= 1, got {n}, {chunk}")
    _check_prompts(prompts, n)
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in tqdm(range(0, n, chunk), disable=not progress, desc=f"sample {modality}", leave=False):
        b = min(chunk, n - start)
        denoise = _denoiser(model, modality, prompts, start, b, writer)
        x_T = torch.randn(b, *shape, generator=g).to(model.device)
        out.append(sampler.sample(denoise, x_T=x_T, generator=g).cpu())
    x = torch.cat(out) if out else torch.zeros(0, *shape)
    return _decode(model.adapter(modality), x) if decode and len(x) else x


@torch.no_grad()
def impute(model: FusionModel, modality: str, values, sampler: Sampler, mask=None, *, resample: int = 1,
           prompts: Sequence[Prompt] | None = None, seed: int = 0, chunk: int = 256,
           progress: bool = False, writer: str | None = None):
    """Fill the unknown entries of ``values`` ``(n, ...)`` — NaN, or where ``mask`` is False — in
    user units: the gaps of a series, the missing pixels of an image. Observed entries come back
    exactly (the same array type as ``values``).

    Args:
        sampler: a one-step sampler (``ddpm``/``ddim``) when ``resample > 1``.
        resample: RePaint resampling rounds per step (see :mod:`fusion_core.diffusion.repaint`).
        prompts: optional prompt per span (e.g. a caption of what the series does).
    """
    check_resample(sampler, resample)
    a = model.adapter(modality)
    payload, m = _encode_masked(a, values, mask)
    _check_prompts(prompts, len(payload))
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in tqdm(range(0, len(payload), chunk), disable=not progress, desc=f"impute {modality}", leave=False):
        b = min(chunk, len(payload) - start)
        denoise = _denoiser(model, modality, prompts, start, b, writer)
        obs = payload[start : start + b].to(model.device)
        out.append(repaint(denoise, sampler, obs, m[start : start + b], resample, g).cpu())
    filled = _decode(a, torch.cat(out)) if out else payload
    raw = torch.as_tensor(np.asarray(values, dtype=np.float32))
    return _like(torch.where(m, raw, filled), values)


@torch.no_grad()
def forecast(model: FusionModel, modality: str, history, length: int, sampler: Sampler, *,
             resample: int = 1, prompts: Sequence[Prompt] | None = None, seed: int = 0,
             chunk: int = 256, progress: bool = False, writer: str | None = None):
    """Continue each history ``(n, H, ...)`` to a span of ``length`` along the first axis (the
    first H steps come back exactly); user units in and out."""
    hist = np.asarray(history, dtype=np.float32)
    if hist.ndim < 2:
        raise ValueError(f"history must be (n, H, ...), got shape {hist.shape}")
    n, H = hist.shape[:2]
    if not 0 < H < length:
        raise ValueError(f"a history of {H} steps leaves nothing to forecast in a span of {length}")
    values = np.full((n, length, *hist.shape[2:]), np.nan, dtype=np.float32)
    values[:, :H] = hist
    mask = np.zeros(values.shape, dtype=bool)
    mask[:, :H] = np.isfinite(hist)
    out = impute(model, modality, values, sampler, mask, resample=resample, prompts=prompts, seed=seed,
                 chunk=chunk, progress=progress, writer=writer)
    return out if isinstance(history, np.ndarray) else torch.as_tensor(out)


@torch.no_grad()
def sample_long(model: FusionModel, modality: str, n: int, total: int, shape: Sequence[int], sampler: Sampler,
                cond_sampler: Sampler | None = None, *, overlap: int | None = None, resample: int = 1,
                seed: int = 0, chunk: int = 256, progress: bool = False) -> Tensor:
    """``(n, total, ...)`` spans longer than the trained span ``shape`` (along its first axis):
    the first window drawn with ``sampler``, each next one a forecast (``cond_sampler``, default
    ``sampler``, with ``resample``) from the previous window's last ``overlap`` steps (default
    half). Right for data where a window may start anywhere (a stationary series). User units."""
    length = shape[0]
    overlap = length // 2 if overlap is None else overlap
    if not 0 < overlap < length:
        raise ValueError(f"overlap must be in (0, {length}), got {overlap}")
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    parts = []
    for start in tqdm(range(0, n, chunk), disable=not progress, desc=f"long {modality}", leave=False):
        b = min(chunk, n - start)
        series = sample(model, modality, b, shape, sampler, seed=seed + start, chunk=b)
        k = 0
        while series.shape[1] < total:
            k += 1
            window = forecast(model, modality, series[:, -overlap:], length, cond_sampler or sampler,
                              resample=resample, seed=seed + start + 7919 * k, chunk=b)
            series = torch.cat([series, window[:, overlap:]], dim=1)
        parts.append(series[:, :total])
    return torch.cat(parts) if parts else torch.zeros(0, total, *shape[1:])
