"""VideoClassifier: the CNN trunk and a head, assembled from the model config by builders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hmdbattn.checkpoint import damaged, load_weights
from hmdbattn.config import Config, ModelConfig
from hmdbattn.models.backbone import Backbone, build_backbone
from hmdbattn.models.perceiver import Classifier, PerceiverHead

DEFAULT_NUM_CLASSES = 51  # HMDB51, used when neither the config nor a dataset says otherwise


class PoolHead(nn.Module):
    """The baseline: global pooling (average, max, or both side by side), dropout, linear."""

    def __init__(self, channels: int, num_classes: int, dropout: float, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        width = 2 * channels if pool == "avgmax" else channels
        self.classifier = Classifier(width, num_classes, dropout, norm=False)

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        if self.pool == "avgmax":  # (B, C, T', H', W') -> (B, 2C): where, and how much
            return torch.cat([features.mean(dim=(2, 3, 4)), features.amax(dim=(2, 3, 4))], 1)
        if self.pool == "max":
            return features.amax(dim=(2, 3, 4))  # (B, C, T', H', W') -> (B, C)
        return features.mean(dim=(2, 3, 4))  # (B, C, T', H', W') -> (B, C)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(features))


def build_head(config: ModelConfig, channels: int, num_classes: int) -> nn.Module:
    """The head named by ``model.head``."""
    if config.head == "pool":
        return PoolHead(channels, num_classes, config.head_dropout, config.pool)
    return PerceiverHead(config, channels, num_classes)


class VideoClassifier(nn.Module):
    """(B, 3, T, H, W) clips -> (B, num_classes) logits."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The CNN feature map (B, C, T', H', W')."""
        return self.backbone(x)

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from a CNN feature map (B, C, T', H', W'): the head alone (cached features)."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.features(x))


@dataclass
class ParamCounts:
    """Parameters by part: the CNN trunk, the attention head (without classifier), classifier."""

    cnn: int
    attention: int
    classifier: int

    @property
    def total(self) -> int:
        return self.cnn + self.attention + self.classifier

    def to_dict(self) -> dict[str, int]:
        return {
            "cnn": self.cnn,
            "attention": self.attention,
            "classifier": self.classifier,
            "total": self.total,
        }


def param_counts(model: VideoClassifier) -> ParamCounts:
    """Count parameters the way the research's tables do (classifier apart)."""

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    classifier = count(model.head.get_submodule("classifier"))
    return ParamCounts(count(model.backbone), count(model.head) - classifier, classifier)


def resolve_num_classes(config: ModelConfig, dataset_classes: int | None = None) -> int:
    """``model.num_classes`` if set, else the dataset's class count, else HMDB51's 51."""
    return config.num_classes or dataset_classes or DEFAULT_NUM_CLASSES


def build_model(config: Config | ModelConfig, num_classes: int | None = None) -> VideoClassifier:
    """Assemble the model of a config (a full Config or its ``model`` section)."""
    mc = config.model if isinstance(config, Config) else config
    backbone = build_backbone(mc)
    head = build_head(mc, backbone.out_channels, resolve_num_classes(mc, num_classes))
    return VideoClassifier(backbone, head)


def clip_profile(
    config: Config, num_classes: int | None = None
) -> tuple[ParamCounts, float, tuple]:
    """Parameters, GMACs for one clip and the token grid (T', H', W'), without real compute.

    The model is built on the meta device, so this takes no memory and no time for weights.
    """
    mc = config.model.model_copy(update={"pretrained": False, "weights": None})
    d = config.data
    counter = FlopCounterMode(display=False)
    with torch.device("meta"):
        model = build_model(mc, num_classes).eval()
        clip = torch.empty(1, 3, d.num_frames, d.crop_size, d.crop_size)  # (B, C, T, H, W)
        with counter:
            features = model.features(clip)  # (1, C, T', H', W')
            model.head(features)
    gmacs = counter.get_total_flops() / 2 / 1e9  # the counter counts a MAC as 2 FLOPs
    return param_counts(model), gmacs, tuple(features.shape[2:])


def model_from_checkpoint(ckpt: dict, config: Config, path: Path) -> VideoClassifier:
    """The trained model of the checkpoint `path` (its weights, not Kinetics').

    A damaged checkpoint, or weights that do not fit this model, is a UserError naming the keys.
    """
    mc = config.model.model_copy(update={"pretrained": False, "weights": None})
    with damaged(path):
        model = build_model(mc, len(ckpt["classes"]))
        load_weights(model, ckpt["model"], path)
    return model.eval()
