"""Transfusion's inference (sec. 3.3): text and spans in one sequence with a KV cache —
:func:`generate` (mode switching), :func:`generate_span` (a span per prompt, batched CFG) and
:func:`caption` (text after an item)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from ..adapter import Adapter
from ..diffusion import Sampler
from ..model import FusionModel, Item
from .args import Generated
from .prompts import (Prompt, _pick, _per_modality, _positions, _prompt_items, _span_positions, _uncond,
                      _with_begin, _writer_ids, writer_of)
from .spans import _decode


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
