"""Generation for any modality names: what both papers do at inference, in user units.

- :func:`generate` — Transfusion's mode switching (sec. 3.3, "inference"): a discrete *writer*
  adapter (text) decodes one token per step with the KV cache; when a row emits the begin marker
  of a continuous modality M (``<boi:M>``), M's span is sampled against the **cached prefix**
  (computed once; every denoising step attends to it and bidirectionally within the span, without
  writing to the cache), committed clean, the end marker appended, and writing resumes. Rows run
  in lockstep: while some rows draw a span, the others get padding positions nothing attends to.
- :func:`generate_span` — a span from each prompt (text → image, text → series), with
  classifier-free guidance in one batched conditional + unconditional pass.
- :func:`caption` — the writer's text after a continuous item (image → text, series → text).
- :func:`sample`, :func:`forecast`, :func:`impute`, :func:`sample_long` — spans on their own
  (TransFusion) or after a prompt: unconditional draws; the rest of a window from its start; the
  missing entries of a series or an image, by replacement with RePaint resampling
  (:mod:`fusion_core.diffusion.repaint`). Observed values come back exactly.

Inputs and outputs are in the user's units: adapters encode and decode (``raw → payload → raw``).
The writer is the discrete adapter that owns the markers: it provides ``begin_marker(M)``,
``end_marker(M)``, ``bos_id``, ``eos_id``, ``encode(str)``, ``decode(ids)`` and
``drop_condition(ids)`` (the built-in text adapter does).

Shapes: B rows (prompts), n spans, L span length, ``*shape`` a payload's shape.
"""

from .args import Generated, SampleArgs
from .interleaved import caption, generate, generate_span
from .prompts import interleave, writer_of
from .spans import forecast, impute, sample, sample_long

__all__ = ["Generated", "SampleArgs", "caption", "forecast", "generate", "generate_span", "impute",
           "interleave", "sample", "sample_long", "writer_of"]
