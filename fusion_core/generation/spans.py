"""Spans on their own (TransFusion) or after prompts, in user units: :func:`sample`,
:func:`impute` and :func:`forecast` (replacement with RePaint resampling,
:mod:`fusion_core.diffusion.repaint`), :func:`sample_long`. Observed values come back exactly,
in the dtype and array type they came in."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..adapter import Adapter
from ..diffusion import Sampler
from ..diffusion.repaint import check_resample, repaint
from ..graphs import GraphedCall
from ..model import FusionModel
from ..validation import check_int
from .checks import (bound_sampler, check_batch_values, check_progress, check_prompts, check_span_shape,
                     continuous_adapter, eval_mode, make_generator)
from .prompts import Prompt, _positions, _prompt_items, _with_begin, writer_of


def _decode(adapter: Adapter, payloads: Tensor):
    values = [adapter.decode(p) for p in payloads]
    return torch.stack(values) if values and all(isinstance(v, Tensor) for v in values) else values


def _encode_masked(adapter: Adapter, x: np.ndarray, mask) -> tuple[Tensor, Tensor]:
    """User values ``(n, ...)`` with NaN (or ``mask`` False) where unknown → payloads and the
    payload-space mask. Needs an adapter whose payload has the raw data's shape."""
    m = np.isfinite(x) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != x.shape:
        raise ValueError(f"mask has shape {m.shape}, the values {x.shape}")
    if (m & ~np.isfinite(x)).any():
        raise ValueError("values marked observed by mask are NaN/inf")
    filled = torch.as_tensor(np.where(m, x, 0.0), dtype=torch.float32)
    payload = torch.stack([adapter.encode(v) for v in filled]) if len(filled) else filled
    if payload.shape != filled.shape:
        raise ValueError(f"adapter {adapter.name!r} maps values of shape {tuple(filled.shape[1:])} to payloads of "
                         f"{tuple(payload.shape[1:])}: masks in user units need a payload of the same shape")
    return payload, torch.as_tensor(m)


def _denoiser(model: FusionModel, modality: str, prompts, start: int, n: int, writer):
    """The denoiser for spans ``start : start + n``: the span alone, or after their prompts."""
    if prompts is None:
        return model.span_denoiser(modality)
    w = writer_of(model, writer, modality)
    rows = [_with_begin(_prompt_items(model, p, w), w, modality) for p in prompts[start : start + n]]
    cache, _ = model.prefill(rows, max_len=max(_positions(model, r) for r in rows))
    return lambda x, t: model.denoise_step(x, t, cache, modality)


def _check_prompts(prompts, n: int):
    if prompts is None:
        return None
    prompts = check_prompts(prompts)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} spans: give one prompt per span")
    return prompts


@torch.no_grad()
def sample(model: FusionModel, modality: str, n: int, shape: Sequence[int], sampler: Sampler | Any, *,
           prompts: Sequence[Prompt] | None = None, seed: int = 0, generator: torch.Generator | None = None,
           chunk: int = 256, progress: bool = False, decode: bool = True, writer: str | None = None,
           cuda_graphs: bool = False) -> Tensor:
    """``n`` spans of ``modality`` with payload shape ``shape``, ``chunk`` at a time (memory stays
    bounded): on their own (the TransFusion model) or each after its prompt.

    Args:
        sampler: a :class:`Sampler` built for ``model.diffusion[modality]`` (another one is
            refused), a :class:`SampleArgs`, or a mapping of either per modality.
        seed, generator: the noise; ``generator`` (used and advanced) wins over ``seed``.
        cuda_graphs: without prompts, replay the denoiser as a CUDA graph per chunk shape
            (:class:`~fusion_core.graphs.GraphedCall`; the same values, fewer kernel launches);
            ignored off CUDA.

    Returns:
        ``(n, ...)`` in user units (``decode``) or payloads, on the CPU.

    Raises:
        ValueError: an unknown or discrete modality, a shape the adapter does not take, a sampler
            of another modality's diffusion, a prompt count other than ``n``.
        TypeError: a bare string for ``prompts``, non-integer counts, a switch that is not a bool.
    """
    a = continuous_adapter(model, modality, "sample")
    check_int("n", n, low=0)
    check_int("chunk", chunk, low=1)
    shape = check_span_shape(model, modality, shape)
    sampler = bound_sampler(model, modality, sampler)
    prompts = _check_prompts(prompts, n)
    progress, cuda_graphs = check_progress(progress), check_progress(cuda_graphs, "cuda_graphs")
    g = make_generator(generator, seed)
    out = []
    with eval_mode(model):
        # one wrapper per call: the graphs read the weights in use now (EMA swaps happen between calls)
        graphed = GraphedCall(model.span_denoiser(modality)) if cuda_graphs and prompts is None else None
        for start in tqdm(range(0, n, chunk), disable=not progress, desc=f"sample {modality}", leave=False):
            b = min(chunk, n - start)
            denoise = graphed if graphed is not None else _denoiser(model, modality, prompts, start, b, writer)
            x_T = torch.randn(b, *shape, generator=g).to(model.device)
            out.append(sampler.sample(denoise, x_T=x_T, generator=g).cpu())
    x = torch.cat(out) if out else torch.zeros(0, *shape)
    return _decode(a, x) if decode and len(x) else x


