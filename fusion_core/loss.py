"""The training loss (Transfusion sec. 3.3): ``L = L_LM + lambda * L_DDPM``.

L_LM is the mean next-token cross-entropy over the positions a discrete adapter scores (the rules
at modality boundaries are in :func:`TrainingLoss._lm_targets`); L_DDPM is the mean over spans of
each span's diffusion MSE, with one timestep per span (noise limiting caps it: ``Item.max_t``).
Each modality's sum can be divided by a count given from outside (the trainer's global counts),
so micro-batches and processes add up to the mean over the whole step.

Shapes: B rows, L positions, D width, V vocabulary.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .adapter import Adapter
from .batch import Batch, Item, LossOutput, move_tensors
from .layout import SequenceLayout, cat_to_device, to_device
from .lm_loss import linear_cross_entropy


def _end_token(adapter: Adapter) -> int:
    """A discrete adapter's end-of-span token id (-100 when it has none)."""
    end = getattr(adapter, "end_token", None) if adapter.kind == "discrete" else None
    return -100 if end is None else int(end)


class TrainingLoss:
    """The loss of :class:`~fusion_core.model.FusionModel` (a mixin: it reads the model's
    ``adapters``, ``diffusion``, ``loss_weights``, ``fourier_weight``, ``device`` and
    ``_backbone``)."""

    lm_loss_chunk: int = 0  # > 0: discrete heads with a head_linear() scored this many rows at a time

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
            x = move_tensors([it.payload for it in items], self.device)
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
                    eps = move_tensors(list(noise[name]), self.device)
                else:
                    eps = move_tensors([torch.randn(it.payload.shape, generator=generator, dtype=it.payload.dtype)
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
                embedded[name] = a.embed([xi.to(self.dtype) for xi in x_t], tt)  # the model's dtype in
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
                hidden = out.reshape(-1, out.shape[-1]).index_select(0, where)  # N D
                linear = a.head_linear() if self.lm_loss_chunk else None
                if linear is not None:  # chunked: the (N, V) logits never exist at once
                    total = linear_cross_entropy(hidden, *linear, tgt, chunk=self.lm_loss_chunk)
                else:
                    total = F.cross_entropy(a.head(hidden, None).float(), tgt, reduction="sum")
            else:
                pred = [p.float() for p in a.head(layout.gather(out, name), emb)]  # the loss in float32
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

