"""The timeseries recipe's model and training data: one time-series adapter, every window one
bidirectional span (TransFusion is FusionModel with a single continuous modality)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fusion_core.adapter import Adapter
from fusion_core.diffusion import GaussianDiffusion
from fusion_core.model import FusionModel, Item
from fusion_core.modalities.timeseries import TimeSeriesAdapter
from fusion_core.engine.recipe import TrainJob
from fusion_core.transformer import backbone_args

from .config import TSConfig, TSModelArgs
from .metrics import check_metric_sizes
from .splits import Splits, load_splits, prepare, save_splits

MODALITY = "timeseries"
DATA_FILE = "data.npz"  # what a run keeps of a loaded series (splits, columns, anchor)


def load_data(c: TSConfig, data=None) -> Splits:
    d = c.data
    return prepare(d.source, d.length, d.stride, d.split, d.missing, d.time_column or None, d.columns,
                   d.sine_samples, d.sine_features, c.train.seed, d.transform, d.sine_phase, data=data,
                   outliers=d.outliers, outlier_iqr=d.outlier_iqr, missing_value=d.missing_value,
                   time_format=d.time_format)


def run_data(c: TSConfig, run_dir: Path) -> Splits:
    """A trained run's splits, from the run folder (loaded series) or regenerated (sine): the
    original data source is not needed."""
    if c.data.source == "sine":
        return load_data(c)
    path = Path(run_dir) / DATA_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {DATA_FILE} (a run made before data was kept in the run folder)")
    return load_splits(path, c.data.length, c.data.stride)


def series_model(m: TSModelArgs, features: int, others: Sequence[Adapter] = (), **kwargs) -> FusionModel:
    """A model with a time-series adapter built from every series key of ``model.*`` (the
    adapter's patch, scaling and timestep, adaLN's width, the diffusion, the Fourier loss weight),
    beside ``others`` (adapters listed first); ``kwargs`` go to :class:`FusionModel`. Every recipe
    with series builds through it, so no ``model.*`` key is read by one recipe and dropped by another."""
    adapter = TimeSeriesAdapter(m.dim, features, patch=m.patch, scaling=m.scaling, timestep=m.timestep,
                                name=MODALITY, tie_duplicates=m.tie_duplicates, window_input=m.window_input,
                                input_skip=m.input_skip, design=m.design, unet_channels=tuple(m.unet_channels),
                                unet_linear_entry=m.unet_linear_entry, unet_linear_exit=m.unet_linear_exit)
    cond_dim = m.dim if m.timestep == "adaln" and not m.cond_dim else m.cond_dim
    return FusionModel(backbone_args(m, cond_dim=cond_dim), [*others, adapter],
                       diffusion=GaussianDiffusion.from_args(m),
                       fourier_weight={MODALITY: m.fourier_weight} if m.fourier_weight else None, **kwargs)


def build_model(c: TSConfig, features: int) -> FusionModel:
    return series_model(c.model, features)


def setup(c: TSConfig, run_dir: Path, data=None) -> TrainJob:
    """Data (``data`` from Python, else ``data.source``), split before windowing; the scaler fitted
    on the training part; every training window one example."""
    if data is None and c.data.source == "sine" and c.eval.after_train:  # refused before any data is drawn
        check_metric_sizes(c.data.sine_features, c.data.length, c.eval)
    splits = load_data(c, data)
    if len(splits.train) == 0:
        raise ValueError("no training windows: check data.length, data.split and missing values")
    if c.eval.after_train:
        check_metric_sizes(splits.train.shape[2], c.data.length, c.eval)
    model = build_model(c, splits.train.shape[2])
    adapter = model.adapters[MODALITY]
    adapter.fit(splits.fit_data)
    examples = [[Item(MODALITY, w)] for w in adapter.encode(splits.train)]

    def collate(model, batch, seeds):
        return model.collate(batch, seeds=seeds)

    def save(run_dir: Path) -> None:
        if splits.parts is not None:
            save_splits(splits, run_dir / DATA_FILE)

    summary = (f"data {c.data.source}: {len(splits.train)}/{len(splits.validation)}/{len(splits.test)} windows "
               f"of {c.data.length} x {splits.train.shape[2]}")
    names = splits.feature_names
    if adapter.ties:  # said once, where the run's data is described
        summary += "; " + ", ".join(f"{names[j]} = {names[i]} in every training row, generated as its copy"
                                    for j, i in adapter.ties.items()) + " (model.tie_duplicates=false: learn both)"
    return TrainJob(model, examples, collate, summary, save)


def window_shape(c: TSConfig, splits: Splits) -> tuple[int, int]:
    """``(L, F)``: the payload shape of one window."""
    return c.data.length, int(np.asarray(splits.fit_data).shape[-1])