@torch.no_grad()
def impute(model: FusionModel, modality: str, values, sampler: Sampler | Any, mask=None, *, resample: int = 1,
           prompts: Sequence[Prompt] | None = None, seed: int = 0, generator: torch.Generator | None = None,
           chunk: int = 256, progress: bool = False, writer: str | None = None):
    """Fill the unknown entries of ``values`` ``(n, ...)`` — NaN, or where ``mask`` is False — in
    user units: the gaps of a series, the missing pixels of an image. Observed entries come back
    exactly, in the array type and dtype of ``values`` (float64 in, float64 out).

    Args:
        sampler: a one-step sampler (``ddpm``/``ddim``) when ``resample > 1``, built for the
            modality's diffusion (or a :class:`SampleArgs`, whose conditional sampler is used).
        resample: RePaint resampling rounds per step (see :mod:`fusion_core.diffusion.repaint`).
        prompts: optional prompt per span (e.g. a caption of what the series does).

    Raises:
        ValueError: see :func:`sample`; values of a shape the adapter does not take (a single
            item without its batch axis is named as such); a mask of another shape.
        TypeError: values that are not numbers.
    """
    a = continuous_adapter(model, modality, "impute")
    check_int("resample", resample, low=1)
    check_int("chunk", chunk, low=1)
    x = check_batch_values(model, modality, values, "values")
    sampler = bound_sampler(model, modality, sampler, "sampler", conditional=True)
    check_resample(sampler, resample)
    payload, m = _encode_masked(a, x, mask)
    prompts = _check_prompts(prompts, len(payload))
    progress = check_progress(progress)
    g = make_generator(generator, seed)
    out = []
    with eval_mode(model):
        for start in tqdm(range(0, len(payload), chunk), disable=not progress, desc=f"impute {modality}", leave=False):
            b = min(chunk, len(payload) - start)
            denoise = _denoiser(model, modality, prompts, start, b, writer)
            obs = payload[start : start + b].to(model.device)
            out.append(repaint(denoise, sampler, obs, m[start : start + b], resample, g).cpu())
    filled = _decode(a, torch.cat(out)).double() if out else torch.zeros(x.shape, dtype=torch.float64)
    result = torch.where(m, torch.as_tensor(x), filled)  # observed entries exactly as given
    if isinstance(values, Tensor):
        return result.to(values.dtype if values.dtype.is_floating_point else torch.float32)
    dtype = np.asarray(values).dtype if np.asarray(values).dtype.kind == "f" else np.float32
    return result.numpy().astype(dtype, copy=False)


