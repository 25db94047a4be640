"""The mixed recipe's model and training examples: adapters built by registry name (a dotted path
only with ``--trust-remote-code``), the writer given markers for every other modality, a diffusion
process per continuous modality, and examples laid out as Transfusion does
(``<bos> text <boi:M> span <eoi:M> ... <eos>``)."""

from __future__ import annotations

import inspect
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np

from fusion_core.diffusion import GaussianDiffusion
from fusion_core.engine.recipe import TrainJob, remote_code_trusted
from fusion_core.generation import interleave
from fusion_core.model import FusionModel, Item
from fusion_core.registry import UntrustedCode, adapter_class
from fusion_core.storage import atomic_write_text
from fusion_core.transformer import backbone_args

from . import data as D
from .config import BUILTIN_ADAPTERS, MixedConfig

SHAPES_FILE = "shapes.json"  # the commonest span shape of each continuous modality in the training data
HELD_OUT_FILE = "held_out.jsonl"


def adapter_specs(c: MixedConfig) -> dict[str, dict]:
    """``model.adapters``, or the built-in data's modalities when none are named."""
    specs = {k: dict(v) for k, v in (c.model.adapters or {}).items()}
    if not specs:
        if c.data.source != D.BUILTIN:
            raise ValueError("model.adapters names no modality; name yours, e.g. "
                             "'model.adapters={text: {class: text}, pen: {class: pen}}'")
        specs = {k: dict(v) for k, v in BUILTIN_ADAPTERS.items()}
    return specs


def build_model(c: MixedConfig) -> FusionModel:
    """The model ``c.model`` describes, built through the adapter registry."""
    specs = adapter_specs(c)
    writer = c.model.writer
    if writer not in specs:
        raise ValueError(f"model.writer={writer!r} is not among model.adapters {sorted(specs)}")
    adapters, diffusion, weights = [], {}, {}
    for name, spec in specs.items():
        try:
            cls = adapter_class(spec["class"], trust_remote_code=remote_code_trusted())
        except UntrustedCode as e:
            raise UntrustedCode(f"model.adapters.{name}: {e}") from None
        kwargs = dict(spec.get("kwargs") or {})
        params = inspect.signature(cls.__init__).parameters
        if "name" in params:
            kwargs.setdefault("name", name)
        if name == writer and "markers" in params:
            kwargs.setdefault("markers", tuple(n for n in specs if n != writer))
        try:
            adapter = cls(c.model.dim, **kwargs)
        except TypeError as e:
            raise ValueError(f"model.adapters.{name} ({spec['class']}): {e}") from None
        adapters.append(adapter)
        if adapter.kind == "continuous":
            diffusion[name] = GaussianDiffusion(**{"schedule": "cosine", "T": 1000, "prediction": "eps",
                                                   **(spec.get("diffusion") or {})})
        if spec.get("loss_weight") is not None:
            weights[name] = float(spec["loss_weight"])
    return FusionModel(backbone_args(c.model), adapters, diffusion or None, diffusion_weight=c.model.diffusion_weight,
                       loss_weights=weights or None, cond_dropout=c.model.cond_dropout)


def encode_example(model: FusionModel, raw, where: str, writer: str) -> list[Item]:
    """A raw example → Items between the writer's markers, ``<bos>`` … ``<eos>``.

    Raises:
        ValueError: what :func:`.data.check_example` raises; an item its adapter refuses (named
            with ``where`` and the item's index).
    """
    pairs = D.check_example(raw, where, set(model.adapters))
    segments = []
    for j, (name, value) in enumerate(pairs):
        if name == writer:
            if not isinstance(value, str):
                raise ValueError(f"{where}, item {j}: the writer's {name!r} items are strings, got "
                                 f"{type(value).__name__}")
            segments.append(value)
        else:
            segments.append((name, value if isinstance(value, str) else np.asarray(value)))
    try:
        return interleave(model, segments, writer=writer)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def setup(c: MixedConfig, run_dir: Path, data=None) -> TrainJob:
    """Examples (``data`` from Python, else ``data.source``), a held-out share, the model."""
    model = build_model(c)
    writer = c.model.writer

    def encode(rec):
        where, raw = rec
        return encode_example(model, raw, where, writer)

    if data is None and c.data.source == D.BUILTIN:
        data = D.builtin_digits(c.data.examples, c.train.seed)
    if c.data.streaming:
        dataset, held_stream = D.stream(c.data.source, data, c.data.held_out, encode)
        held = [raw for _, raw in itertools.islice(held_stream.records(), 256)] if held_stream is not None else []
        start = list(itertools.islice(dataset.records(), 256))  # scalers and span shapes: the stream's start
        fit_adapters(model, start, writer)
        seen = [encode(r) for r in start]
    else:
        name, rows = D.records(c.data.source, data)
        rows = list(rows())
        if not rows:
            raise ValueError(f"{name}: no examples")
        train, held_rows = D.split(rows, c.data.held_out, c.train.seed)
        fit_adapters(model, train, writer)
        dataset = [encode(r) for r in train]
        held = [raw for _, raw in held_rows]
        seen = dataset
    shapes = commonest_shapes(model, seen)

    def collate(model, batch, seeds):
        return model.collate(batch, max_len=c.data.max_len, pack=True, seeds=seeds)

    def save(run_dir: Path) -> None:
        atomic_write_text(Path(run_dir) / SHAPES_FILE, json.dumps(shapes))
        atomic_write_text(Path(run_dir) / HELD_OUT_FILE,
                          "".join(json.dumps([{k: D.jsonable(v)} for k, v in
                                              D.check_example(raw, "held out", set(model.adapters))]) + "\n"
                                  for raw in held))

    size = dataset.name if not isinstance(dataset, list) else f"{len(dataset)} examples"
    summary = f"{size} ({', '.join(sorted(model.adapters))}), {len(held)} held out"
    return TrainJob(model, dataset, collate, summary, save)


def fit_adapters(model: FusionModel, rows: list, writer: str) -> None:
    """Adapters with a ``fit(values)`` (a time-series scaler) fitted on the training items of
    their modality, stacked along the first axis (what they compute statistics over)."""
    names = set(model.adapters)
    for name, a in model.adapters.items():
        if name == writer or not callable(getattr(a, "fit", None)):
            continue
        values = [np.asarray(v, dtype=np.float64) for where, raw in rows
                  for m, v in D.check_example(raw, where, names) if m == name and not isinstance(v, str)]
        if values and len({v.shape[1:] for v in values}) == 1 and values[0].ndim >= 1:
            a.fit(np.concatenate([v.reshape(-1, *v.shape[1:]) for v in values]))


def commonest_shapes(model: FusionModel, examples) -> dict[str, list[int]]:
    """The commonest payload shape of each continuous modality in ``examples``."""
    counts: dict[str, Counter] = {}
    for ex in examples:
        for it in ex:
            if model.adapters[it.modality].kind == "continuous":
                counts.setdefault(it.modality, Counter())[tuple(it.payload.shape)] += 1
    return {m: list(c.most_common(1)[0][0]) for m, c in counts.items()}
