"""Cached decoding (Transfusion sec. 3.3, inference): a prompt encoded once into the KV cache,
then one-token steps of a discrete modality, denoising steps of a continuous span that attend to
the cached prefix without writing to it, and the commit of a finished span.

Shapes: B rows, n positions of a block, D width, V vocabulary, ``*shape`` a payload's shape.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .adapter import Adapter, Embedded
from .batch import Item
from .diffusion import Guidance, Sampler, batched_pair, classifier_free_guidance
from .layout import Segment, SequenceLayout, build_layout
from .transformer import KVCache


class CachedDecoding:
    """Generation steps of :class:`~fusion_core.model.FusionModel` (a mixin: it reads the
    model's ``backbone``, ``adapter()``, ``dim``, ``device`` and ``_backbone``). The public
    generation functions in :mod:`fusion_core.generation` drive these steps."""

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
        h = torch.zeros(B, n, D, device=self.device, dtype=self.dtype)
        cond = torch.zeros(B, n, C, device=self.device, dtype=self.dtype) if C else None
        span = torch.full((B, n), -1, dtype=torch.long)
        valid = torch.zeros(B, n, dtype=torch.bool)
        pos = torch.zeros(B, n, dtype=torch.long)
        for b, ((toks, conds, spans), k) in enumerate(zip(rows, lengths)):
            h[b, n - k :] = torch.cat(toks)
            if cond is not None:
                cond[b, n - k :] = torch.cat([c.to(self.dtype) if c is not None else
                                              torch.zeros(t.shape[0], C, device=self.device, dtype=self.dtype)
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
            t = torch.zeros(len(payloads), dtype=torch.long, device=self.device)
            return a.embed(list(payloads.to(self.dtype)), t)
        return a.embed(list(payloads))

    def _run_block(self, a: Adapter, emb: Embedded, B: int, cache: KVCache, commit: bool,
                   rows: Tensor | None = None) -> Tensor:
        n = emb.tokens.shape[0] // B
        h = emb.tokens.view(B, n, self.dim).to(self.dtype)
        C = self.backbone.args.cond_dim
        cond = emb.cond.view(B, n, C).to(self.dtype) if emb.cond is not None else (
            torch.zeros(B, n, C, device=self.device, dtype=self.dtype) if C else None)
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
        emb = a.embed(list(x_t.to(self.dtype)), t.to(self.device))
        out = a.head(self._run_block(a, emb, x_t.shape[0], cache, commit=False), emb)
        return torch.stack(list(out)).to(x_t.dtype)  # the sampler's state keeps its (float32) dtype

    @torch.no_grad()
    def commit_span(self, x0: Tensor, cache: KVCache, modality: str, rows: Tensor | None = None) -> None:
        """Write the clean span ``x0`` ``(B, *payload)`` into the cache (embedded at ``t = 0``);
        with ``rows`` ``(B,)`` bool, only those rows get it (the others get padding positions)."""
        a = self.adapter(modality)
        self._run_block(a, self._embed_clean(a, x0.to(self.device)), x0.shape[0], cache, commit=True, rows=rows)

    @torch.no_grad()
    def sample_span(self, cache: KVCache, modality: str, shape: Sequence[int], sampler: Sampler,
                    guidance_scale: float | Guidance | None = None, generator=None, progress: bool = False,
                    uncond_cache: KVCache | None = None) -> Tensor:
        """Denoise a new span against the cached prefix (the prefix is computed once).

        With ``guidance_scale`` (a scale or a :class:`~fusion_core.diffusion.Guidance`), either ``uncond_cache`` holds the unconditional prefix of each
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
                              self.denoise_step(x, t, uncond_cache, modality)), guidance_scale, sampler.diffusion)
        else:
            if rows % 2:
                raise ValueError(f"guidance needs a cache of 2B rows (cond then uncond), got {rows}")
            B = rows // 2
            both = lambda x, t: self.denoise_step(x, t, cache, modality)  # noqa: E731
            denoise = classifier_free_guidance(batched_pair(both), guidance_scale, sampler.diffusion)
        return sampler.sample(denoise, (B, *shape), generator=generator, device=self.device,
                              progress=progress)

    def span_denoiser(self, modality: str):
        """``denoise(x_t, t)`` for examples made of one span of ``modality`` and nothing else —
        the TransFusion time-series model. Runs the ordinary (uncached) forward."""
        a = self.adapter(modality)
        layouts: dict[tuple[int, int], SequenceLayout] = {}

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            emb = a.embed(list(x_t.to(self.dtype)), t.to(self.device))
            B = x_t.shape[0]
            n = emb.tokens.shape[0] // B
            if (B, n) not in layouts:
                layouts[(B, n)] = build_layout([[Segment(modality, n)]] * B, self.adapters,
                                               device=self.device)
            layout = layouts[(B, n)]
            out = self._backbone(layout, {modality: emb})
            return torch.stack(list(a.head(layout.gather(out, modality), emb))).to(x_t.dtype)

        return denoise
