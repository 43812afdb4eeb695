"""Batch transforms of clips, run wherever the batch is (CPU in a worker, or the GPU).

Batches leave the loader as uint8 ``(B, T, H, W, 3)`` at the resize size, which keeps the
host-to-device copy four times smaller than float; cropping happens before the conversion to
float for the same reason. The output is normalised float32 ``(B, 3, T, crop, crop)``, the layout
torchvision's video models take.

Crops and flips are plain slicing in the loader's channels-last layout: torchvision's
``crop`` / ``horizontal_flip`` want ``(..., H, W)`` last, and moving the channels first before
cropping costs a strided uint8 copy that slicing avoids (about 0.5 ms of 1.1 ms per clip on a
CPU, measured). The channels move while the crop is converted to float, in the same pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torchvision.transforms.v2 import functional as F

from hmdbattn.config import DataConfig

Mode = Literal["train", "eval"]


class VideoTransform:
    """Crop, flip and normalise a batch of clips.

    - ``train``: per-sample random crop and random horizontal flip (probability 0.5; off with
      ``hflip = False``, for classes that a mirror turns into one another), drawn from
      the generator passed to the call, so a seeded generator repeats them exactly.
    - ``eval``: the centre crop, or with ``eval_crops = 3`` three crops along the longer side
      (left / centre / right, or top / centre / bottom) giving ``(B * 3, 3, T, crop, crop)``,
      the three crops of a sample next to each other.

    Normalisation is ``(x / 255 - mean) / std`` in float32.
    """

    def __init__(
        self,
        mode: Mode,
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        eval_crops: int = 1,
        hflip: bool = True,
    ) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if eval_crops not in (1, 3):
            raise ValueError(f"eval_crops must be 1 or 3, got {eval_crops}")
        self.mode = mode
        self.crop_size = crop_size
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.eval_crops = eval_crops if mode == "eval" else 1
        self.hflip = hflip
        self._mean255 = [255.0 * m for m in self.mean]
        self._std255 = [255.0 * s for s in self.std]

    @classmethod
    def from_config(cls, data: DataConfig, mode: Mode) -> VideoTransform:
        """The transform of a data config section (crop_size, mean, std, eval_crops, hflip)."""
        return cls(mode, data.crop_size, data.mean, data.std, data.eval_crops, data.hflip)

    @property
    def views(self) -> int:
        """Output clips per input clip (3 for three-crop evaluation, else 1)."""
        return self.eval_crops

    def __call__(
        self, clips: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """uint8 ``(B, T, H, W, 3)`` -> float32 ``(B * views, 3, T, crop, crop)``.

        `generator` drives the training crops and flips; None uses torch's global generator.
        """
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"expected clips (B, T, H, W, 3), got {tuple(clips.shape)}")
        height, width = clips.shape[2], clips.shape[3]
        if self.crop_size > min(height, width):
            raise ValueError(f"crop {self.crop_size} is larger than the frames {height}x{width}")
        train = self.mode == "train"
        x = self._random_crop_flip(clips, generator) if train else self._eval_crops(clips)
        x = x.permute(0, 4, 1, 2, 3)  # (B', T, h, w, C) -> (B', C, T, h, w), a view
        # One pass: uint8 to float32, written in (B', C, T, h, w) order
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
        b, c, t, h, w = x.shape
        # normalize wants channels at dim -3: (B', C, T, h, w) -> (B', C, T * h, w), a view.
        # (x / 255 - mean) / std computed as (x - 255 mean) / (255 std), in place on the fresh
        # tensor: two float passes instead of four.
        x = F.normalize(x.view(b, c, t * h, w), self._mean255, self._std255, inplace=True)
        return x.view(b, c, t, h, w)  # (B', C, T * h, w) -> (B', C, T, h, w)

    def _crop(self, x: torch.Tensor, top: int, left: int) -> torch.Tensor:
        """A square crop of channels-last frames (..., H, W, C), as a view."""
        size = self.crop_size
        return x[..., top : top + size, left : left + size, :]

    def _random_crop_flip(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-sample random crop and flip of (B, T, H, W, C); the same for every frame."""
        batch, height, width, size = x.shape[0], x.shape[2], x.shape[3], self.crop_size
        # Parameters are drawn on the generator's device (CPU usually), whatever the batch's.
        device = generator.device if generator is not None else torch.device("cpu")
        tops = torch.randint(0, height - size + 1, (batch,), generator=generator, device=device)
        lefts = torch.randint(0, width - size + 1, (batch,), generator=generator, device=device)
        flips = torch.rand((batch,), generator=generator, device=device) < 0.5
        flips &= self.hflip  # drawn either way, so other draws do not depend on the setting
        params = zip(tops.tolist(), lefts.tolist(), flips.tolist(), strict=True)
        out = []
        for clip, (top, left, flip) in zip(x, params, strict=True):
            clip = self._crop(clip, top, left)  # (T, H, W, C) -> (T, size, size, C)
            out.append(clip.flip(2) if flip else clip)  # dim 2 is W
        return torch.stack(out)  # B x (T, size, size, C) -> (B, T, size, size, C)

    def _eval_crops(self, x: torch.Tensor) -> torch.Tensor:
        """Centre crop, or three crops along the longer side, of (B, T, H, W, C)."""
        height, width, size = x.shape[2], x.shape[3], self.crop_size
        centre_top, centre_left = (height - size) // 2, (width - size) // 2
        if self.eval_crops == 1:
            return self._crop(x, centre_top, centre_left)  # -> (B, T, size, size, C)
        if width >= height:
            corners = [(centre_top, left) for left in (0, centre_left, width - size)]
        else:
            corners = [(top, centre_left) for top in (0, centre_top, height - size)]
        crops = torch.stack([self._crop(x, top, left) for top, left in corners], dim=1)
        # (B, 3, T, size, size, C) -> (B * 3, T, size, size, C), a sample's crops adjacent
        return crops.flatten(0, 1)
