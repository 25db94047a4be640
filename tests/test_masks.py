import torch
from hypothesis import given

from fusion_core.masks import AttentionMask, dense_mask, flex_block_mask, xformers_bias
from layouts import layouts, naive_rule


def _real_queries(layout):
    return ~layout.padding  # (B, L): rows we compare; padding queries are discarded


@given(layouts())
def test_dense_mask_equals_rule(layout):
    ref = naive_rule(layout)
    got = dense_mask(layout.document, layout.span)[:, 0]
    q = _real_queries(layout)
    assert torch.equal(got[q], ref[q])
    # padding queries attend to themselves only (keeps softmax finite)
    eye = torch.eye(layout.seq_len, dtype=torch.bool).expand_as(got)
    assert torch.equal(got[~q], eye[~q])


@given(layouts())
def test_flex_block_mask_equals_rule(layout):
    bm = flex_block_mask(layout.document, layout.span, block_size=8)
    got = bm.to_dense()  # block-level; check the mask_mod itself elementwise instead
    assert got.shape[0] == layout.batch_size
    L = layout.seq_len
    q_idx = torch.arange(L)[:, None].expand(L, L)
    k_idx = torch.arange(L)[None, :].expand(L, L)
    ref = naive_rule(layout)
    for b in range(layout.batch_size):
        elem = bm.mask_mod(torch.tensor(b), torch.tensor(0), q_idx, k_idx)
        q = _real_queries(layout)[b]
        assert torch.equal(elem[q], ref[b][q])
    # every allowed element lies in a block the BlockMask keeps
    dense_blocks = got[:, 0].repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :L, :L].bool()
    assert not (ref & ~dense_blocks).any()


@given(layouts())
def test_flex_block_table_equals_create_block_mask(layout):
    """Our row-by-row reduction builds the same block table as torch's create_block_mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    ours = flex_block_mask(layout.document, layout.span, block_size=8)
    L = layout.seq_len
    ref = create_block_mask(ours.mask_mod, layout.batch_size, None, L, L, device="cpu", BLOCK_SIZE=8)
    for a, b in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        n_ours, n_ref = getattr(ours, a), getattr(ref, a)
        assert torch.equal(n_ours, n_ref), a
        idx_ours, idx_ref = getattr(ours, b), getattr(ref, b)
        for i in range(n_ref.shape[0]):
            for j in range(n_ref.shape[2]):
                k = int(n_ref[i, 0, j])
                assert torch.equal(idx_ours[i, 0, j, :k].sort().values, idx_ref[i, 0, j, :k].sort().values)
    assert torch.equal(ours.q_num_blocks, ref.q_num_blocks)
    assert torch.equal(ours.full_q_num_blocks, ref.full_q_num_blocks)


@given(layouts())
def test_xformers_bias_equals_rule(layout):
    bias = xformers_bias(layout.document, layout.span, n_heads=3)
    assert bias.shape == (layout.batch_size, 3, layout.seq_len, layout.seq_len)
    assert bias.stride(-2) % 8 == 0  # 8-aligned rows, as xformers requires
    ref = naive_rule(layout)
    q = _real_queries(layout)
    allowed = bias.eq(0)
    for h in range(3):
        assert torch.equal(allowed[:, h][q], ref[q])
    assert bias[~bias.eq(0)].eq(float("-inf")).all()


def test_mask_caches_renderings():
    m = AttentionMask("mixed", torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), -1))
    assert m.dense() is m.dense()
