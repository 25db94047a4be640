"""The conformance kit against planted bugs (#26): each adapter below is a working one with one
bug that breaks training or generation; the kit must fail it with a message that names the check
and the adapter method. The bugs the issue saw slip through are all here, with others."""

import numpy as np
import pytest
import torch
from torch import nn

from fusion_core.adapter import Adapter, Embedded
from fusion_core.embeddings import TimestepEmbedding, sinusoidal
from fusion_core.modalities.testing import AdapterConformance


class Pen(Adapter):
    """A correct continuous adapter: pen strokes (n, 2) of dx/dy, 4 points per position."""

    kind = "continuous"
    attention = "bidirectional"

    def __init__(self, dim: int, name: str = "pen"):
        super().__init__(dim)
        self.name = name
        self.inp = nn.Linear(8, dim)
        self.out = nn.Linear(dim, 8)
        self.t_embed = TimestepEmbedding(dim)

    def encode(self, raw):
        try:
            x = torch.as_tensor(np.asarray(raw, dtype=np.float32)) if not isinstance(raw, torch.Tensor) else raw
        except (TypeError, ValueError):
            raise ValueError(f"a stroke is an (n, 2) array of numbers, got {type(raw).__name__}") from None
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != 2 or x.shape[0] % 4 or not x.shape[0]:
            raise ValueError(f"a stroke is (n, 2) with n a positive multiple of 4, got {getattr(x, 'shape', x)}")
        if not torch.isfinite(x).all():
            raise ValueError("a stroke must be finite")
        return x.float().clone()

    def num_positions(self, payload):
        return payload.shape[0] // 4

    def frames(self, payloads):
        device = self.inp.weight.device
        return [p.to(device, self.inp.weight.dtype).reshape(-1, 8) for p in payloads]

    def embed(self, payloads, t=None):
        device = self.inp.weight.device
        tokens = [self.inp(f) + sinusoidal(torch.arange(len(f), device=device), self.dim).to(f.dtype)
                  + self.t_embed(t[i : i + 1].to(device)) for i, f in enumerate(self.frames(payloads))]
        return Embedded(torch.cat(tokens), context=[len(x) for x in tokens])

    def head(self, hidden, embedded):
        return [self.out(h).reshape(-1, 2) for h in hidden.split(embedded.context)]

    def decode(self, payload):
        return payload


class Letters(Adapter):
    """A correct discrete adapter: A, C, G, T and an end token."""

    kind = "discrete"
    attention = "causal"

    def __init__(self, dim: int, name: str = "dna"):
        super().__init__(dim)
        self.name, self.vocab_size, self.end_token = name, 5, 4
        self.embedding = nn.Embedding(5, dim)
        self.out = nn.Linear(dim, 5)

    def encode(self, raw):
        if not isinstance(raw, str) or not raw or set(raw) - set("ACGT"):
            raise ValueError(f"a sequence of ACGT, got {raw!r}")
        return torch.tensor(["ACGT".index(c) for c in raw])

    def num_positions(self, payload):
        return payload.numel()

    def embed(self, payloads, t=None):
        return Embedded(self.embedding(torch.cat(list(payloads)).to(self.embedding.weight.device)))

    def head(self, hidden, embedded):
        return self.out(hidden)

    def head_linear(self):
        return self.out.weight, self.out.bias

    def decode(self, payload):
        return "".join("ACGT"[i] for i in payload.tolist() if i < 4)


# -- planted bugs -------------------------------------------------------------------------------------

class BatchNormFrames(Pen):
    def __init__(self, dim):
        super().__init__(dim)
        self.norm = nn.BatchNorm1d(8)

    def frames(self, payloads):
        frames = super().frames(payloads)
        flat = self.norm(torch.cat(frames))  # batch statistics in train mode: payloads mix
        return list(flat.split([len(f) for f in frames]))


class EvalIgnoresT(Pen):
    def embed(self, payloads, t=None):
        return super().embed(payloads, t if self.training else torch.zeros_like(t))


class EvalHalvesHead(Pen):
    def head(self, hidden, embedded):
        out = super().head(hidden, embedded)
        return out if self.training else [o / 2 for o in out]


class IgnoresT(Pen):
    def embed(self, payloads, t=None):
        return super().embed(payloads, torch.zeros_like(t))


class EndTokenIsContent(Letters):
    def __init__(self, dim):
        super().__init__(dim)
        self.end_token = 0  # "A"


class MutatesInput(Pen):
    def encode(self, raw):
        if isinstance(raw, torch.Tensor):
            raw.mul_(0.5)  # scales the caller's stroke in place
        return super().encode(raw)


class WrongPositions(Pen):
    def num_positions(self, payload):
        return payload.shape[0] // 2


class CPUArange(Pen):
    def embed(self, payloads, t=None):
        device = self.inp.weight.device
        tokens = [self.inp(f) + sinusoidal(torch.arange(len(f)), self.dim)  # positions made on the CPU
                  + self.t_embed(t[i : i + 1].to(device)) for i, f in enumerate(self.frames(payloads))]
        return Embedded(torch.cat(tokens), context=[len(x) for x in tokens])


