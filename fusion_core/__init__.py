"""fusion-core: one transformer backbone for Transfusion and TransFusion.

Parts (see docs/concepts.md): :mod:`.layout` (what a packed batch looks like), :mod:`.masks`
(the attention rule and its renderings), :mod:`.attention` (backends), :mod:`.transformer`
(backbone and KV cache), :mod:`.diffusion` (model-agnostic diffusion math).
"""

from .attention import BACKENDS, BackendUnavailable, attend, resolve_backend
from .layout import ModalitySpec, Placement, Segment, SequenceLayout, build_layout
from .masks import AttentionMask, attention_rule
from .transformer import KVCache, Transformer, TransformerArgs, preset

__version__ = "0.1.0"

__all__ = [
    "AttentionMask", "BACKENDS", "BackendUnavailable", "KVCache", "ModalitySpec", "Placement",
    "Segment", "SequenceLayout", "Transformer", "TransformerArgs", "attend", "attention_rule",
    "build_layout", "preset", "resolve_backend",
]
