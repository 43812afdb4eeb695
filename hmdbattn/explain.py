"""Explanations: where in a clip the model looks, drawn over the clip's frames as a PNG strip.

A map over the CNN's T' x H' x W' token grid, one of two kinds:

- ``attention`` (a Perceiver head with cross-attention): the first cross-attention layer's
  attention probabilities over the tokens, averaged over its heads and latents: where the
  latents read the video from.
- ``cam`` (the pool head, or a Perceiver with ``cross_layers = 0``): a class activation map
  (Zhou et al., 2016), the predicted class's classifier weights applied at every position.
  For the pool head with average pooling that is ``head.classifier.fc.weight[c] @ features[:, t,
  h, w]``, whose mean over positions plus the bias is exactly the class's logit; with max pooling
  each channel's term sits at the position of its maximum (the only one the logit sees), scaled
  so that the same sum holds (``avgmax`` adds both maps). A Perceiver without
  cross-attention has no linear read-out of the CNN features, so its classifier is applied to
  every token's output of the last self-attention stage instead.

The map is upsampled (trilinear) to the clip's T x crop x crop, scaled to [0, 1] (min to max)
and drawn over the centre crop the model saw: a strip with the frames in the top row, the
frames under the heat map in the bottom row, and a line of text above.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from hmdbattn.data.transforms import VideoTransform
from hmdbattn.fileio import atomic_write_bytes
from hmdbattn.models.classifier import VideoClassifier
from hmdbattn.models.perceiver import CrossLayer, PerceiverHead

MIN_TILE = 96  # pixels: small crops are scaled up (by a whole factor) to at least this
HEADER = 18  # pixels of text above the frames
ALPHA = 0.5  # weight of the heat colour over the frame
# An inferno-like colour ramp, dark (low) to bright (high), as (position, RGB) anchors.
_RAMP = (
    (0.00, (0, 0, 4)),
    (0.25, (87, 16, 110)),
    (0.50, (188, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.00, (252, 255, 164)),
)


@dataclass
class Explanation:
    """A clip as the model saw it and where it looked."""

    frames: np.ndarray  # (T, crop, crop, 3) uint8: the centre crop of the clip
    heat: np.ndarray  # (T, crop, crop) float32 in [0, 1]
    kind: str  # "attention" or "cam"
    grid: tuple[int, int, int]  # (T', H', W') of the map before upsampling

    def describe(self) -> str:
        """A short caption naming the map and its token grid."""
        what = "first cross-attention" if self.kind == "attention" else "class activation map"
        return f"{what} over {'x'.join(map(str, self.grid))} tokens"


def attention_map(head: PerceiverHead, features: torch.Tensor) -> torch.Tensor:
    """First cross-attention layer's weights, mean over heads and latents: (B, T', H', W')."""
    layer = cast(CrossLayer, head.cross[0])
    tokens = head.tokens(features)  # (B, N, C + P)
    b, _, t, h, w = features.shape
    # The first layer gets no incoming latents: its queries are its own latent array.
    queries = layer.latents.expand(b, -1, -1)  # (B, L, D)
    weights = layer.attn.weights(layer.norm(queries), layer.norm_context(tokens))  # (B, h, L, N)
    return weights.mean(dim=(1, 2)).view(b, t, h, w)  # (B, N) -> (B, T', H', W')


def self_attention_outputs(
    head: PerceiverHead, features: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """CLS output (B, D) or None, and every token's output (B, N, D), of a head without
    cross-attention: `PerceiverHead.pooled`'s path, keeping the tokens."""
    tokens = head.tokens(features)  # (B, N, C + P)
    c = features.shape[1]
    latents = head.token_proj(tokens[..., :c]) + head.pos_proj(tokens[..., c:])  # (B, N, D)
    cls = None if head.cls is None else head.cls.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
    for blocks in head.blocks:
        if cls is not None:
            x = blocks(torch.cat([cls, latents], dim=1))  # (B, 1 + N, D)
            cls, latents = x[:, :1], x[:, 1:]
    return (None if cls is None else cls[:, 0]), latents


def class_activation_map(head: nn.Module, features: torch.Tensor, target: int) -> torch.Tensor:
    """Class `target`'s score at every position: (B, T', H', W') (see the module docstring)."""
    b, _, t, h, w = features.shape
    if isinstance(head, PerceiverHead):
        _, outputs = self_attention_outputs(head, features)  # (B, N, D)
        return head.classifier(outputs)[..., target].view(b, t, h, w)  # (B, N) -> (B, T', H', W')
    return _pool_head_cam(head, features, target).view(b, t, h, w)  # (B, N) -> (B, T', H', W')


