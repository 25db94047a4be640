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
returns the raw data; ``encode``, ``embed`` and ``head`` leave their inputs as they were;
``embed``/``head`` shapes agree with ``num_positions``; payloads of one batch never mix (changing
one leaves the others' embeddings and predictions unchanged), in ``train()`` mode as in
``eval()`` (batch statistics mix them); ``train()`` and ``eval()`` compute the same thing apart
from dropout; a continuous ``embed`` depends on the diffusion step ``t``; a discrete
``end_token`` is no content token (``encode`` of your examples never produces it); a finite loss
whose gradients reach every parameter, trained inside text between the adapter's markers; the
adapter's positions never see later segments; ``state_dict`` save/load reproduces outputs (in
``eval()`` mode); bad input raises ``ValueError`` — inputs the kit derives (wrong type, wrong
rank, NaN) plus yours; the adapter follows its parameters to another device (checked on the
``meta`` device, so a CPU-only machine catches a tensor made on the CPU by default; and on CUDA
when a GPU is present); and a tiny-model generation pass: prefill → denoising steps against the
cache → commit (continuous), or token steps with the adapter's head (discrete).

Every check runs on the device of the adapter's parameters, takes a fraction of a second, and a
failure names the check and the adapter method and says what was expected and what came:
``[batch independence, train mode] embed: changing payload 1 changed payload 0's tokens (max
change 0.31); expected no change``.
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


def fail_unless(condition: bool, check: str, method: str, message: str) -> None:
    """:func:`expect` with the check and the adapter method named first."""
    if not condition:
        raise AssertionError(f"[{check}] {method}: {message}")


def _clone(x: Any) -> Any:
    """A deep copy of user data (tensors, arrays, lists, strings)."""
    import copy

    if isinstance(x, Tensor):
        return x.clone()
    return copy.deepcopy(x)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and bool(
            torch.equal(a.cpu(), b.cpu()) or (a.dtype.is_floating_point and torch.allclose(a.cpu(), b.cpu(), equal_nan=True)))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=np.asarray(a).dtype.kind == "f")
    return a == b


