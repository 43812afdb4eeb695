"""The CNN trunk: torchvision's R(2+1)D-18 stem plus its first N residual BasicBlocks.

Module names follow torchvision's (``stem``, ``layer1.0``, ...), so a torchvision state dict
loads into the kept blocks key for key.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision.models.video import R2Plus1D_18_Weights, r2plus1d_18

from hmdbattn.checkpoint import load_tensors
from hmdbattn.config import ModelConfig
from hmdbattn.errors import UserError

# Output channels after each of the 8 BasicBlocks (two per torchvision layer).
BLOCK_CHANNELS = (64, 64, 128, 128, 256, 256, 512, 512)
WEIGHTS_FILE = "r2plus1d_18-91a641e6.pth"


class Backbone(nn.Module):
    """R(2+1)D-18 cut after `num_blocks` blocks: (B, 3, T, H, W) -> (B, C, T', H', W')."""

    def __init__(self, num_blocks: int) -> None:
        super().__init__()
        full = r2plus1d_18(weights=None)
        self.stem = full.stem
        self.num_blocks = num_blocks
        self.out_channels = BLOCK_CHANNELS[num_blocks - 1]
        for layer in range(1, 5):
            kept = [full.get_submodule(f"layer{layer}")[i] for i in range(2)]
            kept = kept[: max(0, num_blocks - 2 * (layer - 1))]
            if kept:
                self.add_module(f"layer{layer}", nn.Sequential(*kept))

    @property
    def spatial_stride(self) -> int:
        """Input pixels per feature-map cell: the stem halves H and W, blocks 3, 5 and 7 too."""
        return 2 * 2 ** sum(self.num_blocks >= b for b in (3, 5, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


def load_backbone_weights(backbone: Backbone, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision r2plus1d_18 state dict into the kept blocks, strictly.

    Keys of dropped blocks and the Kinetics classifier (``fc``) are ignored; every key the
    backbone has must be present with the same shape, otherwise the error names the key.
    """
    own = backbone.state_dict()
    for key, tensor in own.items():
        if key not in state:
            raise UserError(f"{source}: missing key {key!r}: not an r2plus1d_18 state dict?")
        if state[key].shape != tensor.shape:
            raise UserError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)


def kinetics_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's Kinetics-400 weights, downloaded once into torch's cache."""
    weights = R2Plus1D_18_Weights.KINETICS400_V1
    try:
        return weights.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError) as exc:
        target = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
        raise UserError(
            f"cannot download the Kinetics-400 weights ({exc}); put {WEIGHTS_FILE} at {target}, "
            "or set model.weights = FILE, or model.pretrained = false"
        ) from None


def build_backbone(config: ModelConfig) -> Backbone:
    """The trunk of `config`, with Kinetics weights when asked (download or local file)."""
    backbone = Backbone(config.cnn_blocks)
    if config.pretrained:
        load_backbone_weights(backbone, kinetics_state_dict(), "Kinetics-400 weights")
    elif config.weights is not None:
        state = load_tensors(config.weights)
        load_backbone_weights(backbone, state, str(config.weights))
    return backbone
