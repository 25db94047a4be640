"""Conformance kit: a ready-made pytest suite for any adapter.

Subclass :class:`AdapterConformance` in a test file, name the class ``Test…`` and provide two
factories (three for raw data the kit cannot corrupt by itself); pytest then runs every check
below against your adapter::

    from fusion_core.modalities.testing import AdapterConformance

    class TestAudioAdapter(AdapterConformance):
        def make_adapter(self, dim):
            return AudioAdapter(dim, samples_per_position=16)

        def make_raw(self, index):
            return torch.sin(torch.linspace(0, 3 + index, 128))

        def bad_raws(self):  # optional: more bad inputs than the kit derives itself
            return [torch.zeros(100)]

The checks: declared kind/attention/vocab are valid (a discrete adapter must be causal: with
bidirectional attention each position sees the token it predicts); ``decode(encode(raw))``
returns the raw data; ``embed``/``head`` shapes; payloads of one batch never mix (changing one
leaves the others' embeddings and predictions unchanged); a finite loss whose gradients reach
every parameter, trained inside text between the adapter's markers; the adapter's positions never
see later segments; ``state_dict`` save/load reproduces outputs (in ``eval()`` mode); bad input
raises ``ValueError`` — inputs the kit derives (wrong type, wrong rank, NaN) plus yours; and a
tiny-model generation pass: prefill → denoising steps against the cache → commit (continuous), or
token steps with the adapter's head (discrete). Every check runs on the device of the adapter's
parameters, and a failure says what was expected and what came.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusion_core.adapter import Adapter
from fusion_core.diffusion import make_sampler
from fusion_core.model import FusionModel, Item
from fusion_core.transformer import TransformerArgs
from fusion_core.modalities.text import TextAdapter


def expect(condition: bool, message: str) -> None:
    """``assert`` that survives ``python -O`` and says what was expected (pytest does not rewrite
    asserts in an installed package)."""
    if not condition:
        raise AssertionError(message)


class AdapterConformance(ABC):
    """Base class of adapter test suites (see the module docstring)."""

    dim: int = 32
    round_trip_atol: float = 1e-5

    # -- what the adapter author provides ---------------------------------------------------
    @abstractmethod
    def make_adapter(self, dim: int) -> Adapter:
        """A ready adapter (fitted, if it needs fitting) of backbone width ``dim``, on the device
        the checks should run on."""

    @abstractmethod
    def make_raw(self, index: int) -> Any:
        """A valid raw example for ``index`` in 0–3; different indices should give different data."""

    def bad_raws(self) -> list[Any]:
        """More inputs ``encode`` must reject with ``ValueError``, beyond those the kit derives
        from ``make_raw(0)`` (:meth:`derived_bad_raws`). Required when the kit can derive none."""
        return []

    def backbone_args(self, dim: int) -> TransformerArgs:
        # cond_dim = dim so adapters that use adaLN conditioning work too
        return TransformerArgs(dim=dim, n_layers=2, n_heads=4, cond_dim=dim)

    def assert_raw_equal(self, got: Any, expected: Any) -> None:
        if isinstance(expected, str):
            expect(got == expected, f"decode(encode(raw)) gave {got!r}, expected {expected!r}")
        else:
            torch.testing.assert_close(_as_tensor(got).float().cpu(), _as_tensor(expected).float().cpu(),
                                       atol=self.round_trip_atol, rtol=1e-4,
                                       msg=lambda m: f"decode(encode(raw)) differs from raw: {m}")

    # -- helpers ----------------------------------------------------------------------------
    def derived_bad_raws(self) -> list[tuple[str, Any]]:
        """Bad inputs made from a good one: another type, two extra dimensions, a NaN."""
        raw = self.make_raw(0)
        out: list[tuple[str, Any]] = [("an object of the wrong type", object())]
        if isinstance(raw, (Tensor, np.ndarray)):
            x = torch.as_tensor(np.asarray(raw)) if isinstance(raw, np.ndarray) else raw
            out.append((f"rank {x.ndim + 2} instead of {x.ndim}", x[None, None]))
            if x.dtype.is_floating_point and x.numel():
                nan = x.clone()
                nan.view(-1)[0] = float("nan")
                out.append(("a NaN", nan))
        return out

    def _device(self, adapter: Adapter) -> torch.device:
        p = next(adapter.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _model(self, adapter: Adapter) -> tuple[FusionModel, TextAdapter]:
        """The adapter inside text, between its markers: how it is used in a model."""
        text = TextAdapter(self.dim, markers=(adapter.name,), name="text_ctx")
        model = FusionModel(self.backbone_args(self.dim), {adapter.name: adapter, text.name: text})
        return model.to(self._device(adapter)), text

    def _example(self, adapter: Adapter, text: TextAdapter, payload: Tensor, after: str = "after") -> list[Item]:
        return [Item(text.name, text.encode("before", bos=True, append=[f"<boi:{adapter.name}>"])),
                Item(adapter.name, payload),
                Item(text.name, text.encode(after, append=[f"<eoi:{adapter.name}>"]))]

    def _payloads(self, adapter: Adapter, n: int = 2, start: int = 0) -> list[Tensor]:
        device = self._device(adapter)
        return [adapter.encode(self.make_raw(i)).to(device) for i in range(start, start + n)]

    def _t(self, adapter: Adapter, n: int) -> Tensor | None:
        if adapter.kind != "continuous":
            return None
        return (torch.arange(n) * 100 + 10).to(self._device(adapter))

    def _embed_fixed(self, model: FusionModel, batch) -> dict:
        """Embed every modality of a batch deterministically (continuous items at t = 10)."""
        out = {}
        for name, items in model._payloads(batch).items():
            ad = model.adapters[name]
            t = torch.full((len(items),), 10, device=model.device) if ad.kind == "continuous" else None
            out[name] = ad.embed([it.payload.to(model.device) for it in items], t)
        return out

    def _outputs(self, adapter: Adapter, emb, hidden: Tensor) -> list[Tensor]:
        out = adapter.head(hidden, None if adapter.kind == "discrete" else emb)
        return [out] if isinstance(out, Tensor) else list(out)

    # -- the checks -------------------------------------------------------------------------
    def test_declares_valid_kind_and_attention(self):
        adapter = self.make_adapter(self.dim)
        adapter.check()  # raises ValueError naming what is wrong (discrete + bidirectional included)
        expect(adapter.dim == self.dim, f"adapter.dim is {adapter.dim}, expected {self.dim}")
        if adapter.kind == "discrete":
            expect(isinstance(adapter.vocab_size, int), "a discrete adapter needs an int vocab_size")
            expect(adapter.attention == "causal", "a discrete adapter must be causal")

    def test_encode_decode_round_trip(self):
        adapter = self.make_adapter(self.dim).eval()
        for i in range(2):
            raw = self.make_raw(i)
            self.assert_raw_equal(adapter.decode(adapter.encode(raw)), raw)

    def test_embed_and_head_shapes(self):
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim).eval()
        payloads = self._payloads(adapter)
        emb = adapter.embed(payloads, self._t(adapter, len(payloads)))
        N = sum(adapter.num_positions(p) for p in payloads)
        expect(tuple(emb.tokens.shape) == (N, self.dim),
               f"embed returned tokens of shape {tuple(emb.tokens.shape)}, expected {(N, self.dim)} "
               f"(num_positions says {[adapter.num_positions(p) for p in payloads]})")
        expect(emb.cond is None or emb.cond.shape[0] == N,
               f"embed returned cond of shape {tuple(emb.cond.shape) if emb.cond is not None else None}, "
               f"expected ({N}, C)")
        out = self._outputs(adapter, emb, torch.randn(N, self.dim, device=self._device(adapter)))
        if adapter.kind == "discrete":
            got = tuple(out[0].shape)
            expect(got == (N, adapter.vocab_size), f"head returned {got}, expected {(N, adapter.vocab_size)}")
        else:
            got = [tuple(o.shape) for o in out]
            want = [tuple(p.shape) for p in payloads]
            expect(got == want, f"head returned predictions of shapes {got}, expected the payloads' {want}")

    def test_payloads_of_one_batch_never_mix(self):
        """Changing payload 1 of 3 leaves payloads 0 and 2's embeddings and predictions alone."""
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim).eval()
        device = self._device(adapter)
        p = self._payloads(adapter, 3)
        q = [p[0], self._payloads(adapter, 1, start=3)[0], p[2]]
        t = self._t(adapter, 3)
        with torch.no_grad():
            ea, eb = adapter.embed(p, t), adapter.embed(q, t)
            sizes_a = [adapter.num_positions(x) for x in p]
            sizes_b = [adapter.num_positions(x) for x in q]
            for name, xa, xb in (("tokens", ea.tokens, eb.tokens), ("cond", ea.cond, eb.cond)):
                if xa is None:
                    continue
                a0, _, a2 = xa.split(sizes_a)
                b0, _, b2 = xb.split(sizes_b)
                expect(torch.allclose(a0, b0, atol=1e-6) and torch.allclose(a2, b2, atol=1e-6),
                       f"embed mixes payloads: changing payload 1 changed the {name} of payloads 0 or 2 "
                       f"(max change {max((a0 - b0).abs().max().item(), (a2 - b2).abs().max().item()):.3g})")
            h = [torch.randn(n, self.dim, device=device) for n in sizes_a]
            h_b = [h[0], torch.randn(sizes_b[1], self.dim, device=device), h[2]]
            oa, ob = self._outputs(adapter, ea, torch.cat(h)), self._outputs(adapter, eb, torch.cat(h_b))
            if adapter.kind == "discrete":
                oa, ob = list(oa[0].split(sizes_a)), list(ob[0].split(sizes_b))
            for i in (0, 2):
                expect(torch.allclose(oa[i], ob[i], atol=1e-5),
                       f"head mixes payloads: changing payload 1 changed payload {i}'s prediction "
                       f"(max change {(oa[i] - ob[i]).abs().max().item():.3g})")

    def test_loss_is_finite_and_gradients_reach_every_parameter(self):
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim)
        model, text = self._model(adapter)
        batch = model.collate([self._example(adapter, text, p) for p in self._payloads(adapter)])
        # one optimizer step first: zero-initialized layers (adaLN-Zero) pass no gradient at init
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for step in range(2):
            opt.zero_grad()
            out = model.loss(batch, generator=torch.Generator().manual_seed(step))
            expect(bool(torch.isfinite(out.loss)), f"the loss is not finite: {out}")
            expect(adapter.name in out.parts, f"no loss term for {adapter.name!r}; parts: {sorted(out.parts)}")
            out.loss.backward()
            if step == 0:
                opt.step()
        for name, p in adapter.named_parameters():
            if p.requires_grad:
                expect(p.grad is not None, f"no gradient reaches {name}")
                expect(bool(torch.isfinite(p.grad).all()), f"non-finite gradient in {name}")
                expect(bool(p.grad.abs().sum() > 0), f"zero gradient in {name}")

    def test_positions_never_see_later_segments(self):
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim)
        model, text = self._model(adapter)
        model.eval()
        payload = self._payloads(adapter, 1)[0]
        outs = []
        for ending in ("one ending", "a different, longer ending"):
            batch = model.collate([self._example(adapter, text, payload, after=ending)])
            with torch.no_grad():
                hidden = model._backbone(batch.layout, self._embed_fixed(model, batch))
            first = batch.layout.placements_of(adapter.name)[0]
            outs.append(hidden[0, first.start : first.stop])
        expect(torch.allclose(outs[0], outs[1], atol=1e-5, rtol=1e-5),
               f"the adapter's positions depend on text after them (max change "
               f"{(outs[0] - outs[1]).abs().max().item():.3g}): the attention mask leaks")

    def test_state_dict_round_trip_reproduces_outputs(self, tmp_path):
        torch.manual_seed(0)
        a = self.make_adapter(self.dim).eval()
        torch.save(a.state_dict(), tmp_path / "adapter.pt")
        torch.manual_seed(1)
        b = self.make_adapter(self.dim).eval()
        b.load_state_dict(torch.load(tmp_path / "adapter.pt", map_location=self._device(b)))
        payloads = self._payloads(a)
        with torch.no_grad():
            ea, eb = a.embed(payloads, self._t(a, 2)), b.embed(payloads, self._t(b, 2))
            torch.testing.assert_close(ea.tokens, eb.tokens,
                                       msg=lambda m: f"embed differs after a state_dict round trip: {m}")
            h = torch.randn(ea.tokens.shape, device=ea.tokens.device)
            for x, y in zip(self._outputs(a, ea, h), self._outputs(b, eb, h)):
                torch.testing.assert_close(x, y, msg=lambda m: f"head differs after a state_dict round trip: {m}")
        raw = self.make_raw(0)
        self.assert_raw_equal(b.decode(b.encode(raw)), a.decode(a.encode(raw)))

    def test_bad_input_raises_value_error(self):
        adapter = self.make_adapter(self.dim)
        cases = self.derived_bad_raws()
        cases += [(f"bad_raws()[{i}]", bad) for i, bad in enumerate(self.bad_raws())]
        expect(len(cases) > 1 or self.bad_raws(), "the kit derives no bad inputs from make_raw(0) of type "
               f"{type(self.make_raw(0)).__name__}: define bad_raws() with inputs encode must reject")
        for what, bad in cases:
            try:
                adapter.encode(bad)
            except ValueError as e:
                expect(bool(str(e).strip()), f"encode rejected {what} with an empty message")
                continue
            except Exception as e:  # noqa: BLE001 - the point is to name the wrong exception type
                raise AssertionError(f"encode raised {type(e).__name__} for {what}, expected ValueError: {e}") from e
            raise AssertionError(f"encode accepted {what}, expected a ValueError")

    def test_generation_runs_against_the_cache(self):
        """A tiny untrained model: a span drawn against a cached prompt and committed (continuous),
        or tokens written with the adapter's head (discrete)."""
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim)
        model, text = self._model(adapter)
        model.eval()
        payload = self._payloads(adapter, 1)[0]
        prompt = [Item(text.name, text.encode("before", bos=True, append=[f"<boi:{adapter.name}>"]))]
        cache, last = model.prefill([prompt], max_len=64 + adapter.num_positions(payload))
        if adapter.kind == "continuous":
            sampler = make_sampler("ddim", model.diffusion[adapter.name], 2)
            x = model.sample_span(cache, adapter.name, tuple(payload.shape), sampler)
            expect(tuple(x.shape) == (1, *payload.shape), f"sample_span gave {tuple(x.shape)}, expected "
                   f"{(1, *payload.shape)}")
            expect(bool(torch.isfinite(x).all()), "sample_span gave non-finite values")
            before = cache.length
            model.commit_span(x, cache, adapter.name)
            expect(cache.length == before + adapter.num_positions(payload),
                   f"commit_span wrote {cache.length - before} positions, expected {adapter.num_positions(payload)}")
            logits = model.token_step(torch.tensor([text.eoi(adapter.name)]), cache, text.name)
            expect(tuple(logits.shape) == (1, text.vocab_size), f"text logits after the span: {tuple(logits.shape)}")
            return
        logits = adapter.head(last, None)  # the marker's position is scored by the adapter's head
        for _ in range(3):
            expect(tuple(logits.shape) == (1, adapter.vocab_size),
                   f"logits of shape {tuple(logits.shape)}, expected {(1, adapter.vocab_size)}")
            tok = logits.argmax(-1).cpu()
            logits = model.token_step(tok, cache, adapter.name)


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
