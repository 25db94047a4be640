"""FusionModel: one backbone, a dict of modality adapters, and a diffusion process per continuous
modality.

Transfusion (sec. 3.3): ``L = L_LM + lambda * L_DDPM`` with ``lambda = 5``; L_LM is the mean
next-token cross-entropy over text positions, L_DDPM the mean over images of each image's
noise-prediction MSE, with one timestep per image. No LM loss where the next position is not a
token of the same modality (the BOI position predicts an image, not a token). Noise limiting
(sec. 4.4) caps an image's timestep when the batch marks it (``Item.max_t``).

TransFusion (Sikder et al.) is this model with a single continuous adapter and one bidirectional
span per example — the same class, no second model.

Shapes: B rows, L positions, D width, N positions of one modality, V vocabulary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapter import Adapter, Embedded
from .diffusion import GaussianDiffusion, Sampler, batched_pair, classifier_free_guidance
from .layout import Segment, SequenceLayout, build_layout, cat_to_device, to_device
from .transformer import KVCache, Transformer, TransformerArgs


@dataclass
class Item:
    """One segment of a training or prompt example, already encoded by its adapter.

    Attributes:
        modality: adapter name.
        payload: the adapter's payload (token ids, scaled image, scaled window).
        max_t: for continuous items, the largest diffusion step to sample (noise limiting).
    """

    modality: str
    payload: Tensor
    max_t: int | None = None


@dataclass
class Batch:
    """Encoded examples and their layout. ``seeds`` (one per example), when set, key every random
    draw of the loss (each span's step and noise) to its example, so the draws do not depend on
    batch composition, micro-batching or the number of processes."""

    examples: list[list[Item]]
    layout: SequenceLayout
    seeds: list[int] | None = None
    _derived: dict = field(default_factory=dict, repr=False, compare=False)  # per-batch caches

    def pin_memory(self) -> "Batch":
        """Payloads in pinned host memory, for non-blocking copies (``DataLoader(pin_memory=True)``)."""
        pinned = [[Item(it.modality, it.payload.pin_memory(), it.max_t) for it in ex] for ex in self.examples]
        keep = {k: v for k, v in self._derived.items() if k in ("lm_targets", "lm_counts")}  # host-only caches
        return Batch(pinned, self.layout, self.seeds, keep)

    def to(self, device) -> "Batch":
        """The layout on ``device`` (one copy; payloads move when the loss uses them). Host-side
        caches (targets, counts) carry over: they describe the same batch."""
        keep = {k: v for k, v in self._derived.items() if k in ("payloads", "lm_targets", "lm_counts")}
        return Batch(self.examples, self.layout.to(device), self.seeds, keep)


def _move(tensors: list[Tensor], device: torch.device) -> list[Tensor]:
    """Tensors to ``device``, host ones of a common dtype in one copy (no GPU sync)."""
    host = [t for t in tensors if t.device.type == "cpu"]
    if device.type == "cpu" or not host:
        return [t.to(device) for t in tensors]
    if len({t.dtype for t in host}) > 1:
        return [to_device(t, device) for t in tensors]
    moved = iter(cat_to_device(host, device))
    return [next(moved) if t.device.type == "cpu" else t.to(device) for t in tensors]


@dataclass
class LossOutput:
    """``loss`` is the weighted total; ``parts`` the unweighted per-modality means (CE for
    discrete, MSE for continuous); ``counts`` how many targets (tokens) or spans each averaged;
    ``timesteps`` the diffusion step of every continuous span."""

    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    timesteps: dict[str, Tensor] = field(default_factory=dict)  # per continuous span


def _end_token(adapter: Adapter) -> int:
    """A discrete adapter's end-of-span token id (-100 when it has none)."""
    end = getattr(adapter, "end_token", None) if adapter.kind == "discrete" else None
    return -100 if end is None else int(end)


class FusionModel(nn.Module):
    """Backbone + adapters + diffusion processes.

    Args:
        backbone: a :class:`Transformer` or its :class:`TransformerArgs`.
        adapters: adapters keyed by name (or a list; their ``name`` is used).
        diffusion: a process per continuous modality, or one for all (default: cosine, T = 1000,
            eps-prediction, as in Transfusion).
        diffusion_weight: lambda, the weight of each continuous modality's loss (5 in the paper).
        loss_weights: per-modality overrides of the weights (discrete default 1).
        cond_dropout: probability, per example in training, of replacing the discrete segments
            before its first continuous span with their ``drop_condition`` version (CFG training).
        fourier_weight: per continuous modality, weight of an extra term on each span: MSE between
            the FFT (along the payload's first axis) of the predicted and the true x0 (Diffusion-TS's
            frequency-domain loss for time series). Default: none.
    """

    def __init__(self, backbone: Transformer | TransformerArgs,
                 adapters: Mapping[str, Adapter] | Sequence[Adapter],
                 diffusion: Mapping[str, GaussianDiffusion] | GaussianDiffusion | None = None,
                 diffusion_weight: float = 5.0, loss_weights: Mapping[str, float] | None = None,
                 cond_dropout: float = 0.0, fourier_weight: Mapping[str, float] | None = None):
        super().__init__()
        self.backbone = backbone if isinstance(backbone, Transformer) else Transformer(backbone)
        if not isinstance(adapters, Mapping):
            adapters = {a.name: a for a in adapters}
        if not adapters:
            raise ValueError("FusionModel needs at least one adapter")
        D = self.backbone.args.dim
        for key, a in adapters.items():
            if not isinstance(a, Adapter):
                raise ValueError(f"adapter {key!r} is a {type(a).__name__}, expected an Adapter")
            a.check()
            if a.name != key:
                raise ValueError(f"adapter registered as {key!r} is named {a.name!r}")
            if a.dim != D:
                raise ValueError(f"adapter {key!r} has dim {a.dim}, the backbone {D}")
        self.adapters = nn.ModuleDict(dict(adapters))
        continuous = [n for n, a in adapters.items() if a.kind == "continuous"]
        if diffusion is None or isinstance(diffusion, GaussianDiffusion):
            diffusion = {n: diffusion or GaussianDiffusion("cosine", 1000, "eps") for n in continuous}
        missing = set(continuous) - set(diffusion)
        if missing:
            raise ValueError(f"no diffusion process for continuous modalities {sorted(missing)}")
        self.diffusion = dict(diffusion)
        self.loss_weights = {n: (diffusion_weight if a.kind == "continuous" else 1.0)
                             for n, a in adapters.items()}
        for n, w in (loss_weights or {}).items():
            if n not in adapters:
                raise ValueError(f"loss_weights names unknown modality {n!r}; known: {sorted(adapters)}")
            self.loss_weights[n] = float(w)
        if not 0 <= cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        self.cond_dropout = cond_dropout
        self.fourier_weight = dict(fourier_weight or {})
        unknown = set(self.fourier_weight) - set(continuous)
        if unknown:
            raise ValueError(f"fourier_weight names non-continuous or unknown modalities {sorted(unknown)}")

    @property
    def dim(self) -> int:
        return self.backbone.args.dim

    # -- saving ----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, ema: Mapping[str, Tensor] | None = None,
                        metadata: Mapping | None = None) -> Path:
        """Save a folder that :meth:`from_pretrained` rebuilds this model from, with nothing else
        (see :mod:`fusion_core.pretrained`). ``ema``: optional EMA weights (a state dict);
        ``metadata``: free-form JSON-able information kept in ``model.json``."""
        from .pretrained import save_pretrained

        return save_pretrained(self, directory, ema=ema, metadata=metadata)

    @classmethod
    def from_pretrained(cls, path: str | Path, device=None, dtype: torch.dtype | None = None,
                        weights: str = "auto", adapter_kwargs: Mapping | None = None) -> "FusionModel":
        """Rebuild a model saved by :meth:`save_pretrained` (or a training checkpoint, or a run
        folder's newest model), in ``eval()`` mode.

        Args:
            path: the folder.
            device, dtype: where to put it and in which floating type (default: CPU, as saved).
            weights: ``"auto"`` (EMA weights when saved), ``"model"`` or ``"ema"``.
            adapter_kwargs: per adapter, constructor arguments that could not be saved (a
                tokenizer object); the error message names them.

        Example:
            >>> model.save_pretrained("my_model")  # doctest: +SKIP
            >>> same = FusionModel.from_pretrained("my_model")  # doctest: +SKIP
        """
        from .pretrained import load_pretrained

        return load_pretrained(path, device=device, dtype=dtype, weights=weights,
                               adapter_kwargs=adapter_kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def adapter(self, name: str) -> Adapter:
        if name not in self.adapters:
            raise ValueError(f"unknown modality {name!r}; this model has {sorted(self.adapters)}")
        return self.adapters[name]

    # -- batches ------------------------------------------------------------------------------
    def collate(self, examples: Sequence[Sequence[Item]], max_len: int | None = None,
                pack: bool = False, pad_to_multiple: int = 1, rng: random.Random | None = None,
                seeds: Sequence[int] | None = None, device: torch.device | str | None = None) -> Batch:
        """Lay out encoded examples (the layout on ``device``, default the model's; data-loading
        workers build it on the CPU). In training mode, applies CFG condition dropout (drawn from
        ``rng``, or per example from ``seeds``)."""
        examples = [list(ex) for ex in examples]
        for i, ex in enumerate(examples):
            for j, item in enumerate(ex):
                if not isinstance(item, Item):
                    raise ValueError(f"example {i}, segment {j}: expected an Item, got {type(item).__name__}")
                self.adapter(item.modality)
        if seeds is not None and len(seeds) != len(examples):
            raise ValueError(f"{len(seeds)} seeds for {len(examples)} examples")
        if self.training and self.cond_dropout > 0:
            draws = ([random.Random(s).random() for s in seeds] if seeds is not None
                     else [(rng or random).random() for _ in examples])
            examples = [self._drop_condition(ex) if u < self.cond_dropout else ex
                        for ex, u in zip(examples, draws)]
        segments = [[Segment(it.modality, self.adapters[it.modality].num_positions(it.payload),
                             it.payload) for it in ex] for ex in examples]
        layout = build_layout(segments, self.adapters, max_len=max_len, pack=pack,
                              pad_to_multiple=pad_to_multiple, device=self.device if device is None else device)
        return Batch(examples, layout, list(seeds) if seeds is not None else None)

    def _drop_condition(self, example: list[Item]) -> list[Item]:
        first = next((j for j, it in enumerate(example)
                      if self.adapters[it.modality].kind == "continuous"), None)
        if not first:  # no continuous span, or nothing before it
            return example
        dropped = [Item(it.modality, self.adapters[it.modality].drop_condition(it.payload), it.max_t)
                   if self.adapters[it.modality].kind == "discrete" else it
                   for it in example[:first]]
        return [it for it in dropped if it.payload.numel() > 0] + example[first:]

    # -- training -----------------------------------------------------------------------------
    def forward(self, batch: Batch, generator: torch.Generator | None = None, **kwargs) -> LossOutput:
        """Same as :meth:`loss` (so DDP/FSDP wrappers see a forward call)."""
        return self.loss(batch, generator, **kwargs)

    def loss(self, batch: Batch, generator: torch.Generator | None = None,
             t: Mapping[str, Tensor] | None = None,
             noise: Mapping[str, Sequence[Tensor]] | None = None,
             normalize: Mapping[str, float] | None = None) -> LossOutput:
        """Total loss and its per-modality parts for one laid-out batch.

        Args:
            batch: from :meth:`collate`.
            generator: draws each continuous span's step (respecting its ``max_t``) and noise;
                ignored when the batch has per-example ``seeds``.
            t, noise: optional fixed steps ``(n_spans,)`` and noises (one per span) per
                continuous modality, in placement order (evaluation on a fixed grid, tests).
            normalize: divide each modality's summed loss by this count instead of averaging
                over this batch (the trainer passes global counts, so micro-batches and
                processes add up to exactly the mean over the whole step).
        """
        layout = batch.layout
        payloads = self._payloads(batch)
        if batch.seeds is not None and t is None and noise is None:
            t, noise = self._seeded_draws(batch, payloads)
        embedded, targets, steps, noisy, clean = {}, {}, {}, {}, {}
        for name, items in payloads.items():
            a = self.adapters[name]
            x = _move([it.payload for it in items], self.device)
            if a.kind == "continuous":
                diff = self.diffusion[name]
                n = len(x)
                if t is not None and name in t:
                    steps[name] = to_device(torch.as_tensor(t[name]).long(), self.device)
                else:
                    max_t = torch.tensor([diff.T - 1 if it.max_t is None else it.max_t for it in items])
                    steps[name] = to_device(diff.sample_timesteps(n, max_t, generator=generator), self.device)
                tt = steps[name]
                if noise is not None and name in noise:
                    eps = _move(list(noise[name]), self.device)
                else:
                    eps = _move([torch.randn(it.payload.shape, generator=generator, dtype=it.payload.dtype)
                                 for it in items], self.device)
                if len(eps) != n or tt.shape != (n,):
                    raise ValueError(f"{name!r}: need {n} steps and noises, got {tuple(tt.shape)} and {len(eps)}")
                if all(p.shape == x[0].shape for p in x):  # one batched op for same-shape spans
                    X, E = torch.stack(x), torch.stack(eps)
                    x_t, targets[name] = list(diff.q_sample(X, tt, E)), list(diff.target(X, E, tt))
                else:
                    x_t = [diff.q_sample(p[None], tt[i : i + 1], e[None])[0] for i, (p, e) in enumerate(zip(x, eps))]
                    targets[name] = [diff.target(p[None], e[None], tt[i : i + 1])[0]
                                     for i, (p, e) in enumerate(zip(x, eps))]
                noisy[name], clean[name] = x_t, x
                embedded[name] = a.embed(x_t, tt)
            else:
                embedded[name] = a.embed(x)
        out = self._backbone(layout, embedded)
        parts, counts = {}, {}
        lm_counts = self._lm_counts(batch)
        scored = self._scored(batch)  # per discrete modality: (positions it scores, their targets)
        for name, emb in embedded.items():
            a = self.adapters[name]
            if a.kind == "discrete":
                counts[name] = lm_counts[name]
                if counts[name] == 0:
                    continue
                where, tgt = scored[name]
                pred = a.head(out.reshape(-1, out.shape[-1]).index_select(0, where), None)
                total = F.cross_entropy(pred.float(), tgt, reduction="sum")
            else:
                pred = a.head(layout.gather(out, name), emb)
                diff, tt = self.diffusion[name], steps[name]
                if all(p.shape == pred[0].shape for p in pred):  # weighted per-span MSE
                    span = diff.loss(torch.stack(pred), torch.stack(targets[name]), tt)
                else:
                    span = torch.cat([diff.loss(p[None], y[None], tt[i : i + 1])
                                      for i, (p, y) in enumerate(zip(pred, targets[name]))])
                if self.fourier_weight.get(name):
                    span = span + self.fourier_weight[name] * self._fourier(name, pred, noisy[name], clean[name], steps[name])
                total, counts[name] = span.sum(), len(span)
            denom = normalize[name] if normalize is not None and name in normalize else counts[name]
            parts[name] = total / denom
        if not parts:
            raise ValueError("batch has no loss targets (no next tokens and no continuous spans)")
        total = sum(self.loss_weights[n] * v for n, v in parts.items())
        return LossOutput(total, parts, counts, steps)

    def _fourier(self, name, preds, x_t, x0, t) -> Tensor:
        """Per span: MSE between FFTs (first axis, norm="forward") of predicted and true x0."""
        diff = self.diffusion[name]
        out = []
        for i, (p, xt, x) in enumerate(zip(preds, x_t, x0)):
            x0_hat = diff.convert(xt[None].float(), t[i : i + 1], p[None].float(), "x0")[0]
            d = torch.fft.fft(x0_hat, dim=0, norm="forward") - torch.fft.fft(x.float(), dim=0, norm="forward")
            out.append(d.abs().pow(2).mean())
        return torch.stack(out)

    def target_counts(self, batch: Batch) -> dict[str, int]:
        """What :meth:`loss` averages over, per modality: next-token targets (discrete) or
        spans (continuous). Computed from the layout alone, before any forward pass."""
        payloads = self._payloads(batch)
        lm = self._lm_counts(batch)
        return {name: lm[name] if self.adapters[name].kind == "discrete" else len(items)
                for name, items in payloads.items()}

    def _seeded_draws(self, batch: Batch, payloads: dict[str, list[Item]]):
        """Each continuous span's step and noise from a generator seeded by (example seed,
        segment index)."""
        t, noise = {}, {}
        by_modality: dict[str, list] = {}
        for p in batch.layout.placements:
            if self.adapters[p.modality].kind == "continuous":
                by_modality.setdefault(p.modality, []).append(p)
        for name, places in by_modality.items():
            diff = self.diffusion[name]
            steps, eps = [], []
            for p, it in zip(places, payloads[name]):
                g = torch.Generator().manual_seed(batch.seeds[p.example] * 1009 + p.segment)
                hi = diff.T - 1 if it.max_t is None else it.max_t
                steps.append(diff.sample_timesteps(1, hi, generator=g))
                eps.append(torch.randn(it.payload.shape, generator=g, dtype=it.payload.dtype))
            t[name], noise[name] = torch.cat(steps), eps
        return t, noise

    def _payloads(self, batch: Batch) -> dict[str, list[Item]]:
        """Items of each modality in placement order (computed once per batch)."""
        cache = batch._derived
        if "payloads" not in cache:
            out: dict[str, list[Item]] = {}
            for p in batch.layout.placements:
                out.setdefault(p.modality, []).append(batch.examples[p.example][p.segment])
            cache["payloads"] = out
        return cache["payloads"]

    def _batch_lm_targets(self, batch: Batch) -> tuple[Tensor, Tensor] | None:
        """:meth:`_lm_targets` of a batch on the CPU, computed once (the trainer counts targets
        before the loss uses them); None when the model has no discrete modality."""
        cache = batch._derived
        if "lm_targets" not in cache:
            discrete = any(a.kind == "discrete" for a in self.adapters.values())
            cache["lm_targets"] = self._lm_targets(batch.layout, self._payloads(batch)) if discrete else None
        return cache["lm_targets"]

    def _scored(self, batch: Batch) -> dict[str, tuple[Tensor, Tensor]]:
        """Per discrete modality, the flat positions its head scores and their targets, on the
        model's device (one host-to-device copy per batch)."""
        cache = batch._derived
        if "scored" not in cache:
            out = {}
            targets = self._batch_lm_targets(batch)
            if targets is None:
                cache["scored"] = out
                return out
            (tgt, scorer), names = targets, batch.layout.host.modality_names
            for code, name in enumerate(names):
                if self.adapters[name].kind == "discrete":
                    where = torch.nonzero(scorer == code).flatten()
                    out[name] = tuple(cat_to_device([where, tgt.index_select(0, where)], self.device))
            cache["scored"] = out
        return cache["scored"]

    def _lm_counts(self, batch: Batch) -> dict[str, int]:
        """Next-token targets per discrete modality, counted on the CPU once per batch (the
        trainer asks before the loss does)."""
        cache = batch._derived
        if "lm_counts" not in cache:
            targets = self._batch_lm_targets(batch)
            if targets is None:
                cache["lm_counts"] = {}
                return cache["lm_counts"]
            scorer, names = targets[1], batch.layout.host.modality_names
            cache["lm_counts"] = {name: int((scorer == names.index(name)).sum())
                                  for name, a in self.adapters.items()
                                  if a.kind == "discrete" and name in self._payloads(batch)}
        return cache["lm_counts"]

    def _backbone(self, layout: SequenceLayout, embedded: dict[str, Embedded]) -> Tensor:
        B, L, D = layout.batch_size, layout.seq_len, self.dim
        first = next(iter(embedded.values())).tokens
        h = first.new_zeros(B, L, D)
        C = self.backbone.args.cond_dim
        cond = first.new_zeros(B, L, C) if C else None
        for name, emb in embedded.items():
            n = int(layout.index(name).numel())
            if emb.tokens.shape != (n, D):
                raise ValueError(f"adapter {name!r} embedded {tuple(emb.tokens.shape)}, expected {(n, D)}")
            h = layout.scatter(emb.tokens, name, h)
            if emb.cond is not None:
                if cond is None:
                    raise ValueError(f"adapter {name!r} returns adaLN conditioning but the backbone "
                                     "has cond_dim=0; set TransformerArgs.cond_dim")
                cond = layout.scatter(emb.cond, name, cond)
        return self.backbone(h, layout, cond=cond)

    def _lm_targets(self, layout: SequenceLayout, payloads: dict[str, list[Item]]) -> tuple[Tensor, Tensor]:
        """Next-token targets ``(B * L,)`` (-100 where none) and which discrete modality's head
        scores each position ``(B * L,)`` (an index into ``layout.modality_names``; -1 where
        none); built on the CPU (the host copy of the layout), where counting costs no GPU sync.

        The rules at modality boundaries (docs/writing-an-adapter.md): a position of a discrete
        modality whose next position (same document) is a token of discrete modality M is scored
        by M's head — inside a span of M, and at the marker that opens it, so entering M is
        learnable; the last token of a span of M whose adapter has an ``end_token`` is scored by
        M's head with that target — a span learns to end itself; positions of continuous
        modalities, and positions followed by a continuous span, padding or another document,
        have no target (Transfusion: no LM loss at the BOI position)."""
        h = layout.host
        B, L = h.batch_size, h.seq_len
        ids = torch.full((B * L,), -100, dtype=torch.long)
        for name, items in payloads.items():
            if self.adapters[name].kind == "discrete":
                ids.index_copy_(0, h.index(name), torch.cat([it.payload.cpu().long() for it in items]))
        ids = ids.view(B, L)
        names = h.modality_names
        discrete = torch.tensor([self.adapters[n].kind == "discrete" for n in names] + [False])  # [-1]: padding
        ends = torch.tensor([_end_token(self.adapters[n]) for n in names] + [-100])
        m, d = h.modality, h.document
        is_discrete = discrete[m]  # padding's -1 reads the last entry
        same_doc = (d[:, :-1] == d[:, 1:]) & (d[:, :-1] >= 0)
        tgt = torch.full((B, L), -100, dtype=torch.long)
        scorer = torch.full((B, L), -1, dtype=torch.long)
        into = is_discrete[:, :-1] & same_doc & is_discrete[:, 1:]  # a discrete position before a token
        tgt[:, :-1] = torch.where(into, ids[:, 1:], -100)
        scorer[:, :-1] = torch.where(into, m[:, 1:], -1)
        continues = torch.zeros(B, L, dtype=torch.bool)
        continues[:, :-1] = same_doc & (m[:, 1:] == m[:, :-1])
        last = is_discrete & ~continues & (ends[m] >= 0)  # the last token of a span that can end itself
        tgt = torch.where(last, ends[m], tgt)
        scorer = torch.where(last, m, scorer)
        return tgt.view(-1), scorer.view(-1)

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, prompts: Sequence[Sequence[Item]], max_len: int) -> tuple[KVCache, Tensor]:
        """Encode prompts into a fresh KV cache (left-padded to a common length).

        Continuous items in a prompt are taken as clean data (``t = 0``) and attend to
        themselves as their adapter says. Returns the cache and ``(B, D)`` hidden states of each
        prompt's last position.
        """
        rows = []
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {i} is empty")
            toks, conds, spans = [], [], []
            for j, it in enumerate(prompt):
                a = self.adapter(it.modality)
                emb = self._embed_clean(a, it.payload[None].to(self.device))
                n = emb.tokens.shape[0]
                toks.append(emb.tokens)
                conds.append(emb.cond)
                spans.append(torch.full((n,), j if a.attention == "bidirectional" else -1))
            rows.append((toks, conds, spans))
        lengths = [sum(t.shape[0] for t in r[0]) for r in rows]
        n, B, D = max(lengths), len(rows), self.dim
        if n > max_len:
            raise ValueError(f"prompt of {n} positions exceeds max_len={max_len}")
        C = self.backbone.args.cond_dim
        h = torch.zeros(B, n, D, device=self.device)
        cond = torch.zeros(B, n, C, device=self.device) if C else None
        span = torch.full((B, n), -1, dtype=torch.long)
        valid = torch.zeros(B, n, dtype=torch.bool)
        pos = torch.zeros(B, n, dtype=torch.long)
        for b, ((toks, conds, spans), k) in enumerate(zip(rows, lengths)):
            h[b, n - k :] = torch.cat(toks)
            if cond is not None:
                cond[b, n - k :] = torch.cat([c if c is not None else torch.zeros(t.shape[0], C, device=self.device)
                                              for c, t in zip(conds, toks)])
            span[b, n - k :] = torch.cat(spans)
            valid[b, n - k :] = True
            pos[b, n - k :] = torch.arange(k)
        cache = self.backbone.new_cache(B, max_len)
        out = self.backbone.forward_cached(h, cache, block=span, commit=True, cond=cond,
                                           positions=pos.to(self.device), valid=valid.to(self.device))
        return cache, out[:, -1]

    def _embed_clean(self, a: Adapter, payloads: Tensor) -> Embedded:
        if a.kind == "continuous":
            return a.embed(list(payloads), torch.zeros(len(payloads), dtype=torch.long, device=self.device))
        return a.embed(list(payloads))

    def _run_block(self, a: Adapter, emb: Embedded, B: int, cache: KVCache, commit: bool,
                   rows: Tensor | None = None) -> Tensor:
        n = emb.tokens.shape[0] // B
        h = emb.tokens.view(B, n, self.dim)
        C = self.backbone.args.cond_dim
        cond = emb.cond.view(B, n, C) if emb.cond is not None else (
            torch.zeros(B, n, C, device=self.device) if C else None)
        valid = None if rows is None else rows.to(self.device).bool()[:, None].expand(B, n)
        out = self.backbone.forward_cached(h, cache, block=a.attention, commit=commit, cond=cond, valid=valid)
        return out.reshape(B * n, self.dim)

    @torch.no_grad()
    def token_step(self, ids: Tensor, cache: KVCache, modality: str, rows: Tensor | None = None,
                   head: str | None = None) -> Tensor:
        """Append one token of discrete ``modality`` per row ``(B,)`` to the cache; return the
        next-token logits ``(B, V)`` of ``head`` (default: the same modality) — the modality
        that scores the next position (after the marker that opens a span of discrete M, M).
        ``rows`` ``(B,)`` bool marks the rows that really take a token (others get a padding
        position that nothing attends to)."""
        a, scorer = self.adapter(modality), self.adapter(head or modality)
        if a.kind != "discrete" or scorer.kind != "discrete":
            raise ValueError(f"token_step needs discrete modalities; {modality!r} is {a.kind}, "
                             f"{scorer.name!r} is {scorer.kind}")
        emb = a.embed(list(ids.view(-1, 1).to(self.device)))
        return scorer.head(self._run_block(a, emb, ids.numel(), cache, commit=True, rows=rows), None)

    @torch.no_grad()
    def denoise_step(self, x_t: Tensor, t: Tensor, cache: KVCache, modality: str) -> Tensor:
        """One model evaluation of a continuous span against the cached prefix, without
        writing to the cache. ``x_t`` ``(B, *payload)``, ``t`` ``(B,)`` → prediction ``(B, *payload)``."""
        a = self.adapter(modality)
        emb = a.embed(list(x_t), t.to(self.device))
        return torch.stack(list(a.head(self._run_block(a, emb, x_t.shape[0], cache, commit=False), emb)))

    @torch.no_grad()
    def commit_span(self, x0: Tensor, cache: KVCache, modality: str, rows: Tensor | None = None) -> None:
        """Write the clean span ``x0`` ``(B, *payload)`` into the cache (embedded at ``t = 0``);
        with ``rows`` ``(B,)`` bool, only those rows get it (the others get padding positions)."""
        a = self.adapter(modality)
        self._run_block(a, self._embed_clean(a, x0.to(self.device)), x0.shape[0], cache, commit=True, rows=rows)

    @torch.no_grad()
    def sample_span(self, cache: KVCache, modality: str, shape: Sequence[int], sampler: Sampler,
                    guidance_scale: float | None = None, generator=None, progress: bool = False,
                    uncond_cache: KVCache | None = None) -> Tensor:
        """Denoise a new span against the cached prefix (the prefix is computed once).

        With ``guidance_scale``, either ``uncond_cache`` holds the unconditional prefix of each
        of the ``B`` rows (two passes per step), or ``cache`` holds ``2B`` rows — the first ``B``
        with the condition, the last ``B`` without — evaluated in one batched pass.

        Returns:
            ``(B, *shape)`` clean payloads (not committed; call :meth:`commit_span`).
        """
        rows = cache.batch_size
        if guidance_scale is None:
            denoise = lambda x, t: self.denoise_step(x, t, cache, modality)  # noqa: E731
            B = rows
        elif uncond_cache is not None:
            if uncond_cache.batch_size != rows:
                raise ValueError(f"uncond_cache has {uncond_cache.batch_size} rows, the cache {rows}")
            B = rows
            denoise = classifier_free_guidance(
                lambda x, t: (self.denoise_step(x, t, cache, modality),
                              self.denoise_step(x, t, uncond_cache, modality)), guidance_scale)
        else:
            if rows % 2:
                raise ValueError(f"guidance needs a cache of 2B rows (cond then uncond), got {rows}")
            B = rows // 2
            both = lambda x, t: self.denoise_step(x, t, cache, modality)  # noqa: E731
            denoise = classifier_free_guidance(batched_pair(both), guidance_scale)
        return sampler.sample(denoise, (B, *shape), generator=generator, device=self.device,
                              progress=progress)

    def span_denoiser(self, modality: str):
        """``denoise(x_t, t)`` for examples made of one span of ``modality`` and nothing else —
        the TransFusion time-series model. Runs the ordinary (uncached) forward."""
        a = self.adapter(modality)
        layouts: dict[tuple[int, int], SequenceLayout] = {}

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            emb = a.embed(list(x_t), t.to(self.device))
            B = x_t.shape[0]
            n = emb.tokens.shape[0] // B
            if (B, n) not in layouts:
                layouts[(B, n)] = build_layout([[Segment(modality, n)]] * B, self.adapters,
                                               device=self.device)
            layout = layouts[(B, n)]
            out = self._backbone(layout, {modality: emb})
            return torch.stack(list(a.head(layout.gather(out, modality), emb)))

        return denoise
