"""FusionModel: one backbone, a dict of modality adapters, and a diffusion process per continuous
modality.

Transfusion (sec. 3.3): ``L = L_LM + lambda * L_DDPM`` with ``lambda = 5``; L_LM is the mean
next-token cross-entropy over text positions, L_DDPM the mean over images of each image's
noise-prediction MSE, with one timestep per image. No LM loss where the next position is not a
token of the same modality (the BOI position predicts an image, not a token). Noise limiting
(sec. 4.4) caps an image's timestep when the batch marks it (``Item.max_t``).

TransFusion (Sikder et al.) is this model with a single continuous adapter and one bidirectional
span per example — the same class, no second model.

Shapes: B rows, L positions, D width, N positions of one modality, V vocabulary.
"""


from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .adapter import Adapter, Embedded
from .batch import Batch, Item, LossOutput
from .decoding import CachedDecoding
from .diffusion import GaussianDiffusion
from .layout import Segment, SequenceLayout, build_layout
from .loss import TrainingLoss
from .pretrained import load_pretrained, save_pretrained
from .transformer import Transformer, TransformerArgs

__all__ = ["Batch", "FusionModel", "Item", "LossOutput"]


class FusionModel(TrainingLoss, CachedDecoding, nn.Module):
    """Backbone + adapters + diffusion processes.

    Args:
        backbone: a :class:`Transformer` or its :class:`TransformerArgs`.
        adapters: adapters keyed by name (or a list; their ``name`` is used).
        diffusion: a process per continuous modality, or one for all (default: cosine, T = 1000,
            eps-prediction, as in Transfusion).
        diffusion_weight: lambda, the weight of each continuous modality's loss (5 in the paper).
        loss_weights: per-modality overrides of the weights (discrete default 1).
        cond_dropout: probability, per example in training, of replacing the discrete segments
            before its first continuous span with their ``drop_condition`` version (CFG training).
        fourier_weight: per continuous modality, weight of an extra term on each span: MSE between
            the FFT (along the payload's first axis) of the predicted and the true x0 (Diffusion-TS's
            frequency-domain loss for time series). Default: none.

    Raises:
        ValueError: no adapters; two adapters of one name; an object that is not an ``Adapter``;
            an adapter whose declared attributes are invalid, whose name differs from its key or
            whose ``dim`` differs from the backbone's; a continuous modality without a diffusion
            process; weights naming unknown modalities; ``cond_dropout`` outside ``[0, 1)``.
    """

    def __init__(self, backbone: Transformer | TransformerArgs,
                 adapters: Mapping[str, Adapter] | Sequence[Adapter],
                 diffusion: Mapping[str, GaussianDiffusion] | GaussianDiffusion | None = None,
                 diffusion_weight: float = 5.0, loss_weights: Mapping[str, float] | None = None,
                 cond_dropout: float = 0.0, fourier_weight: Mapping[str, float] | None = None):
        super().__init__()
        self.backbone = backbone if isinstance(backbone, Transformer) else Transformer(backbone)
        if not isinstance(adapters, Mapping):
            adapters = list(adapters)
            names = [getattr(a, "name", None) for a in adapters]
            dup = sorted({n for n in names if names.count(n) > 1}, key=str)
            if dup:
                raise ValueError(f"two adapters are named {dup[0]!r}: each modality needs its own name "
                                 "(pass name=... to the adapter)")
            adapters = {a.name: a for a in adapters}
        if not adapters:
            raise ValueError("FusionModel needs at least one adapter")
        D = self.backbone.args.dim
        for key, a in adapters.items():
            if not isinstance(a, Adapter):
                raise ValueError(f"adapter {key!r} is a {type(a).__name__}, expected an Adapter")
            a.check()
            if a.name != key:
                raise ValueError(f"adapter registered as {key!r} is named {a.name!r}")
            if a.dim != D:
                raise ValueError(f"adapter {key!r} has dim {a.dim}, the backbone {D}")
        self.adapters = nn.ModuleDict(dict(adapters))
        continuous = [n for n, a in adapters.items() if a.kind == "continuous"]
        if diffusion is None or isinstance(diffusion, GaussianDiffusion):
            diffusion = {n: diffusion or GaussianDiffusion("cosine", 1000, "eps") for n in continuous}
        missing = set(continuous) - set(diffusion)
        if missing:
            raise ValueError(f"no diffusion process for continuous modalities {sorted(missing)}")
        self.diffusion = dict(diffusion)
        self.loss_weights = {n: (diffusion_weight if a.kind == "continuous" else 1.0)
                             for n, a in adapters.items()}
        for n, w in (loss_weights or {}).items():
            if n not in adapters:
                raise ValueError(f"loss_weights names unknown modality {n!r}; known: {sorted(adapters)}")
            self.loss_weights[n] = float(w)
        if not 0 <= cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        self.cond_dropout = cond_dropout
        self.fourier_weight = dict(fourier_weight or {})
        unknown = set(self.fourier_weight) - set(continuous)
        if unknown:
            raise ValueError(f"fourier_weight names non-continuous or unknown modalities {sorted(unknown)}")

    @property
    def dim(self) -> int:
        return self.backbone.args.dim

    # -- saving ----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, ema: Mapping[str, Tensor] | None = None,
                        metadata: Mapping | None = None) -> Path:
        """Save a folder that :meth:`from_pretrained` rebuilds this model from, with nothing else
        (see :mod:`fusion_core.pretrained`). ``ema``: optional EMA weights (a state dict);
        ``metadata``: free-form JSON-able information kept in ``model.json``.

        Raises:
            ValueError: ``directory`` is a link, a file, or a folder holding files other than
                an earlier save (nothing of yours is deleted).
        """
        return save_pretrained(self, directory, ema=ema, metadata=metadata)

    @classmethod
    def from_pretrained(cls, path: str | Path, device=None, dtype: torch.dtype | None = None,
                        weights: str = "auto", adapter_kwargs: Mapping | None = None, *,
                        trust_remote_code: bool = False, torch_dtype: torch.dtype | None = None,
                        verify: bool = True) -> "FusionModel":
        """Rebuild a model saved by :meth:`save_pretrained` (or a training checkpoint, or a run
        folder's newest model), in ``eval()`` mode. Reads JSON and safetensors only.

        Args:
            path: the folder.
            device, dtype: where to put it and in which floating type (default: CPU, as saved);
                ``torch_dtype`` is accepted as the transformers spelling of ``dtype``.
            weights: ``"auto"`` (EMA weights when saved), ``"model"`` or ``"ema"``.
            adapter_kwargs: per adapter, constructor arguments that could not be saved (a
                tokenizer object); the error message names them.
            trust_remote_code: allow adapter classes the folder names by dotted path outside the
                registry (importing them runs their code): only for folders you trust.
            verify: check every file against the folder's manifest first.

        Raises:
            ValueError: see :func:`fusion_core.pretrained.load_pretrained` (bad or corrupt
                folder, untrusted adapter class, too large for memory, mismatched weights).

        Example:
            >>> model.save_pretrained("my_model")  # doctest: +SKIP
            >>> same = FusionModel.from_pretrained("my_model", dtype=torch.bfloat16)  # doctest: +SKIP
        """
        if torch_dtype is not None:
            if dtype is not None and dtype != torch_dtype:
                raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass one")
            dtype = torch_dtype
        return load_pretrained(cls, path, device=device, dtype=dtype, weights=weights,
                               adapter_kwargs=adapter_kwargs, verify=verify, trust_remote_code=trust_remote_code)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def adapter(self, name: str) -> Adapter:
        if name not in self.adapters:
            raise ValueError(f"unknown modality {name!r}; this model has {sorted(self.adapters)}")
        return self.adapters[name]

    # -- batches ------------------------------------------------------------------------------
    def collate(self, examples: Sequence[Sequence[Item]], max_len: int | None = None,
                pack: bool = False, pad_to_multiple: int = 1, rng: random.Random | None = None,
                seeds: Sequence[int] | None = None, device: torch.device | str | None = None) -> Batch:
        """Lay out encoded examples (the layout on ``device``, default the model's; data-loading
        workers build it on the CPU). In training mode, applies CFG condition dropout (drawn from
        ``rng``, or per example from ``seeds``)."""
        examples = [list(ex) for ex in examples]
        for i, ex in enumerate(examples):
            for j, item in enumerate(ex):
                if not isinstance(item, Item):
                    raise ValueError(f"example {i}, segment {j}: expected an Item, got {type(item).__name__}")
                self.adapter(item.modality)
        if seeds is not None and len(seeds) != len(examples):
            raise ValueError(f"{len(seeds)} seeds for {len(examples)} examples")
        if self.training and self.cond_dropout > 0:
            draws = ([random.Random(s).random() for s in seeds] if seeds is not None
                     else [(rng or random).random() for _ in examples])
            examples = [self._drop_condition(ex) if u < self.cond_dropout else ex
                        for ex, u in zip(examples, draws)]
        segments = [[Segment(it.modality, self.adapters[it.modality].num_positions(it.payload),
                             it.payload) for it in ex] for ex in examples]
        layout = build_layout(segments, self.adapters, max_len=max_len, pack=pack,
                              pad_to_multiple=pad_to_multiple, device=self.device if device is None else device)
        return Batch(examples, layout, list(seeds) if seeds is not None else None)

    def _drop_condition(self, example: list[Item]) -> list[Item]:
        first = next((j for j, it in enumerate(example)
                      if self.adapters[it.modality].kind == "continuous"), None)
        if not first:  # no continuous span, or nothing before it
            return example
        dropped = [Item(it.modality, self.adapters[it.modality].drop_condition(it.payload), it.max_t)
                   if self.adapters[it.modality].kind == "discrete" else it
                   for it in example[:first]]
        return [it for it in dropped if it.payload.numel() > 0] + example[first:]

    def _backbone(self, layout: SequenceLayout, embedded: dict[str, Embedded]) -> Tensor:
        """Scatter each modality's embedded positions into ``(B, L, D)`` rows (in the dtype the
        model computes in; under autocast, the embeddings' own) and run the backbone."""
        B, L, D = layout.batch_size, layout.seq_len, self.dim
        first = next(iter(embedded.values())).tokens
        dtype = first.dtype if torch.is_autocast_enabled(first.device.type) else self.dtype
        h = first.new_zeros(B, L, D, dtype=dtype)
        C = self.backbone.args.cond_dim
        cond = first.new_zeros(B, L, C, dtype=dtype) if C else None
        for name, emb in embedded.items():
            n = int(layout.index(name).numel())
            if emb.tokens.shape != (n, D):
                raise ValueError(f"adapter {name!r} embedded {tuple(emb.tokens.shape)}, expected {(n, D)} "
                                 f"(its num_positions says {n} positions of width {D})")
            h = layout.scatter(emb.tokens.to(dtype), name, h)
            if emb.cond is not None:
                if cond is None:
                    raise ValueError(f"adapter {name!r} returns adaLN conditioning but the backbone "
                                     "has cond_dim=0; set TransformerArgs.cond_dim")
                cond = layout.scatter(emb.cond.to(dtype), name, cond)
        return self.backbone(h, layout, cond=cond)

    @property
    def dtype(self) -> torch.dtype:
        """The floating type the model computes in (its backbone's weights)."""
        return next(self.backbone.parameters()).dtype

    def check_payload_shape(self, modality: str, shape: Sequence[int]) -> None:
        """Refuse a span shape ``modality``'s adapter cannot take, before anything is sampled:
        the adapter's :meth:`~fusion_core.adapter.Adapter.check_shape`, or (for adapters without
        one) a dry run of its ``embed`` on a zero payload.

        Raises:
            ValueError: names the modality, the shape and what was expected.
        """
        a = self.adapter(modality)
        if not (isinstance(shape, (tuple, list, torch.Size)) and all(isinstance(d, int) and not isinstance(d, bool)
                                                                    and d >= 1 for d in shape)):
            raise ValueError(f"a shape for {modality!r} is a tuple of positive ints, got {shape!r}")
        shape = tuple(shape)
        if type(a).check_shape is not Adapter.check_shape:
            a.check_shape(shape)
            return
        try:
            with torch.no_grad():
                x = torch.zeros(shape, device=self.device, dtype=self.dtype)
                t = torch.zeros(1, dtype=torch.long, device=self.device) if a.kind == "continuous" else None
                emb = a.embed([x] if a.kind == "continuous" else [x.long()], t)
                if emb.tokens.shape[0] != a.num_positions(x):
                    raise ValueError(f"embedded {emb.tokens.shape[0]} positions, num_positions says "
                                     f"{a.num_positions(x)}")
        except Exception as e:  # noqa: BLE001 - a third-party adapter's own error, named with the shape
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"adapter {modality!r} cannot take a payload of shape {shape} ({first}); give the "
                             "shape its encode() produces") from None

