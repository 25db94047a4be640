import pytest
import torch

from fusion_core import Segment, Transformer, TransformerArgs, build_layout, preset
from fusion_core.transformer import PRESETS
from layouts import MODALITIES


def model(**kw):
    args = TransformerArgs(dim=32, n_layers=2, n_heads=4, **kw)
    return Transformer(args).double().eval()


def causal_layout(B, L):
    return build_layout([[Segment("text", L)] for _ in range(B)], MODALITIES)


@pytest.mark.parametrize("name,params", [
    ("transfusion-0.16b", 0.16e9), ("transfusion-0.37b", 0.37e9), ("transfusion-0.76b", 0.76e9),
    ("transfusion-1.4b", 1.4e9), ("transfusion-7b", 7e9),
])
def test_paper_presets_have_table2_sizes(name, params):
    a = PRESETS[name]
    # parameters of the backbone alone (no embeddings): 4 D^2 attention + 3 D F SwiGLU per layer
    n = a.n_layers * (4 * a.dim**2 + 3 * a.dim * a.hidden_dim)
    # Table 2 counts include embeddings/modality layers; the backbone is the bulk (within 25%)
    assert 0.6 * params < n < 1.1 * params


def test_param_count_matches_formula():
    m = Transformer(preset("tiny"))
    a = m.args
    per_layer = 4 * a.dim**2 + 3 * a.dim * a.hidden_dim + 2 * a.dim
    assert m.num_params() == a.n_layers * per_layer + a.dim


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match="known: .*tiny"):
        preset("huge")


def test_packed_documents_are_independent():
    m = model()
    a = torch.randn(1, 5, 32, dtype=torch.float64)
    b = torch.randn(1, 3, 32, dtype=torch.float64)
    ex = [[Segment("text", 2), Segment("image", 3)], [Segment("image", 3)]]
    lay = build_layout(ex, MODALITIES, max_len=8, pack=True)
    packed = m(torch.cat([a, b], 1), lay)
    alone_a = m(a, build_layout(ex[:1], MODALITIES))
    alone_b = m(b, build_layout(ex[1:], MODALITIES))
    torch.testing.assert_close(packed[:, :5], alone_a)
    torch.testing.assert_close(packed[:, 5:], alone_b)


def test_adaln_zero_condition_is_identity_and_nonzero_matters():
    torch.manual_seed(0)
    plain = model()
    cond = model(cond_dim=6)
    cond.load_state_dict(plain.state_dict(), strict=False)
    for n, p in cond.named_parameters():
        if "modulation" in n:
            torch.nn.init.normal_(p, std=0.5)  # trained-looking, non-zero modulation
    lay = causal_layout(2, 7)
    h = torch.randn(2, 7, 32, dtype=torch.float64)
    zero = torch.zeros(2, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(cond(h, lay, cond=zero), plain(h, lay))
    assert not torch.allclose(cond(h, lay, cond=torch.randn_like(zero)), plain(h, lay))


def test_qk_norm_and_shape_validation():
    m = model(qk_norm=True)
    lay = causal_layout(1, 4)
    assert m(torch.randn(1, 4, 32, dtype=torch.float64), lay).shape == (1, 4, 32)
    with pytest.raises(ValueError, match=r"\(B, L, 32\)"):
        m(torch.randn(1, 4, 16, dtype=torch.float64), lay)
    with pytest.raises(ValueError, match="cond_dim=0"):
        m(torch.randn(1, 4, 32, dtype=torch.float64), lay, cond=torch.zeros(1, 4, 3))


# -- KV cache -----------------------------------------------------------------------------------

def test_incremental_decoding_reproduces_full_forward():
    m = model(cond_dim=4)
    B, L = 2, 9
    h = torch.randn(B, L, 32, dtype=torch.float64)
    c = torch.randn(B, L, 4, dtype=torch.float64)
    full = m(h, causal_layout(B, L), cond=c)
    cache = m.new_cache(B, 16)
    outs = [m.forward_cached(h[:, :4], cache, cond=c[:, :4])]  # prefill
    for i in range(4, L):  # one token at a time
        outs.append(m.forward_cached(h[:, i : i + 1], cache, cond=c[:, i : i + 1]))
    torch.testing.assert_close(torch.cat(outs, 1), full)
    assert cache.length == L


def test_block_step_matches_full_forward_with_span_and_leaves_cache_untouched():
    m = model()
    B, P, n = 2, 6, 5
    prefix = torch.randn(B, P, 32, dtype=torch.float64)
    block = torch.randn(B, n, 32, dtype=torch.float64)
    cache = m.new_cache(B, 32)
    m.forward_cached(prefix, cache)
    before = cache.clone()
    got = m.forward_cached(block, cache, block="bidirectional", commit=False)
    # nothing written
    assert cache.length == before.length
    assert torch.equal(cache.k, before.k) and torch.equal(cache.v, before.v)
    assert torch.equal(cache.valid, before.valid)
    # equals the uncached forward under a layout where the block is a bidirectional span
    lay = build_layout([[Segment("text", P), Segment("image", n)]] * B, MODALITIES)
    full = m(torch.cat([prefix, block], 1), lay)
    torch.testing.assert_close(got, full[:, P:])
    # a second, different block step sees the same prefix (diffusion steps reuse it)
    block2 = torch.randn_like(block)
    torch.testing.assert_close(
        m.forward_cached(block2, cache, block="bidirectional", commit=False),
        m(torch.cat([prefix, block2], 1), lay)[:, P:],
    )


def test_commit_then_continue_matches_full_forward():
    m = model()
    B, P, n, T = 1, 3, 4, 2
    x = torch.randn(B, P + n + T, 32, dtype=torch.float64)
    cache = m.new_cache(B, 16)
    m.forward_cached(x[:, :P], cache)
    m.forward_cached(x[:, P : P + n], cache, block="bidirectional", commit=True)
    after = m.forward_cached(x[:, P + n :], cache)
    lay = build_layout([[Segment("text", P), Segment("image", n), Segment("text", T)]], MODALITIES)
    torch.testing.assert_close(after, m(x, lay)[:, P + n :])
    # the committed keys equal those a fresh cache gets from one pass over the same prefix
    fresh = m.new_cache(B, 16)
    m.forward_cached(x[:, :P], fresh)
    m.forward_cached(x[:, P : P + n], fresh, block="bidirectional")
    torch.testing.assert_close(fresh.k[:, :, :, : P + n], cache.k[:, :, :, : P + n])


def test_left_padded_prompts_in_one_batch():
    m = model()
    long_, short = torch.randn(1, 5, 32, dtype=torch.float64), torch.randn(1, 3, 32, dtype=torch.float64)
    nxt = torch.randn(2, 1, 32, dtype=torch.float64)
    cache = m.new_cache(2, 8)
    h = torch.cat([long_, torch.cat([torch.zeros(1, 2, 32, dtype=torch.float64), short], 1)])
    valid = torch.tensor([[True] * 5, [False] * 2 + [True] * 3])
    pos = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])
    m.forward_cached(h, cache, positions=pos, valid=valid)
    out = m.forward_cached(nxt, cache)
    ref_short = m(torch.cat([short, nxt[1:]], 1), causal_layout(1, 4))[:, -1]
    ref_long = m(torch.cat([long_, nxt[:1]], 1), causal_layout(1, 6))[:, -1]
    torch.testing.assert_close(out[:, 0], torch.cat([ref_long, ref_short]))


