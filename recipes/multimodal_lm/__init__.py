"""Recipe "multimodal_lm": Transfusion (Zhou et al. 2024) end to end at small scale.

    fusion run multimodal_lm --preset quick                    # digits + prose, CPU minutes
    fusion sample RUN_DIR --prompt "a handwritten seven"       # text; an image when <boi> comes
    fusion sample RUN_DIR --prompt "the digit 3" --image-first  # force an image
    fusion sample RUN_DIR --image digit.png                    # caption an image
    fusion evaluate RUN_DIR                                    # bpb, captions, text→image, FID

From Python: ``recipe.run("tiny", data=[["a red square", image_tensor], ...])``.

One transformer over text bytes and image patches; ``L = L_LM + 5 L_DDPM`` (eps-prediction,
cosine schedule, T = 1000, one t per image); causal attention with bidirectional attention inside
each image; caption-first and image-first pairs, the latter's image noise capped at t <= 500;
caption dropout 10% for classifier-free guidance; linear patches or U-Net down/up blocks.

Modules, in the order a run uses them: :mod:`.config`, :mod:`.data`, :mod:`.train` (model and
training examples), :mod:`.sample`, :mod:`.evaluate` (with :mod:`.report`).
"""

from pathlib import Path

from fusion_core.engine.recipe import Recipe

from .config import MMConfig
from .evaluate import evaluate
from .sample import sample
from .train import setup

recipe = Recipe(
    name="multimodal_lm",
    description="Transfusion: one transformer over text + images (digits and prose built in)",
    config=MMConfig,
    presets_dir=Path(__file__).resolve().parent.parent / "presets" / "multimodal_lm",
    setup=setup,
    sample=sample,
    evaluate=evaluate,
)

__all__ = ["MMConfig", "recipe"]
