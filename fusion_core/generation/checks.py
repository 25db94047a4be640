"""What every public generation function checks at its boundary, written once (STYLE.md: "write
one helper and use it at every boundary"): the model and modality names, span shapes against the
adapter, samplers against the modality's diffusion, prompts, numbers, and the model's train/eval
mode, which each function restores when it returns.

Every check raises a one-line ``ValueError`` or ``TypeError`` naming the argument, what was
expected and what came.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..adapter import Adapter
from ..diffusion import Guidance, Sampler
from ..model import FusionModel
from ..validation import check_finite_number, check_int


@contextlib.contextmanager
def eval_mode(model: FusionModel):
    """Run in ``eval()`` and give the model back in the mode it was in (a monitoring sample
    mid-training must not switch off dropout and CFG dropout for the rest of the run)."""
    check_model(model)
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_model(model: Any) -> None:
    if not isinstance(model, FusionModel):
        raise TypeError(f"model must be a FusionModel, got {type(model).__name__}")


def continuous_adapter(model: FusionModel, modality: Any, fn: str) -> Adapter:
    """The adapter of ``modality``, which must be continuous (``fn`` draws spans)."""
    a = named_adapter(model, modality)
    if a.kind != "continuous":
        raise ValueError(f"{fn}() draws continuous spans; modality {modality!r} is discrete (write it with "
                         f"generate() or caption()); continuous ones here: "
                         f"{sorted(n for n, x in model.adapters.items() if x.kind == 'continuous')}")
    return a


def named_adapter(model: FusionModel, modality: Any) -> Adapter:
    if not isinstance(modality, str):
        raise TypeError(f"modality must be a name (str), got {type(modality).__name__} {modality!r:.40}")
    return model.adapter(modality)


def bound_sampler(model: FusionModel, modality: str, sampler: Any, what: str = "sampler",
                  conditional: bool = False) -> Sampler:
    """The sampler for spans of ``modality``: a :class:`Sampler` built for that modality's
    diffusion process (refused if built for another), a :class:`~fusion_core.generation.SampleArgs`
    spec (built here: its conditional sampler with ``conditional``), or a mapping of either per
    modality name.

    Raises:
        ValueError: no sampler for the modality, or one built for another diffusion process.
        TypeError: something that is neither.
    """
    from .args import SampleArgs

    if isinstance(sampler, Mapping):
        if modality not in sampler:
            raise ValueError(f"no {what} given for modality {modality!r} (the mapping has {sorted(sampler)})")
        sampler = sampler[modality]
    if sampler is None:
        raise ValueError(f"a span of {modality!r} needs a {what} (a Sampler built for model.diffusion[{modality!r}], "
                         "a SampleArgs, or a mapping of them per modality)")
    diffusion = model.diffusion[modality]
    if isinstance(sampler, SampleArgs):
        return sampler.make_conditional(diffusion) if conditional else sampler.make(diffusion)
    if not isinstance(sampler, Sampler):
        raise TypeError(f"{what} must be a Sampler, a SampleArgs or a mapping of them per modality, got "
                        f"{type(sampler).__name__}")
    if sampler.diffusion != diffusion:
        raise ValueError(f"{what} was built for {sampler.diffusion!r}, but modality {modality!r} was trained with "
                         f"{diffusion!r}: build one per modality, make_sampler(..., model.diffusion[{modality!r}]), "
                         "or pass a SampleArgs or {name: sampler}")
    return sampler


def check_guidance(guidance: Any) -> Guidance | None:
    """``None`` (off), a finite scale ``>= 0`` or a :class:`~fusion_core.diffusion.Guidance`."""
    return Guidance.of(guidance)


def check_prompts(prompts: Any, what: str = "prompts") -> list:
    """A list with one prompt per row — not a bare string, which would be one row per character."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError(f"{what} is a list with one prompt per row, got a {type(prompts).__name__}: "
                        f"wrap it, [{prompts!r:.30}]")
    if not isinstance(prompts, Sequence):
        raise TypeError(f"{what} must be a list (one prompt per row), got {type(prompts).__name__}")
    return list(prompts)


def make_generator(generator: Any, seed: Any, per_row: bool = False):
    """``generator`` when given (its state is used and advanced), else one seeded with ``seed``.
    With ``per_row``, a list of generators (one per row) is accepted too."""
    if per_row and isinstance(generator, (list, tuple)):
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise TypeError("generator must be a torch.Generator or a list of them (one per row)")
        return list(generator)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator{' or a list of them, one per row' if per_row else ''}, "
                            f"got {type(generator).__name__}")
        return generator
    return torch.Generator().manual_seed(check_int("seed", seed, low=0))


def check_span_shape(model: FusionModel, modality: str, shape: Any, what: str = "shape") -> tuple[int, ...]:
    """``shape`` as a tuple, if ``modality``'s adapter takes payloads of that shape."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"{what} must be a tuple of ints (a payload's shape), got {type(shape).__name__}")
    model.check_payload_shape(modality, tuple(shape))
    return tuple(int(d) for d in shape)


def check_batch_values(model: FusionModel, modality: str, values: Any, what: str) -> np.ndarray:
    """User values ``(n, *payload shape)`` (NaN where unknown) as a float array whose item shape
    the adapter takes; a single item (no batch axis) is named as such."""
    from ..validation import numeric_array

    try:
        arr = numeric_array(values, what, dtype=np.float64)
    except TypeError:
        raise
    if arr.ndim < 2:
        raise ValueError(f"{what} must be a batch (n, ...) of {modality!r} items, got shape {arr.shape}")
    try:
        check_span_shape(model, modality, arr.shape[1:], what)
    except ValueError as e:
        try:  # one item given without its batch axis?
            check_span_shape(model, modality, arr.shape, what)
        except ValueError:
            raise e from None
        raise ValueError(f"{what} must be a batch (n, ...) of items; shape {arr.shape} is one item: pass "
                         f"{what}[None]") from None
    return arr


def check_progress(progress: Any, what: str = "progress") -> bool:
    """A True/False switch (``progress``, ``cuda_graphs``); anything else is a TypeError."""
    if not isinstance(progress, bool):
        raise TypeError(f"{what} must be True or False, got {progress!r}")
    return progress


def as_tensor_like(out: Tensor, ref: Any, dtype) -> Any:
    """``out`` as the caller's array type (NumPy in, NumPy out) and dtype."""
    if isinstance(ref, np.ndarray):
        return out.cpu().numpy().astype(dtype, copy=False)
    return out.to(dtype)
