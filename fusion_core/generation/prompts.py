"""Prompts and the writer: the discrete adapter that writes text and marks other modalities'
spans (``begin_marker(M)``, ``end_marker(M)``, ``bos_id``, ``eos_id``, ``encode(str)``,
``decode(ids)``, ``drop_condition(ids)``), and :func:`interleave`, which lays a user example out
as Transfusion does."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..adapter import Adapter
from ..model import FusionModel, Item

Prompt = Any  # str | list[Item] | list[str | tuple[str, raw] | Item]


def writer_of(model: FusionModel, writer: str | None = None, for_modality: str | None = None) -> Adapter:
    """The discrete adapter that writes text and marks spans (``writer``, or the only discrete
    adapter that has a begin marker for ``for_modality``).

    Raises:
        ValueError: an unknown modality or writer; no writer (or several) that marks
            ``for_modality`` — the message names the writers and the modalities they mark.
    """
    if for_modality is not None:
        model.adapter(for_modality)  # an unknown name is said as such, with the known ones
    if writer is not None:
        a = model.adapter(writer)
        if a.kind != "discrete" or not hasattr(a, "begin_marker"):
            raise ValueError(f"writer {writer!r} must be a discrete adapter with begin/end markers")
        if for_modality is not None and a.begin_marker(for_modality) is None:
            raise ValueError(f"writer {writer!r} has no markers for {for_modality!r} ({_marks(model, a)})")
        return a
    writers = [a for a in model.adapters.values() if a.kind == "discrete" and hasattr(a, "begin_marker")]
    cands = [a for a in writers if for_modality is None or a.begin_marker(for_modality) is not None]
    if len(cands) == 1:
        return cands[0]
    if not writers:
        raise ValueError(f"this model has no writer (a discrete adapter with begin/end markers, such as a "
                         f"TextAdapter); its modalities: {sorted(model.adapters)}")
    if not cands:
        marks = "; ".join(f"{a.name!r}: {_marks(model, a)}" for a in writers)
        raise ValueError(f"no writer has markers for {for_modality!r} ({marks}): build the writer with "
                         f"markers=(..., {for_modality!r})")
    raise ValueError(f"several writers mark {for_modality or 'spans'}: {[a.name for a in cands]}; pass writer=NAME")


def _marks(model: FusionModel, w: Adapter) -> str:
    marked = [m for m in model.adapters if m != w.name and w.begin_marker(m) is not None]
    return f"it marks {marked}" if marked else "it marks none"


def interleave(model: FusionModel, segments: Sequence, writer: str | None = None, bos: bool = True,
               eos: bool = True) -> list[Item]:
    """A user example → Items in Transfusion's layout: the writer's text, and each other
    modality's span between its begin and end markers (``<bos> caption <boi:M>``, span,
    ``<eoi:M> <eos>``).

    Args:
        segments: ``str`` (the writer's text), ``(modality, raw)`` (encoded by that adapter) or a
            ready :class:`~fusion_core.model.Item` (taken as is, no markers added).
        bos, eos: open and close the example with the writer's ``<bos>`` / ``<eos>``.

    Raises:
        ValueError: an empty or non-list example, a segment of another type, an unknown modality
            or one the writer has no markers for, a raw item the modality's ``encode`` rejects.
    """
    if isinstance(segments, str) or not isinstance(segments, Sequence) or not len(segments):
        raise ValueError(f"an example (a prompt) is a str or a non-empty list of segments — str, (modality, raw) "
                         f"or Item — got {type(segments).__name__} {segments!r:.40}")
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


def _pick(logits: Tensor, temperature: float, top_k: int | None, g) -> Tensor:
    """One token per row of ``logits`` ``(n, V)``: greedy, or sampled with ``g`` (a generator, or
    one per row)."""
    if temperature <= 0:
        return logits.argmax(-1)
    if isinstance(g, list):
        return torch.cat([_pick(logits[i : i + 1], temperature, top_k, gi) for i, gi in enumerate(g)])
    logits = logits / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.float().softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=g)[:, 0].to(logits.device)
