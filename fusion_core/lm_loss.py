"""Next-token cross-entropy through a linear head without the full logits (Transfusion sec. 3.3's
L_LM, computed in row chunks).

The plain loss builds logits ``(N, V)`` — and a float32 copy of them — for every scored position:
at rows of 4096 and a 65 K vocabulary that is gigabytes written and read back once per step. When a
discrete adapter's head is a plain linear map (:meth:`Adapter.head_linear`), :func:`linear_cross_entropy`
walks the positions ``chunk`` rows at a time: each chunk's logits live only long enough to give
its loss and its gradients with respect to the hidden states and the head's weight, which are kept
for the backward pass (the softmax gradient is known in the forward pass, so nothing is recomputed).
Peak memory is one chunk's logits instead of all of them; the FLOPs are the plain loss's.

Letters: N scored positions, D width, V vocabulary, C rows per chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T + bias`` against ``target``; the gradients are
    computed chunk by chunk in the forward pass and scaled by the incoming gradient in backward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, chunk: int) -> Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None  # N D
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None  # V D
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None  # V
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start : start + chunk], target[start : start + chunk]  # C D, C
            valid = (y >= 0)[:, None]  # C 1: -100 (any negative id) scores nothing, as ignore_index
            safe = y.clamp(min=0)[:, None]
            logp = torch.log_softmax(F.linear(h, weight, bias).float(), dim=-1)  # C V
            total -= (logp.gather(1, safe) * valid).sum()
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            g = logp.exp_()  # C V: the softmax, in place; minus the one-hot target below
            g.scatter_add_(1, safe, torch.full_like(safe, -1.0, dtype=g.dtype))
            gc = g.to(hidden.dtype)
            if grad_h is not None:  # ignored rows zeroed on the (C, D) side, cheaper than on (C, V)
                grad_h[start : start + chunk] = (gc @ weight) * valid
            if grad_w is not None or grad_b is not None:
                hv = h * valid
                if grad_w is not None and hidden.dtype == torch.float32:
                    grad_w.addmm_(gc.t(), hv)  # V D, summed over chunks
                elif grad_w is not None:
                    grad_w += (gc.t() @ hv).float()  # in the autocast dtype, summed in float32
                if grad_b is not None:
                    grad_b += valid[:, 0].to(g.dtype) @ g
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.have = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        saved, out = list(ctx.saved_tensors), []
        for have, dtype in zip(ctx.have, ctx.dtypes):
            out.append((saved.pop(0) * grad_out).to(dtype) if have else None)
        return out[0], out[1], out[2], None, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                         chunk: int = 4096) -> Tensor:
    """``F.cross_entropy(F.linear(hidden, weight, bias).float(), target, reduction="sum")``
    without materialising the ``(N, V)`` logits: ``chunk`` rows at a time.

    Under autocast the matmuls run in the autocast dtype, as the plain head would; the softmax and
    the sum are float32.

    Args:
        hidden: ``(N, D)`` backbone outputs at the scored positions.
        weight, bias: the head's ``(V, D)`` weight and ``(V,)`` bias (or None).
        target: ``(N,)`` token ids; negative ids score nothing.
        chunk: rows per chunk (memory: ``chunk * V`` float32 logits at a time).

    Returns:
        The summed loss, a float32 scalar.

    Raises:
        ValueError: mismatched shapes or a chunk below 1.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden (N, D) and weight (V, D), got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if target.shape != hidden.shape[:1]:
        raise ValueError(f"need one target per row: hidden {tuple(hidden.shape)}, target {tuple(target.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias {tuple(bias.shape)} does not match weight {tuple(weight.shape)}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # the dtype the plain head's matmul would run in
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    else:
        weight = weight.to(hidden.dtype)
        bias = None if bias is None else bias.to(hidden.dtype)
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, bias, target.long(), int(chunk))
