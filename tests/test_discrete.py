"""A second discrete modality: the rules at modality boundaries (which head scores which position),
a joint model that learns to open, fill and close a span on its own, protocol rules the model
enforces, and conformance-kit checks that catch broken adapters."""

import pytest
import torch
from torch import nn

from fusion_core import FusionModel, TransformerArgs, generate, interleave
from fusion_core.adapter import Adapter, Embedded
from fusion_core.modalities.testing import AdapterConformance
from fusion_core.modalities.text import TextAdapter


class DNAAdapter(Adapter):
    """Bases A, C, G, T and an end-of-span token: a discrete modality with its own vocabulary."""

    kind, attention = "discrete", "causal"
    BASES = "ACGT"

    def __init__(self, dim, name="dna", attention="causal"):
        super().__init__(dim)
        self.name, self.attention = name, attention
        self.vocab_size, self.end_token = 5, 4
        self.embedding = nn.Embedding(self.vocab_size, dim)
        self.out = nn.Linear(dim, self.vocab_size)

    def encode(self, raw):
        if not isinstance(raw, str) or not raw or set(raw) - set(self.BASES):
            raise ValueError(f"a DNA sequence is a non-empty string of {self.BASES}, got {raw!r}")
        return torch.tensor([self.BASES.index(c) for c in raw])

    def num_positions(self, payload):
        return payload.numel()

    def embed(self, payloads, t=None):
        return Embedded(self.embedding(torch.cat(list(payloads)).to(self.embedding.weight.device)))

    def head(self, hidden, embedded):
        return self.out(hidden)

    def decode(self, payload):
        return "".join(self.BASES[i] for i in payload.tolist() if i < 4)


class TestDNAAdapter(AdapterConformance):
    def make_adapter(self, dim):
        return DNAAdapter(dim)

    def make_raw(self, index):
        return ["ACGT", "TTGCA", "G", "CCCAAAGGG"][index]

    def bad_raws(self):
        return ["", "ACGU", 7, ["A", "C"]]


def _model(dim=32):
    torch.manual_seed(0)
    text = TextAdapter(dim, markers=("dna",))
    return FusionModel(TransformerArgs(dim=dim, n_layers=2, n_heads=4), [text, DNAAdapter(dim)]), text


def test_which_head_scores_which_position_at_the_boundaries():
    model, text = _model()
    batch = model.collate([interleave(model, ["x", ("dna", "ACG"), "y"])])
    tgt, scorer = model._lm_targets(batch.layout, model._payloads(batch))
    names = batch.layout.modality_names
    got = [(names[s] if s >= 0 else None, int(t)) for s, t in zip(scorer.tolist(), tgt.tolist())]
    boi, eos = text.boi("dna"), text.special("<eos>")
    # <bos> x <boi:dna> | A C G | <eoi:dna> y <eos>
    assert got == [("text", ord("x")), ("text", boi),  # text predicts its own tokens, the marker included
                   ("dna", 0),  # the marker that opens the span is scored by the DNA head: enter
                   ("dna", 1), ("dna", 2),  # inside the span
                   ("dna", 4),  # the last base predicts the DNA end token: the span ends itself
                   ("text", ord("y")), ("text", eos), (None, -100)]
    out = model.loss(batch)
    assert out.counts == {"text": 4, "dna": 4}


def test_a_joint_model_learns_to_open_fill_and_close_a_discrete_span():
    model, _ = _model(64)
    genes = {"gene a:": "ACGTTGCA", "gene b:": "TTTGGGCC"}
    data = [interleave(model, [prompt, ("dna", gene), " ok"]) for prompt, gene in genes.items()] * 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        out = model.loss(model.collate(data))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    gens = generate(model, list(genes), max_new_tokens=30)
    for g, gene in zip(gens, genes.values()):  # no user code drives the switch either way
        assert g.segments == [("dna", gene), ("text", " ok")] and g.stop == "eos", g


def test_discrete_adapters_must_be_causal():
    with pytest.raises(ValueError, match="declares attention='bidirectional': each position would see the token"):
        FusionModel(TransformerArgs(dim=32, n_layers=1, n_heads=4), [DNAAdapter(32, attention="bidirectional")])
    with pytest.raises(ValueError, match="end_token must be an id in \\[0, 5\\)"):
        bad = DNAAdapter(32)
        bad.end_token = 9
        bad.check()


class MixingAdapter(DNAAdapter):
    """Adds the batch mean to every position: legal shapes, wrong behaviour."""

    def embed(self, payloads, t=None):
        tok = super().embed(payloads).tokens
        return Embedded(tok + tok.mean(0, keepdim=True))


class MixingHead(DNAAdapter):
    def head(self, hidden, embedded):
        return self.out(hidden) + hidden.mean()


class WithDropout(DNAAdapter):
    def __init__(self, dim):
        super().__init__(dim)
        self.drop = nn.Dropout(0.5)

    def embed(self, payloads, t=None):
        return Embedded(self.drop(super().embed(payloads).tokens))


def _kit(adapter_cls, raws=None):
    class Kit(TestDNAAdapter):
        def make_adapter(self, dim):
            return adapter_cls(dim)

        if raws is not None:
            def make_raw(self, index):
                return raws[index]

            def bad_raws(self):
                return []
    return Kit()


def test_the_kit_catches_adapters_that_mix_a_batch_and_says_what_it_saw():
    with pytest.raises(AssertionError, match=r"\[batch independence, eval mode\] embed: changing payload 1 changed the "
                                             "tokens"):
        _kit(MixingAdapter).test_payloads_of_one_batch_never_mix()
    with pytest.raises(AssertionError, match=r"\[batch independence, eval mode\] head: changing payload 1"):
        _kit(MixingHead).test_payloads_of_one_batch_never_mix()


def test_the_kit_compares_in_eval_mode_and_asks_for_bad_inputs_it_cannot_make(tmp_path):
    _kit(WithDropout).test_state_dict_round_trip_reproduces_outputs(tmp_path)  # dropout is off in eval
    with pytest.raises(AssertionError, match="the kit derives no bad inputs .* define bad_raws"):
        _kit(DNAAdapter, raws=[{"seq": "A"}] * 4).test_bad_input_raises_value_error()
