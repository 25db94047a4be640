"""Mode-switching generation (Transfusion sec. 3.3 "inference").

LM mode decodes text one token per step with the KV cache. When a row emits ``<boi:image>`` (or
the caller forces an image), the model switches to diffusion mode: noise patches are appended and
denoised for the sampler's steps, each step attending to the **cached prefix** (computed once) and
bidirectionally within the image, without writing to the cache; the clean image is then committed
(keys/values of the clean image, embedded at t = 0), ``<eoi:image>`` is appended and LM mode
resumes. Rows run in lockstep: while some rows draw an image, the others get padding positions
that nothing attends to.

Classifier-free guidance (text → image): the unconditional prompt is the conditional one with its
content dropped (``<bos> <boi:image>``), and both run in one batched pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from fusion_core.diffusion import Sampler
from fusion_core.model import FusionModel, Item


@dataclass
class Generated:
    """One row's output: ``segments`` alternate text (str) and images ((C, H, W) in [0, 1])."""

    segments: list = field(default_factory=list)


def _pick(logits: Tensor, temperature: float, top_k: int | None, g: torch.Generator | None) -> Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=g)[:, 0].to(logits.device)


@torch.no_grad()
def generate(model: FusionModel, prompts: list[list[Item]], sampler: Sampler, image_shape: tuple,
             max_new_tokens: int = 64, max_len: int = 512, temperature: float = 0.0,
             top_k: int | None = None, force_image: bool = False, max_images: int = 1,
             seed: int = 0) -> list[Generated]:
    """Continue each prompt: text until ``<eos>`` or ``max_new_tokens``; an image whenever a row
    emits ``<boi:image>`` (at most ``max_images`` per row) or its prompt ends with it. With
    ``force_image`` every row starts with an image (``<boi:image>`` is appended where missing)."""
    model.eval()
    text, image = model.adapters["text"], model.adapters["image"]
    boi, eoi, eos = text.boi("image"), text.eoi("image"), text.special("<eos>")
    g = torch.Generator().manual_seed(seed)
    if force_image:
        prompts = [_with_boi(p, boi) for p in prompts]
    B = len(prompts)
    cache, last = model.prefill(prompts, max_len=max_len)
    logits = text.head(last, None)
    out = [Generated() for _ in range(B)]
    pieces: list[list[int]] = [[] for _ in range(B)]
    images_done = torch.zeros(B, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    # a prompt that ends with <boi:image> asks for an image right away
    want_image = torch.tensor([max_images > 0 and (force_image or int(p[-1].payload[-1]) == boi and
                                                   p[-1].modality == "text") for p in prompts])
    steps = 0
    while not done.all():
        if want_image.any():  # diffusion mode for the rows that asked for an image
            rows = want_image & ~done
            x = model.sample_span(cache, "image", image_shape, sampler, generator=g)
            model.commit_span(x, cache, "image", rows=rows)
            for b in torch.nonzero(rows).flatten().tolist():
                _flush(out[b], pieces[b], text)
                out[b].segments.append(image.decode(x[b].cpu()))
                images_done[b] += 1
            nxt = torch.where(rows, torch.full((B,), eoi), torch.full((B,), eos))
            after = model.text_step(nxt, cache, rows=rows)  # <eoi> for image rows
            logits = torch.where(rows.to(after.device)[:, None], after, logits)  # others keep theirs
            want_image[:] = False
            continue
        if steps >= max_new_tokens or cache.length + 1 >= cache.max_len:
            break
        tok = _pick(logits, temperature, top_k, g).cpu()
        tok = torch.where(done, torch.full_like(tok, eos), tok)
        for b in range(B):
            if done[b]:
                continue
            t = int(tok[b])
            if t == eos:
                done[b] = True
            elif t == boi and images_done[b] < max_images:
                want_image[b] = True
            elif t < text.tokenizer.base_vocab:
                pieces[b].append(t)
        active = ~done | want_image
        logits = model.text_step(tok, cache, rows=active)
        steps += 1
    for b in range(B):
        _flush(out[b], pieces[b], text)
    return out


def _with_boi(prompt: list[Item], boi: int) -> list[Item]:
    last = prompt[-1]
    if last.modality == "text" and int(last.payload[-1]) == boi:
        return prompt
    return prompt + [Item("text", torch.tensor([boi]))]


def _flush(gen: Generated, ids: list[int], text) -> None:
    if ids:
        gen.segments.append(text.decode(torch.tensor(ids)))
        ids.clear()


@torch.no_grad()
def text_to_image(model: FusionModel, captions: list[str], sampler: Sampler, image_shape: tuple,
                  guidance: float | None = 3.0, seed: int = 0, max_len: int = 256) -> Tensor:
    """``(n, C, H, W)`` images in [0, 1] for captions, with classifier-free guidance (one batched
    pass over conditional and unconditional rows)."""
    model.eval()
    text, image = model.adapters["text"], model.adapters["image"]
    cond = [[Item("text", text.encode(c, bos=True, append=["<boi:image>"]))] for c in captions]
    prompts = cond
    if guidance is not None:
        prompts = cond + [[Item("text", text.drop_condition(p[0].payload))] for p in cond]
    cache, _ = model.prefill(prompts, max_len=max_len)
    x = model.sample_span(cache, "image", image_shape, sampler, guidance_scale=guidance,
                          generator=torch.Generator().manual_seed(seed))
    return torch.stack([image.decode(xi.cpu()) for xi in x])


@torch.no_grad()
def caption_images(model: FusionModel, images: Tensor, max_new_tokens: int = 40, max_len: int = 256,
                   prompt: str = "") -> list[str]:
    """Greedy captions for ``(n, C, H, W)`` images in [0, 1]: the prompt is
    ``<bos> <boi>`` image ``<eoi>`` (+ optional text), as in image-first training examples."""
    text, image = model.adapters["text"], model.adapters["image"]
    eoi = torch.tensor([text.eoi("image")])
    after = torch.cat([eoi, text.encode(prompt)]) if prompt else eoi
    prompts = [[Item("text", text.encode("", bos=True, append=["<boi:image>"])),
                Item("image", image.encode(im)), Item("text", after)] for im in images]
    gens = generate(model, prompts, sampler=None, image_shape=(), max_new_tokens=max_new_tokens,
                    max_len=max_len, max_images=0)
    return ["".join(s for s in g.segments if isinstance(s, str)) for g in gens]
