"""The attention rule, written once, and its renderings for each attention backend.

Transfusion (sec. 3.2, Fig. 4): causal attention over the whole sequence, bidirectional attention
among the positions of one image. With packing (several documents per row) and padding, the rule is

    same document  AND  key is not padding  AND  (key <= query  OR  same bidirectional span)

:func:`attention_rule` is that sentence; every rendering below calls it — a dense boolean mask for
SDPA (by broadcasting), a flex-attention ``BlockMask`` (as the ``mask_mod``) and an xformers
additive bias (from the dense mask). Padding queries would have no allowed key at all, which makes
softmax produce NaN; the kernels let a padding query attend to itself (:func:`kernel_rule`), and
their outputs are discarded.

Shapes: B batch, H heads, Q query positions, K key positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import SequenceLayout


def attention_rule(q_doc, k_doc, q_span, k_span, q_idx, k_idx):
    """May query ``q_idx`` attend to key ``k_idx``? Works elementwise on broadcastable tensors.

    ``*_doc`` are document ids (-1 = padding), ``*_span`` bidirectional span ids (-1 = none).
    """
    same_span = (q_span == k_span) & (q_span >= 0)
    return (q_doc == k_doc) & (k_doc >= 0) & ((k_idx <= q_idx) | same_span)


def kernel_rule(q_doc, k_doc, q_span, k_span, q_idx, k_idx):
    """:func:`attention_rule`, plus padding queries attend to themselves (keeps softmax finite)."""
    pad_self = (q_doc < 0) & (q_idx == k_idx)
    return attention_rule(q_doc, k_doc, q_span, k_span, q_idx, k_idx) | pad_self


def dense_mask(document: Tensor, span: Tensor, q_offset: int = 0) -> Tensor:
    """Boolean mask for SDPA. ``document``/``span``: ``(B, K)``; the queries are the last
    ``K - q_offset`` keys (``q_offset`` > 0 when a cached prefix precedes them).

    Returns:
        ``(B, 1, K - q_offset, K)`` bool, True = may attend.
    """
    K = document.shape[1]
    k_idx = torch.arange(K, device=document.device)
    q_idx = k_idx[q_offset:]
    return kernel_rule(
        document[:, None, q_offset:, None],
        document[:, None, None, :],
        span[:, None, q_offset:, None],
        span[:, None, None, :],
        q_idx[:, None],
        k_idx[None, :],
    )


def flex_block_mask(document: Tensor, span: Tensor, block_size: int = 128):
    """A flex-attention ``BlockMask`` from the same rule (its ``mask_mod`` reads the layout).

    The block table is reduced from the dense rule one row at a time (``L x L`` booleans in
    memory at once) instead of through ``create_block_mask``'s vmapped ``mask_mod``, whose
    gathers cost several times more (4.6x at 4 x 4096 on one CPU thread); the result is the same
    table (tests/test_masks.py).
    """
    from torch.nn.attention.flex_attention import BlockMask

    B, L = document.shape
    n = -(-L // block_size)
    partial, full = [], []
    for b in range(B):
        dense = dense_mask(document[b : b + 1], span[b : b + 1])[0, 0]  # L L
        dense = F.pad(dense, (0, n * block_size - L, 0, n * block_size - L))
        blocks = dense.view(n, block_size, n, block_size)
        some, every = blocks.any(dim=3).any(dim=1), blocks.all(dim=3).all(dim=1)
        partial.append(some & ~every)
        full.append(every)

    def table(m: Tensor) -> tuple[Tensor, Tensor]:  # (B, 1, n) counts, (B, 1, n, n) indices first
        m = torch.stack(m)[:, None]
        order = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True)
        return m.sum(-1, dtype=torch.int32), order.to(torch.int32)

    def mask_mod(b, h, q_idx, k_idx):
        return kernel_rule(
            document[b, q_idx], document[b, k_idx], span[b, q_idx], span[b, k_idx], q_idx, k_idx
        )

    return BlockMask.from_kv_blocks(*table(partial), *table(full), BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod, seq_lengths=(L, L))


def xformers_bias(document: Tensor, span: Tensor, n_heads: int, dtype=torch.float32) -> Tensor:
    """An additive bias for ``xformers.ops.memory_efficient_attention``: 0 where the rule allows,
    -inf elsewhere. xformers wants the last dimension's storage aligned to 8 elements, so the
    tensor is cut from a padded one.

    Returns:
        ``(B, H, L, L)`` tensor of ``dtype`` (a view of an 8-aligned allocation).
    """
    B, L = document.shape
    Lp = -(-L // 8) * 8
    bias = torch.zeros(B, n_heads, L, Lp, dtype=dtype, device=document.device)
    allowed = dense_mask(document, span).expand(B, n_heads, L, L)
    bias[..., :L].masked_fill_(~allowed, float("-inf"))
    return bias[..., :L]


@dataclass
class AttentionMask:
    """The mask of one forward pass, shared by every layer; renderings are built on first use.

    ``kind`` is ``"causal"`` / ``"full"`` (fast paths: nothing to build) or ``"mixed"``.
    """

    kind: str
    document: Tensor | None = None  # (B, L)
    span: Tensor | None = None  # (B, L)
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_layout(cls, layout: SequenceLayout) -> "AttentionMask":
        return cls(layout.attention_kind, layout.document, layout.span)

    @classmethod
    def causal(cls) -> "AttentionMask":
        return cls("causal")

    @classmethod
    def full(cls) -> "AttentionMask":
        return cls("full")

    def dense(self) -> Tensor:
        """``(B, 1, L, L)`` bool."""
        if "dense" not in self._cache:
            self._cache["dense"] = dense_mask(self.document, self.span)
        return self._cache["dense"]

    def block_mask(self, block_size: int = 128):
        key = ("flex", block_size)
        if key not in self._cache:
            self._cache[key] = flex_block_mask(self.document, self.span, block_size)
        return self._cache[key]

    def xformers_bias(self, n_heads: int, dtype) -> Tensor:
        key = ("xformers", n_heads, dtype)
        if key not in self._cache:
            self._cache[key] = xformers_bias(self.document, self.span, n_heads, dtype)
        return self._cache[key]