@torch.no_grad()
def forecast(model: FusionModel, modality: str, history, length: int, sampler: Sampler | Any, *,
             resample: int = 1, prompts: Sequence[Prompt] | None = None, seed: int = 0,
             generator: torch.Generator | None = None, chunk: int = 256, progress: bool = False,
             writer: str | None = None):
    """Continue each history ``(n, H, ...)`` to a span of ``length`` along the first axis (the
    first H steps come back exactly, in the dtype they came in); user units in and out.

    Raises:
        ValueError: a history that is not a batch ``(n, H, ...)`` (one history is named as such),
            ``H >= length``, a history row with no observed value, or what :func:`impute` raises.
    """
    continuous_adapter(model, modality, "forecast")
    check_int("length", length, low=2)
    from ..validation import numeric_array

    hist = numeric_array(history, "history", dtype=np.float64)
    if hist.ndim < 2:
        raise ValueError(f"history must be a batch (n, H, ...) of histories, got shape {hist.shape}")
    n, H = hist.shape[:2]
    if not 0 < H < length:
        raise ValueError(f"a history of {H} steps leaves nothing to forecast in a span of {length} "
                         f"(history is (n, H, ...) = {hist.shape})")
    try:
        check_span_shape(model, modality, (length, *hist.shape[2:]), "history")
    except ValueError as e:
        try:
            check_span_shape(model, modality, (length, *hist.shape[1:]), "history")
        except ValueError:
            raise ValueError(f"history of shape {hist.shape} does not fit {modality!r} ({e})") from None
        raise ValueError(f"history must be a batch (n, H, ...); shape {hist.shape} is one history of {n} steps: "
                         "pass history[None]") from None
    empty = ~np.isfinite(hist).reshape(n, -1).any(1)
    if empty.any():
        raise ValueError(f"history row {int(np.argmax(empty))} has no observed value (all NaN): nothing to "
                         "forecast from (use sample() for unconditional spans)")
    values = np.full((n, length, *hist.shape[2:]), np.nan)
    values[:, :H] = hist
    mask = np.zeros(values.shape, dtype=bool)
    mask[:, :H] = np.isfinite(hist)
    dtype = _float_dtype(history)
    out = impute(model, modality, values.astype(dtype), sampler, mask, resample=resample, prompts=prompts,
                 seed=seed, generator=generator, chunk=chunk, progress=progress, writer=writer)
    return out if isinstance(history, np.ndarray) else torch.as_tensor(out)


def _float_dtype(values) -> np.dtype:
    """The floating dtype results come back in: the input's, or float32."""
    if isinstance(values, Tensor):
        return np.float64 if values.dtype == torch.float64 else np.float32
    arr = np.asarray(values) if isinstance(values, np.ndarray) else None
    return arr.dtype if arr is not None and arr.dtype.kind == "f" else np.float32


@torch.no_grad()
def sample_long(model: FusionModel, modality: str, n: int, total: int, shape: Sequence[int], sampler: Sampler | Any,
                cond_sampler: Sampler | Any | None = None, *, overlap: int | None = None, resample: int = 1,
                seed: int = 0, generator: torch.Generator | None = None, chunk: int = 256,
                progress: bool = False) -> Tensor:
    """``(n, total, ...)`` spans longer than the trained span ``shape`` (along its first axis):
    the first window drawn with ``sampler``, each next one a forecast (``cond_sampler``, default
    ``sampler``, with ``resample``) from the previous window's last ``overlap`` steps (default
    half). Right for data where a window may start anywhere (a stationary series). User units.

    Raises:
        ValueError: see :func:`sample`; ``overlap`` outside ``(0, length)``, ``total < 1``.
    """
    continuous_adapter(model, modality, "sample_long")
    shape = check_span_shape(model, modality, shape)
    check_int("n", n, low=0)
    check_int("total", total, low=1)
    length = shape[0]
    overlap = length // 2 if overlap is None else check_int("overlap", overlap)
    if not 0 < overlap < length:
        raise ValueError(f"overlap must be in (0, {length}), got {overlap}")
    sampler = bound_sampler(model, modality, sampler)
    cond_sampler = bound_sampler(model, modality, cond_sampler if cond_sampler is not None else sampler, "cond_sampler",
                                 conditional=True)
    g = make_generator(generator, seed)
    parts = []
    for start in tqdm(range(0, n, chunk), disable=not check_progress(progress), desc=f"long {modality}", leave=False):
        b = min(chunk, n - start)
        series = sample(model, modality, b, shape, sampler, generator=g, chunk=b)
        while series.shape[1] < total:
            window = forecast(model, modality, series[:, -overlap:], length, cond_sampler, resample=resample,
                              generator=g, chunk=b)
            series = torch.cat([series, window[:, overlap:]], dim=1)
        parts.append(series[:, :total])
    return torch.cat(parts) if parts else torch.zeros(0, total, *shape[1:])
