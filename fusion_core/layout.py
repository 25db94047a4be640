"""Sequence layout: the one description of a (packed) batch that every other part reads.

Transfusion (Zhou et al. 2024, sec. 3.1) lays text tokens and image patches out in one sequence;
TransFusion (Sikder et al. 2023) is the special case of one bidirectional continuous span. A layout
records, for every position of a ``(B, L)`` batch: its modality, its bidirectional span (or none),
its document (several examples can be packed into one row), its RoPE position and whether it is
padding. Placements map each input segment to its positions, so backbone outputs can be routed
back to the segment (and adapter) they belong to.

Letters used in shapes: B batch rows, L row length, N positions of one modality, D model width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import Tensor

KINDS = ("discrete", "continuous")
ATTENTIONS = ("causal", "bidirectional")


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """Host → device copy that does not wait for the GPU: a plain ``.to("cuda")`` from pageable
    memory synchronizes the stream, so every small copy in a training step would stall the CPU
    until all queued kernels finish. Staged through pinned memory and non-blocking instead."""
    device = torch.device(device)
    if t.device == device or (device.type == t.device.type and device.index is None):
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def cat_to_device(tensors: Sequence[Tensor], device: torch.device | str) -> list[Tensor]:
    """Several host tensors of one dtype moved in one :func:`to_device` copy, returned as views
    of the same shapes."""
    if not tensors or all(t.device == torch.device(device) for t in tensors):
        return list(tensors)
    flat = to_device(torch.cat([t.reshape(-1) for t in tensors]), device)
    return [part.view(t.shape) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


class ModalityLike(Protocol):
    """What the layout needs to know of a modality (adapters satisfy this)."""

    name: str
    kind: str  # "discrete" | "continuous"
    attention: str  # "causal" | "bidirectional" inside one segment


@dataclass(frozen=True)
class ModalitySpec:
    """A plain :class:`ModalityLike`, for building layouts without adapters."""

    name: str
    kind: str
    attention: str = "causal"

    def __post_init__(self):
        check_modality(self)


def check_modality(m: ModalityLike) -> None:
    """Raise ``ValueError`` if a modality declares an unknown kind or attention."""
    if m.kind not in KINDS:
        raise ValueError(f"modality {m.name!r}: kind must be one of {KINDS}, got {m.kind!r}")
    if m.attention not in ATTENTIONS:
        raise ValueError(
            f"modality {m.name!r}: attention must be one of {ATTENTIONS}, got {m.attention!r}"
        )


@dataclass(frozen=True)
class Segment:
    """A run of positions of one modality inside an example.

    Args:
        modality: name of a registered modality.
        length: number of backbone positions the segment occupies.
        data: optional payload, checked against the modality's kind (integer ids for discrete
            modalities, floating point for continuous ones).
    """

    modality: str
    length: int
    data: Any = None

    @classmethod
    def of(cls, modality: str, data: Tensor) -> "Segment":
        """A discrete segment whose length is the number of ids in ``data``."""
        return cls(modality, int(torch.as_tensor(data).numel()), data)


@dataclass(frozen=True)
class Placement:
    """Where segment ``segment`` of example ``example`` landed: row ``row``, columns
    ``start : start + length``; ``span`` is its bidirectional span id in that row, or -1."""

    example: int
    segment: int
    modality: str
    row: int
    start: int
    length: int
    span: int

    @property
    def stop(self) -> int:
        return self.start + self.length


@dataclass
class SequenceLayout:
    """Per-position description of a ``(B, L)`` batch.

    Attributes:
        modality: ``(B, L)`` long, index into ``modality_names``; -1 for padding.
        span: ``(B, L)`` long, bidirectional span id (unique within a row); -1 for none.
        document: ``(B, L)`` long, document id (unique within a row); -1 for padding.
        position: ``(B, L)`` long, RoPE position, restarting at 0 for each document.
        modality_names: names indexed by ``modality``.
        placements: one per input segment, in (example, segment) order.
    """

    modality: Tensor
    span: Tensor
    document: Tensor
    position: Tensor
    modality_names: tuple[str, ...]
    placements: list[Placement] = field(default_factory=list)

    # -- shape -----------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.modality.shape[0]

    @property
    def seq_len(self) -> int:
        return self.modality.shape[1]

    @property
    def padding(self) -> Tensor:
        """``(B, L)`` bool, True at padding."""
        return self.document < 0

    @property
    def device(self) -> torch.device:
        return self.modality.device

    def to(self, device) -> "SequenceLayout":
        """The layout on ``device``, in one copy; a device layout keeps its host copy
        (:attr:`host`), so questions about the structure never wait for the GPU."""
        device = torch.device(device)
        host = self.host
        if device.type == "cpu":
            return host
        modality, span, document, position = to_device(
            torch.stack([host.modality, host.span, host.document, host.position]), device).unbind(0)
        out = SequenceLayout(modality, span, document, position, self.modality_names, self.placements)
        out.__dict__["host"] = host
        return out

    @cached_property
    def host(self) -> "SequenceLayout":
        """This layout on the CPU (itself when it is there)."""
        if self.device.type == "cpu":
            return self
        return SequenceLayout(self.modality.cpu(), self.span.cpu(), self.document.cpu(),
                              self.position.cpu(), self.modality_names, self.placements)

    # -- attention structure ---------------------------------------------------------------
    @cached_property
    def attention_kind(self) -> str:
        """``"causal"`` or ``"full"`` when a fast path (no explicit mask) is exact, else ``"mixed"``.

        Causal: one document per row, no bidirectional span longer than one position, padding only
        at the end of a row (padding queries are discarded, and causal queries never reach later
        keys). Full: one document and one bidirectional span covering every row, no padding.
        """
        h = self.host  # decided on the CPU: no GPU sync
        pad = h.padding
        one_doc = bool(((h.document == 0) | pad).all())
        # padding only as a suffix: once padding starts, it never stops
        suffix_pad = bool((pad.int().diff(dim=1) >= 0).all()) if self.seq_len > 1 else True
        if not (one_doc and suffix_pad):
            return "mixed"
        span_lengths = [p.length for p in self.placements if p.span >= 0]
        if not span_lengths or max(span_lengths) <= 1:
            return "causal"
        if not bool(pad.any()) and bool((h.span == 0).all()):
            return "full"
        return "mixed"

    # -- routing ---------------------------------------------------------------------------
    def placements_of(self, modality: str) -> list[Placement]:
        return [p for p in self.placements if p.modality == modality]

    def index(self, modality: str) -> Tensor:
        """``(N,)`` flat indices into ``B * L`` of every position of ``modality``, segment by
        segment in placement order."""
        cache = self.__dict__.setdefault("_index_cache", {})
        if modality not in cache:
            L = self.seq_len
            parts = [
                torch.arange(p.start, p.stop) + p.row * L for p in self.placements_of(modality)
            ]
            idx = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
            cache[modality] = to_device(idx, self.device)
        return cache[modality]

    def gather(self, hidden: Tensor, modality: str) -> Tensor:
        """``(B, L, D)`` → ``(N, D)``: the positions of ``modality`` in placement order."""
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.index(modality))

    def scatter(self, values: Tensor, modality: str, out: Tensor) -> Tensor:
        """Write ``(N, D)`` values of ``modality`` into ``out`` ``(B, L, D)`` (out of place)."""
        flat = out.reshape(-1, out.shape[-1]).index_copy(0, self.index(modality), values)
        return flat.view_as(out)

    def split(self, values: Tensor, modality: str) -> list[Tensor]:
        """Split ``(N, ...)`` values of ``modality`` into one tensor per segment."""
        return list(values.split([p.length for p in self.placements_of(modality)]))


def build_layout(
    examples: Sequence[Sequence[Segment]],
    modalities: Mapping[str, ModalityLike],
    max_len: int | None = None,
    pack: bool = False,
    pad_to_multiple: int = 1,
    device: torch.device | str | None = None,
) -> SequenceLayout:
    """Lay a list of examples out as a ``(B, L)`` batch.

    Each example is one document: its segments are laid out in order and never split. Without
    ``pack`` every example gets its own row and rows are padded to the longest. With ``pack``,
    examples are placed first-fit into rows of ``max_len`` positions (documents in one row never
    attend to each other) and every row is padded to ``max_len``.

    Args:
        examples: list of examples, each a non-empty list of :class:`Segment`.
        modalities: name → modality (kind and in-segment attention).
        max_len: maximum row length; required with ``pack``.
        pack: pack several examples per row.
        pad_to_multiple: round the row length up to a multiple of this (kernels like 8 or 128).
        device: where the layout tensors live.

    Raises:
        ValueError: empty example or segment, example longer than ``max_len``, unknown modality,
            payload dtype that does not match the modality's kind. The message names the example
            and segment.
    """
    if pack and max_len is None:
        raise ValueError("build_layout(pack=True) needs max_len (the row length to pack into)")
    if not examples:
        raise ValueError("build_layout: no examples given (expected a non-empty list)")
    lengths = [_check_example(i, ex, modalities, max_len) for i, ex in enumerate(examples)]

    # assign examples to rows
    rows: list[list[int]] = []
    fill: list[int] = []
    for i, n in enumerate(lengths):
        if pack:
            for r, used in enumerate(fill):
                if used + n <= max_len:
                    rows[r].append(i)
                    fill[r] += n
                    break
            else:
                rows.append([i])
                fill.append(n)
        else:
            rows.append([i])
            fill.append(n)

    L = max_len if pack else max(fill)
    L = -(-L // pad_to_multiple) * pad_to_multiple
    B = len(rows)
    names = tuple(modalities)
    modality = torch.full((B, L), -1, dtype=torch.long)
    span = torch.full((B, L), -1, dtype=torch.long)
    document = torch.full((B, L), -1, dtype=torch.long)
    position = torch.zeros((B, L), dtype=torch.long)
    placements: list[Placement] = []
    for r, members in enumerate(rows):
        col, next_span = 0, 0
        for doc, i in enumerate(members):
            position[r, col : col + lengths[i]] = torch.arange(lengths[i])
            document[r, col : col + lengths[i]] = doc
            for j, seg in enumerate(examples[i]):
                stop = col + seg.length
                modality[r, col:stop] = names.index(seg.modality)
                sid = -1
                if modalities[seg.modality].attention == "bidirectional":
                    sid, next_span = next_span, next_span + 1
                    span[r, col:stop] = sid
                placements.append(Placement(i, j, seg.modality, r, col, seg.length, sid))
                col = stop
    placements.sort(key=lambda p: (p.example, p.segment))
    layout = SequenceLayout(modality, span, document, position, names, placements)
    return layout.to(device) if device is not None else layout


def _check_example(i: int, example, modalities: Mapping[str, ModalityLike], max_len) -> int:
    if isinstance(example, Segment) or not isinstance(example, (list, tuple)):
        raise ValueError(f"example {i}: expected a list of Segment, got {type(example).__name__}")
    if len(example) == 0:
        raise ValueError(f"example {i}: empty (expected at least one segment)")
    total = 0
    for j, seg in enumerate(example):
        where = f"example {i}, segment {j}"
        if not isinstance(seg, Segment):
            raise ValueError(f"{where}: expected a Segment, got {type(seg).__name__}")
        if seg.modality not in modalities:
            raise ValueError(
                f"{where}: unknown modality {seg.modality!r}; known: {sorted(modalities)}"
            )
        if not isinstance(seg.length, int) or seg.length < 1:
            raise ValueError(f"{where}: length must be a positive int, got {seg.length!r}")
        kind = modalities[seg.modality].kind
        if isinstance(seg.data, Tensor):
            if kind == "discrete":
                if seg.data.dtype.is_floating_point or seg.data.dtype.is_complex or \
                        seg.data.dtype == torch.bool:
                    raise ValueError(
                        f"{where}: modality {seg.modality!r} is discrete and needs integer ids, "
                        f"got dtype {seg.data.dtype}"
                    )
                if seg.data.numel() != seg.length:
                    raise ValueError(
                        f"{where}: {seg.data.numel()} ids but length {seg.length}"
                    )
            elif not seg.data.dtype.is_floating_point:
                raise ValueError(
                    f"{where}: modality {seg.modality!r} is continuous and needs floating point "
                    f"data, got dtype {seg.data.dtype}"
                )
        total += seg.length
    if max_len is not None and total > max_len:
        raise ValueError(f"example {i}: {total} positions exceed max_len={max_len}")
    return total