class MixingHead(Pen):
    def head(self, hidden, embedded):
        return [o + hidden.mean() for o in super().head(hidden, embedded)]


class DeadParameter(Pen):
    def __init__(self, dim):
        super().__init__(dim)
        self.unused = nn.Linear(dim, dim)


class NoValidation(Pen):
    def encode(self, raw):
        return torch.as_tensor(np.asarray(raw, dtype=np.float32))


class DecodeScales(Pen):
    def decode(self, payload):
        return payload * 2


class SeesLater(Pen):
    attention = "causal"
    kind = "discrete"  # wrong kind for its loss: a discrete adapter without vocab


class BidirectionalDiscrete(Letters):
    attention = "bidirectional"


class HeadWrongShape(Pen):
    def head(self, hidden, embedded):
        return [o[:-1] for o in super().head(hidden, embedded)]


class NaNHead(Pen):
    def head(self, hidden, embedded):
        return [o * float("nan") for o in super().head(hidden, embedded)]


class RandomEval(Pen):
    def head(self, hidden, embedded):
        return [o + torch.randn_like(o) for o in super().head(hidden, embedded)]


class StateNotSaved(Pen):
    def __init__(self, dim):
        super().__init__(dim)
        self.scale = torch.rand(1)  # a plain attribute: not in the state dict

    def head(self, hidden, embedded):
        return [o * self.scale.to(o.device) for o in super().head(hidden, embedded)]


class DiscreteNoEnd(Letters):
    def encode(self, raw):
        ids = super().encode(raw)
        return torch.cat([ids, torch.tensor([4])])  # appends the end token to the content


class LinearHeadNotTheHead(Letters):
    def head(self, hidden, embedded):
        return self.out(hidden) / 2  # a temperature the declared linear map does not have


def _stroke(i: int) -> torch.Tensor:
    s = torch.linspace(0, 6.28 * (i + 1), 16)
    return torch.stack([torch.cos(s), torch.sin(s)], 1) * 0.3


def kit_for(cls):
    base = Letters if issubclass(cls, Letters) else Pen

    class Kit(AdapterConformance):
        def make_adapter(self, dim):
            return cls(dim)

        def make_raw(self, index):
            return ["ACGT", "TTGCA", "G", "CCCAAAGGG"][index] if base is Letters else _stroke(index)

        def bad_raws(self):
            return ["", "ACGU", 7] if base is Letters else [torch.zeros(5, 2), "a stroke"]

    return Kit()


def run_kit(cls, tmp_path) -> list[str]:
    """Every check of the kit on ``cls``; the failure messages (empty if it passes)."""
    kit = kit_for(cls)
    failures = []
    for name in sorted(n for n in dir(kit) if n.startswith("test_")):
        fn = getattr(kit, name)
        try:
            fn(tmp_path) if "tmp_path" in fn.__code__.co_varnames[: fn.__code__.co_argcount] else fn()
        except AssertionError as e:
            failures.append(f"{name}: {e}")
        except pytest.skip.Exception:
            continue
        except Exception as e:  # noqa: BLE001 - an unhandled error is a failure too, but a raw one
            failures.append(f"{name}: RAW {type(e).__name__}: {e}")
    return failures


PLANTED = {  # bug → a fragment the kit's message must contain (the check and the method)
    BatchNormFrames: "[batch independence, train mode] embed",
    EvalIgnoresT: "[train/eval consistency] embed",
    EvalHalvesHead: "[train/eval consistency] head",
    IgnoresT: "[depends on t, eval mode] embed",
    EndTokenIsContent: "[end token] encode",
    MutatesInput: "[inputs unchanged] encode",
    WrongPositions: "embed / num_positions",
    CPUArange: "[device placement] embed/head",
    MixingHead: "[batch independence, eval mode] head",
    DeadParameter: "no gradient reaches unused",
    NoValidation: "[bad input] encode",
    DecodeScales: "decode(encode(raw)) differs from raw",
    SeesLater: "[declarations] name/kind/attention/vocab_size/end_token: discrete adapter 'pen' must define an int",
    BidirectionalDiscrete: "[declarations] name/kind/attention/vocab_size/end_token: discrete adapter 'dna' declares",
    HeadWrongShape: "head returned predictions of shapes",
    NaNHead: "the loss is not finite",
    RandomEval: "[train/eval consistency] head",
    StateNotSaved: "head differs after a state_dict round trip",
    DiscreteNoEnd: "[end token] encode",
    LinearHeadNotTheHead: "[linear head] head_linear",
}


def test_correct_adapters_pass_every_check(tmp_path):
    assert run_kit(Pen, tmp_path) == [] and run_kit(Letters, tmp_path) == []


@pytest.mark.parametrize("bug", list(PLANTED), ids=[c.__name__ for c in PLANTED])
def test_each_planted_bug_is_caught_by_name(bug, tmp_path):
    failures = run_kit(bug, tmp_path)
    assert failures, f"{bug.__name__} passed the kit"
    hits = [f for f in failures if PLANTED[bug] in f and ": RAW " not in f]
    assert hits, f"{bug.__name__}: expected a failure naming {PLANTED[bug]!r}; got {failures}"