def _max_change(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _no_dropout(module: torch.nn.Module):
    """Context: every ``nn.Dropout`` of ``module`` at p = 0 (the declared randomness off)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        drops = [m for m in module.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
        saved = [d.p for d in drops]
        for d in drops:
            d.p = 0.0
        try:
            yield
        finally:
            for d, p_ in zip(drops, saved):
                d.p = p_

    return ctx()


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
            fail_unless(got == expected, "round trip", "decode", f"decode(encode(raw)) gave {got!r}, expected {expected!r}")
        else:
            torch.testing.assert_close(_as_tensor(got).float().cpu(), _as_tensor(expected).float().cpu(),
                                       atol=self.round_trip_atol, rtol=1e-4,
                                       msg=lambda m: f"[round trip] decode: decode(encode(raw)) differs from raw: "
                                                     f"{' '.join(m.split())}")

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

    def _positions(self, adapter: Adapter, payloads: list[Tensor], emb, check: str) -> list[int]:
        """Each payload's ``num_positions``, checked against what ``embed`` returned."""
        sizes = [adapter.num_positions(p) for p in payloads]
        fail_unless(emb.tokens.shape[0] == sum(sizes), check, "embed / num_positions",
                    f"embed returned {emb.tokens.shape[0]} positions for payloads whose num_positions are {sizes} "
                    f"(sum {sum(sizes)}); expected them to agree")
        return sizes

    def _independence(self, adapter: Adapter, mode: str) -> None:
        """Changing payload 1 of 3 leaves payloads 0 and 2's embeddings and predictions alone."""
        check = f"batch independence, {mode} mode"
        device = self._device(adapter)
        p = self._payloads(adapter, 3)
        q = [p[0], self._payloads(adapter, 1, start=3)[0], p[2]]
        t = self._t(adapter, 3)
        with torch.no_grad(), _no_dropout(adapter):
            torch.manual_seed(0)
            ea = adapter.embed(p, t)
            torch.manual_seed(0)
            eb = adapter.embed(q, t)
            sizes_a = self._positions(adapter, p, ea, check)
            sizes_b = self._positions(adapter, q, eb, check)
            for name, xa, xb in (("tokens", ea.tokens, eb.tokens), ("cond", ea.cond, eb.cond)):
                if xa is None:
                    continue
                a0, _, a2 = xa.split(sizes_a)
                b0, _, b2 = xb.split(sizes_b)
                change = max(_max_change(a0, b0), _max_change(a2, b2))
                fail_unless(change <= 1e-5, check, "embed", f"changing payload 1 changed the {name} of payloads 0 or 2 "
                            f"(max change {change:.3g}); expected no change (statistics over the batch, such as "
                            "BatchNorm, mix payloads)")
            h = [torch.randn(n, self.dim, device=device) for n in sizes_a]
            h_b = [h[0], torch.randn(sizes_b[1], self.dim, device=device), h[2]]
            torch.manual_seed(0)
            oa = self._outputs(adapter, ea, torch.cat(h))
            torch.manual_seed(0)
            ob = self._outputs(adapter, eb, torch.cat(h_b))
            if adapter.kind == "discrete":
                oa, ob = list(oa[0].split(sizes_a)), list(ob[0].split(sizes_b))
            for i in (0, 2):
                change = _max_change(oa[i], ob[i])
                fail_unless(change <= 1e-5, check, "head", f"changing payload 1 changed payload {i}'s prediction "
                            f"(max change {change:.3g}); expected no change")

    # -- the checks -------------------------------------------------------------------------
    def test_declares_valid_kind_and_attention(self):
        adapter = self.make_adapter(self.dim)
        try:
            adapter.check()  # names what is wrong (discrete + bidirectional included)
        except ValueError as e:
            raise AssertionError(f"[declarations] name/kind/attention/vocab_size/end_token: {e}") from None
        fail_unless(adapter.dim == self.dim, "declarations", "__init__", f"adapter.dim is {adapter.dim}, expected {self.dim}")

    def test_encode_decode_round_trip(self):
        adapter = self.make_adapter(self.dim).eval()
        for i in range(2):
            raw = self.make_raw(i)
            given = _clone(raw)
            payload = adapter.encode(given)
            fail_unless(_same(given, raw), "inputs unchanged", "encode", "changed the caller's data in place; "
                        "expected encode to leave its input as it was (copy before modifying)")
            self.assert_raw_equal(adapter.decode(payload), raw)

    def test_inputs_are_left_unchanged(self):
        """``encode``, ``embed`` and ``head`` never modify what they are given."""
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim).eval()
        for i in range(2):
            raw = self.make_raw(i)
            given = _clone(raw)
            adapter.encode(given)
            fail_unless(_same(given, raw), "inputs unchanged", "encode", "changed the caller's data in place; "
                        "expected encode to leave its input as it was (copy before modifying)")
        payloads = self._payloads(adapter)
        kept = [p.clone() for p in payloads]
        t = self._t(adapter, len(payloads))
        with torch.no_grad():
            emb = adapter.embed(payloads, t)
            fail_unless(all(torch.equal(p, k) for p, k in zip(payloads, kept)), "inputs unchanged", "embed",
                        "changed the payloads it was given in place; expected them unchanged")
            hidden = torch.randn(emb.tokens.shape[0], self.dim, device=self._device(adapter))
            h0 = hidden.clone()
            self._outputs(adapter, emb, hidden)
            fail_unless(torch.equal(hidden, h0), "inputs unchanged", "head",
                        "changed the hidden states it was given in place; expected them unchanged")

    def test_embed_and_head_shapes(self):
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim).eval()
        payloads = self._payloads(adapter)
        emb = adapter.embed(payloads, self._t(adapter, len(payloads)))
        N = sum(adapter.num_positions(p) for p in payloads)
        fail_unless(tuple(emb.tokens.shape) == (N, self.dim), 'shapes', 'embed/head',
               f"embed returned tokens of shape {tuple(emb.tokens.shape)}, expected {(N, self.dim)} "
               f"(num_positions says {[adapter.num_positions(p) for p in payloads]})")
        fail_unless(emb.cond is None or emb.cond.shape[0] == N, 'shapes', 'embed/head',
               f"embed returned cond of shape {tuple(emb.cond.shape) if emb.cond is not None else None}, "
               f"expected ({N}, C)")
        out = self._outputs(adapter, emb, torch.randn(N, self.dim, device=self._device(adapter)))
        if adapter.kind == "discrete":
            got = tuple(out[0].shape)
            fail_unless(got == (N, adapter.vocab_size), 'shapes', 'embed/head', f"head returned {got}, expected {(N, adapter.vocab_size)}")
        else:
            got = [tuple(o.shape) for o in out]
            want = [tuple(p.shape) for p in payloads]
            fail_unless(got == want, 'shapes', 'embed/head', f"head returned predictions of shapes {got}, expected the payloads' {want}")

    def test_head_linear_is_the_head(self):
        """An adapter that declares ``head_linear`` is scored through that weight in chunked
        training (``train.lm_loss_chunk``): it must be the map ``head`` applies."""
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim).eval()
        linear = adapter.head_linear()
        if linear is None:
            return
        fail_unless(adapter.kind == "discrete", "linear head", "head_linear",
                    "only discrete adapters are scored by the next-token loss; return None")
        weight, bias = linear
        fail_unless(tuple(weight.shape) == (adapter.vocab_size, self.dim), "linear head", "head_linear",
                    f"weight of shape {tuple(weight.shape)}, expected {(adapter.vocab_size, self.dim)}")
        hidden = torch.randn(5, self.dim, device=self._device(adapter))
        with torch.no_grad():
            got = torch.nn.functional.linear(hidden, weight, bias)
            want = self._outputs(adapter, None, hidden)[0]
        fail_unless(torch.allclose(got, want, atol=1e-5, rtol=1e-4), "linear head", "head_linear",
                    f"hidden @ weight.T + bias differs from head(hidden) by {_max_change(got, want):.3g}; "
                    "head_linear must return the head's own map (or None)")

    def test_payloads_of_one_batch_never_mix(self):
        """In ``eval()`` and in ``train()`` mode (where batch statistics would mix payloads)."""
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim)
        self._independence(adapter.eval(), "eval")
        self._independence(adapter.train(), "train")

    def test_train_and_eval_modes_agree_apart_from_dropout(self):
        """With every ``nn.Dropout`` at p = 0, ``train()`` and ``eval()`` compute the same
        embeddings and predictions: a model trained in one mode samples in the other."""
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim)
        payloads = self._payloads(adapter, 3)
        t = self._t(adapter, 3)
        hidden = None
        outs = {}
        with torch.no_grad(), _no_dropout(adapter):
            for mode in ("train", "eval"):
                adapter.train(mode == "train")
                emb = adapter.embed(payloads, t)
                if hidden is None:
                    hidden = torch.randn(emb.tokens.shape[0], self.dim, device=self._device(adapter))
                outs[mode] = (emb, self._outputs(adapter, emb, hidden))
        (et, ot), (ee, oe) = outs["train"], outs["eval"]
        change = _max_change(et.tokens, ee.tokens) if et.tokens.shape == ee.tokens.shape else float("inf")
        fail_unless(change <= 1e-5, "train/eval consistency", "embed", f"train() and eval() embed differently "
                    f"(max change {change:.3g}); expected the same apart from dropout")
        for i, (a, b) in enumerate(zip(ot, oe)):
            change = _max_change(a, b) if a.shape == b.shape else float("inf")
            fail_unless(change <= 1e-5, "train/eval consistency", "head", f"train() and eval() predict differently "
                        f"for payload {i} (max change {change:.3g}); expected the same apart from dropout")

    def test_a_continuous_embed_depends_on_the_diffusion_step(self):
        """A denoiser that cannot tell how noisy its input is cannot denoise it: ``embed`` must
        change with ``t`` (in the tokens or the conditioning), in both modes."""
        adapter = self.make_adapter(self.dim)
        if adapter.kind != "continuous":
            return
        payloads = self._payloads(adapter, 2)
        device = self._device(adapter)
        for mode in ("eval", "train"):
            adapter.train(mode == "train")
            with torch.no_grad(), _no_dropout(adapter):
                lo = adapter.embed(payloads, torch.full((2,), 5, device=device))
                hi = adapter.embed(payloads, torch.full((2,), 900, device=device))
            change = _max_change(lo.tokens, hi.tokens)
            if lo.cond is not None and hi.cond is not None:
                change = max(change, _max_change(lo.cond, hi.cond))
            fail_unless(change > 1e-6, f"depends on t, {mode} mode", "embed", "returned the same tokens and "
                        "conditioning at t=5 and t=900; expected them to depend on the diffusion step")

    def test_the_end_token_is_no_content_token(self):
        """A discrete ``end_token`` that ``encode`` also produces ends generation in the middle of a
        span (silently truncating it)."""
        adapter = self.make_adapter(self.dim)
        end = getattr(adapter, "end_token", None)
        if adapter.kind != "discrete" or end is None:
            return
        for i in range(4):
            ids = adapter.encode(self.make_raw(i))
            hits = int((ids == end).sum())
            fail_unless(hits == 0, "end token", "encode", f"make_raw({i}) encodes to {hits} position(s) with id "
                        f"{end}, the end_token; expected the end token to be an id no content maps to")

    def test_follows_its_parameters_to_another_device(self):
        """On the ``meta`` device (no GPU needed): ``embed`` and ``head`` must make every tensor
        where the adapter's parameters are — a ``torch.arange(n)`` without ``device=`` fails here
        as it would on a GPU."""
        adapter = self.make_adapter(self.dim)
        if next(adapter.parameters(), None) is None:
            return
        payloads = [p.cpu() for p in self._payloads(adapter, 2)]
        meta = adapter.to("meta")
        t = torch.tensor([10, 500], device="meta") if meta.kind == "continuous" else None
        try:
            with torch.no_grad():
                emb = meta.embed([p.to("meta") for p in payloads], t)
                self._outputs(meta, emb, torch.zeros(emb.tokens.shape[0], self.dim, device="meta"))
        except (RuntimeError, NotImplementedError) as e:
            msg = str(e).splitlines()[0]
            if "meta" in msg and ("device" in msg or "expected" in msg):
                raise AssertionError(f"[device placement] embed/head: with the parameters on another device, "
                                     f"{msg}; expected every tensor made on the parameters' device "
                                     "(pass device=... when creating tensors)") from None
            # an operation the meta device does not implement: the check cannot tell, skip it

    def test_runs_on_cuda_when_a_gpu_is_present(self):
        import pytest

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device here (the meta-device check covers placement)")
        adapter = self.make_adapter(self.dim).cuda()
        payloads = self._payloads(adapter, 2)
        emb = adapter.embed(payloads, self._t(adapter, 2))
        out = self._outputs(adapter, emb, torch.randn(emb.tokens.shape[0], self.dim, device="cuda"))
        fail_unless(all(o.is_cuda for o in out), "device placement", "head", "returned tensors off the GPU")

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
            fail_unless(bool(torch.isfinite(out.loss)), 'training', 'loss', f"the loss is not finite: {out}")
            fail_unless(adapter.name in out.parts, 'training', 'loss', f"no loss term for {adapter.name!r}; parts: {sorted(out.parts)}")
            out.loss.backward()
            if step == 0:
                opt.step()
        for name, p in adapter.named_parameters():
            if p.requires_grad:
                fail_unless(p.grad is not None, 'training', 'loss', f"no gradient reaches {name}")
                fail_unless(bool(torch.isfinite(p.grad).all()), 'training', 'loss', f"non-finite gradient in {name}")
                fail_unless(bool(p.grad.abs().sum() > 0), 'training', 'loss', f"zero gradient in {name}")

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
        fail_unless(torch.allclose(outs[0], outs[1], atol=1e-5, rtol=1e-5), 'attention mask', 'embed',
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
                fail_unless(bool(str(e).strip()), "bad input", "encode", f"rejected {what} with an empty message")
                continue
            except Exception as e:  # noqa: BLE001 - the point is to name the wrong exception type
                raise AssertionError(f"[bad input] encode: raised {type(e).__name__} for {what} ({e}); expected "
                                     "ValueError naming what was expected") from None
            raise AssertionError(f"[bad input] encode: accepted {what}; expected a ValueError")

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
            fail_unless(tuple(x.shape) == (1, *payload.shape), 'generation', 'sample_span/commit_span/token_step', f"sample_span gave {tuple(x.shape)}, expected "
                   f"{(1, *payload.shape)}")
            fail_unless(bool(torch.isfinite(x).all()), 'generation', 'sample_span/commit_span/token_step', "sample_span gave non-finite values")
            before = cache.length
            model.commit_span(x, cache, adapter.name)
            fail_unless(cache.length == before + adapter.num_positions(payload), 'generation', 'sample_span/commit_span/token_step',
                   f"commit_span wrote {cache.length - before} positions, expected {adapter.num_positions(payload)}")
            logits = model.token_step(torch.tensor([text.eoi(adapter.name)]), cache, text.name)
            fail_unless(tuple(logits.shape) == (1, text.vocab_size), 'generation', 'sample_span/commit_span/token_step', f"text logits after the span: {tuple(logits.shape)}")
            return
        logits = adapter.head(last, None)  # the marker's position is scored by the adapter's head
        for _ in range(3):
            fail_unless(tuple(logits.shape) == (1, adapter.vocab_size), 'generation', 'sample_span/commit_span/token_step',
                   f"logits of shape {tuple(logits.shape)}, expected {(1, adapter.vocab_size)}")
            tok = logits.argmax(-1).cpu()
            logits = model.token_step(tok, cache, adapter.name)


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
