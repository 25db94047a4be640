import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from fusion_core.attention import BackendUnavailable, attend, resolve_backend, sdpa
from fusion_core.masks import AttentionMask
from layouts import layouts, naive_rule

CPU = torch.device("cpu")


def naive_attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(d)) v with a boolean (B, L, L) mask, the textbook way."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return scores.softmax(-1) @ v


def _qkv(layout, H=2, D=8, requires_grad=False):
    B, L = layout.batch_size, layout.seq_len
    return [torch.randn(B, H, L, D, dtype=torch.float64, requires_grad=requires_grad) for _ in range(3)]


@given(layouts())
def test_sdpa_forward_and_gradients_match_naive_softmax(layout):
    q, k, v = _qkv(layout, requires_grad=True)
    real = ~layout.padding
    out = attend(q, k, v, AttentionMask.from_layout(layout), "sdpa")
    # a fixed random projection of the real positions, so every gradient path is exercised
    w = torch.randn_like(out)
    (out * w)[real[:, None].expand_as(out[..., 0])].sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    allowed = naive_rule(layout) | (layout.padding[:, :, None] & torch.eye(layout.seq_len, dtype=torch.bool))
    ref = naive_attention(q, k, v, allowed)
    (ref * w)[real[:, None].expand_as(ref[..., 0])].sum().backward()
    m = real[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[m], ref[m])
    for g, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(g, t.grad)


@settings(max_examples=15)
@given(layouts())
def test_flex_forward_matches_sdpa_on_cpu(layout):
    q, k, v = (t.float() for t in _qkv(layout))
    mask = AttentionMask.from_layout(layout)
    with torch.no_grad():
        a = attend(q, k, v, mask, "sdpa")
        b = attend(q, k, v, mask, "flex")
    real = (~layout.padding)[:, None, :, None].expand_as(a)
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["causal", "full"])
def test_fast_paths_equal_explicit_masks(kind):
    B, L = 2, 9
    doc = torch.zeros(B, L, dtype=torch.long)
    span = torch.zeros(B, L, dtype=torch.long) if kind == "full" else torch.full((B, L), -1)
    q, k, v = (torch.randn(B, 2, L, 8) for _ in range(3))
    fast = attend(q, k, v, AttentionMask(kind), "sdpa")
    explicit = attend(q, k, v, AttentionMask("mixed", doc, span), "sdpa")
    torch.testing.assert_close(fast, explicit)
    with torch.no_grad():
        torch.testing.assert_close(attend(q, k, v, AttentionMask(kind), "flex"), fast, atol=1e-5, rtol=1e-5)


def test_cpu_half_precision_attention_runs_in_fp32_and_casts_back():
    """bf16 q, k, v on the CPU (autocast training): attended in fp32, returned in bf16, and the
    gradients reach the bf16 inputs; fp32 inputs take the plain kernel, bit for bit."""
    torch.manual_seed(0)
    B, H, L, D = 2, 2, 12, 8
    allowed = torch.rand(B, 1, L, L) < 0.6
    allowed |= torch.eye(L, dtype=torch.bool)
    q, k, v = (torch.randn(B, H, L, D).bfloat16().requires_grad_() for _ in range(3))
    out = sdpa(q, k, v, attn_mask=allowed)
    assert out.dtype == torch.bfloat16
    fp32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)
    assert torch.equal(out, fp32.bfloat16())  # the fp32 kernel's result, rounded once
    q32, k32, v32 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = naive_attention(q32, k32, v32, allowed[:, 0])
    # rounding the fp32 result to bf16 is the only error: ~2^-8 relative
    torch.testing.assert_close(out.double(), ref, atol=1e-2, rtol=8e-3)
    w = torch.randn(B, H, L, D, dtype=torch.float64)
    (out.double() * w).sum().backward()
    (ref * w).sum().backward()
    for t, t32 in zip((q, k, v), (q32, k32, v32)):
        assert t.grad.dtype == torch.bfloat16
        torch.testing.assert_close(t.grad.double(), t32.grad, atol=3e-2, rtol=2e-2)
    a, b, c = (t.detach().float() for t in (q, k, v))
    assert torch.equal(sdpa(a, b, c, is_causal=True), F.scaled_dot_product_attention(a, b, c, is_causal=True))


