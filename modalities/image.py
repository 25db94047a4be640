"""Images: pixels (or autoencoder latents) as patches, with linear or U-Net entry/exit layers.

Transfusion (sec. 3.2): an image's latent is cut into ``p x p`` patches, left to right, top to
bottom. Two designs connect patches to the transformer:

- ``linear``: one linear layer per patch in and out, with a timestep embedding added to each patch
  (footnote 6; < 0.5% extra parameters);
- ``unet``: U-Net down blocks in and up blocks out (footnote 7), with skip connections from the
  down path to the up path carried across the transformer. Down blocks reduce the image to the
  patch grid (``log2 p`` halvings), so larger patches mean fewer positions (Table 6).

Positions get a learned 2-D (row + column) embedding. User images are ``(C, H, W)`` floats in
``[0, 1]`` (``value_range="01"``) or ``[-1, 1]`` (``"-11"``); the payload is always ``[-1, 1]``
(or the latent of an optional user-supplied autoencoder with ``encode``/``decode``).

Shapes: n images, C channels, H x W pixels, h x w patch grid, D width, c U-Net channels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from fusion_core.adapter import Adapter, Embedded
from fusion_core.embeddings import TimestepEmbedding

from .unet import DESIGNS, UNetDown, UNetUp, unet_levels


class ImageAdapter(Adapter):
    """Image patches in and out of the backbone.

    Args:
        dim: backbone width D.
        channels: image (or latent) channels C.
        patch_size: p; ``H`` and ``W`` must be divisible by it (a power of two for ``unet``).
        design: ``"linear"`` or ``"unet"``.
        unet_channels: U-Net widths per resolution, finest first; needs ``log2(p) + 1`` entries.
        value_range: user images in ``"01"`` ([0, 1]) or ``"-11"`` ([-1, 1]).
        attention: ``"bidirectional"`` (Transfusion) or ``"causal"`` (the Table 5 ablation).
        autoencoder: optional object with ``encode(x) -> z`` and ``decode(z) -> x`` on batches
            in [-1, 1]; patches are then cut from the latent.
        latent_channels: channels of the autoencoder's latent (required with ``autoencoder``).
        max_grid: largest patch-grid side supported by the 2-D position embedding.

    Raises:
        ValueError: an unknown design or value range, a patch size that is not a positive int
            (a power of two for ``unet``), too few ``unet_channels``, an autoencoder without
            ``latent_channels``.
    """

    kind = "continuous"

    def __init__(self, dim: int, channels: int = 3, patch_size: int = 2, design: str = "linear",
                 unet_channels: Sequence[int] = (32, 64, 128, 256), value_range: str = "01",
                 attention: str = "bidirectional", autoencoder: Any = None,
                 latent_channels: int | None = None, max_grid: int = 64, name: str = "image"):
        super().__init__(dim)
        if design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
        if value_range not in ("01", "-11"):
            raise ValueError(f"value_range must be '01' or '-11', got {value_range!r}")
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        if autoencoder is not None and latent_channels is None:
            raise ValueError("latent_channels is required with an autoencoder")
        self.name, self.attention = name, attention
        self.channels, self.patch_size, self.design = channels, patch_size, design
        self.value_range, self.autoencoder, self.max_grid = value_range, autoencoder, max_grid
        self.unet_channels, self.latent_channels = tuple(unet_channels), latent_channels
        C = latent_channels if autoencoder is not None else channels
        self.payload_channels = C
        p = patch_size
        self.t_embed = TimestepEmbedding(dim)
        self.row_embed = nn.Parameter(torch.zeros(max_grid, dim))
        self.col_embed = nn.Parameter(torch.zeros(max_grid, dim))
        nn.init.normal_(self.row_embed, std=0.02)
        nn.init.normal_(self.col_embed, std=0.02)
        if design == "linear":
            self.patch_in = nn.Linear(C * p * p, dim)
            self.patch_out = nn.Linear(dim, C * p * p)
            self.norm_out = nn.LayerNorm(dim)
        else:
            chans = unet_levels(p, unet_channels)
            self.down = UNetDown(C, chans, dim)
            self.up = UNetUp(C, chans, dim)
            self.to_tokens = nn.Linear(chans[-1], dim)
            self.from_tokens = nn.Linear(dim, chans[-1])
            self.norm_out = nn.LayerNorm(dim)

    # -- protocol ---------------------------------------------------------------------------
    def encode(self, raw: Tensor | np.ndarray) -> Tensor:
        """``(C, H, W)`` image in the stated range → payload in [-1, 1] (or its latent); a batch
        ``(n, C, H, W)`` → ``(n, ...)``.

        Raises:
            ValueError: wrong rank or channel count, sides not divisible by the patch size,
                non-float or non-finite values, values outside the stated range.
        """
        try:
            x = torch.as_tensor(np.asarray(raw)) if not isinstance(raw, Tensor) else raw
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"image must be a (C, H, W) float array or tensor, got {type(raw).__name__} ({e})") from None
        if x.ndim == 4:
            return torch.stack([self.encode(im) for im in x]) if len(x) else x.float()
        if x.ndim != 3:
            raise ValueError(f"image must have shape (C, H, W) (or a batch (n, C, H, W)), got {tuple(x.shape)}")
        if x.shape[0] != self.channels:
            raise ValueError(f"image has {x.shape[0]} channels, expected {self.channels} (C, H, W)")
        if not x.dtype.is_floating_point:
            raise ValueError(f"image must be floating point in [{self._range_text()}], got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("image contains NaN or inf")
        lo, hi = (0.0, 1.0) if self.value_range == "01" else (-1.0, 1.0)
        if float(x.min()) < lo - 1e-4 or float(x.max()) > hi + 1e-4:
            raise ValueError(f"image values must be in [{self._range_text()}], "
                             f"got [{float(x.min()):.3g}, {float(x.max()):.3g}]")
        x = x.float()
        x = x * 2 - 1 if self.value_range == "01" else x
        if self.autoencoder is not None:
            x = self.autoencoder.encode(x[None])[0]
        self._check_payload(x)
        return x

    def _range_text(self) -> str:
        return "0, 1" if self.value_range == "01" else "-1, 1"

    def _check_payload(self, x: Tensor) -> None:
        p = self.patch_size
        C, H, W = x.shape
        if C != self.payload_channels:
            raise ValueError(f"adapter {self.name!r}: payload has {C} channels, expected {self.payload_channels} "
                             f"(shape (C, H, W) = {(C, H, W)})")
        if H % p or W % p or H < p or W < p:
            raise ValueError(f"adapter {self.name!r}: image sides must be positive multiples of patch_size={p}; "
                             f"got H={H}, W={W}")
        if H // p > self.max_grid or W // p > self.max_grid:
            raise ValueError(f"patch grid {H // p}x{W // p} exceeds max_grid={self.max_grid}")

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """A payload is ``(C, H, W)`` with the payload's channels and sides the patch grid divides."""
        shape = tuple(shape)
        C = self.payload_channels
        if len(shape) != 3:
            raise ValueError(f"adapter {self.name!r} takes payloads of shape ({C}, H, W), got {shape}")
        self._check_payload(torch.empty(shape, device="meta"))

    def num_positions(self, payload: Tensor) -> int:
        self._check_payload(payload)
        return (payload.shape[1] // self.patch_size) * (payload.shape[2] // self.patch_size)

    def decode(self, payload: Tensor) -> Tensor:
        """Payload → ``(C, H, W)`` image in the stated range (clamped); a batch → ``(n, C, H, W)``."""
        x = payload
        if x.ndim == 4:
            return torch.stack([self.decode(p) for p in x]) if len(x) else x
        if self.autoencoder is not None:
            x = self.autoencoder.decode(x[None])[0]
        x = x.clamp(-1, 1)
        return (x + 1) / 2 if self.value_range == "01" else x

    def describe(self, raw: Any) -> str:
        """``a 8x8 grey image, mean 0.31``."""
        x = np.asarray(raw, dtype=np.float32)
        if x.ndim != 3:
            return f"an array of shape {x.shape}"
        kind = "grey" if x.shape[0] == 1 else ("RGB" if x.shape[0] == 3 else f"{x.shape[0]}-channel")
        return f"a {x.shape[1]}x{x.shape[2]} {kind} image, mean {x.mean():.2f}"

    def render(self, raw: Any, ax) -> bool:
        """Show a decoded ``(C, H, W)`` image (grey or RGB) on a matplotlib Axes."""
        x = torch.as_tensor(np.asarray(raw, dtype=np.float32))
        if x.ndim != 3:
            return False
        lo, hi = (0.0, 1.0) if self.value_range == "01" else (-1.0, 1.0)
        img = ((x - lo) / (hi - lo)).clamp(0, 1)
        ax.imshow((img[0] if img.shape[0] == 1 else img[:3].permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
        return True

    def embed(self, payloads: Sequence[Tensor], t: Tensor | None = None) -> Embedded:
        if t is None:
            raise ValueError("image embed needs the diffusion step t (use zeros for clean images)")
        device, dtype = self.row_embed.device, self.row_embed.dtype
        t = t.to(device)
        temb = self.t_embed(t)  # n D
        groups = _group_by_shape(payloads)
        tokens: list[Tensor | None] = [None] * len(payloads)
        ctx = {"groups": groups, "temb": temb, "skips": {}, "grid": {}}
        for shape, idx in groups.items():
            x = torch.stack([payloads[i] for i in idx]).to(device, dtype)  # g C H W
            h, w = shape[1] // self.patch_size, shape[2] // self.patch_size
            te = temb[idx]
            if self.design == "linear":
                p = self.patch_size
                tok = self.patch_in(rearrange(x, "g c (h p1) (w p2) -> g (h w) (c p1 p2)", p1=p, p2=p))
            else:
                feats, skips = self.down(x, te)  # g c h w
                ctx["skips"][shape] = skips
                tok = self.to_tokens(rearrange(feats, "g c h w -> g (h w) c"))
            pos = (self.row_embed[:h, None] + self.col_embed[None, :w]).reshape(h * w, -1)
            tok = tok + pos + te[:, None]
            ctx["grid"][shape] = (h, w)
            for k, i in enumerate(idx):
                tokens[i] = tok[k]
        return Embedded(torch.cat(tokens), context=ctx)

    def head(self, hidden: Tensor, embedded: Embedded) -> list[Tensor]:
        ctx = embedded.context
        sizes = [None] * sum(len(v) for v in ctx["groups"].values())
        for shape, idx in ctx["groups"].items():
            for i in idx:
                sizes[i] = ctx["grid"][shape][0] * ctx["grid"][shape][1]
        per_item = list(hidden.split(sizes))
        out: list[Tensor | None] = [None] * len(sizes)
        p = self.patch_size
        for shape, idx in ctx["groups"].items():
            h, w = ctx["grid"][shape]
            x = self.norm_out(torch.stack([per_item[i] for i in idx]))  # g (h w) D
            if self.design == "linear":
                y = rearrange(self.patch_out(x), "g (h w) (c p1 p2) -> g c (h p1) (w p2)",
                              h=h, w=w, p1=p, p2=p)
            else:
                feats = rearrange(self.from_tokens(x), "g (h w) c -> g c h w", h=h, w=w)
                y = self.up(feats, ctx["skips"][shape], ctx["temb"][idx])
            for k, i in enumerate(idx):
                out[i] = y[k]
        return out


def _group_by_shape(payloads: Sequence[Tensor]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(payloads):
        groups.setdefault(tuple(p.shape), []).append(i)
    return groups