def test_cache_overflow_and_bad_block_are_rejected():
    m = model()
    cache = m.new_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache full"):
        m.forward_cached(torch.randn(1, 5, 32, dtype=torch.float64), cache)
    with pytest.raises(ValueError, match="'causal', 'bidirectional' or a span-id tensor"):
        m.forward_cached(torch.randn(1, 1, 32, dtype=torch.float64), cache, block="full")


def test_training_step_reduces_loss_on_cpu():
    torch.manual_seed(0)
    m = Transformer(TransformerArgs(dim=32, n_layers=2, n_heads=4))
    lay = build_layout([[Segment("text", 4), Segment("image", 4)]] * 2, MODALITIES)
    x, y = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (m(x, lay) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_compiled_blocks_trace_once_for_every_layer_and_survive_a_deep_copy():
    """``compile_blocks`` through dynamo (the "eager" backend: tracing without inductor, so no
    compile cost): outputs and gradients equal the plain model's, every layer reuses the same
    graphs, and a deep copy computes with its own weights."""
    import copy

    from torch._dynamo.utils import counters

    from fusion_core.layout import ModalitySpec

    torch._dynamo.reset()
    mods = {"text": ModalitySpec("text", "discrete"), "image": ModalitySpec("image", "continuous", "bidirectional")}
    layout = build_layout([[Segment("text", 20), Segment("image", 16), Segment("text", 10)]] * 2, mods)
    torch.manual_seed(0)
    plain = Transformer(TransformerArgs(dim=32, n_layers=4, n_heads=4))
    compiled = copy.deepcopy(copy.deepcopy(plain).compile_blocks(backend="eager"))  # copy after compiling
    with torch.no_grad():
        for a, b in zip(plain.parameters(), compiled.parameters()):
            a.mul_(1.5), b.mul_(1.5)
    h, w = torch.randn(2, layout.seq_len, 32), torch.randn(2, layout.seq_len, 32)
    counters.clear()
    outs = []
    for m in (plain, compiled):
        out = m(h, layout)
        (out * w).sum().backward()
        outs.append((out, torch.cat([p.grad.flatten() for p in m.parameters()])))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-5)
    # pre and post, each once for the first layer (input without grad) and once for the rest
    assert counters["stats"]["unique_graphs"] == 4


def test_activation_checkpointing_gives_the_same_gradients():
    """Recomputing each block in the backward pass changes memory, not results."""
    from fusion_core import Segment, build_layout
    from fusion_core.layout import ModalitySpec

    torch.manual_seed(0)
    model = Transformer(TransformerArgs(dim=32, n_layers=3, n_heads=4, cond_dim=8))
    mods = {"t": ModalitySpec("t", "discrete"), "i": ModalitySpec("i", "continuous", "bidirectional")}
    layout = build_layout([[Segment("t", 5), Segment("i", 4), Segment("t", 3)]] * 2, mods)
    h = torch.randn(2, layout.seq_len, 32)
    cond = torch.randn(2, layout.seq_len, 8)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.activation_checkpointing = ckpt
        model.train()
        model(h, layout, cond=cond).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6, msg=n)