def _pool_head_cam(head: nn.Module, features: torch.Tensor, target: int) -> torch.Tensor:
    """The pool head's map (B, N): its mean plus the bias is the logit, for every pooling."""
    fc = cast(nn.Linear, head.get_submodule("classifier.fc"))
    weight = fc.weight[target]  # (C,) or, for avgmax, (2C,): the mean's weights, then the max's
    flat = features.flatten(2)  # (B, C, T', H', W') -> (B, C, N)
    channels, positions = flat.shape[1:]
    pool = getattr(head, "pool", "avg")
    w_avg = weight[:channels] if pool in ("avg", "avgmax") else None
    w_max = weight[-channels:] if pool in ("max", "avgmax") else None
    cam = torch.zeros(flat.shape[0], positions, dtype=flat.dtype, device=flat.device)
    if w_avg is not None:
        cam += torch.einsum("c,bcn->bn", w_avg, flat)
    if w_max is not None:
        peak, where = flat.max(dim=2)  # (B, C): each channel's maximum and its position
        cam.scatter_add_(1, where, positions * w_max * peak)
    return cam


def token_map(model: VideoClassifier, x: torch.Tensor, target: int) -> tuple[torch.Tensor, str]:
    """The map of clips `x` (B, 3, T, crop, crop) over the token grid, and its kind."""
    features = model.features(x)  # (B, C, T', H', W')
    head = model.head
    if isinstance(head, PerceiverHead) and head.c.cross_layers > 0:
        return attention_map(head, features), "attention"
    return class_activation_map(head, features, target), "cam"


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1]; a constant map becomes zeros."""
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else torch.zeros_like(x)


@torch.inference_mode()
def explain_clip(
    model: VideoClassifier,
    transform: VideoTransform,
    clip: np.ndarray,
    target: int,
    device: torch.device | None = None,
) -> Explanation:
    """Where `model` looks in `clip` ((T, H, W, 3) uint8 at the resize size) for class `target`.

    The centre crop is explained (with three evaluation crops, the middle one is the centre).
    """
    device = device or torch.device("cpu")
    frames = torch.from_numpy(np.ascontiguousarray(clip))
    x = transform(frames[None].to(device))  # (views, 3, T, crop, crop)
    centre = transform.views // 2
    grid, kind = token_map(model, x[centre : centre + 1].float(), target)  # (1, T', H', W')
    t, size = x.shape[2], x.shape[-1]
    heat = F.interpolate(grid[:, None].float(), size=(t, size, size), mode="trilinear")
    top, left = (clip.shape[1] - size) // 2, (clip.shape[2] - size) // 2
    return Explanation(
        frames=np.ascontiguousarray(clip[:, top : top + size, left : left + size]),
        heat=_unit(heat[0, 0]).cpu().numpy().astype(np.float32),  # (T, crop, crop)
        kind=kind,
        grid=(grid.shape[1], grid.shape[2], grid.shape[3]),
    )


def tile_size(crop: int) -> int:
    """Pixels per frame in the strip: the crop scaled up by a whole factor to >= MIN_TILE."""
    return crop * max(1, math.ceil(MIN_TILE / crop))


def strip_size(num_frames: int, crop: int) -> tuple[int, int]:
    """(width, height) of the picture `render` draws for a clip."""
    tile = tile_size(crop)
    return num_frames * tile, HEADER + 2 * tile


def colourise(heat: np.ndarray) -> np.ndarray:
    """Heat in [0, 1] (any shape) -> uint8 RGB (shape + (3,)) along the colour ramp."""
    stops = np.array([p for p, _ in _RAMP])
    colours = np.array([c for _, c in _RAMP], dtype=np.float64)  # (stops, 3)
    levels = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(levels, stops, colours[:, i]) for i in range(3)], axis=1)
    index = np.clip(np.rint(heat * 255), 0, 255).astype(np.int64)
    return lut.round().astype(np.uint8)[index]


def render(found: Explanation, title: str) -> Image.Image:
    """The strip: frames on top, frames under the heat map below, `title` above both."""
    t, crop = found.frames.shape[0], found.frames.shape[1]
    tile = tile_size(crop)
    image = Image.new("RGB", strip_size(t, crop), (0, 0, 0))
    blended = (1 - ALPHA) * found.frames + ALPHA * colourise(found.heat).astype(np.float64)
    rows = (found.frames, np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    for i in range(t):
        for row, frames in enumerate(rows):
            picture = Image.fromarray(frames[i]).resize((tile, tile), Image.Resampling.BILINEAR)
            image.paste(picture, (i * tile, HEADER + row * tile))
    ImageDraw.Draw(image).text((4, 3), title, fill=(255, 255, 255), font=ImageFont.load_default())
    return image


def write_png(image: Image.Image, path: Path) -> None:
    """Save `image` as a PNG at `path`, atomically (never a half-written file)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())
