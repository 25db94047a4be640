"""The text_timeseries recipe's model and training examples: the built-in text and time-series
adapters in one :class:`~fusion_core.model.FusionModel` — no model code of its own.

Layout per pair (Transfusion sec. 3, with a series for the image): caption first (text → series):
``<bos> caption <boi:timeseries>`` series ``<eoi:timeseries> <eos>``; series first (captioning):
``<bos> <boi:timeseries>`` series (noise capped at ``data.noise_limit``) ``<eoi:timeseries>
caption <eos>``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np

from fusion_core.generation import interleave
from fusion_core.model import FusionModel, Item
from fusion_core.modalities.text import TextAdapter, WordTokenizer
from fusion_core.engine.recipe import TrainJob

from ..timeseries.train import MODALITY, series_model
from . import data as D
from .config import TTSConfig

TEST_FILE = "test.npz"  # real data and your pairs: the held-out pairs, kept for `fusion evaluate`
TEST_SEED_OFFSET = 10_000  # synthetic test pairs: drawn apart from the training ones


def build_model(c: TTSConfig, features: int, captions: Sequence[str] = ()) -> FusionModel:
    """The model; with ``model.tokenizer=words`` its vocabulary is fitted on ``captions`` (the
    training captions: words seen at least twice, bytes for the rest)."""
    m = c.model
    tokenizer = {"words": WordTokenizer.fit(captions)} if m.tokenizer == "words" else "bytes"
    text = TextAdapter(m.dim, tokenizer=tokenizer, markers=(MODALITY,))
    return series_model(m, features, [text], diffusion_weight=m.diffusion_weight, cond_dropout=m.cond_dropout)


def encode_pair(model: FusionModel, caption: str, series: np.ndarray, series_first: bool,
                noise_limit: int) -> list[Item]:
    """One pair in either order; a series that comes first has its noise capped (``noise_limit``)."""
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    segments = [(MODALITY, series), caption] if series_first else [caption, (MODALITY, series)]
    items = interleave(model, segments)
    if series_first and noise_limit:
        items[1] = Item(MODALITY, items[1].payload, max_t=noise_limit)
    return items


def load_pairs(c: TTSConfig, data=None) -> tuple[D.Pairs, D.Pairs | None]:
    """Training pairs and, for real data and your pairs, the held-out ones (synthetic test pairs
    are drawn again at evaluation). Real data's held-out pairs also carry ``eval.n`` training
    pairs as the group "seen" (adherence on what was trained against what was not)."""
    d = c.data
    if data is None and d.source == "synthetic":
        return D.synthetic(d, c.training_pairs, c.train.seed, "train"), None
    if data is None and d.source == "real":
        train, test = D.real(d, c.train.seed)
        pick = sorted(random.Random(c.train.seed + 5).sample(range(len(train)), min(c.eval.n, len(train))))
        seen = train.subset(pick)
        seen.groups = ["seen"] * len(seen)
        return train, D.concat(seen, test)
    return D.user_pairs(d, data, c.train.seed)


def test_pairs(c: TTSConfig, run_dir: Path) -> D.Pairs:
    """A run's test pairs: synthetic ones drawn from the test seed (``eval.n`` per group), else the
    held-out pairs kept in the run folder."""
    if c.data.source == "synthetic":
        return D.synthetic(c.data, c.eval.n, c.eval.seed + TEST_SEED_OFFSET, "test")
    path = Path(run_dir) / TEST_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {TEST_FILE} (held-out pairs); train with data.held_out > 0")
    return D.Pairs.load(path)


def setup(c: TTSConfig, run_dir: Path, data=None) -> TrainJob:
    train, test = load_pairs(c, data)
    if not len(train):
        raise ValueError(f"{c.data.source}: no training pairs")
    model = build_model(c, train.values.shape[2], train.captions)
    model.adapters[MODALITY].fit(train.values)
    rng = random.Random(c.train.seed)
    d = c.data
    examples = [encode_pair(model, cap, x, rng.random() < d.series_first, d.noise_limit)
                for cap, x in zip(train.captions, train.values)]

    longest = max(sum(model.adapter(it.modality).num_positions(it.payload) for it in ex) for ex in examples)
    if longest > d.max_len:
        raise ValueError(f"the longest pair takes {longest} positions (caption tokens + series patches + 4 "
                         f"markers), more than data.max_len={d.max_len}: raise data.max_len")

    def collate(model, batch, seeds):
        return model.collate(batch, max_len=d.max_len, pack=True, seeds=seeds)

    def save(run_dir: Path) -> None:
        if test is not None and len(test):
            test.save(Path(run_dir) / TEST_FILE)

    summary = (f"data {d.source}: {len(train)} training pairs"
               + (f", {len(test) - test.groups.count('seen')} held out" if test is not None else "")
               + (f" (+{test.groups.count('seen')} training pairs evaluated beside them)"
                  if test is not None and "seen" in test.groups else "")
               + f", series {train.values.shape[1]} x {train.values.shape[2]}")
    return TrainJob(model, examples, collate, summary, save)
