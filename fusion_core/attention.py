"""Attention backends: ``sdpa``, ``flex`` and ``xformers``, and ``auto`` to pick one.

Every backend computes softmax attention under the same :mod:`fusion_core.masks` rule. Naming a
backend that cannot run here raises :class:`BackendUnavailable` with the reason; there is no silent
fallback. ``auto`` picks SDPA on CPU (the only backend with gradients there) and for the fast-path
layouts, and flex attention on CUDA for mixed layouts.

Shapes: B batch, H heads, Q queries, K keys, D head dim. Tensors enter as ``B H L D``.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import AttentionMask

BACKENDS = ("auto", "sdpa", "flex", "xformers")


class BackendUnavailable(RuntimeError):
    """The requested attention backend cannot run in this environment."""


def flex_available() -> str | None:
    """None if flex attention can be imported, else the reason it cannot."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as e:  # pragma: no cover - torch < 2.5
        return f"torch {torch.__version__} has no flex attention ({e})"
    return None


def xformers_available(device: torch.device) -> str | None:
    """None if xformers runs on ``device``, else the reason it cannot. Decided by running a tiny
    attention op there (once per device, cached): an import that succeeds says nothing when the
    compiled ops were built for another torch (xformers 0.0.35, built for torch 2.10, imports
    under 2.11 and then fails in its dispatcher)."""
    if device.type != "cuda":
        return "xformers runs only on CUDA devices (got device %r)" % device.type
    return _xformers_reason(str(device))


@functools.lru_cache(maxsize=None)
def _xformers_reason(device: str) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import xformers
            import xformers.ops as xops
    except Exception as e:
        return f"xformers is not importable ({_first_line(e)}); install the `xformers` extra built for torch {torch.__version__}"
    version = getattr(xformers, "__version__", "?")
    built = _xformers_torch_version()
    built_text = f"built for torch {built}" if built else "its build metadata does not say which torch it was built for"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _xformers_probe(xops, torch.device(device))
    except Exception as e:  # noqa: BLE001 - any failure of the op is the reason
        return (f"xformers {version} ({built_text}) cannot run attention on {device} with torch {torch.__version__}: "
                f"{_first_line(e)}; install the xformers release built for your torch, or use attn_impl=flex or sdpa")
    return None


def _xformers_probe(xops, device: torch.device) -> None:
    """One tiny memory-efficient attention call: raises if xformers' kernels cannot run."""
    q = torch.zeros(1, 8, 1, 8, device=device, dtype=torch.float16)
    out = xops.memory_efficient_attention(q, q, q)
    if tuple(out.shape) != (1, 8, 1, 8):
        raise RuntimeError(f"memory_efficient_attention returned shape {tuple(out.shape)}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _xformers_torch_version() -> str | None:
    try:
        from xformers import _cpp_lib

        return getattr(_cpp_lib._build_metadata, "torch_version", None)
    except Exception:
        return None


def resolve_backend(name: str, device: torch.device, mask_kind: str, needs_grad: bool) -> str:
    """Turn ``attn_impl`` into a backend that can run, or raise with the reason.

    Args:
        name: one of :data:`BACKENDS`.
        device: where the attention runs.
        mask_kind: ``"causal"``, ``"full"`` or ``"mixed"``.
        needs_grad: whether a backward pass will follow.

    Raises:
        ValueError: an unknown name.
        BackendUnavailable: the named backend cannot run here (the message says why).
    """
    if name not in BACKENDS:
        raise ValueError(f"attn_impl must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        if device.type == "cuda" and mask_kind == "mixed" and flex_available() is None:
            return "flex"
        return "sdpa"
    if name == "flex":
        reason = flex_available()
        if reason is None and device.type == "cpu" and needs_grad:
            reason = (
                f"flex attention has no backward on CPU in torch {torch.__version__}; "
                "use attn_impl='sdpa' to train on CPU (flex forward works under torch.no_grad())"
            )
        if reason:
            raise BackendUnavailable(reason)
    if name == "xformers":
        reason = xformers_available(device)
        if reason:
            raise BackendUnavailable(reason)
    return name


@functools.lru_cache(maxsize=None)
def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def sdpa(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """``F.scaled_dot_product_attention``, but on the CPU a half-precision ``q, k, v`` (bf16
    autocast) is attended in fp32 and the result cast back: the CPU kernels are slower in bf16
    than in fp32 (the flash backward ~4x, the forward ~1.5x; torch 2.13, AVX-512 without AMX),
    while the matmuls around them are ~2x faster in bf16 — so a bf16 training step on a CPU gains
    only with the attention kept in fp32 (bench/cpu_precision.py)."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        dtype = q.dtype
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(dtype)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, backend: str = "auto",
           dropout_p: float = 0.0) -> Tensor:
    """Softmax attention of ``q`` over ``k, v`` (all ``B H L D``) under ``mask``.

    Returns:
        ``B H L D``.
    """
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    backend = resolve_backend(backend, q.device, mask.kind, needs_grad)
    if backend == "sdpa":
        if mask.kind == "causal":
            return sdpa(q, k, v, is_causal=True, dropout_p=dropout_p)
        if mask.kind == "full":
            return sdpa(q, k, v, dropout_p=dropout_p)
        return sdpa(q, k, v, attn_mask=mask.dense(), dropout_p=dropout_p)
    if backend == "flex":
        if not needs_grad:  # flex checks requires_grad, not grad mode, before refusing CPU
            q, k, v = q.detach(), k.detach(), v.detach()
        if mask.kind == "full":
            block_mask = None
        elif mask.kind == "causal":
            B, _, L, _ = q.shape
            block_mask = _causal_block_mask(L, q.device)
        else:
            block_mask = mask.block_mask()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return _flex_fn(q.device.type == "cuda")(q, k, v, block_mask=block_mask)
    # xformers: B L H D layout
    import xformers.ops as xops

    if mask.kind == "causal":
        bias = xops.LowerTriangularMask()
    elif mask.kind == "full":
        bias = None
    else:
        bias = mask.xformers_bias(q.shape[1], q.dtype)
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, p=dropout_p
    )
    return out.transpose(1, 2)


@functools.lru_cache(maxsize=32)
def _causal_block_mask(L: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(lambda b, h, q, k: k <= q, None, None, L, L, device=device)
