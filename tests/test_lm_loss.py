"""The chunked linear-head cross-entropy (fusion_core.lm_loss) against the plain one: values and
gradients, under autocast, inside the model's loss and in the trainer's options."""

import pytest
import torch
import torch.nn.functional as F

from fusion_core import FusionModel, Item, TransformerArgs
from fusion_core.engine.trainer import TrainArgs
from fusion_core.lm_loss import linear_cross_entropy
from modalities.text import TextAdapter
from modalities.timeseries import TimeSeriesAdapter


def _plain(h, w, b, y):
    return F.cross_entropy(F.linear(h, w, b).float(), y, reduction="sum")


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("with_bias", [False, True])
def test_value_and_gradients_match_the_plain_loss(chunk, with_bias):
    g = torch.Generator().manual_seed(chunk)
    N, D, V = 150, 16, 53
    h = torch.randn(N, D, generator=g, requires_grad=True)
    w = torch.randn(V, D, generator=g, requires_grad=True)
    b = torch.randn(V, generator=g, requires_grad=True) if with_bias else None
    y = torch.randint(0, V, (N,), generator=g)
    y[::9] = -100  # ignored rows, as F.cross_entropy's ignore_index
    leaves = [t for t in (h, w, b) if t is not None]
    ref = _plain(h, w, b, y)
    want = torch.autograd.grad(ref * 0.37, leaves)
    out = linear_cross_entropy(h, w, b, y, chunk=chunk)
    got = torch.autograd.grad(out * 0.37, leaves)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


def test_without_gradients_only_the_value_is_computed():
    h, w = torch.randn(20, 8), torch.randn(11, 8)
    y = torch.randint(0, 11, (20,))
    with torch.no_grad():
        out = linear_cross_entropy(h, w, None, y, chunk=6)
    torch.testing.assert_close(out, _plain(h, w, None, y))
    assert not out.requires_grad


def test_bf16_autocast_runs_the_matmul_in_bf16_like_the_plain_head():
    torch.manual_seed(0)
    h = torch.randn(64, 32, requires_grad=True)
    w = (torch.randn(97, 32) * 0.2).requires_grad_()
    y = torch.randint(0, 97, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w).float(), y, reduction="sum")
        out = linear_cross_entropy(h, w, None, y, chunk=16)
    gr, go = torch.autograd.grad(ref, (h, w)), torch.autograd.grad(out, (h, w))
    assert go[0].dtype == h.dtype and go[1].dtype == w.dtype  # gradients in the leaves' dtypes
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=0.5)  # same bf16 logits, summed in float32
    for a, c in zip(go, gr):
        assert (a - c).abs().max() <= 0.02 * c.abs().max()


@pytest.mark.parametrize("bad, match", [
    (dict(hidden=torch.randn(4, 8, 2)), "hidden"),
    (dict(weight=torch.randn(5, 7)), "weight"),
    (dict(target=torch.zeros(3, dtype=torch.long)), "one target per row"),
    (dict(bias=torch.zeros(4)), "bias"),
    (dict(chunk=0), "chunk"),
])
def test_bad_shapes_are_refused_by_name(bad, match):
    args = dict(hidden=torch.randn(4, 8), weight=torch.randn(5, 8), bias=None,
                target=torch.zeros(4, dtype=torch.long), chunk=2)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(**args)


@pytest.mark.parametrize("tie", [False, True])
def test_the_models_loss_is_the_same_chunked_or_not(tie):
    torch.manual_seed(0)
    text = TextAdapter(32, markers=["ts"], tie_weights=tie)
    series = TimeSeriesAdapter(32, 3, patch=4, name="ts")
    model = FusionModel(TransformerArgs(dim=32, n_layers=2, n_heads=4), [text, series])
    ids = text.encode("a rising series with a spike", bos=True, append=["<boi:ts>"])
    rows = [[Item("text", ids), Item("ts", torch.randn(16, 3))],
            [Item("text", ids[:5]), Item("ts", torch.randn(16, 3)), Item("text", ids[5:])]]
    batch = model.collate(rows)
    fixed = dict(t={"ts": torch.tensor([10, 700])}, noise={"ts": [torch.randn(16, 3), torch.randn(16, 3)]})
    results = []
    for chunk in (0, 5):
        model.zero_grad()
        model.lm_loss_chunk = chunk
        out = model.loss(batch, **fixed)
        out.loss.backward()
        results.append((out.parts["text"].detach(), out.loss.detach(),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (p0, l0, g0), (p1, l1, g1) = results
    torch.testing.assert_close(p1, p0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)


def test_trainer_options_are_checked():
    with pytest.raises(ValueError, match="lm_loss_chunk"):
        TrainArgs(lm_loss_chunk=-1)
    with pytest.raises(ValueError, match="reduce-overhead"):
        TrainArgs(compile_mode="fast")
    assert TrainArgs(compile_mode="reduce-overhead", lm_loss_chunk=4096).lm_loss_chunk == 4096