def test_auto_picks_sdpa_on_cpu_and_flex_for_mixed_cuda():
    assert resolve_backend("auto", CPU, "mixed", needs_grad=True) == "sdpa"
    assert resolve_backend("auto", torch.device("cuda"), "mixed", needs_grad=True) == "flex"
    assert resolve_backend("auto", torch.device("cuda"), "causal", needs_grad=True) == "sdpa"


def test_unavailable_backends_fail_loudly_with_reason():
    with pytest.raises(BackendUnavailable, match="no backward on CPU"):
        resolve_backend("flex", CPU, "mixed", needs_grad=True)
    assert resolve_backend("flex", CPU, "mixed", needs_grad=False) == "flex"
    with pytest.raises(BackendUnavailable, match="only on CUDA"):
        resolve_backend("xformers", CPU, "mixed", needs_grad=False)
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        resolve_backend("flash", CPU, "mixed", needs_grad=False)


def test_flex_with_grad_on_cpu_raises_instead_of_falling_back():
    q, k, v = (torch.randn(1, 1, 4, 8, requires_grad=True) for _ in range(3))
    with pytest.raises(BackendUnavailable, match="use attn_impl='sdpa'"):
        attend(q, k, v, AttentionMask.causal(), "flex")


def _stub_xformers(monkeypatch, op, built="2.10.0+cu128"):
    """A fake xformers whose attention op is ``op``: the availability logic without CUDA."""
    import sys
    import types

    from fusion_core import attention

    xf = types.ModuleType("xformers")
    xf.__version__ = "0.0.35"
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = op
    xf.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", xf)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(attention, "_xformers_torch_version", lambda: built)
    attention._xformers_reason.cache_clear()
    return attention


def test_xformers_is_available_only_when_its_op_runs(monkeypatch):
    """xformers 0.0.35 imports under torch 2.11 and then fails in its dispatcher: availability is
    decided by running a tiny op, and the reason names the torch it was built for."""
    def broken(q, k, v):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward`\nlong details")

    attention = _stub_xformers(monkeypatch, broken)
    reason = attention._xformers_reason("cpu")  # the probe runs wherever the device says
    assert "xformers 0.0.35 (built for torch 2.10.0+cu128) cannot run attention on cpu" in reason
    assert "No operator found" in reason and "\n" not in reason
    attention._xformers_reason.cache_clear()
    _stub_xformers(monkeypatch, broken, built=None)
    assert "its build metadata does not say which torch it was built for" in attention._xformers_reason("cpu")
    attention._xformers_reason.cache_clear()
    _stub_xformers(monkeypatch, lambda q, k, v: q)
    assert attention._xformers_reason("cpu") is None
    calls = []
    attention._xformers_reason.cache_clear()
    _stub_xformers(monkeypatch, lambda q, k, v: calls.append(1) or q)
    attention._xformers_reason("cpu"), attention._xformers_reason("cpu")
    assert calls == [1]  # decided once per device, then cached
    attention._xformers_reason.cache_clear()


def test_auto_never_picks_xformers_and_naming_it_says_why(monkeypatch):
    attention = _stub_xformers(monkeypatch, lambda q, k, v: q)
    cuda = torch.device("cuda", 0)
    for kind in ("causal", "full", "mixed"):
        assert resolve_backend("auto", cuda, kind, needs_grad=True) in ("sdpa", "flex")
    monkeypatch.setattr(attention, "_xformers_reason", lambda device: "xformers 0.0.35 (built for torch 2.10) ...")
    with pytest.raises(BackendUnavailable, match=r"built for torch 2\.10"):
        resolve_backend("xformers", cuda, "mixed", needs_grad=False)
