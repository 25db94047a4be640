"""Recipe "mixed": the generic Transfusion recipe. The config names the modalities — each a
registered adapter with its kwargs, diffusion settings and loss weight — and the data is
mixed-modality examples; nothing else is specific to a modality. It is how a third-party adapter
trains, samples and reports from the command line with no code beyond the adapter.

    fusion run mixed --preset quick                                   # built in: captioned 8x8 digits
    fusion run mixed data.source=strokes.jsonl \\
        'model.adapters={text: {class: text}, pen: {class: pen, diffusion: {prediction: x0}}}'
    fusion sample RUN_DIR --prompt "a circle"                          # the model switches modalities
    fusion evaluate RUN_DIR                                            # held-out losses, samples, report

An example is a list of single-key items, one line of JSONL each (docs/recipes.md):
``[{"text": "a circle"}, {"pen": [[0.1, 0.0], ...]}]``. From Python:
``recipe.run("tiny", data=[[{"text": "a cat"}, {"image": img}], ...])``.

Modules: :mod:`.config`, :mod:`.data`, :mod:`.train`, :mod:`.sample`, :mod:`.evaluate`.
"""

from pathlib import Path

from fusion_core.engine.recipe import Recipe

from .config import MixedConfig
from .evaluate import evaluate
from .sample import sample
from .train import setup

recipe = Recipe(
    name="mixed",
    description="generic Transfusion: the config names the modalities (any registered adapters)",
    config=MixedConfig,
    presets_dir=Path(__file__).resolve().parent.parent / "presets" / "mixed",
    setup=setup,
    sample=sample,
    evaluate=evaluate,
)

__all__ = ["MixedConfig", "recipe"]
