"""Conformance kit: a ready-made pytest suite for any adapter.

Subclass :class:`AdapterConformance` in a test file, name the class ``Test…`` and provide three
factories; pytest then runs every check below against your adapter::

    from fusion_core.modalities.testing import AdapterConformance

    class TestAudioAdapter(AdapterConformance):
        def make_adapter(self, dim):
            return AudioAdapter(dim, samples_per_position=16)

        def make_raw(self, index):
            return torch.sin(torch.linspace(0, 3 + index, 128))

        def bad_raws(self):
            return [torch.zeros(2, 2), torch.full((128,), float("nan"))]

The checks: declared kind/attention are valid; ``decode(encode(raw))`` returns the raw data;
``embed``/``head`` shapes; a finite loss whose gradients reach every parameter, trained next to
text in a :class:`~fusion_core.model.FusionModel`; the adapter's positions never see segments that
come later (the attention mask holds); ``state_dict`` save/load reproduces outputs; bad input
raises ``ValueError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import pytest
import torch
from torch import Tensor

from fusion_core.adapter import Adapter
from fusion_core.model import FusionModel, Item
from fusion_core.transformer import TransformerArgs
from fusion_core.modalities.text import TextAdapter


class AdapterConformance(ABC):
    """Base class of adapter test suites (see the module docstring)."""

    dim: int = 32
    round_trip_atol: float = 1e-5

    # -- what the adapter author provides ---------------------------------------------------
    @abstractmethod
    def make_adapter(self, dim: int) -> Adapter:
        """A ready adapter (fitted, if it needs fitting) of backbone width ``dim``."""

    @abstractmethod
    def make_raw(self, index: int) -> Any:
        """A valid raw example; different ``index`` values should give different data."""

    def bad_raws(self) -> list[Any]:
        """Inputs ``encode`` must reject with ``ValueError``."""
        return []

    def backbone_args(self, dim: int) -> TransformerArgs:
        # cond_dim = dim so adapters that use adaLN conditioning work too
        return TransformerArgs(dim=dim, n_layers=2, n_heads=4, cond_dim=dim)

    def assert_raw_equal(self, got: Any, expected: Any) -> None:
        if isinstance(expected, str):
            assert got == expected
        else:
            torch.testing.assert_close(torch.as_tensor(got).float(), torch.as_tensor(expected).float(),
                                       atol=self.round_trip_atol, rtol=1e-4)

    # -- helpers ----------------------------------------------------------------------------
    def _model(self, adapter: Adapter) -> tuple[FusionModel, TextAdapter | None]:
        adapters: dict[str, Adapter] = {adapter.name: adapter}
        text = None
        if adapter.kind == "continuous":
            text = TextAdapter(self.dim, continuous=(adapter.name,), name="text_ctx")
            adapters[text.name] = text
        return FusionModel(self.backbone_args(self.dim), adapters), text

    def _example(self, adapter: Adapter, text: TextAdapter | None, payload: Tensor,
                 after: str = "after") -> list[Item]:
        if text is None:
            return [Item(adapter.name, payload)]
        return [Item(text.name, text.encode("before", bos=True, append=[f"<boi:{adapter.name}>"])),
                Item(adapter.name, payload),
                Item(text.name, text.encode(after, append=[f"<eoi:{adapter.name}>"]))]

    def _payloads(self, adapter: Adapter, n: int = 2) -> list[Tensor]:
        return [adapter.encode(self.make_raw(i)) for i in range(n)]

    def _t(self, adapter: Adapter, n: int) -> Tensor | None:
        return torch.arange(n) * 100 + 10 if adapter.kind == "continuous" else None

    def _embed_fixed(self, model: FusionModel, batch) -> dict:
        """Embed every modality of a batch deterministically (continuous items at t = 10)."""
        out = {}
        for name, items in model._payloads(batch).items():
            ad = model.adapters[name]
            t = torch.full((len(items),), 10) if ad.kind == "continuous" else None
            out[name] = ad.embed([it.payload for it in items], t)
        return out

    # -- the checks -------------------------------------------------------------------------
    def test_declares_valid_kind_and_attention(self):
        adapter = self.make_adapter(self.dim)
        adapter.check()
        assert adapter.dim == self.dim

    def test_encode_decode_round_trip(self):
        adapter = self.make_adapter(self.dim)
        for i in range(2):
            raw = self.make_raw(i)
            self.assert_raw_equal(adapter.decode(adapter.encode(raw)), raw)

    def test_embed_and_head_shapes(self):
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim)
        payloads = self._payloads(adapter)
        emb = adapter.embed(payloads, self._t(adapter, len(payloads)))
        N = sum(adapter.num_positions(p) for p in payloads)
        assert emb.tokens.shape == (N, self.dim)
        assert emb.cond is None or emb.cond.shape[0] == N
        out = adapter.head(torch.randn(N, self.dim), emb)
        if adapter.kind == "discrete":
            assert out.shape == (N, adapter.vocab_size)
        else:
            assert [tuple(o.shape) for o in out] == [tuple(p.shape) for p in payloads]

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
            assert torch.isfinite(out.loss), out
            assert adapter.name in out.parts
            out.loss.backward()
            if step == 0:
                opt.step()
        for name, p in adapter.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"no gradient reaches {name}"
                assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
                assert p.grad.abs().sum() > 0, f"zero gradient in {name}"

    def test_positions_never_see_later_segments(self):
        torch.manual_seed(0)
        adapter = self.make_adapter(self.dim)
        model, text = self._model(adapter)
        model.eval()
        payload = self._payloads(adapter, 1)[0]
        if text is not None:
            a = self._example(adapter, text, payload, after="one ending")
            b = self._example(adapter, text, payload, after="a different, longer ending")
        else:
            a = [Item(adapter.name, payload), Item(adapter.name, adapter.encode(self.make_raw(1)))]
            b = [Item(adapter.name, payload), Item(adapter.name, adapter.encode(self.make_raw(0)))]
        outs = []
        for ex in (a, b):
            batch = model.collate([ex])
            with torch.no_grad():
                hidden = model._backbone(batch.layout, self._embed_fixed(model, batch))
            first = batch.layout.placements_of(adapter.name)[0]
            outs.append(hidden[0, first.start : first.stop])
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)

    def test_state_dict_round_trip_reproduces_outputs(self, tmp_path):
        torch.manual_seed(0)
        a = self.make_adapter(self.dim)
        torch.save(a.state_dict(), tmp_path / "adapter.pt")
        torch.manual_seed(1)
        b = self.make_adapter(self.dim)
        b.load_state_dict(torch.load(tmp_path / "adapter.pt"))
        payloads = self._payloads(a)
        ea, eb = a.embed(payloads, self._t(a, 2)), b.embed(payloads, self._t(b, 2))
        torch.testing.assert_close(ea.tokens, eb.tokens)
        h = torch.randn(ea.tokens.shape)
        oa, ob = a.head(h, ea), b.head(h, eb)
        for x, y in zip(oa if isinstance(oa, list) else [oa], ob if isinstance(ob, list) else [ob]):
            torch.testing.assert_close(x, y)
        raw = self.make_raw(0)
        self.assert_raw_equal(b.decode(b.encode(raw)), a.decode(a.encode(raw)))

    def test_bad_input_raises_value_error(self):
        adapter = self.make_adapter(self.dim)
        for bad in self.bad_raws():
            with pytest.raises(ValueError):
                adapter.encode(bad)
