"""Generation for any modality names: what both papers do at inference, in user units.

- :func:`generate` — Transfusion's mode switching (sec. 3.3, "inference"): a discrete *writer*
  adapter (text) decodes one token per step with the KV cache; when a row emits the begin marker
  of a continuous modality M (``<boi:M>``), M's span is sampled against the **cached prefix**
  (computed once; every denoising step attends to it and bidirectionally within the span, without
  writing to the cache), committed clean, the end marker appended, and writing resumes. Rows run
  in lockstep: while some rows draw a span, the others get padding positions nothing attends to.
- :func:`generate_span` — a span from each prompt (text → image, text → series), with
  classifier-free guidance in one batched conditional + unconditional pass.
- :func:`caption` — the writer's text after a continuous item (image → text, series → text).
- :func:`sample`, :func:`forecast`, :func:`impute`, :func:`sample_long` — spans on their own
  (TransFusion) or after a prompt: unconditional draws; the rest of a window from its start; the
  missing entries of a series or an image, by replacement with RePaint resampling
  (:mod:`fusion_core.diffusion.repaint`). Observed values come back exactly.

Inputs and outputs are in the user's units: adapters encode and decode (``raw → payload → raw``).
The writer is the discrete adapter that owns the markers: it provides ``begin_marker(M)``,
``end_marker(M)``, ``bos_id``, ``eos_id``, ``encode(str)``, ``decode(ids)`` and
``drop_condition(ids)`` (the built-in text adapter does).

Shapes: B rows (prompts), n spans, L span length, ``*shape`` a payload's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .adapter import Adapter
from .diffusion import SAMPLERS, Sampler, make_sampler
from .diffusion.repaint import check_resample, repaint
from .model import FusionModel, Item

Prompt = Any  # str | list[Item] | list[str | tuple[str, raw] | Item]


@dataclass
class SampleArgs:
    """How to sample — the one sampler config every recipe nests (``sample.*``, ``eval.sample.*``).

    Attributes:
        sampler: ``ddpm`` (ancestral), ``ddim`` or ``dpm_solver`` (DPM-Solver++ 2M).
        steps: model evaluations per span; 0 = all T.
        clip_x0: clamp each predicted x0 to ``[-clip_x0, clip_x0]``; 0 = off.
        guidance: classifier-free guidance scale for conditioned spans; 0 = off.
        use_ema: sample with the EMA weights when the model has them.
        temperature: text sampling temperature; 0 = greedy.
        top_k: sample text among the k likeliest tokens; 0 = all.
        max_new_tokens: tokens each row may write.
        chunk: spans drawn per batch (bounds memory).
        cond_sampler, cond_steps, resample: forecasts, imputation and long series (RePaint):
            a one-step sampler, its steps, and how many times each step is drawn.
        seed: seeds every random draw.
    """

    sampler: str = "dpm_solver"
    steps: int = 50
    clip_x0: float = 1.0
    guidance: float = 0.0
    use_ema: bool = True
    temperature: float = 0.0
    top_k: int = 0
    max_new_tokens: int = 48
    chunk: int = 256
    cond_sampler: str = "ddim"
    cond_steps: int = 25
    resample: int = 10
    seed: int = 0

    def __post_init__(self):
        for key in ("sampler", "cond_sampler"):
            if getattr(self, key) not in SAMPLERS:
                raise ValueError(f"{key} must be one of {sorted(SAMPLERS)}, got {getattr(self, key)!r}")
        for key, low in (("steps", 0), ("cond_steps", 0), ("max_new_tokens", 0), ("top_k", 0),
                         ("chunk", 1), ("resample", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"{key} must be >= {low}, got {getattr(self, key)}")
        for key in ("clip_x0", "guidance", "temperature"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.resample > 1 and SAMPLERS[self.cond_sampler].multistep:
            raise ValueError(f"resample={self.resample} needs a one-step cond_sampler (ddpm or ddim), "
                             f"got {self.cond_sampler!r}")

    def make(self, diffusion) -> Sampler:
        """The sampler for ``diffusion`` (a ``GaussianDiffusion``)."""
        return make_sampler(self.sampler, diffusion, self.steps or None, clip_x0=self.clip_x0 or None)

    def make_conditional(self, diffusion) -> Sampler:
        """The sampler for forecasts, imputation and long series."""
        return make_sampler(self.cond_sampler, diffusion, self.cond_steps or None, clip_x0=self.clip_x0 or None)

    @property
    def guidance_scale(self) -> float | None:
        return self.guidance or None


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

    @property
    def text(self) -> str:
        """All text segments, joined."""
        return "".join(v for _, v in self.segments if isinstance(v, str))

    def spans(self, modality: str) -> list:
        """The decoded spans of ``modality``."""
        return [v for m, v in self.segments if m == modality and not isinstance(v, str)]


# -- prompts ---------------------------------------------------------------------------------------

def writer_of(model: FusionModel, writer: str | None = None, for_modality: str | None = None) -> Adapter:
    """The discrete adapter that writes text and marks spans (``writer``, or the only discrete
    adapter that has a begin marker for ``for_modality``)."""
    if writer is not None:
        a = model.adapter(writer)
        if a.kind != "discrete" or not hasattr(a, "begin_marker"):
            raise ValueError(f"writer {writer!r} must be a discrete adapter with begin/end markers")
        return a
    cands = [a for a in model.adapters.values() if a.kind == "discrete" and hasattr(a, "begin_marker")
             and (for_modality is None or a.begin_marker(for_modality) is not None)]
    if len(cands) != 1:
        what = f" with markers for {for_modality!r}" if for_modality else ""
        raise ValueError(f"need exactly one discrete writer adapter{what}, found "
                         f"{[a.name for a in cands]}: pass writer=NAME")
    return cands[0]


def interleave(model: FusionModel, segments: Sequence, writer: str | None = None, bos: bool = True,
               eos: bool = True) -> list[Item]:
    """A user example → Items in Transfusion's layout: the writer's text, and each other
    modality's span between its begin and end markers (``<bos> caption <boi:M>``, span,
    ``<eoi:M> <eos>``).

    Args:
        segments: ``str`` (the writer's text), ``(modality, raw)`` (encoded by that adapter) or a
            ready :class:`~fusion_core.model.Item` (taken as is, no markers added).
        bos, eos: open and close the example with the writer's ``<bos>`` / ``<eos>``.
    """
    if isinstance(segments, str) or not isinstance(segments, Sequence) or not len(segments):
        raise ValueError("an example is a non-empty list of segments: str or (modality, raw)")
    w = writer_of(model, writer)
    items: list[Item] = []
    pending: list[int] = [w.bos_id] if bos else []

    def flush():
        if pending:
            items.append(Item(w.name, torch.tensor(pending, dtype=torch.long)))
            pending.clear()

    for j, seg in enumerate(segments):
        if isinstance(seg, str):
            pending.extend(w.encode(seg).tolist())
        elif isinstance(seg, Item):
            flush()
            items.append(seg)
        elif isinstance(seg, tuple) and len(seg) == 2 and isinstance(seg[0], str):
            name, raw = seg
            adapter = model.adapter(name)
            begin, end = w.begin_marker(name), w.end_marker(name)
            if begin is None:
                raise ValueError(f"segment {j}: writer {w.name!r} has no markers for modality {name!r}")
            pending.append(begin)
            flush()
            items.append(Item(name, adapter.encode(raw)))
            pending.append(end)
        else:
            raise ValueError(f"segment {j}: expected a str, a (modality, raw) pair or an Item, "
                             f"got {type(seg).__name__}")
    if eos:
        pending.append(w.eos_id)
    flush()
    return items


def _prompt_items(model: FusionModel, prompt: Prompt, w: Adapter) -> list[Item]:
    if isinstance(prompt, str):
        return interleave(model, [prompt], w.name, bos=True, eos=False)
    if isinstance(prompt, Sequence) and prompt and all(isinstance(x, Item) for x in prompt):
        return list(prompt)
    return interleave(model, prompt, w.name, bos=True, eos=False)


def _ends_with(items: list[Item], w: Adapter, token: int) -> bool:
    return items[-1].modality == w.name and int(items[-1].payload.reshape(-1)[-1]) == token


def _with_begin(items: list[Item], w: Adapter, modality: str) -> list[Item]:
    begin = w.begin_marker(modality)
    if begin is None:
        raise ValueError(f"writer {w.name!r} has no begin marker for {modality!r}")
    return items if _ends_with(items, w, begin) else items + [Item(w.name, torch.tensor([begin]))]


def _writer_ids(items: list[Item], w: Adapter) -> Tensor:
    parts = [it.payload.reshape(-1).long().cpu() for it in items if it.modality == w.name]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _uncond(items: list[Item], w: Adapter, modality: str) -> list[Item]:
    """The unconditional prompt of classifier-free guidance: the writer's ``drop_condition`` of
    the row's text (``<bos> <boi:M>``), as in training's condition dropout."""
    ids = torch.cat([_writer_ids(items, w), torch.tensor([w.begin_marker(modality)])])
    return [Item(w.name, w.drop_condition(ids))]


def _positions(model: FusionModel, items: list[Item]) -> int:
    return sum(model.adapter(it.modality).num_positions(it.payload) for it in items)


def _span_positions(model: FusionModel, modality: str, shape: Sequence[int]) -> int:
    return model.adapter(modality).num_positions(torch.zeros(tuple(shape)))


def _pick(logits: Tensor, temperature: float, top_k: int | None, g: torch.Generator | None) -> Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.float().softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=g)[:, 0].to(logits.device)


def _per_modality(value, name: str, what: str):
    if isinstance(value, Mapping):
        if name not in value:
            raise ValueError(f"no {what} given for modality {name!r} (have {sorted(value)})")
        return value[name]
    if value is None:
        raise ValueError(f"a span of {name!r} needs a {what}")
    return value


# -- interleaved generation --------------------------------------------------------------------------

@torch.no_grad()
def generate(model: FusionModel, prompts: Sequence[Prompt], sampler: Sampler | Mapping[str, Sampler] | None = None,
             shapes: Mapping[str, Sequence[int]] | None = None, *, writer: str | None = None,
             guidance: float | None = None, max_new_tokens: int = 64, max_len: int | None = None,
             temperature: float = 0.0, top_k: int | None = None, force: str | None = None,
             max_spans: int = 1, seed: int = 0) -> list[Generated]:
    """Continue each prompt: text until the writer's ``<eos>`` or ``max_new_tokens``; a span of
    modality M whenever a row emits ``<boi:M>`` (at most ``max_spans`` per row) or its prompt
    ends with it.

    Args:
        prompts: per row, a string, a list of Items, or a list of segments (see :func:`interleave`).
        sampler: the sampler of every span, or one per modality.
        shapes: per continuous modality, the payload shape of a span it draws; a begin marker
            of a modality not named here is written as an ordinary token.
        writer: the discrete adapter that writes (default: the only one with markers).
        guidance: classifier-free guidance scale for spans (the unconditional branch is the
            writer's ``drop_condition`` of the row's text); None = off.
        max_new_tokens: tokens each row may write (spans do not count).
        max_len: a cap on each row's positions (prompt, text and spans); default none: the KV
            cache grows as needed and ``max_new_tokens`` is always honoured. A row that reaches
            the cap ends early and :attr:`Generated.stop` says ``"max_len"``.
        force: start every row with a span of this modality.
        seed: seeds the span noise and text sampling.

    Returns:
        One :class:`Generated` per prompt.
    """
    model.eval()
    w = writer_of(model, writer)
    items = [_prompt_items(model, p, w) for p in prompts]
    if not items:
        return []
    shapes = dict(shapes or {})
    for m in shapes:
        if model.adapter(m).kind != "continuous" or w.begin_marker(m) is None:
            raise ValueError(f"shapes names {m!r}: not a continuous modality that writer {w.name!r} marks")
    if force is not None:
        if force not in shapes:
            raise ValueError(f"force={force!r} needs its span shape in shapes")
        items = [_with_begin(it, w, force) for it in items]
    begin = {w.begin_marker(m): m for m in shapes}  # only modalities given a shape start spans
    longest = max(_positions(model, it) for it in items)
    if max_len is not None and longest > max_len:
        raise ValueError(f"a prompt of {longest} positions exceeds max_len={max_len}")
    cap = max_len if max_len is not None else float("inf")
    g = torch.Generator().manual_seed(seed)
    B = len(items)
    cache, last = model.prefill(items, max_len=longest + max_new_tokens + 1)
    logits = w.head(last, None)
    out = [Generated() for _ in range(B)]
    pieces: list[list[int]] = [[] for _ in range(B)]
    row_ids = [_writer_ids(it, w).tolist() for it in items]
    spans_done = [0] * B
    done = torch.zeros(B, dtype=torch.bool)
    want: list[str | None] = [None] * B
    for b, it in enumerate(items):  # a prompt that ends with <boi:M> asks for a span of M at once
        if max_spans > 0 and it[-1].modality == w.name:
            want[b] = begin.get(int(it[-1].payload.reshape(-1)[-1]))
    steps = 0
    while not done.all():
        waiting = sorted({m for b, m in enumerate(want) if m is not None and not done[b]})
        if waiting:  # diffusion mode, one modality at a time, for the rows that asked for it
            for m in waiting:
                rows = torch.tensor([want[b] == m and not done[b] for b in range(B)])
                want = [None if rows[b] else want[b] for b in range(B)]
                need = _span_positions(model, m, _per_modality(shapes, m, "shape")) + 1  # span, end marker
                if cache.length + need > cap:
                    for b in torch.nonzero(rows).flatten().tolist():
                        done[b], out[b].stop = True, "max_len"
                    continue
                cache.reserve(need)
                ucache = None
                if guidance is not None:
                    uprompts = [_uncond([Item(w.name, torch.tensor(ids or [w.bos_id]))], w, m) for ids in row_ids]
                    ucache, _ = model.prefill(uprompts, max_len=max(len(p[0].payload) for p in uprompts))
                x = model.sample_span(cache, m, tuple(shapes[m]), _per_modality(sampler, m, "sampler"),
                                      guidance_scale=guidance, generator=g, uncond_cache=ucache)
                model.commit_span(x, cache, m, rows=rows)
                a = model.adapter(m)
                for b in torch.nonzero(rows).flatten().tolist():
                    _flush(out[b], pieces[b], w)
                    out[b].segments.append((m, a.decode(x[b].cpu())))
                    spans_done[b] += 1
                    row_ids[b] += [w.begin_marker(m), w.end_marker(m)]
                nxt = torch.where(rows, torch.full((B,), w.end_marker(m)), torch.full((B,), w.eos_id))
                after = model.token_step(nxt, cache, w.name, rows=rows)
                logits = torch.where(rows.to(after.device)[:, None], after, logits)  # others keep theirs
            continue
        if steps >= max_new_tokens or cache.length + 1 > cap:
            reason = "max_new_tokens" if steps >= max_new_tokens else "max_len"
            for b in range(B):
                if not done[b]:
                    done[b], out[b].stop = True, reason
            break
        cache.reserve(1)
        tok = _pick(logits, temperature, top_k, g).cpu()
        tok = torch.where(done, torch.full_like(tok, w.eos_id), tok)
        for b in range(B):
            if done[b]:
                continue
            t = int(tok[b])
            out[b].new_tokens += 1
            if t == w.eos_id:
                done[b], out[b].stop = True, "eos"
            elif t in begin and spans_done[b] < max_spans:
                want[b] = begin[t]
            else:
                pieces[b].append(t)
                row_ids[b].append(t)
        active = ~done | torch.tensor([m is not None for m in want])
        logits = model.token_step(tok, cache, w.name, rows=active)
        steps += 1
    for b in range(B):
        _flush(out[b], pieces[b], w)
    return out


def _flush(gen: Generated, ids: list[int], w: Adapter) -> None:
    if ids:
        gen.segments.append((w.name, w.decode(torch.tensor(ids))))
        ids.clear()


@torch.no_grad()
def generate_span(model: FusionModel, prompts: Sequence[Prompt], modality: str, shape: Sequence[int],
                  sampler: Sampler, guidance: float | None = None, seed: int = 0, writer: str | None = None,
                  decode: bool = True) -> Tensor:
    """A span of ``modality`` after each prompt (text → image, text → series): the begin marker
    is appended where missing, the prompts are encoded once into the KV cache and every
    denoising step attends to them. With ``guidance``, conditional and unconditional prompts
    (the writer's ``drop_condition``) run in one batched pass.

    Returns:
        ``(B, ...)``: decoded to user units (``decode``) or payloads.
    """
    model.eval()
    w = writer_of(model, writer, modality)
    cond = [_with_begin(_prompt_items(model, p, w), w, modality) for p in prompts]
    rows = cond + ([_uncond(c, w, modality) for c in cond] if guidance is not None else [])
    cache, _ = model.prefill(rows, max_len=max(_positions(model, r) for r in rows))
    x = model.sample_span(cache, modality, tuple(shape), sampler, guidance_scale=guidance,
                          generator=torch.Generator().manual_seed(seed))
    return _decode(model.adapter(modality), x.cpu()) if decode else x.cpu()


@torch.no_grad()
def caption(model: FusionModel, modality: str, raws, prompt: str = "", max_new_tokens: int = 40,
            writer: str | None = None, temperature: float = 0.0, top_k: int | None = None,
            seed: int = 0) -> list[str]:
    """The writer's text after each item of ``modality`` (captioning): the prompt is
    ``<bos> <boi:M>`` item ``<eoi:M>`` (+ optional ``prompt`` text), as in training examples
    that put the item first.

    Args:
        raws: the items in user units, a batch (first axis) or a list.
    """
    w = writer_of(model, writer, modality)
    prompts = [[(modality, raw)] + ([prompt] if prompt else []) for raw in raws]
    gens = generate(model, prompts, writer=w.name, max_new_tokens=max_new_tokens, max_spans=0,
                    temperature=temperature, top_k=top_k, seed=seed)
    return [g.text for g in gens]


# -- spans on their own (TransFusion) or after prompts -----------------------------------------

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


__all__ = ["Generated", "SampleArgs", "caption", "forecast", "generate", "generate_span", "impute",
           "interleave", "sample", "sample_long", "writer_of"]
