"""Llama-style transformer backbone with optional adaLN conditioning and a two-mode KV cache.

Transfusion (sec. 3.2; Table 2 sizes): pre-norm RMSNorm, SwiGLU, RoPE, causal attention with
bidirectional attention inside each image. TransFusion (Sikder et al.) is the same stack run with
one bidirectional span. Inputs are embeddings (adapters produce them), outputs hidden states after
the final norm; nothing here knows about tokens or pixels.

Per-position conditioning (adaLN, as in DiT): a vector ``c`` per position produces shift, scale and
gate for each sub-layer, ``h + (1 + gate) * f(norm(h) * (1 + scale) + shift)``. The projection has
no bias, so ``c = 0`` (text positions) is exactly the unconditioned block.

KV cache (for generation): :meth:`Transformer.forward_cached` runs a block of new positions against
the cached prefix. ``block="causal", commit=True`` decodes tokens; ``block="bidirectional",
commit=False`` is one diffusion step over a span (the cache is left untouched); ``commit=True``
with ``block="bidirectional"`` writes the clean span into the cache.

Shapes: B batch, L positions, H heads, Dh head dim, D model width, C conditioning width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import Tensor, nn

from .attention import BACKENDS, attend, sdpa
from .layout import SequenceLayout
from .masks import AttentionMask, dense_mask


@dataclass
class TransformerArgs:
    """Sizes and switches of the backbone.

    Attributes:
        dim: model width D.
        n_layers: number of blocks.
        n_heads: attention heads (``dim`` must divide evenly).
        ffn_dim: SwiGLU hidden width; default ``8/3 * dim`` rounded up to ``ffn_multiple_of``.
        qk_norm: RMS-normalize queries and keys per head (stabilizes mixed-modal training).
        cond_dim: width of the per-position adaLN conditioning vector; 0 turns it off.
        dropout: dropout on each residual branch.
        attn_impl: one of ``auto, sdpa, flex, xformers``.
    """

    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int | None = None
    ffn_multiple_of: int = 64
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    qk_norm: bool = False
    cond_dim: int = 0
    dropout: float = 0.0
    attn_impl: str = "auto"
    init_std: float = 0.02

    def __post_init__(self):
        for key in ("dim", "n_layers", "n_heads", "ffn_multiple_of"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} must be divisible by n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head dim {self.dim // self.n_heads} must be even for RoPE")
        if self.attn_impl not in BACKENDS:
            raise ValueError(f"attn_impl must be one of {BACKENDS}, got {self.attn_impl!r}")
        if self.ffn_dim is not None and self.ffn_dim < 1:
            raise ValueError(f"ffn_dim must be >= 1 or None (8/3 x dim), got {self.ffn_dim}")
        if self.cond_dim < 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"need cond_dim >= 0 and dropout in [0, 1), got {self.cond_dim}, {self.dropout}")
        for key in ("norm_eps", "rope_theta", "init_std"):  # each must be a positive, finite number
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a positive finite number, got {value!r}")
        if self.rope_theta <= 1:
            raise ValueError(f"rope_theta must be > 1 (RoPE's base; 10000 is usual), got {self.rope_theta}")

    @property
    def num_params(self) -> int:
        """The backbone's parameter count, from the sizes alone (nothing is allocated)."""
        D, H, C = self.dim, self.hidden_dim, self.cond_dim
        per_layer = 4 * D * D + 3 * D * H + 2 * D + (2 * self.head_dim if self.qk_norm else 0) + 6 * C * D
        return self.n_layers * per_layer + D + 2 * C * D

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """The SwiGLU width: ``ffn_dim``, or ``8/3 * dim`` rounded up to ``ffn_multiple_of``
        (resolved here, not stored, so a config that changes ``dim`` gets the matching width)."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        m = self.ffn_multiple_of
        return m * -(-int(8 * self.dim / 3) // m)


# Transfusion Table 2 (layers x width x heads) and small sizes that train on a CPU.
PRESETS: dict[str, TransformerArgs] = {
    "tiny": TransformerArgs(dim=64, n_layers=2, n_heads=4),
    "small": TransformerArgs(dim=256, n_layers=6, n_heads=8),
    "transfusion-0.16b": TransformerArgs(dim=768, n_layers=16, n_heads=12),
    "transfusion-0.37b": TransformerArgs(dim=1024, n_layers=24, n_heads=16),
    "transfusion-0.76b": TransformerArgs(dim=1536, n_layers=24, n_heads=24),
    "transfusion-1.4b": TransformerArgs(dim=2048, n_layers=24, n_heads=16),
    "transfusion-7b": TransformerArgs(dim=4096, n_layers=32, n_heads=32),
}


def backbone_args(cfg, **overrides) -> TransformerArgs:
    """The :class:`TransformerArgs` fields of ``cfg`` (a recipe's ``model`` config subclasses
    TransformerArgs and adds its adapters' settings), with ``overrides``."""
    values = {f.name: getattr(cfg, f.name) for f in fields(TransformerArgs)}
    return TransformerArgs(**{**values, **overrides})


def preset(name: str, **overrides) -> TransformerArgs:
    """A copy of a named preset with fields overridden.

    Raises:
        ValueError: an unknown preset name (the message lists them), or overrides the args reject.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown transformer preset {name!r}; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class RotaryEmbedding(nn.Module):
    """RoPE angles for integer positions (rotate-half convention)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``positions`` ``(B, L)`` → cos, sin ``(B, 1, L, Dh/2)``."""
        angles = positions[:, None, :, None].float() * self.inv_freq
        return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``(B, H, L, Dh)`` by the angles of its positions."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: TransformerArgs):
        super().__init__()
        self.n_heads, self.head_dim = args.n_heads, args.head_dim
        self.wqkv = nn.Linear(args.dim, 3 * args.dim, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)
        self.q_norm = RMSNorm(args.head_dim, args.norm_eps) if args.qk_norm else None
        self.k_norm = RMSNorm(args.head_dim, args.norm_eps) if args.qk_norm else None

    def qkv(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = rearrange(self.wqkv(x), "b l (n h d) -> n b h l d", n=3, h=self.n_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, *rope), apply_rope(k, *rope), v


def cached_attention(q: Tensor, k: Tensor, v: Tensor, cache: "KVCache", layer: int, mask: Tensor | None,
                     commit: bool) -> Tensor:
    """Attention of new positions' ``q, k, v`` (``B H n Dh``) over ``layer``'s cached prefix and
    themselves; writes ``k, v`` into the cache when ``commit``."""
    start, n = cache.length, q.shape[2]
    keys = torch.cat([cache.k[layer, :, :, :start], k], dim=2)
    values = torch.cat([cache.v[layer, :, :, :start], v], dim=2)
    if commit:
        cache.k[layer, :, :, start : start + n] = k
        cache.v[layer, :, :, start : start + n] = v
    return sdpa(q, keys, values, attn_mask=mask)


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, args: TransformerArgs):
        super().__init__()
        self.attn_norm = RMSNorm(args.dim, args.norm_eps)
        self.attn = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn = FeedForward(args.dim, args.hidden_dim)
        self.drop = nn.Dropout(args.dropout)
        # adaLN: no bias, zero init → c = 0 is the identity, and training starts there.
        self.modulation = nn.Linear(args.cond_dim, 6 * args.dim, bias=False) if args.cond_dim else None

    def _mod(self, cond: Tensor | None):
        if self.modulation is None or cond is None:
            return (None,) * 6
        return self.modulation(cond).chunk(6, dim=-1)  # each B L D

    compile_kwargs: dict | None = None  # set by Transformer.compile_blocks

    def forward(self, h: Tensor, cond: Tensor | None, rope: tuple[Tensor, Tensor], attend_fn) -> Tensor:
        """``attend_fn(q, k, v) -> B H L Dh`` is the attention itself (masked full-sequence
        attention in training, attention over a KV cache in generation); everything around it
        is :meth:`pre` and :meth:`post`, the parts :meth:`Transformer.compile_blocks` compiles."""
        mods = self._mod(cond)
        pre, post = Block.pre, Block.post
        if self.compile_kwargs is not None:
            pre, post = _compiled(Block.pre, self.compile_kwargs), _compiled(Block.post, self.compile_kwargs)
        q, k, v = pre(self, h, rope, mods)
        return post(self, h, attend_fn(q, k, v), mods)

    def pre(self, h: Tensor, rope: tuple[Tensor, Tensor], mods) -> tuple[Tensor, Tensor, Tensor]:
        """Norm, modulation, QKV projection, RoPE: ``B H L Dh`` each."""
        return self.attn.qkv(_modulate(self.attn_norm(h), mods[0], mods[1]), rope)

    def post(self, h: Tensor, attn_out: Tensor, mods) -> Tensor:
        """Output projection and residual, then the feed-forward sub-layer and its residual."""
        _, _, ga, sm, cm, gm = mods
        h = h + _gate(self.drop(self.attn.wo(rearrange(attn_out, "b h l d -> b l (h d)"))), ga)
        return h + _gate(self.drop(self.ffn(_modulate(self.ffn_norm(h), sm, cm))), gm)


_COMPILED: dict = {}


def _compiled(fn, compile_kwargs: dict):
    """One compiled version of ``fn`` per set of options, shared by every block (the block is
    an argument, so its weights are graph inputs and all layers reuse one graph)."""
    key = (fn, repr(sorted(compile_kwargs.items())))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, **compile_kwargs)
    return _COMPILED[key]


def _modulate(x: Tensor, shift: Tensor | None, scale: Tensor | None) -> Tensor:
    return x if shift is None else x * (1 + scale) + shift


def _gate(x: Tensor, gate: Tensor | None) -> Tensor:
    return x if gate is None else x * (1 + gate)


class Transformer(nn.Module):
    """The backbone: embeddings ``(B, L, D)`` in, hidden states ``(B, L, D)`` out."""

    def __init__(self, args: TransformerArgs):
        super().__init__()
        self.args = args
        self.rope = RotaryEmbedding(args.head_dim, args.rope_theta)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.final_modulation = (
            nn.Linear(args.cond_dim, 2 * args.dim, bias=False) if args.cond_dim else None
        )
        self.reset_parameters()

    activation_checkpointing = False  # set by train.activation_checkpointing

    def compile_blocks(self, **compile_kwargs) -> "Transformer":
        """Compile each block's :meth:`Block.pre` and :meth:`Block.post` in place (regional
        compilation: every block runs the same code on the same shapes, so the graphs are built
        once, not once per layer, and the layer loop is not unrolled). The attention call stays
        outside: SDPA is one kernel already and flex attention is compiled on its own. Used by
        ``train.compile``; ``compile_kwargs`` go to :func:`torch.compile`."""
        for layer in self.layers:
            layer.compile_kwargs = dict(compile_kwargs)
        return self

    def reset_parameters(self):
        std = self.args.init_std
        for name, p in self.named_parameters():
            if p.ndim < 2:
                continue
            if "modulation" in name:
                nn.init.zeros_(p)
            elif name.endswith(("wo.weight", "w2.weight")):  # residual outputs, GPT-2 style
                nn.init.normal_(p, std=std / math.sqrt(2 * self.args.n_layers))
            else:
                nn.init.normal_(p, std=std)

    def _check(self, h: Tensor, cond: Tensor | None, L: int):
        if h.ndim != 3 or h.shape[-1] != self.args.dim:
            raise ValueError(f"expected embeddings of shape (B, L, {self.args.dim}), got {tuple(h.shape)}")
        if h.shape[1] != L:
            raise ValueError(f"embeddings have {h.shape[1]} positions, the layout {L}")
        if cond is not None:
            if not self.args.cond_dim:
                raise ValueError("cond given but the transformer was built with cond_dim=0")
            if cond.shape != (*h.shape[:2], self.args.cond_dim):
                raise ValueError(
                    f"expected cond of shape {(*h.shape[:2], self.args.cond_dim)}, got {tuple(cond.shape)}"
                )

    def _finish(self, h: Tensor, cond: Tensor | None) -> Tensor:
        h = self.norm(h)
        if self.final_modulation is not None and cond is not None:
            shift, scale = self.final_modulation(cond).chunk(2, dim=-1)
            h = _modulate(h, shift, scale)
        return h

    def forward(self, h: Tensor, layout: SequenceLayout, cond: Tensor | None = None,
                attn_impl: str | None = None) -> Tensor:
        """Run the backbone over a laid-out batch.

        Args:
            h: ``(B, L, D)`` embeddings in layout order.
            layout: positions, documents, spans and padding of the batch.
            cond: optional ``(B, L, C)`` per-position conditioning (zeros = none).
            attn_impl: overrides ``args.attn_impl`` for this call.
        """
        self._check(h, cond, layout.seq_len)
        mask = AttentionMask.from_layout(layout)
        rope = self.rope(layout.position)
        impl = attn_impl or self.args.attn_impl

        def attend_fn(q, k, v):
            return attend(q, k, v, mask, impl)

        for layer in self.layers:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # keep only each block's input; recompute its inside in the backward pass
                h = torch.utils.checkpoint.checkpoint(layer, h, cond, rope, attend_fn, use_reentrant=False)
            else:
                h = layer(h, cond, rope, attend_fn)
        return self._finish(h, cond)

    @torch.no_grad()
    def forward_cached(self, h: Tensor, cache: "KVCache", block: str | Tensor = "causal",
                       commit: bool = True, cond: Tensor | None = None,
                       positions: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """Run ``n`` new positions against the cached prefix (inference only).

        Args:
            h: ``(B, n, D)`` embeddings of the new positions.
            cache: the prefix's keys and values; advanced by ``n`` when ``commit``.
            block: attention among the new positions, ``"causal"``, ``"bidirectional"``, or a
                ``(B, n)`` long tensor of span ids (-1 = causal; positions with the same id >= 0
                attend to each other, as in a layout). They always see every valid cached position.
            commit: write the new keys/values into the cache.
            positions: ``(B, n)`` RoPE positions; default continues from the cache.
            valid: ``(B, n)`` bool, False for padding (e.g. left-padded prompts); default all True.
        """
        B, n, _ = h.shape
        if isinstance(block, Tensor):
            if block.shape != (B, n):
                raise ValueError(f"block span ids must have shape {(B, n)}, got {tuple(block.shape)}")
            block_span = block.to(h.device).long()
        elif block in ("causal", "bidirectional"):
            block_span = torch.full((B, n), 0 if block == "bidirectional" else -1, device=h.device)
        else:
            raise ValueError(f"block must be 'causal', 'bidirectional' or a span-id tensor, got {block!r}")
        self._check(h, cond, n)
        start = cache.length
        if commit and start + n > cache.max_len:
            raise ValueError(f"KV cache full: {start} cached + {n} new > max_len={cache.max_len} "
                             "(KVCache.reserve makes room)")
        if B != cache.batch_size:
            raise ValueError(f"batch of {B} rows, cache built for {cache.batch_size}")
        if positions is None:
            positions = cache.next_position[:, None] + torch.arange(n, device=h.device)
        if valid is None:
            valid = torch.ones(B, n, dtype=torch.bool, device=h.device)
        # the rule over [prefix, block]: one document (-1 where not valid), block = one span
        doc = torch.where(torch.cat([cache.valid[:, :start], valid], dim=1), 0, -1)
        span = torch.cat([torch.full((B, start), -1, device=h.device, dtype=torch.long), block_span], 1)
        if bool((doc == 0).all()) and bool((block_span == block_span[:, :1]).all()) and bool((block_span >= 0).all()):
            mask = None  # one bidirectional block over an all-valid prefix: every key is visible
        else:
            mask = dense_mask(doc, span, q_offset=start)  # B 1 n (start + n)
        rope = self.rope(positions)
        for i, layer in enumerate(self.layers):
            h = layer(h, cond, rope, lambda q, k, v, i=i: cached_attention(q, k, v, cache, i, mask, commit))
        if commit:
            cache.valid[:, start : start + n] = valid
            # rows whose new positions are all padding keep their next position
            cache.next_position = torch.where(valid.any(1), positions[:, -1] + 1, cache.next_position)
            cache.length = start + n
        return self._finish(h, cond)

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> "KVCache":
        p = next(self.parameters())
        return KVCache(self.args.n_layers, batch_size, self.args.n_heads, self.args.head_dim,
                       max_len, device or p.device, dtype or p.dtype)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class KVCache:
    """Keys and values of a committed prefix, for every layer.

    Attributes:
        k, v: ``(n_layers, B, H, max_len, Dh)``.
        valid: ``(B, max_len)`` bool, which cached positions may be attended to.
        length: number of committed positions (the same for every row; pad with ``valid``).
        next_position: ``(B,)`` RoPE position of the next committed position.
    """

    def __init__(self, n_layers, batch_size, n_heads, head_dim, max_len, device, dtype):
        shape = (n_layers, batch_size, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more committed positions, growing the buffers (at least doubling,
        so a long generation reallocates only a few times)."""
        need = self.length + n
        if need <= self.max_len:
            return
        extra = max(need, 2 * self.max_len) - self.max_len
        pad = (0, 0, 0, extra)  # the position axis of (layers, B, H, L, Dh)
        self.k = torch.nn.functional.pad(self.k, pad)
        self.v = torch.nn.functional.pad(self.v, pad)
        self.valid = torch.nn.functional.pad(self.valid, (0, extra))

    def clone(self) -> "KVCache":
        new = object.__new__(KVCache)
        new.k, new.v, new.valid = self.k.clone(), self.v.clone(), self.valid.clone()
        new.next_position, new.length = self.next_position.clone(), self.length
        return new
