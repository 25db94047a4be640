"""fusion-core: one transformer backbone for Transfusion and TransFusion.

What a user of the library meets, from the bottom up (docs/concepts.md and docs/python-api.md;
``fusion docs`` prints them from an installed package):

- primitives: :mod:`.layout` (what a packed batch looks like), :mod:`.masks` (the attention rule
  and its renderings), :mod:`.attention` (backends), :mod:`.transformer` (backbone and KV cache),
  :mod:`.diffusion` (model-agnostic diffusion math and samplers);
- the model: :class:`FusionModel` with its adapters (:mod:`.adapter`), ``save_pretrained`` /
  ``from_pretrained`` (:mod:`.pretrained`);
- generation for any modality names (:mod:`.generation`): ``generate``, ``generate_span``,
  ``caption``, ``sample``, ``forecast``, ``impute``, ``sample_long``;
- the engine (:mod:`.engine`): configs, :class:`Trainer`, checkpoints, run folders, distributed
  training, recipes and the ``fusion`` command.
"""

__version__ = "0.1.0"

from .adapter import Adapter, Embedded
from .attention import BACKENDS, BackendUnavailable, attend, resolve_backend
from .diffusion import (DDIMSampler, DDPMSampler, DPMSolverSampler, GaussianDiffusion, Guidance, Sampler,
                        classifier_free_guidance, make_sampler)
from .generation import (Generated, SampleArgs, caption, forecast, generate, generate_span, impute,
                         interleave, sample, sample_long)
from .graphs import GraphedCall
from .layout import ModalitySpec, Placement, Segment, SequenceLayout, build_layout
from .lm_loss import linear_cross_entropy
from .masks import AttentionMask, attention_rule
from .model import Batch, FusionModel, Item, LossOutput
from .registry import build_adapter
from .transformer import KVCache, Transformer, TransformerArgs, preset
from .engine import OptimArgs, Recipe, TrainArgs, Trainer, TrainJob, get_recipe, seed_everything

__all__ = [
    "Adapter", "AttentionMask", "BACKENDS", "BackendUnavailable", "Batch", "DDIMSampler", "DDPMSampler",
    "DPMSolverSampler", "Embedded", "FusionModel", "GaussianDiffusion", "Generated", "GraphedCall", "Guidance", "Item", "KVCache",
    "LossOutput", "ModalitySpec", "OptimArgs", "Placement", "Recipe", "SampleArgs", "Sampler", "Segment",
    "SequenceLayout", "TrainArgs", "TrainJob", "Trainer", "Transformer", "TransformerArgs", "attend",
    "attention_rule", "build_adapter", "build_layout", "caption", "classifier_free_guidance", "forecast",
    "generate", "generate_span", "get_recipe", "impute", "interleave", "linear_cross_entropy", "make_sampler", "preset",
    "resolve_backend", "sample", "sample_long", "seed_everything",
]
