"""Recipe "text_timeseries": describe a series in words and draw a series from words — the
Transfusion recipe (text tokens + a diffused continuous span, in both orders) on TransFusion's
modality, in one model with no model code of its own.

    fusion run text_timeseries --preset quick                 # captioned synthetic series, CPU minutes
    fusion sample RUN --caption "It climbs, with a cycle every 12 steps, little noise and no events."
    fusion sample RUN --series series.npy                     # caption series
    fusion evaluate RUN                                       # both directions + forecasting

From Python: ``recipe.run("tiny", data=[("a caption", series), ...])``.

Modules, in the order a run uses them: :mod:`.properties` (generator and estimators),
:mod:`.captions`, :mod:`.config`, :mod:`.data`, :mod:`.train`, :mod:`.sample`, :mod:`.evaluate`
(with :mod:`.report`).
"""

from pathlib import Path

from fusion_core.engine.recipe import Recipe

from .config import TTSConfig
from .evaluate import evaluate
from .sample import sample
from .train import setup

recipe = Recipe(
    name="text_timeseries",
    description="Transfusion on time series: captions → series and series → captions in one model",
    config=TTSConfig,
    presets_dir=Path(__file__).resolve().parent.parent / "presets" / "text_timeseries",
    setup=setup,
    sample=sample,
    evaluate=evaluate,
)

__all__ = ["TTSConfig", "recipe"]
