"""Text: tokenizers and the text adapter (embedding in, LM head out).

Transfusion (sec. 3.1) uses Llama-2's BPE; for runs that need no files we ship a byte-level
tokenizer (256 byte ids + specials). Any ``tokenizers``/HF tokenizer object can be wrapped with
:class:`WrappedTokenizer`. Special tokens are appended after the base vocabulary: ``<pad>``,
``<bos>``, ``<eos>`` and a begin/end marker per modality whose spans text brackets (``<boi:image>``,
``<eoi:image>`` …) — the text adapter owns their meaning.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from fusion_core.adapter import Adapter, Embedded, jsonable

BASE_SPECIALS = ("<pad>", "<bos>", "<eos>")


def _specials(modalities: Sequence[str]) -> tuple[str, ...]:
    out = list(BASE_SPECIALS)
    for m in modalities:
        out += [f"<boi:{m}>", f"<eoi:{m}>"]
    return tuple(out)


class ByteTokenizer:
    """UTF-8 bytes as ids 0–255, then the specials. Needs no files; every string round-trips."""

    base_vocab = 256

    def __init__(self, specials: Sequence[str] = BASE_SPECIALS):
        self.specials = tuple(specials)
        self.vocab_size = self.base_vocab + len(self.specials)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class WordTokenizer:
    """Whole words of a fixed vocabulary, each with its leading space (``" cycle"``), and UTF-8
    bytes for everything else: every string round-trips exactly, and text in the vocabulary takes
    one position per word instead of one per byte. For small closed vocabularies (captions,
    commands) where a learned BPE is overkill. Ids: bytes 0–255, then the words, then the specials.

    Args:
        words: the vocabulary, as :meth:`pieces` splits text (build it with :meth:`fit`).

    Raises:
        ValueError: repeated or empty words.
    """

    PIECE = re.compile(r" ?\w+| ?[^\w\s]+|\s+")  # every character falls in exactly one piece

    def __init__(self, words: Sequence[str], specials: Sequence[str] = BASE_SPECIALS):
        self.words = tuple(words)
        if len(set(self.words)) != len(self.words) or not all(isinstance(w, str) and w for w in self.words):
            raise ValueError("words must be distinct non-empty strings")
        self.index = {w: 256 + i for i, w in enumerate(self.words)}
        self.base_vocab = 256 + len(self.words)
        self.specials = tuple(specials)
        self.vocab_size = self.base_vocab + len(self.specials)

    @classmethod
    def pieces(cls, text: str) -> list[str]:
        return cls.PIECE.findall(text)

    @classmethod
    def fit(cls, texts: Sequence[str], min_count: int = 2, max_words: int = 4096) -> list[str]:
        """The ``max_words`` most frequent pieces of ``texts`` seen at least ``min_count`` times."""
        from collections import Counter

        counts = Counter(p for t in texts for p in cls.pieces(t))
        ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return ranked[:max_words]

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in self.pieces(text):
            i = self.index.get(piece)
            out.extend([i] if i is not None else piece.encode("utf-8"))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        out, pending = [], bytearray()
        for i in ids:
            if 0 <= i < 256:
                pending.append(i)
            elif 256 <= i < self.base_vocab:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
                out.append(self.words[i - 256])
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


class WrappedTokenizer:
    """Wrap a ``tokenizers.Tokenizer`` or a ``transformers`` tokenizer; our specials go after
    its vocabulary."""

    def __init__(self, tokenizer: Any, specials: Sequence[str] = BASE_SPECIALS):
        self.tokenizer = tokenizer
        size = getattr(tokenizer, "get_vocab_size", None)
        self.base_vocab = size() if callable(size) else len(tokenizer)
        self.specials = tuple(specials)
        self.vocab_size = self.base_vocab + len(self.specials)

    def encode(self, text: str) -> list[int]:
        out = self.tokenizer.encode(text)
        return list(getattr(out, "ids", out))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([i for i in ids if 0 <= i < self.base_vocab])


class TextAdapter(Adapter):
    """Token embedding in, linear LM head out.

    Args:
        dim: backbone width.
        tokenizer: ``"bytes"`` (default, no files), ``{"words": [...]}`` (a
            :class:`WordTokenizer` over that vocabulary; saved with the model) or a tokenizer
            object to wrap.
        markers: names of the modalities whose spans appear inside text, continuous or discrete
            (one ``<boi:M>`` / ``<eoi:M>`` pair each).
        tie_weights: share the embedding matrix with the LM head.
        name: the modality name (default ``"text"``).

    Raises:
        ValueError: a tokenizer spec that is neither ``"bytes"``, ``{"words": [...]}`` nor an
            object with ``encode``/``decode``; a word list with repeats or empty words.
    """

    kind = "discrete"
    attention = "causal"

    def __init__(self, dim: int, tokenizer: Any = "bytes", markers: Sequence[str] = ("image",),
                 tie_weights: bool = False, name: str = "text", init_std: float = 0.02):
        super().__init__(dim)
        self.name, self.markers = name, tuple(markers)
        self.tie_weights, self.init_std = tie_weights, init_std
        specials = _specials(self.markers)
        if tokenizer == "bytes":
            self.tokenizer = ByteTokenizer(specials)
        elif isinstance(tokenizer, dict) and set(tokenizer) == {"words"}:
            self.tokenizer = WordTokenizer(tokenizer["words"], specials)
        elif isinstance(tokenizer, (str, dict)):
            raise ValueError(f"tokenizer must be 'bytes', {{'words': [...]}} or a tokenizer object, got {tokenizer!r:.80}")
        else:
            self.tokenizer = WrappedTokenizer(tokenizer, specials)
        self.vocab_size = self.tokenizer.vocab_size
        self.embedding = nn.Embedding(self.vocab_size, dim)
        self.lm_head = nn.Linear(dim, self.vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=init_std)
        nn.init.normal_(self.lm_head.weight, std=init_std)
        if tie_weights:
            self.lm_head.weight = self.embedding.weight

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if isinstance(self.tokenizer, WordTokenizer):
            cfg["tokenizer"] = {"words": list(self.tokenizer.words)}
        elif isinstance(self.tokenizer, WrappedTokenizer):
            cfg["tokenizer"] = jsonable(self.tokenizer.tokenizer)
        else:
            cfg["tokenizer"] = "bytes"
        return cfg

    # -- specials -------------------------------------------------------------------------
    def special(self, name: str) -> int:
        """Id of a special token, e.g. ``"<bos>"`` or ``"<boi:image>"``."""
        try:
            return self.tokenizer.base_vocab + self.tokenizer.specials.index(name)
        except ValueError:
            raise ValueError(f"unknown special token {name!r}; known: {self.tokenizer.specials}") from None

    def boi(self, modality: str) -> int:
        return self.special(f"<boi:{modality}>")

    def eoi(self, modality: str) -> int:
        return self.special(f"<eoi:{modality}>")

    # the writer protocol (fusion_core.generation): markers around other modalities' spans
    def begin_marker(self, modality: str) -> int | None:
        """Id of the token that opens a span of ``modality`` (``<boi:M>``), or None."""
        return self.boi(modality) if modality in self.markers else None

    def end_marker(self, modality: str) -> int | None:
        """Id of the token that closes a span of ``modality`` (``<eoi:M>``), or None."""
        return self.eoi(modality) if modality in self.markers else None

    @property
    def bos_id(self) -> int:
        return self.special("<bos>")

    @property
    def eos_id(self) -> int:
        return self.special("<eos>")

    def is_special(self, ids: Tensor) -> Tensor:
        return ids >= self.tokenizer.base_vocab

    # -- protocol ---------------------------------------------------------------------------
    def encode(self, raw: str | Sequence[int] | Tensor | Sequence[str], bos: bool = False, eos: bool = False,
               append: Sequence[str] = ()) -> Tensor | list[Tensor]:
        """Text, or ids, → ``(n,)`` long ids. ``bos``/``eos`` add those specials; ``append``
        names more specials to add at the end (e.g. ``["<boi:image>"]``). A list of strings is a
        batch: it returns a list of id tensors.

        Raises:
            ValueError: non-string non-integer input, ids outside ``[0, vocab_size)``, empty result.
        """
        if isinstance(raw, (list, tuple)) and raw and all(isinstance(r, str) for r in raw):
            return [self.encode(r, bos=bos, eos=eos, append=append) for r in raw]
        if isinstance(raw, str):
            ids = torch.tensor(self.tokenizer.encode(raw), dtype=torch.long)
        else:
            ids = raw if isinstance(raw, Tensor) else _as_int_tensor(raw)
            if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
                raise ValueError(f"text ids must be integers, got dtype {ids.dtype}")
            ids = ids.long().reshape(-1)
            bad = (ids < 0) | (ids >= self.vocab_size)
            if bool(bad.any()):
                raise ValueError(
                    f"token id {int(ids[bad][0])} out of range: expected ids in [0, {self.vocab_size})"
                )
        parts = ([torch.tensor([self.special("<bos>")])] if bos else []) + [ids]
        parts += [torch.tensor([self.special(s)]) for s in (["<eos>"] if eos else []) + list(append)]
        ids = torch.cat(parts)
        if ids.numel() == 0:
            raise ValueError("text is empty: expected at least one token")
        return ids

    def num_positions(self, payload: Tensor) -> int:
        return int(payload.numel())

    def embed(self, payloads: Sequence[Tensor], t: Tensor | None = None) -> Embedded:
        ids = torch.cat([p.reshape(-1) for p in payloads]).to(self.embedding.weight.device)
        return Embedded(self.embedding(ids))

    def head(self, hidden: Tensor, embedded: Embedded) -> Tensor:
        return self.lm_head(hidden)

    def head_linear(self) -> tuple[Tensor, None]:
        return self.lm_head.weight, None

    def decode(self, payload: Tensor) -> str:
        return self.tokenizer.decode([int(i) for i in payload.reshape(-1)])

    def drop_condition(self, payload: Tensor) -> Tensor:
        """Keep only the leading and trailing special tokens (``<bos>`` … ``<boi:image>``): the
        unconditional prompt for classifier-free guidance."""
        ids = payload.reshape(-1)
        special = self.is_special(ids)
        keep = torch.zeros_like(special)
        if ids.numel():
            keep[0], keep[-1] = special[0], special[-1]
        return ids[keep]


def _as_int_tensor(raw) -> Tensor:
    try:
        return torch.as_tensor(raw)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"text must be a str or a sequence of int ids, got {type(raw).__name__}") from e
