"""Random mixed layouts for property tests (hypothesis strategies) and a naive mask reference."""

import torch
from hypothesis import strategies as st

from fusion_core.layout import ModalitySpec, Segment, build_layout

MODALITIES = {
    "text": ModalitySpec("text", "discrete", "causal"),
    "image": ModalitySpec("image", "continuous", "bidirectional"),
    "series": ModalitySpec("series", "continuous", "causal"),
}


@st.composite
def examples(draw, max_examples=4, max_segments=4, max_seg_len=6):
    out = []
    for _ in range(draw(st.integers(1, max_examples))):
        segs = []
        for _ in range(draw(st.integers(1, max_segments))):
            name = draw(st.sampled_from(sorted(MODALITIES)))
            segs.append(Segment(name, draw(st.integers(1, max_seg_len))))
        out.append(segs)
    return out


@st.composite
def layouts(draw):
    exs = draw(examples())
    if draw(st.booleans()):
        longest = max(sum(s.length for s in ex) for ex in exs)
        max_len = longest + draw(st.integers(0, 10))
        return build_layout(exs, MODALITIES, max_len=max_len, pack=True)
    return build_layout(exs, MODALITIES, pad_to_multiple=draw(st.sampled_from([1, 8])))


def naive_rule(layout):
    """The rule with Python loops over every (row, query, key): the reference."""
    B, L = layout.batch_size, layout.seq_len
    out = torch.zeros(B, L, L, dtype=torch.bool)
    doc, span = layout.document.tolist(), layout.span.tolist()
    for b in range(B):
        for q in range(L):
            for k in range(L):
                same_doc = doc[b][q] == doc[b][k] and doc[b][k] >= 0
                same_span = span[b][q] == span[b][k] and span[b][q] >= 0
                out[b, q, k] = same_doc and (k <= q or same_span)
    return out
