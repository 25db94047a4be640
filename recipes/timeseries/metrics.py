"""Quality metrics for synthetic time series, as TimeGAN / TransFusion define them, with the
official code's faults fixed.

- **Discriminative score** (TimeGAN): a 1-layer GRU classifier (hidden = F/2) trained on 80% of
  real ∪ synthetic, ``|accuracy - 0.5|`` on the other 20%. Lower is better.
- **Predictive score** (TimeGAN): a GRU trained on synthetic data to predict the last feature one
  step ahead from the other features, mean absolute error on real data. Lower is better.
- **LDS / LPS** (TransFusion sec. 4.2): the same with a small transformer encoder (mean-pooled
  classifier; *causal* predictor).
- **Correlational score**: mean absolute difference of the feature-feature Pearson correlation
  matrices (off-diagonal).
- **Context-FID-style**: Fréchet distance between real and synthetic embeddings from a GRU
  encoder trained (self-supervised, next-step prediction) on the real data.
- The GRU scores' repeats trained as one block-diagonal model: :mod:`.block_metrics`.
- **Marginal JSD**: Jensen–Shannon divergence of each feature's histogram, averaged.
- **1-NN two-sample test** (:func:`one_nn_score`): no training; for independent samples.
- **Feature discriminative score** (:func:`.window_stats.feature_discriminative_score`): logistic
  regression on each window's summary statistics; a second method beside the GRU's.
- **Sine fit** (built-in sine data only): :mod:`.sine_fit`.

Fixed faults of the official code: the metric networks are switched to eval mode for testing; the
transformer predictor has a causal mask; one feature works (the predictor then forecasts that
feature from its own past); the train/test split of the metric is by window, on data the
generator never trained on when ``real`` is the held-out split.

All inputs are ``(n, L, F)`` arrays already scaled to [0, 1] with the real data's per-feature range.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusion_core.embeddings import sinusoidal
from fusion_core.engine.stats import frechet_distance, mean_ci95  # noqa: F401  (re-exported)
from fusion_core.validation import check_fits


def check_metric_sizes(features: int, length: int, ev) -> None:
    """Refuse, before training, an evaluation whose classifiers cannot fit: TimeGAN's GRU has a
    hidden width of features / 2, so its weights grow with the square of the features.

    Raises:
        ValueError: names the estimate and the features.
    """
    hidden = max(features // 2, 1)
    gru = 3 * hidden * (features + hidden + 2) + hidden + 1
    per_batch = ev.batch * length * (features + 4 * hidden)  # inputs and the GRU's saved gates
    check_fits(4 * (4 * gru + per_batch), f"the evaluation's GRU classifier (features={features}, hidden "
               f"{hidden}: {gru / 1e6:,.1f} M weights)")


class GRUNet(nn.Module):
    """GRU over a window → one output per step (``per_step``) or from the last hidden state."""

    def __init__(self, f_in: int, hidden: int, f_out: int, per_step: bool):
        super().__init__()
        self.gru = nn.GRU(f_in, hidden, batch_first=True)
        self.out = nn.Linear(hidden, f_out)
        self.per_step = per_step

    def forward(self, x):
        h, last = self.gru(x)
        return self.out(h) if self.per_step else self.out(last[-1])

    def embed(self, x):
        return self.gru(x)[1][-1]


class TransformerNet(nn.Module):
    """A small transformer encoder: mean-pooled output (classifier) or per-step causal output."""

    def __init__(self, f_in: int, f_out: int, per_step: bool, d: int = 64, layers: int = 2):
        super().__init__()
        self.inp = nn.Linear(f_in, d)
        # no dropout: attention dropout forces SDPA's materialized path (a 384-step window cost
        # 8.6 s per training step on 2 CPU cores instead of ~1 s); the GRU metrics have none either
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(d, f_out)
        self.per_step, self.d = per_step, d

    def forward(self, x):
        h = self.inp(x) + sinusoidal(torch.arange(x.shape[1], device=x.device), self.d)
        for layer in self.enc.layers:
            h = _encoder_layer(layer, h, causal=self.per_step)
        return self.out(h) if self.per_step else self.out(h.mean(1))


def _encoder_layer(layer: nn.TransformerEncoderLayer, h: torch.Tensor, causal: bool) -> torch.Tensor:
    """``layer(h)`` (post-norm, ReLU, no dropout) computed from the layer's own weights, faster to
    train on CPU (docs/results.md): ``nn.MultiheadAttention`` splits its packed projection with
    three ``select``s whose backward each fills a zero tensor the size of all three."""
    attn, (B, L, d) = layer.self_attn, h.shape
    H = attn.num_heads
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(B, L, 3, H, d // H).permute(2, 0, 3, 1, 4).unbind(0)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(B, L, d)
    h = layer.norm1(h + attn.out_proj(a))
    return layer.norm2(h + layer.linear2(F.relu(layer.linear1(h))))


def _batches(n: int, batch: int, g: torch.Generator):
    return torch.randint(0, n, (min(batch, n),), generator=g)  # CPU indices work on any device


def _split(x: np.ndarray, g: torch.Generator, frac: float = 0.8):
    perm = torch.randperm(len(x), generator=g).numpy()
    k = int(round(frac * len(x)))
    return torch.as_tensor(x[perm[:k]]).float(), torch.as_tensor(x[perm[k:]]).float()


def discriminative_score(real: np.ndarray, fake: np.ndarray, arch: str = "gru", iters: int = 2000,
                         batch: int = 128, seed: int = 0, device: str = "cpu") -> float:
    """``|accuracy - 0.5|`` of a real-vs-synthetic classifier on held-out windows."""
    _check(real, fake)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    r_tr, r_te = (x.to(device) for x in _split(real, g))
    f_tr, f_te = (x.to(device) for x in _split(fake, g))
    Fdim = real.shape[2]
    net = GRUNet(Fdim, max(Fdim // 2, 1), 1, per_step=False) if arch == "gru" else TransformerNet(Fdim, 1, False)
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(iters):
        xb = torch.cat([r_tr[_batches(len(r_tr), batch, g)], f_tr[_batches(len(f_tr), batch, g)]])
        yb = torch.cat([torch.ones(min(batch, len(r_tr))), torch.zeros(min(batch, len(f_tr)))]).to(device)
        loss = F.binary_cross_entropy_with_logits(net(xb)[:, 0], yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()  # the official code never did this
    with torch.no_grad():
        pred = torch.cat([net(r_te)[:, 0] > 0, net(f_te)[:, 0] > 0])
    truth = torch.cat([torch.ones(len(r_te), dtype=torch.bool), torch.zeros(len(f_te), dtype=torch.bool)]).to(device)
    return abs(float((pred == truth).float().mean()) - 0.5)


def predictive_score(real: np.ndarray, fake: np.ndarray, arch: str = "gru", iters: int = 5000,
                     batch: int = 128, seed: int = 0, device: str = "cpu") -> float:
    """Train on synthetic, test on real: MAE of one-step-ahead prediction of the last feature."""
    _check(real, fake)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    Fdim = real.shape[2]

    def xy(d):
        d = torch.as_tensor(d).float().to(device)
        if Fdim == 1:  # forecast the only feature from its own past
            return d[:, :-1], d[:, 1:]
        return d[:, :-1, :-1], d[:, 1:, -1:]

    fx, fy = xy(fake)
    rx, ry = xy(real)
    f_in = fx.shape[2]
    net = GRUNet(f_in, max(Fdim // 2, 1), 1, per_step=True) if arch == "gru" else TransformerNet(f_in, 1, True)
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(iters):
        i = _batches(len(fx), batch, g)
        loss = (torch.sigmoid(net(fx[i])) - fy[i]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return float((torch.sigmoid(net(rx)) - ry).abs().mean())


def correlational_score(real: np.ndarray, fake: np.ndarray) -> float:
    """Mean absolute difference of off-diagonal feature correlations (0 when F = 1)."""
    _check(real, fake)
    Fdim = real.shape[2]
    if Fdim == 1:
        return 0.0

    def corr(x):
        c = np.corrcoef(x.reshape(-1, Fdim).T)
        return np.nan_to_num(c)

    off = ~np.eye(Fdim, dtype=bool)
    return float(np.abs(corr(real) - corr(fake))[off].mean())


def marginal_jsd(real: np.ndarray, fake: np.ndarray, bins: int = 50) -> float:
    """Jensen–Shannon divergence (bits) of per-feature value histograms, averaged over features."""
    _check(real, fake)
    out = []
    for f in range(real.shape[2]):
        r, s = real[..., f].ravel(), fake[..., f].ravel()
        lo, hi = min(r.min(), s.min()), max(r.max(), s.max())
        edges = np.linspace(lo, hi + 1e-12, bins + 1)
        p = np.histogram(r, edges)[0] + 1e-10
        q = np.histogram(s, edges)[0] + 1e-10
        p, q = p / p.sum(), q / q.sum()
        m = (p + q) / 2
        out.append(0.5 * (p * np.log2(p / m)).sum() + 0.5 * (q * np.log2(q / m)).sum())
    return float(np.mean(out))


def one_nn_score(real: np.ndarray, fake: np.ndarray, real_at: np.ndarray | None = None,
                 fake_at: np.ndarray | None = None, chunk: int = 1024) -> float:
    """A model-free two-sample test beside the discriminative score, from leave-one-out
    1-nearest-neighbour classification of the pooled windows (flattened, Euclidean): each window
    is labelled by the sample of its nearest other window, and the score is the mean over the
    two samples of ``|accuracy on that sample - 0.5|``. ~0 when both come from one distribution;
    0.5 when the samples never mix, and 0.5 too for a copy (every window's nearest is its twin:
    both accuracies 0). Per sample, not pooled: a dispersed sample (noise) lies nearer the other
    sample than to itself, so the pooled accuracy stays near 0.5 while one side is right 100% of
    the time and the other ~0%. Nothing is trained, so it shares no blind spot with the GRU
    classifier (whose hidden size is ``features // 2``: one unit for a single channel).

    Windows cut from one record overlap: each real window has shifted near-copies among the real
    windows, which the test would count as separation (on Air Quality's 100-step windows, 85% of
    the real windows whose nearest neighbour is real have an overlapping one; a generated sample,
    drawn independently, has none). ``real_at`` / ``fake_at`` give where such windows start on
    the record's time axis (``Splits.window_starts``; ``None``: independent draws): two windows
    with starts less than a window length apart share steps and are not each other's
    neighbours, as a window is not its own. That removes the copies, not the record: on a
    trending record, real windows a window length apart differ in level, so with long windows a
    real window's nearest neighbour is a generated one even for a perfect generator (real side
    ~0), and two halves of the real windows — the only floor one record gives — share that
    structure. For windows of one record read the two sides apart (bench/nn_anatomy.py); the
    score itself is calibrated for independent samples (bench/tts_group_disc.py)."""
    _check(real, fake)
    x = torch.as_tensor(np.concatenate([real, fake]).reshape(len(real) + len(fake), -1), dtype=torch.float64)
    at = torch.full((len(x),), float("nan"), dtype=torch.float64)  # nan: an independent draw
    for k, (pos, n) in enumerate(((real_at, len(real)), (fake_at, len(fake)))):
        if pos is not None:
            if len(pos) != n:
                raise ValueError(f"{('real_at', 'fake_at')[k]} has {len(pos)} positions for {n} windows")
            at[k * len(real) : k * len(real) + n] = torch.as_tensor(np.asarray(pos, dtype=np.float64))
    nearest = torch.empty(len(x), dtype=torch.long)
    for i in range(0, len(x), chunk):  # chunk x N distances at a time, not N x N
        d = torch.cdist(x[i : i + chunk], x)
        d[torch.arange(len(d)), torch.arange(i, i + len(d))] = float("inf")  # not its own neighbour
        d[(at[i : i + chunk, None] - at[None, :]).abs() < real.shape[1]] = float("inf")  # nor an overlapping one
        nearest[i : i + chunk] = d.argmin(1)
    label = torch.cat([torch.zeros(len(real)), torch.ones(len(fake))])
    right = (label[nearest] == label).double()
    return float(((right[:len(real)].mean() - 0.5).abs() + (right[len(real):].mean() - 0.5).abs()) / 2)


def context_fid(real: np.ndarray, fake: np.ndarray, iters: int = 1000, batch: int = 128,
                hidden: int = 32, seed: int = 0, device: str = "cpu") -> float:
    """Fréchet distance of GRU embeddings (encoder trained on real data to predict the next step)."""
    _check(real, fake)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    r = torch.as_tensor(real).float().to(device)
    Fdim = r.shape[2]
    net = GRUNet(Fdim, hidden, Fdim, per_step=True).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(iters):
        i = _batches(len(r), batch, g)
        loss = (net(r[i, :-1]) - r[i, 1:]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        er = net.embed(r).double().cpu().numpy()
        ef = net.embed(torch.as_tensor(fake).float().to(device)).double().cpu().numpy()
    return frechet_distance(er, ef)


def _check(real: np.ndarray, fake: np.ndarray) -> None:
    if real.ndim != 3 or fake.ndim != 3 or real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real and synthetic must both be (n, L, F) with equal L, F; got "
                         f"{real.shape} and {fake.shape}")
    if len(real) < 4 or len(fake) < 4:
        raise ValueError("need at least 4 windows of each to score")
