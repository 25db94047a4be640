import pytest
import torch
from hypothesis import given

from fusion_core.layout import Segment, build_layout
from layouts import MODALITIES, examples


def ex(*segs):
    return [Segment(m, n) for m, n in segs]


def test_unpacked_rows_pad_to_longest():
    lay = build_layout([ex(("text", 3), ("image", 4)), ex(("text", 2))], MODALITIES)
    assert (lay.batch_size, lay.seq_len) == (2, 7)
    assert lay.padding[1].tolist() == [False] * 2 + [True] * 5
    assert lay.span[0].tolist() == [-1, -1, -1, 0, 0, 0, 0]
    assert lay.position[0].tolist() == list(range(7))
    assert lay.modality[1, 2:].eq(-1).all()
    assert lay.attention_kind == "mixed"


def test_packing_places_documents_first_fit_with_restarting_positions():
    exs = [ex(("text", 5)), ex(("text", 4)), ex(("image", 3)), ex(("text", 2))]
    lay = build_layout(exs, MODALITIES, max_len=8, pack=True)
    assert lay.seq_len == 8
    rows = {p.example: p.row for p in lay.placements}
    assert rows == {0: 0, 1: 1, 2: 0, 3: 1}
    assert lay.document[0].tolist() == [0] * 5 + [1] * 3
    assert lay.position[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert lay.document[1].tolist() == [0] * 4 + [1] * 2 + [-1] * 2


@given(examples())
def test_gather_and_split_route_positions_back_to_segments(exs):
    lay = build_layout(exs, MODALITIES, max_len=64, pack=True)
    B, L = lay.batch_size, lay.seq_len
    coords = torch.stack(torch.meshgrid(torch.arange(B), torch.arange(L), indexing="ij"), -1)
    for name in MODALITIES:
        got = lay.split(lay.gather(coords.float(), name), name)
        for part, p in zip(got, lay.placements_of(name)):
            expect = torch.stack([torch.full((p.length,), p.row), torch.arange(p.start, p.stop)], -1)
            assert torch.equal(part.long(), expect)
            assert lay.modality[p.row, p.start:p.stop].eq(lay.modality_names.index(name)).all()
    total = sum(p.length for p in lay.placements)
    assert int((~lay.padding).sum()) == total


def test_scatter_is_inverse_of_gather():
    lay = build_layout([ex(("text", 2), ("image", 3)), ex(("image", 2), ("text", 1))], MODALITIES)
    h = torch.randn(lay.batch_size, lay.seq_len, 4)
    out = lay.scatter(lay.gather(h, "image") * 0 + 7, "image", h)
    is_img = lay.modality == lay.modality_names.index("image")
    assert out[is_img].eq(7).all() and torch.equal(out[~is_img], h[~is_img])


def test_fast_path_detection():
    causal = build_layout([ex(("text", 4)), ex(("text", 2), ("image", 1))], MODALITIES)
    assert causal.attention_kind == "causal"
    full = build_layout([ex(("image", 5)), ex(("image", 5))], MODALITIES)
    assert full.attention_kind == "full"
    padded_full = build_layout([ex(("image", 5)), ex(("image", 3))], MODALITIES)
    assert padded_full.attention_kind == "mixed"
    packed = build_layout([ex(("text", 2)), ex(("text", 2))], MODALITIES, max_len=4, pack=True)
    assert packed.attention_kind == "mixed"


@pytest.mark.parametrize(
    "examples_, kwargs, match",
    [
        ([[]], {}, "example 0: empty"),
        ([ex(("text", 3)), ex(("audio", 2))], {}, r"example 1, segment 0: unknown modality 'audio'"),
        ([ex(("text", 3), ("image", 9))], {"max_len": 10}, "example 0: 12 positions exceed max_len=10"),
        ([[Segment("text", 2, torch.tensor([0.5, 1.0]))]], {}, "example 0, segment 0: .*integer ids"),
        ([[Segment("image", 2, torch.tensor([1, 2]))]], {}, "example 0, segment 0: .*floating point"),
        ([[Segment("text", 3, torch.tensor([1, 2]))]], {}, "2 ids but length 3"),
        ([[Segment("text", 0)]], {}, "length must be a positive int"),
        ([ex(("text", 2))], {"pack": True}, "needs max_len"),
        ([], {}, "no examples"),
    ],
)
def test_bad_input_is_rejected_with_location(examples_, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_layout(examples_, MODALITIES, **kwargs)


def test_segment_of_counts_ids():
    seg = Segment.of("text", torch.tensor([[1, 2, 3]]))
    assert seg.length == 3


def test_cat_to_device_moves_tensors_in_one_copy_and_restores_shapes(monkeypatch):
    import fusion_core.layout as layout_mod

    copies = []

    def fake_to_device(t, device):  # stands in for the pinned host-to-GPU copy
        copies.append(t.shape)
        return t.clone()

    monkeypatch.setattr(layout_mod, "to_device", fake_to_device)
    ts = [torch.arange(6.0).view(2, 3), torch.arange(4.0), torch.zeros(0), torch.full((1, 1, 2), 7.0)]
    out = layout_mod.cat_to_device(ts, "meta")
    assert len(copies) == 1 and copies[0] == (12,)
    assert all(torch.equal(a, b) for a, b in zip(out, ts))
    assert all(a is b for a, b in zip(layout_mod.cat_to_device(ts, "cpu"), ts))  # already there
