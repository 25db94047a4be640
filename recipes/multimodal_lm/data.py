"""Data for the Transfusion recipe: the example format, loaders, and the built-in digits + prose.

**Example format.** An example is a list of segments; a segment is a text string or an image
``(C, H, W)`` float tensor in [0, 1]. In JSONL, one example per line::

    {"segments": [{"text": "a handwritten seven"}, {"image": "images/7.png"}]}

(image paths relative to the JSONL file). HF datasets: a ``text`` and an ``image`` column
(caption + image pairs) or a ``segments`` column. Python: any iterable of such lists.

**Built-in data.** sklearn's 8x8 digits (1797 images, values 0–16 → [0, 1]), kept at 8x8: the
images carry no more detail than that, and 8x8 with 2x2 patches is 16 positions per image (4 with
4x4 patches), which keeps CPU training in minutes; varied captions ("a handwritten seven", "the
digit 7", ...); and plain English prose from the stdlib's ``pydoc_data.topics`` for the text-only
share. Held-out digits and prose are fixed by index and never trained on.

**Layout per example** (Transfusion sec. 3): caption first (80%): ``<bos> caption <boi>``,
image, ``<eoi> <eos>``; image first (20%, captioning): ``<bos> <boi>``, image (noise limited to
t <= 500), ``<eoi> caption <eos>``; prose: ``<bos> text <eos>``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fusion_core.engine.inputs import as_image

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten {w}", "the digit {d}", "a picture of the number {w}", "{w}",
             "an image of a {w}", "number {d}", "the number {w}, written by hand", "digit {w}")


def caption(digit: int, rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(w=WORDS[digit], d=digit)


def parse_digit(text: str) -> int | None:
    """The digit a caption names (word or numeral), or None."""
    for tok in text.lower().replace(",", " ").replace(".", " ").split():
        if tok in WORDS:
            return WORDS.index(tok)
        if tok.isdigit() and len(tok) == 1:
            return int(tok)
    return None


@dataclass
class Digits:
    images: torch.Tensor  # (n, 1, 8, 8) in [0, 1]
    labels: torch.Tensor  # (n,)


def load_digits(held_out: int = 297) -> tuple[Digits, Digits]:
    """sklearn's digits split into train / held-out (the last ``held_out`` by a fixed permutation)."""
    from sklearn.datasets import load_digits as sk

    d = sk()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    tr, te = perm[:-held_out], perm[-held_out:]
    return Digits(x[tr], y[tr]), Digits(x[te], y[te])


def load_prose(held_out_fraction: float = 0.1, chunk: int = 192) -> tuple[list[str], list[str]]:
    """The stdlib's pydoc topics as prose chunks of about ``chunk`` bytes; the last fraction of
    topics is held out."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    cut = int(len(keys) * (1 - held_out_fraction))

    def chunks(ks):
        out = []
        for k in ks:
            text = " ".join(topics[k].split())
            data = text.encode("utf-8")
            for i in range(0, len(data), chunk):
                piece = data[i : i + chunk].decode("utf-8", errors="ignore").strip()
                if len(piece) > 16:
                    out.append(piece)
        return out

    return chunks(keys[:cut]), chunks(keys[cut:])


def load_jsonl(path: str | Path, channels: int = 1, size: int | None = None) -> list[list[Any]]:
    """Examples from a JSONL file (see the module docstring); images read with ``channels``
    channels (1: grayscale, 3: RGB) and, with ``size``, checked to be ``size`` x ``size``.

    Raises:
        ValueError: a line that is not JSON, a segment that is neither text nor image, a missing
            or unreadable image file, an image of the wrong size or colour — naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such JSONL file: {path}")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
        out.append(parse_record(rec, path.parent, f"{path}:{n}", channels, size))
    return out


