"""Batch video transforms: shapes, normalisation, crops and flips, determinism."""

from __future__ import annotations

import pytest
import torch

from hmdbattn.config import DataConfig
from hmdbattn.data.transforms import VideoTransform

MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def ramp(batch: int = 2, frames: int = 4, height: int = 12, width: int = 16) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) whose value encodes the column (channel 0) and row (channel 1)."""
    x = torch.zeros(batch, frames, height, width, 3, dtype=torch.uint8)
    x[..., 0] = torch.arange(width, dtype=torch.uint8)
    x[..., 1] = torch.arange(height, dtype=torch.uint8)[:, None]
    x[..., 2] = torch.arange(batch, dtype=torch.uint8)[:, None, None, None] * 10
    return x


def test_train_shape_and_dtype():
    t = VideoTransform("train", 8, MEAN, STD)
    out = t(ramp(), torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 4, 8, 8) and out.dtype == torch.float32


def test_eval_centre_and_three_crops():
    x = ramp()
    centre = VideoTransform("eval", 8, (0, 0, 0), (1, 1, 1))(x)
    assert centre.shape == (2, 3, 4, 8, 8)
    # centre columns 4..11, rows 2..9
    assert torch.allclose(centre[0, 0, 0, 0] * 255, torch.arange(4, 12).float())
    assert torch.allclose(centre[0, 1, 0, :, 0] * 255, torch.arange(2, 10).float())
    three = VideoTransform("eval", 8, (0, 0, 0), (1, 1, 1), eval_crops=3)(x)
    assert three.shape == (6, 3, 4, 8, 8)
    firsts = (three[:, 0, 0, 0, 0] * 255).round().tolist()
    assert firsts == [0, 4, 8, 0, 4, 8]  # left, centre, right, sample-major
    samples = (three[:, 2, 0, 0, 0] * 255).round().tolist()
    assert samples == [0, 0, 0, 10, 10, 10]
    assert torch.equal(three[1::3], centre)


def test_three_crops_along_height_for_portrait_frames():
    x = ramp(height=16, width=12)
    three = VideoTransform("eval", 8, (0, 0, 0), (1, 1, 1), eval_crops=3)(x)
    tops = (three[:3, 1, 0, 0, 0] * 255).round().tolist()
    assert tops == [0, 4, 8]


def test_normalisation_values():
    x = torch.full((1, 2, 8, 8, 3), 255, dtype=torch.uint8)
    x[..., 1] = 0
    mean, std = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
    out = VideoTransform("eval", 8, mean, std)(x)
    expected = [(1 - mean[0]) / std[0], (0 - mean[1]) / std[1], (1 - mean[2]) / std[2]]
    for c in range(3):
        assert torch.allclose(out[:, c], torch.tensor(expected[c]), atol=1e-6)


def test_flip_actually_flips_and_crops_are_in_bounds():
    t = VideoTransform("train", 8, (0, 0, 0), (1, 1, 1))
    g = torch.Generator().manual_seed(0)
    x = ramp(batch=64)
    out = (t(x, g) * 255).round()
    cols = out[:, 0, 0, 0]  # (B, 8) column numbers of row 0
    increasing = (cols[:, 1:] - cols[:, :-1] == 1).all(dim=1)
    decreasing = (cols[:, 1:] - cols[:, :-1] == -1).all(dim=1)
    assert (increasing | decreasing).all()
    assert 10 < int(decreasing.sum()) < 54  # about half flipped
    assert cols.min() >= 0 and cols.max() <= 15
    lefts = torch.where(increasing, cols[:, 0], cols[:, -1])
    assert len(set(lefts.tolist())) > 4  # crops move
    # the same crop and flip for every frame of a clip
    assert torch.equal(out[:, :, 0], out[:, :, 3])


def test_train_deterministic_given_generator():
    t = VideoTransform("train", 8, MEAN, STD)
    x = torch.randint(0, 256, (4, 3, 12, 16, 3), dtype=torch.uint8)
    a = t(x, torch.Generator().manual_seed(3))
    b = t(x, torch.Generator().manual_seed(3))
    c = t(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_from_config_and_errors():
    data = DataConfig(resize=(16, 20), crop_size=12, eval_crops=3)
    t = VideoTransform.from_config(data, "eval")
    assert t.views == 3 and VideoTransform.from_config(data, "train").views == 1
    with pytest.raises(ValueError):
        t(torch.zeros(1, 2, 8, 8, 3, dtype=torch.uint8))  # crop larger than frames
    with pytest.raises(ValueError):
        t(torch.zeros(2, 16, 20, 3, dtype=torch.uint8))  # no batch dimension
    with pytest.raises(ValueError):
        VideoTransform("test", 8, MEAN, STD)  # type: ignore[arg-type]


def test_hflip_off_never_mirrors() -> None:
    """With hflip = False a clip is only cropped: mirrored pairs (move left/right) keep labels."""
    clip = torch.arange(6 * 6 * 3, dtype=torch.uint8).reshape(1, 1, 6, 6, 3).repeat(16, 1, 1, 1, 1)
    plain = VideoTransform("train", 6, [0.0] * 3, [1.0] * 3, hflip=False)
    flipping = VideoTransform("train", 6, [0.0] * 3, [1.0] * 3)
    generator = torch.Generator().manual_seed(0)
    out = plain(clip, generator)
    assert torch.equal(out, out[:1].expand_as(out))  # every sample identical: no flips
    mirrored = flipping(clip, torch.Generator().manual_seed(0))
    assert any(torch.equal(m, out[0].flip(-1)) for m in mirrored)
