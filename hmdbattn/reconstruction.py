"""Pictures of pretraining: what was hidden, and what the model predicted for it.

One PNG per epoch, ``<run>/pictures/epoch-NNN.png``, for the first ``pretrain.pictures`` clips
(the same clips and masks every epoch, so the pictures show the model learning). Rows per clip:

- pixel targets: the clip, the masked input, the reconstruction (hidden cells predicted, the
  visible ones as they were);
- feature targets (``ema``, ``tokens``): the clip, the masked input, and the prediction error of
  each hidden token (bright = far from the target), over the token grid.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hmdbattn.config import Config
from hmdbattn.data.datasets import TrainClips
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.fileio import atomic_write_bytes
from hmdbattn.models.masking import tube_mask, upsample_mask
from hmdbattn.models.pretrain import PixelPretrainer, Pretrainer, Reconstruction, mask_grid

TILE = 64  # pixels per frame in the picture


def _strip(x: torch.Tensor) -> np.ndarray:
    """A clip (3, T, H, W) in [0, 1] -> uint8 frames side by side (TILE, T * TILE, 3)."""
    x = F.interpolate(x.float().cpu().permute(1, 0, 2, 3), size=(TILE, TILE))  # (T, 3, h, w)
    return (x.permute(2, 0, 3, 1).flatten(1, 2).numpy() * 255).astype(np.uint8)  # (h, T*w, 3)


def _to_image(clip: torch.Tensor, config: Config) -> np.ndarray:
    """A normalised clip (3, T, H, W) -> its frames as `_strip` draws them."""
    mean = torch.tensor(config.data.mean, device=clip.device).view(3, 1, 1, 1)
    std = torch.tensor(config.data.std, device=clip.device).view(3, 1, 1, 1)
    return _strip((clip.float() * std + mean).clamp(0, 1))


def _unpatchify(pre: PixelPretrainer, clip: torch.Tensor, rec: Reconstruction, i: int):
    """Clip `i` with its hidden patches replaced by the prediction (un-normalised per patch)."""
    c, t, h, w = clip.shape
    p, tt = pre.p, pre.tt
    raw = pre.raw_patches(clip[None])[0]  # (N, C, tt*p*p)
    mean, std = raw.mean(-1, keepdim=True), (raw.var(-1, keepdim=True) + 1e-6).sqrt()
    if not pre.config.pretrain.norm_pixels:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    out = raw.clone()
    hidden = rec.hidden[i]
    pred = rec.prediction[i].view(-1, c, tt * p * p)
    out[hidden] = pred * std[hidden] + mean[hidden]
    out = out.view(t // tt, h // p, w // p, c, tt, p, p).permute(3, 0, 4, 1, 5, 2, 6)
    return out.reshape(c, t, h, w)


def _error_map(rec: Reconstruction, i: int, frames: int, size: int) -> torch.Tensor:
    """Per-token squared error of clip `i` on the token grid, as a (3, T, size, size) clip."""
    t, h, w = rec.grid
    error = torch.zeros(t * h * w)
    error[rec.hidden[i]] = (rec.prediction[i] - rec.target[i]).pow(2).mean(-1).cpu()
    grid = (error / error.max().clamp_min(1e-8)).view(1, 1, t, h, w)
    grid = F.interpolate(grid, size=(frames, size, size), mode="nearest")
    return grid[0].expand(3, -1, -1, -1)  # (3, T, H, W) in [0, 1]


@torch.no_grad()
def draw_epoch(
    pretrainer: Pretrainer, clips: TrainClips, config: Config, folder: Path, epoch: int
) -> Path:
    """Write ``folder/epoch-NNN.png`` for the first ``pretrain.pictures`` clips."""
    count = min(config.pretrain.pictures, len(clips))
    device = next(pretrainer.parameters()).device
    generator = torch.Generator().manual_seed(config.train.seed)
    frames = torch.stack([clips[i][0] for i in range(count)])  # (K, T, H, W, 3) uint8
    x = VideoTransform.from_config(config.data, "eval")(frames.to(device), generator)
    grid = mask_grid(config, pretrainer.model)
    mask = tube_mask(count, grid, config.pretrain.mask_ratio, generator).to(device)
    was_training = pretrainer.training
    pretrainer.eval()
    rec = pretrainer.reconstruct(x, mask)
    pretrainer.train(was_training)
    rows = []
    for i in range(count):
        hide = upsample_mask(mask[i : i + 1], x.shape[-1] // grid[1])[0]  # (H, W)
        masked = x[i].masked_fill(hide, 0.0)
        if isinstance(pretrainer, PixelPretrainer):
            third = _to_image(_unpatchify(pretrainer, x[i], rec, i), config)
        else:
            third = _strip(_error_map(rec, i, x.shape[2], x.shape[-1]))
        rows += [_to_image(x[i], config), _to_image(masked, config), third]
    path = folder / f"epoch-{epoch:03d}.png"
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
