"""The GRU discriminative and predictive scores' repeats trained as one model (:class:`BlockGRUNet`):
the same nets, the same batches and the same scores as one :func:`~.metrics.discriminative_score` /
:func:`~.metrics.predictive_score` call per seed, in one run's kernel launches (bench/scoring.py).

All inputs are ``(n, L, F)`` arrays already scaled to [0, 1] with the real data's per-feature range.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metrics import GRUNet, _batches, _check, _split


class BlockGRUNet(nn.Module):
    """``R`` independent :class:`GRUNet` s trained as one: a GRU of ``R * hidden`` units on
    ``R * f_in`` inputs whose weights are block-diagonal (each repeat's block sees only its own
    inputs and hidden units; the off-diagonal entries are masked to zero, so they never receive
    gradient), and a block-diagonal output layer. Each block starts from the weights
    ``GRUNet(f_in, hidden, f_out)`` gets under ``torch.manual_seed(seeds[r])``, and AdamW/Adam are
    elementwise, so training the block model on the repeats' own batches is training the ``R``
    nets — in one kernel per step instead of ``R`` (the metrics' repeats cost one run's launches).

    Shapes: R repeats, B batch, L steps, F inputs per repeat, H hidden units per repeat.
    """

    def __init__(self, f_in: int, hidden: int, f_out: int, per_step: bool, seeds: list[int]):
        super().__init__()
        R, H = len(seeds), hidden
        nets = []
        for s in seeds:
            torch.manual_seed(s)
            nets.append(GRUNet(f_in, hidden, f_out, per_step))
        self.R, self.H, self.f_in, self.f_out, self.per_step = R, H, f_in, f_out, per_step
        self.gru = nn.GRU(R * f_in, R * H, batch_first=True)
        self.out = nn.Linear(R * H, R * f_out)
        eye = torch.eye(R)
        self.register_buffer("mask_ih", torch.kron(eye, torch.ones(H, f_in)).repeat(3, 1))
        self.register_buffer("mask_hh", torch.kron(eye, torch.ones(H, H)).repeat(3, 1))
        self.register_buffer("mask_out", torch.kron(eye, torch.ones(f_out, H)))
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                full = getattr(self.gru, name)
                full.zero_()
                for r, net in enumerate(nets):
                    w = getattr(net.gru, name)
                    cols = f_in if name == "weight_ih_l0" else H
                    for gate in range(3):  # PyTorch packs the gates as [reset, update, new]
                        rows = slice(gate * R * H + r * H, gate * R * H + (r + 1) * H)
                        part = w[gate * H : (gate + 1) * H]
                        if full.ndim == 1:
                            full[rows] = part
                        else:
                            full[rows, r * cols : (r + 1) * cols] = part
            self.out.weight.zero_()
            for r, net in enumerate(nets):
                self.out.weight[r * f_out : (r + 1) * f_out, r * H : (r + 1) * H] = net.out.weight
                self.out.bias[r * f_out : (r + 1) * f_out] = net.out.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, L, R * F)`` (repeat r's inputs in columns ``r*F:(r+1)*F``) → ``(B, L, R *
        f_out)`` per step, or ``(B, R * f_out)`` from the last hidden state."""
        from torch.func import functional_call

        params = {"weight_ih_l0": self.gru.weight_ih_l0 * self.mask_ih, "weight_hh_l0": self.gru.weight_hh_l0 * self.mask_hh,
                  "bias_ih_l0": self.gru.bias_ih_l0, "bias_hh_l0": self.gru.bias_hh_l0}
        h, last = functional_call(self.gru, params, (x,))
        y = h if self.per_step else last[-1]
        return F.linear(y, self.out.weight * self.mask_out, self.out.bias)


def _stack(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-repeat tensors ``(B, L, F)`` side by side on the feature axis: ``(B, L, R * F)``."""
    return torch.cat(parts, dim=-1)


def discriminative_scores_gru(real: np.ndarray, fake: np.ndarray, seeds: list[int], iters: int = 2000,
                              batch: int = 128, device: str = "cpu") -> list[float]:
    """:func:`discriminative_score` with the GRU for each seed of ``seeds`` (the same splits,
    initial weights and batches as one call per seed), trained together (:class:`BlockGRUNet`)."""
    _check(real, fake)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    splits = [(_split(real, g), _split(fake, g)) for g in gens]
    Fdim = real.shape[2]
    net = BlockGRUNet(Fdim, max(Fdim // 2, 1), 1, False, list(seeds)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    r_tr = [sp[0][0].to(device) for sp in splits]
    f_tr = [sp[1][0].to(device) for sp in splits]
    n_r, n_f = min(batch, len(r_tr[0])), min(batch, len(f_tr[0]))
    yb = torch.cat([torch.ones(n_r), torch.zeros(n_f)]).to(device)[:, None].expand(-1, len(seeds))
    net.train()
    for _ in range(iters):
        xs = [torch.cat([r_tr[k][_batches(len(r_tr[k]), batch, g)], f_tr[k][_batches(len(f_tr[k]), batch, g)]])
              for k, g in enumerate(gens)]
        loss = F.binary_cross_entropy_with_logits(net(_stack(xs)), yb, reduction="none").mean(0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    out = []
    with torch.no_grad():
        r_te = _stack([sp[0][1].to(device) for sp in splits])
        f_te = _stack([sp[1][1].to(device) for sp in splits])
        pr, pf = net(r_te) > 0, net(f_te) > 0  # (n, R)
        for k in range(len(seeds)):
            acc = torch.cat([pr[:, k], ~pf[:, k]]).float().mean()
            out.append(abs(float(acc) - 0.5))
    return out


def predictive_scores_gru(real: np.ndarray, fake: np.ndarray, seeds: list[int], iters: int = 5000,
                          batch: int = 128, device: str = "cpu") -> list[float]:
    """:func:`predictive_score` with the GRU for each seed of ``seeds``, trained together."""
    _check(real, fake)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    Fdim = real.shape[2]

    def xy(d):
        d = torch.as_tensor(d).float().to(device)
        if Fdim == 1:
            return d[:, :-1], d[:, 1:]
        return d[:, :-1, :-1], d[:, 1:, -1:]

    fx, fy = xy(fake)
    rx, ry = xy(real)
    net = BlockGRUNet(fx.shape[2], max(Fdim // 2, 1), 1, True, list(seeds)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(iters):
        idx = [_batches(len(fx), batch, g) for g in gens]
        pred = torch.sigmoid(net(_stack([fx[i] for i in idx])))  # (B, L-1, R)
        loss = (pred - _stack([fy[i] for i in idx])).abs().mean((0, 1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.sigmoid(net(_stack([rx] * len(seeds))))
        return [float((pred[..., k : k + 1] - ry).abs().mean()) for k in range(len(seeds))]