def parse_record(rec: Any, folder: Path, where: str, channels: int = 1, size: int | None = None) -> list[Any]:
    """One JSONL record ``{"segments": [{"text": ...}, {"image": path}, ...]}`` → a checked
    example (image paths relative to ``folder``)."""
    segs = rec.get("segments") if isinstance(rec, dict) else None
    if not isinstance(segs, list) or not segs:
        raise ValueError(f'{where}: expected {{"segments": [{{"text": ...}} or {{"image": ...}}, ...]}}')
    ex = []
    for j, seg in enumerate(segs):
        if isinstance(seg, dict) and "text" in seg:
            ex.append(seg["text"])
        elif isinstance(seg, dict) and "image" in seg:
            ex.append(read_image(Path(folder) / seg["image"], channels, where=f"{where} segment {j}"))
        else:
            raise ValueError(f"{where} segment {j}: expected {{'text': str}} or {{'image': path}}")
    check_example(ex, where, channels, size)
    return ex


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def read_image(path: Path, channels: int = 1, where: str = "", strict: bool = True) -> torch.Tensor:
    """An image file → ``(C, H, W)`` float in [0, 1] (grayscale for C = 1). ``strict``: a colour
    image for 1 channel, or a greyscale one for 3, is an error rather than converted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return pil_to_tensor(im, channels, where or str(path), strict)
    except FileNotFoundError:
        raise ValueError(f"{where or path}: image file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{where or path}: cannot read image {path} ({e})") from None


def pil_to_tensor(im, channels: int, where: str, strict: bool = True) -> torch.Tensor:
    """A PIL image → ``(C, H, W)`` float in [0, 1], its colour checked against ``channels``."""
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    grey = im.mode in GREY_MODES or bool((rgb == rgb[..., :1]).all())
    if strict and channels == 1 and not grey:
        raise ValueError(f"{where}: a colour image, but data.channels=1: set data.channels=3 or convert "
                         "the images to greyscale")
    if strict and channels == 3 and im.mode in GREY_MODES:
        raise ValueError(f"{where}: a greyscale image, but data.channels=3: set data.channels=1")
    arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None] if arr.ndim == 2 else torch.from_numpy(arr).permute(2, 0, 1)


def from_hf(dataset, channels: int = 1, size: int | None = None, name: str = "HF dataset") -> list[list[Any]]:
    """Examples from an HF dataset with ``text`` + ``image`` columns or a ``segments`` column,
    each checked (errors name the row)."""
    cols = set(dataset.column_names)
    if "segments" not in cols and not {"text", "image"} <= cols:
        raise ValueError(f"{name} needs 'text' and 'image' columns or 'segments'; has {sorted(cols)}")
    return [row_to_example(row, cols, channels, size, f"{name} row {i}") for i, row in enumerate(dataset)]


def row_to_example(row: dict, cols, channels: int, size: int | None, where: str) -> list[Any]:
    """One row of an HF dataset (``text`` + ``image``, or ``segments``) → a checked example."""
    ex = list(row["segments"]) if "segments" in cols else [row["text"], pil_to_tensor(row["image"], channels, where)]
    check_example(ex, where, channels, size)
    return ex


def coerce_example(ex: Any, where: str) -> Any:
    """A Python example as the recipe takes it: a list of segments, each a caption string or an
    image as a tensor, a NumPy array or nested lists (:func:`fusion_core.engine.inputs.as_image`)."""
    if not isinstance(ex, (list, tuple)):
        return ex  # check_example names what it is
    out = []
    for j, seg in enumerate(ex):
        if isinstance(seg, str) or (isinstance(seg, torch.Tensor) and seg.dtype.is_floating_point):
            out.append(seg)
            continue
        try:
            out.append(as_image(seg, f"{where}, segment {j}"))
        except (TypeError, ValueError):
            out.append(seg)  # check_example names what it is
    return out


def check_example(ex: Sequence[Any], where: str, channels: int | None = None, size: int | None = None) -> None:
    """Raise ``ValueError`` (naming ``where``: a file and line, or an example's index) unless every
    segment is a str or a (C, H, W) tensor (with ``channels`` channels and ``size`` x ``size``
    pixels when given: the recipe generates images of one size)."""
    if not isinstance(ex, (list, tuple)) or not ex:
        raise ValueError(f"{where}: expected a non-empty list of segments (str or image tensor)")
    for j, seg in enumerate(ex):
        if isinstance(seg, str):
            continue
        if not (isinstance(seg, torch.Tensor) and seg.ndim == 3):
            raise ValueError(f"{where}, segment {j}: expected a caption string or a (C, H, W) image tensor, "
                             f"got {type(seg).__name__}")
        if channels is not None and seg.shape[0] != channels:
            raise ValueError(f"{where}, segment {j}: image has {seg.shape[0]} channels, data.channels={channels}")
        if size is not None and tuple(seg.shape[1:]) != (size, size):
            raise ValueError(f"{where}, segment {j}: image is {seg.shape[1]}x{seg.shape[2]}, expected "
                             f"{size}x{size}: set data.image_size={seg.shape[1]} (square images) or resize")
