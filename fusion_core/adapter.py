"""The adapter protocol: how one modality's data becomes backbone positions and comes back.

Transfusion (sec. 3.1–3.2) puts modality-specific layers at the edges of a shared transformer:
an embedding and LM head for text; linear or U-Net patch layers for images. TransFusion's
linear in/out layers for time series are the same thing. An adapter is such a pair of edges plus
the conversions between the user's data and the space the loss is defined in:

    raw ──encode──▶ payload ──embed──▶ (n, D) positions ──backbone──▶ (n, D) ──head──▶ prediction
    raw ◀──decode── payload

``kind`` picks the loss: ``"discrete"`` → next-token cross-entropy over ``vocab_size`` logits;
``"continuous"`` → diffusion loss, where ``embed`` receives the *noisy* payload and its timestep and
``head`` returns the eps/x0/v prediction in payload shape. ``attention`` is how the positions of one
segment attend to each other. Adapters own their special tokens (BOI/EOI of each continuous
modality belong to the discrete adapter's vocabulary).
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

from torch import Tensor, nn

from .layout import check_modality


@dataclass
class Embedded:
    """What :meth:`Adapter.embed` returns for the payloads of one modality in one batch.

    Attributes:
        tokens: ``(N, D)``, the positions of every payload, concatenated in order.
        cond: optional ``(N, C)`` per-position conditioning for the backbone's adaLN.
        context: anything :meth:`Adapter.head` needs (shapes, U-Net skip features, ...).
    """

    tokens: Tensor
    cond: Tensor | None = None
    context: Any = None


class Adapter(nn.Module, ABC):
    """Base class of modality adapters: one modality's data in and out of the backbone.

    The protocol — implement these five methods::

        encode(raw) -> payload            user data (one item or a batch) to the loss's space;
                                          raise ValueError naming what was expected
        num_positions(payload) -> int     backbone positions one payload takes
        embed(payloads, t=None) -> Embedded   (N, D) inputs; continuous adapters get the *noisy*
                                          payloads and their diffusion steps t (n,)
        head(hidden, embedded) -> ...     discrete: (N, vocab_size) logits for the N positions
                                          the adapter scores (``embedded`` is None: those
                                          positions include the one before its span); continuous:
                                          one eps/x0/v prediction per payload, in payload shape
        decode(payload) -> raw            back to user data

    and declare these attributes (class or instance):

    Attributes:
        name: the modality's name in layouts, batches and configs.
        kind: ``"discrete"`` (next-token loss) or ``"continuous"`` (diffusion loss).
        attention: among one span's positions, ``"causal"`` or ``"bidirectional"``. Discrete
            modalities must be causal: with bidirectional attention each position would see the
            token it is trained to predict (the model refuses to build).
        vocab_size: discrete only, the number of logits ``head`` returns.
        end_token: discrete only, optional: the id ``head`` predicts after a span's last token,
            so a span of this modality can end itself (generation hands back to the writer at it).
        dim: backbone width D (set by ``__init__``).

    Optional: ``describe`` and ``render`` (how reports show a decoded item: a line of text, a
    picture on a matplotlib Axes), ``check_shape`` (say which payload shapes the adapter takes, so generation refuses
    a wrong one before sampling; without it the model dry-runs ``embed``), ``fp32_buffers``
    (buffers that stay float32 when the model is cast to half precision: scalers that map to user
    units), ``drop_condition`` (classifier-free-guidance dropout, for the writer), ``config`` (what
    ``save_pretrained`` stores), and, for the writer that marks other modalities' spans,
    ``begin_marker``, ``end_marker``, ``bos_id``, ``eos_id`` (see :mod:`fusion_core.generation`).
    The conformance kit :mod:`fusion_core.modalities.testing` checks an adapter against all this.

    Precision: ``embed`` receives payloads in the dtype the model computes in (the model casts
    them) and ``head`` returns predictions in that dtype; the model casts predictions back to
    float32 for the loss and the samplers, whose state stays float32.
    """

    name: str = ""
    kind: str = "continuous"
    attention: str = "bidirectional"
    vocab_size: int | None = None
    end_token: int | None = None
    fp32_buffers: tuple[str, ...] = ()  # buffers kept in float32 under .to(half dtype)

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def check(self) -> None:
        """Validate the declared attributes (called by FusionModel)."""
        if not self.name:
            raise ValueError(f"{type(self).__name__} declares no name")
        check_modality(self)
        if self.kind == "discrete":
            if not isinstance(getattr(self, "vocab_size", None), int) or self.vocab_size < 1:
                raise ValueError(f"discrete adapter {self.name!r} must define an int vocab_size >= 1")
            if self.attention != "causal":
                raise ValueError(f"discrete adapter {self.name!r} declares attention={self.attention!r}: each "
                                 "position would see the token it is trained to predict (the next-token loss "
                                 "leaks); discrete modalities must use attention='causal'")
            end = self.end_token
            if end is not None and not (isinstance(end, int) and 0 <= end < self.vocab_size):
                raise ValueError(f"discrete adapter {self.name!r}: end_token must be an id in "
                                 f"[0, {self.vocab_size}), got {end!r}")

    # -- the protocol ---------------------------------------------------------------------
    @abstractmethod
    def encode(self, raw: Any) -> Tensor:
        """User data → payload (validated). Raise ``ValueError`` naming what was expected."""

    @abstractmethod
    def num_positions(self, payload: Tensor) -> int:
        """How many backbone positions ``payload`` occupies."""

    @abstractmethod
    def embed(self, payloads: Sequence[Tensor], t: Tensor | None = None) -> Embedded:
        """Payloads (noisy ones for continuous adapters, with their steps ``t`` ``(n,)``) →
        backbone inputs."""

    @abstractmethod
    def head(self, hidden: Tensor, embedded: Embedded) -> Tensor | list[Tensor]:
        """Backbone outputs ``(N, D)`` → logits ``(N, vocab_size)`` (discrete) or one prediction
        per payload in payload shape (continuous)."""

    @abstractmethod
    def decode(self, payload: Tensor) -> Any:
        """Payload → user data."""

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Optional: raise ``ValueError`` naming what was expected unless ``shape`` is the shape
        of a payload this adapter takes (generation calls it before drawing a span of that
        shape). The default checks nothing; :meth:`FusionModel.check_payload_shape` then
        dry-runs :meth:`embed`."""

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.half()``, ...: buffers named in :attr:`fp32_buffers` move with the
        model but keep float32 (cast from the values they had, not from a rounded copy)."""
        kept = {name: self._buffers[name] for name in self.fp32_buffers if self._buffers.get(name) is not None}
        out = super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        return out

    # -- saving ----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this adapter; ``save_pretrained`` stores them.

        The default follows scikit-learn's convention: for every parameter of ``__init__``, the
        attribute of the same name (the built-in adapters store theirs). A value JSON cannot hold
        (a tokenizer object, an autoencoder) is recorded by its type name, and loading asks for
        it again: ``FusionModel.from_pretrained(dir, adapter_kwargs={name: {param: value}})``.
        Learned or fitted state (weights, scalers) belongs in parameters and buffers, not here.

        Raises:
            ValueError: a constructor parameter has no attribute of its name (store it, or
                override this method).
        """
        out = {}
        for pname, param in inspect.signature(type(self).__init__).parameters.items():
            if pname == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if not hasattr(self, pname):
                raise ValueError(f"{type(self).__name__}.config(): __init__ takes {pname!r} but the adapter "
                                 f"has no attribute {pname!r}; store it as self.{pname} or override config()")
            out[pname] = jsonable(getattr(self, pname))
        return out

    # -- optional ---------------------------------------------------------------------------
    def describe(self, raw: Any) -> str | None:
        """Optional: one line about a decoded item for reports ("a stroke of 12 points, 0.8
        long"); ``None`` (the default) lets a report print the value's shape and range."""
        return None

    def render(self, raw: Any, ax) -> bool:
        """Optional: draw a decoded item on a matplotlib ``Axes`` (reports save sample grids as
        pictures); return True if something was drawn. The default draws nothing."""
        return False

    def head_linear(self) -> tuple[Tensor, Tensor | None] | None:
        """Optional, discrete adapters: ``(weight (V, D), bias (V,) or None)`` when :meth:`head`
        is exactly ``hidden @ weight.T + bias``; the training loss may then score positions in
        chunks without the full logits (``train.lm_loss_chunk``, :mod:`fusion_core.lm_loss`).
        The default, None, always goes through :meth:`head`."""
        return None

    def drop_condition(self, payload: Tensor) -> Tensor:
        """Discrete adapters: the payload of a segment with its conditioning content removed,
        for classifier-free-guidance dropout (default: keep only the last token, which is the
        begin-of-modality marker that precedes a continuous span)."""
        return payload[-1:]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind!r}, attention={self.attention!r}"


UNSAVED = "__unsaved__"


def jsonable(value: Any) -> Any:
    """``value`` if JSON holds it (tuples become lists), else ``{"__unsaved__": type name}``."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return {UNSAVED: type(value).__name__}
    return value
