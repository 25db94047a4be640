"""Transfusion's inference (sec. 3.3): text and spans in one sequence with a KV cache —
:func:`generate` (mode switching), :func:`generate_span` (a span per prompt, batched CFG) and
:func:`caption` (text after an item)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from tqdm.auto import tqdm

from ..adapter import Adapter
from ..diffusion import Guidance, Sampler
from ..model import FusionModel, Item
from ..validation import check_finite_number, check_int
from .args import Generated
from .checks import (bound_sampler, check_guidance, check_progress, check_prompts, check_span_shape,
                     continuous_adapter, eval_mode, make_generator, named_adapter)
from .prompts import (Prompt, _pick, _positions, _prompt_items, _span_positions, _uncond, _with_begin, _writer_ids,
                      writer_of)
from .spans import _decode


@torch.no_grad()
def generate(model: FusionModel, prompts: Sequence[Prompt], sampler: Sampler | Mapping[str, Sampler] | None = None,
             shapes: Mapping[str, Sequence[int]] | None = None, *, writer: str | None = None,
             guidance: float | Guidance | None = None, max_new_tokens: int = 64, max_len: int | None = None,
             temperature: float = 0.0, top_k: int | None = None, force: str | None = None,
             max_spans: int = 1, seed: int = 0, generator: torch.Generator | None = None,
             progress: bool = False) -> list[Generated]:
    """Continue each prompt: text until the writer's ``<eos>`` or ``max_new_tokens``; a span of
    modality M whenever a row emits ``<boi:M>`` (at most ``max_spans`` spans per row) or its
    prompt ends with it. A continuous M is sampled against the cached prefix and committed clean;
    a discrete M (one with an ``end_token``) is written token by token with M's head until M's
    end token, then the writer's ``<eoi:M>`` is appended and the writer resumes.

    Args:
        prompts: per row, a string, a list of Items, or a list of segments (see :func:`interleave`).
        sampler: the sampler of every continuous span, or one per modality.
        shapes: per continuous modality, the payload shape of a span it draws, or a list of one
            shape per row (spans of different lengths: a pen stroke of 12 points in one row,
            of 20 in the next); a begin marker of a continuous modality not named here is
            written as an ordinary token.
        writer: the discrete adapter that writes (default: the only one with markers).
        guidance: classifier-free guidance for continuous spans (the unconditional branch is the
            writer's ``drop_condition`` of the row's text): a scale, a
            :class:`~fusion_core.diffusion.Guidance` (scale, interval, rescale) or None = off.
        max_new_tokens: tokens each row may write, in any discrete modality (continuous spans
            do not count).
        max_len: a cap on each row's positions (prompt, text and spans); default none: the KV
            cache grows as needed and ``max_new_tokens`` is always honoured. A row that reaches
            the cap ends early and :attr:`Generated.stop` says ``"max_len"``.
        force: start every row with a span of this modality.
        seed, generator: the span noise and token sampling; ``generator`` (used and advanced)
            wins over ``seed``. A list of one generator per row makes each row's draws depend on
            its own generator only: a prompt generates the same alone or in any batch.
        progress: a progress bar over the tokens written.

    Returns:
        One :class:`Generated` per prompt. The model is left in the train/eval mode it was in.

    Raises:
        ValueError: unknown modality names; a shape a modality's adapter does not take; a sampler
            built for another modality's diffusion; negative or non-finite numbers.
        TypeError: a bare string for ``prompts`` (one row per character), a prompt of another type.
    """
    prompts = check_prompts(prompts)
    with eval_mode(model):
        return _generate(model, prompts, sampler, shapes, writer, check_guidance(guidance),
                         check_int("max_new_tokens", max_new_tokens, low=0), max_len,
                         check_finite_number("temperature", temperature, low=0), top_k, force,
                         check_int("max_spans", max_spans, low=0), make_generator(generator, seed, per_row=True),
                         check_progress(progress))


def _generate(model, prompts, sampler, shapes, writer, guidance, max_new_tokens, max_len, temperature, top_k,
              force, max_spans, g, progress) -> list[Generated]:
    if max_len is not None:
        check_int("max_len", max_len, low=1)
    if top_k is not None:
        check_int("top_k", top_k, low=0)
    w = writer_of(model, writer)
    items = [_prompt_items(model, p, w) for p in prompts]
    if not items:
        return []
    shapes = dict(shapes or {})
    for m in list(shapes):
        continuous_adapter(model, m, "generate (shapes)")
        if w.begin_marker(m) is None:
            raise ValueError(f"shapes names {m!r}, which writer {w.name!r} has no markers for")
        per_row = isinstance(shapes[m], list) and shapes[m] and all(isinstance(x, (tuple, list)) for x in shapes[m])
        if per_row:  # variable-length spans: the caller gives each row's shape
            if len(shapes[m]) != len(items):
                raise ValueError(f"shapes[{m!r}] gives {len(shapes[m])} shapes for {len(items)} prompts: one per row")
            shapes[m] = [check_span_shape(model, m, x, f"shapes[{m!r}][{i}]") for i, x in enumerate(shapes[m])]
        else:
            shapes[m] = check_span_shape(model, m, shapes[m], f"shapes[{m!r}]")
    samplers = {m: bound_sampler(model, m, sampler) for m in shapes}
    if isinstance(g, list) and len(g) != len(items):
        raise ValueError(f"{len(g)} generators for {len(items)} prompts: give one per row (or one for all)")
    spans = {w.begin_marker(m): m for m in shapes}  # continuous modalities given a shape
    spans.update({w.begin_marker(m): m for m, a in model.adapters.items()  # discrete ones that can end
                  if m != w.name and a.kind == "discrete" and a.end_token is not None
                  and w.begin_marker(m) is not None})
    if force is not None:
        if force not in spans.values():
            raise ValueError(f"force={force!r}: not a modality this call can draw (a continuous one needs "
                             f"its shape in shapes; a discrete one an end_token); can draw {sorted(spans.values())}")
        items = [_with_begin(it, w, force) for it in items]
    longest = max(_positions(model, it) for it in items)
    if max_len is not None and longest > max_len:
        raise ValueError(f"a prompt of {longest} positions exceeds max_len={max_len}")
    cap = max_len if max_len is not None else float("inf")
    B = len(items)
    bar = tqdm(total=max_new_tokens, disable=not progress, desc="generate", leave=False)
    cache, last = model.prefill(items, max_len=longest + max_new_tokens + 1)
    out = [Generated(writer=w.name) for _ in range(B)]
    pieces: list[list[int]] = [[] for _ in range(B)]
    row_ids = [_writer_ids(it, w).tolist() for it in items]
    spans_done = [0] * B
    done = [False] * B
    want: list[str | None] = [None] * B  # a continuous span this row asked for
    mode = [w.name] * B  # the discrete modality writing in each row
    for b, it in enumerate(items):  # a prompt that ends with <boi:M> asks for a span of M at once
        if max_spans > 0 and it[-1].modality == w.name:
            m = spans.get(int(it[-1].payload.reshape(-1)[-1]))
            if m is not None and model.adapter(m).kind == "continuous":
                want[b] = m
            elif m is not None:
                mode[b] = m
    logits = [model.adapter(mode[b]).head(last[b : b + 1], None)[0] for b in range(B)]
    steps = 0
    while not all(done):
        waiting = sorted({m for b, m in enumerate(want) if m is not None and not done[b]})
        if waiting:  # diffusion mode, one modality at a time, for the rows that asked for it
            for m in waiting:
                asking = [b for b in range(B) if want[b] == m and not done[b]]
                want = [None if b in asking else want[b] for b in range(B)]
                by_shape: dict[tuple, list[int]] = {}  # rows drawing a span of one shape draw together
                for b in asking:
                    by_shape.setdefault(shapes[m][b] if isinstance(shapes[m], list) else shapes[m], []).append(b)
                for shape, group in by_shape.items():
                    rows = torch.tensor([b in group for b in range(B)])
                    need = _span_positions(model, m, shape) + 1  # the span and its end marker
                    if cache.length + need > cap:
                        for b in group:
                            done[b], out[b].stop = True, "max_len"
                        continue
                    cache.reserve(need)
                    ucache = None
                    if guidance is not None:
                        uprompts = [_uncond([Item(w.name, torch.tensor(ids or [w.bos_id]))], w, m) for ids in row_ids]
                        ucache, _ = model.prefill(uprompts, max_len=max(len(p[0].payload) for p in uprompts))
                    # with one generator per row, a row's noise comes from its own generator only
                    gens = [g[b] if b in group else torch.Generator() for b in range(B)] if isinstance(g, list) else g
                    x = model.sample_span(cache, m, shape, samplers[m], guidance_scale=guidance, generator=gens,
                                          uncond_cache=ucache)
                    model.commit_span(x, cache, m, rows=rows)
                    a = model.adapter(m)
                    for b in group:
                        _flush(out[b], pieces[b], w.name, w)
                        out[b].segments.append((m, a.decode(x[b].cpu())))
                        spans_done[b] += 1
                        row_ids[b] += [w.begin_marker(m), w.end_marker(m)]
                    nxt = torch.where(rows, torch.full((B,), w.end_marker(m)), torch.full((B,), w.eos_id))
                    after = model.token_step(nxt, cache, w.name, rows=rows)
                    for b in group:  # others keep theirs
                        logits[b] = after[b]
            continue
        if steps >= max_new_tokens or cache.length + 1 > cap:
            reason = "max_new_tokens" if steps >= max_new_tokens else "max_len"
            for b in range(B):
                if not done[b]:
                    done[b], out[b].stop = True, reason
            break
        feeds: dict[tuple[str, str], dict[int, int]] = {}  # (embedded as, scored by) → row → token
        groups: dict[str, list[int]] = {}  # the rows of each mode as this step starts: a row that
        for b in range(B):  # leaves a span below is stepped once, not again under its new mode
            if not done[b]:
                groups.setdefault(mode[b], []).append(b)
        for name, rows_m in groups.items():
            row_g = [g[b] for b in rows_m] if isinstance(g, list) else g
            picked = _pick(torch.stack([logits[b] for b in rows_m]), temperature, top_k, row_g).cpu()
            for b, t in zip(rows_m, picked.tolist()):
                out[b].new_tokens += 1
                feed = _advance(model, w, b, t, mode, pieces, row_ids, spans, spans_done, max_spans, want, out)
                if feed is None:
                    done[b], out[b].stop = True, "eos"
                else:
                    feeds.setdefault(feed[:2], {})[b] = feed[2]
        cache.reserve(len(feeds))  # each kind below appends one position (padding for the other rows)
        for (embed_as, head), toks in feeds.items():  # one cached step per kind of input and head
            ids = torch.tensor([toks.get(b, 0) for b in range(B)])
            rows = torch.tensor([b in toks for b in range(B)])
            after = model.token_step(ids, cache, embed_as, rows=rows, head=head)
            for b in toks:
                logits[b] = after[b]
        steps += 1
        bar.update(1)
    bar.close()
    for b in range(B):
        _flush(out[b], pieces[b], mode[b], model.adapter(mode[b]))
    return out


def _advance(model: FusionModel, w: Adapter, b: int, t: int, mode: list[str], pieces: list[list[int]],
             row_ids: list[list[int]], spans: dict[int, str], spans_done: list[int], max_spans: int,
             want: list, out: list[Generated]) -> tuple[str, str, int] | None:
    """Row ``b`` picked token ``t`` in its mode: what to feed the model next as
    ``(embedded as, scored by, token)``, or None when the row ends (``<eos>``)."""
    if mode[b] != w.name:  # inside a span of a discrete modality
        m = model.adapter(mode[b])
        if t == m.end_token:  # the span ends itself: the writer closes it
            _flush(out[b], pieces[b], m.name, m)
            spans_done[b] += 1
            row_ids[b] += [w.begin_marker(m.name), w.end_marker(m.name)]
            mode[b] = w.name
            return w.name, w.name, w.end_marker(m.name)
        pieces[b].append(t)
        return m.name, m.name, t
    if t == w.eos_id:
        return None
    m = spans.get(t) if spans_done[b] < max_spans else None
    if m is not None and model.adapter(m).kind == "continuous":
        want[b] = m
        return w.name, w.name, t
    if m is not None:  # the marker opens a discrete span: its head scores the next position
        _flush(out[b], pieces[b], w.name, w)
        mode[b] = m
        return w.name, m, t
    pieces[b].append(t)
    row_ids[b].append(t)
    return w.name, w.name, t


def _flush(gen: Generated, ids: list[int], name: str, adapter: Adapter) -> None:
    if ids:
        gen.segments.append((name, adapter.decode(torch.tensor(ids))))
        ids.clear()


@torch.no_grad()
def generate_span(model: FusionModel, prompts: Sequence[Prompt], modality: str, shape: Sequence[int],
                  sampler: Sampler | Mapping[str, Sampler] | Any, guidance: float | Guidance | None = None,
                  seed: int = 0,
                  writer: str | None = None, decode: bool = True, *, generator: torch.Generator | None = None,
                  progress: bool = False) -> Tensor:
    """A span of ``modality`` after each prompt (text → image, text → series): the begin marker
    is appended where missing, the prompts are encoded once into the KV cache and every
    denoising step attends to them. With ``guidance``, conditional and unconditional prompts
    (the writer's ``drop_condition``) run in one batched pass.

    Args:
        sampler: a :class:`Sampler` built for ``model.diffusion[modality]``, a
            :class:`SampleArgs`, or a mapping of either per modality.
        seed, generator: the noise; ``generator`` (used and advanced) wins over ``seed``.
        progress: a progress bar over the denoising steps.

    Returns:
        ``(B, ...)``: decoded to user units (``decode``) or payloads.

    Raises:
        ValueError: an unknown or discrete modality; a shape the adapter does not take; a writer
            without markers for ``modality``; a sampler of another diffusion; ``guidance < 0``.
        TypeError: a bare string for ``prompts``.
    """
    prompts = check_prompts(prompts)
    a = continuous_adapter(model, modality, "generate_span")
    shape = check_span_shape(model, modality, shape)
    sampler = bound_sampler(model, modality, sampler)
    guidance = check_guidance(guidance)
    g = make_generator(generator, seed)
    with eval_mode(model):
        w = writer_of(model, writer, modality)
        cond = [_with_begin(_prompt_items(model, p, w), w, modality) for p in prompts]
        if not cond:
            return torch.zeros(0, *shape)
        rows = cond + ([_uncond(c, w, modality) for c in cond] if guidance is not None else [])
        cache, _ = model.prefill(rows, max_len=max(_positions(model, r) for r in rows))
        x = model.sample_span(cache, modality, shape, sampler, guidance_scale=guidance, generator=g,
                              progress=check_progress(progress))
    return _decode(a, x.cpu()) if decode else x.cpu()


@torch.no_grad()
def caption(model: FusionModel, modality: str, raws, prompt: str = "", max_new_tokens: int = 40,
            writer: str | None = None, temperature: float = 0.0, top_k: int | None = None,
            seed: int = 0, *, generator: torch.Generator | None = None, progress: bool = False) -> list[str]:
    """The writer's text after each item of ``modality`` (captioning): the prompt is
    ``<bos> <boi:M>`` item ``<eoi:M>`` (+ optional ``prompt`` text), as in training examples
    that put the item first.

    Args:
        raws: the items in user units, a batch (first axis) or a list.

    Raises:
        ValueError: an unknown modality, a writer without markers for it, items its adapter's
            ``encode`` rejects (named by index).
        TypeError: ``raws`` a bare string, ``prompt`` not a string.
    """
    named_adapter(model, modality)
    if isinstance(raws, (str, bytes)) or raws is None:
        raise TypeError(f"raws is a batch or a list of {modality!r} items, got {type(raws).__name__}")
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    w = writer_of(model, writer, modality)
    a = model.adapter(modality)
    items = list(raws)
    for i, raw in enumerate(items):  # what a wrong item is, said with its index, before any decoding
        try:
            a.encode(raw)
        except ValueError as e:
            raise ValueError(f"raws[{i}]: {e}") from None
    prompts = [[(modality, raw)] + ([prompt] if prompt else []) for raw in items]
    gens = generate(model, prompts, writer=w.name, max_new_tokens=max_new_tokens, max_spans=0,
                    temperature=temperature, top_k=top_k, seed=seed, generator=generator, progress=progress)
    return [g.text for g in gens]
