"""Optimiser, learning-rate schedule and batch mixing (mixup / cutmix) from the train config."""

from __future__ import annotations

import math
import random

import torch
from torch import nn

from hmdbattn.config import TrainConfig
from hmdbattn.models.classifier import VideoClassifier


def build_optimizer(model: nn.Module, c: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD with two groups: the CNN (``cnn_lr``, default ``lr``) and the head.

    Any other module than a VideoClassifier (a head alone, as the benchmarks time it) is one
    group, "head", at ``lr``. Weight decay skips biases and normalisation weights (1-D
    parameters), as usual.
    """
    parts = (
        [("cnn", model.backbone, c.cnn_lr or c.lr), ("head", model.head, c.lr)]
        if isinstance(model, VideoClassifier)
        else [("head", model, c.lr)]
    )
    groups = []
    for name, module, lr in parts:
        params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        plain = [p for p in params if p.ndim <= 1]
        groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": c.weight_decay})
        groups.append({"name": name, "params": plain, "lr": lr, "weight_decay": 0.0})
    if c.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=True)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=c.lr)
    return torch.optim.Adam(groups, lr=c.lr)


def lr_factor(step: int, steps_per_epoch: int, c: TrainConfig) -> float:
    """The multiplier of the base learning rate at optimiser step `step` (0-based).

    ``step``: the research's StepLR (x ``gamma`` every ``step_size`` epochs); ``cosine``: cosine
    decay to 0 over ``epochs``; both after a linear warm-up of ``warmup_epochs``.
    """
    epoch = step / steps_per_epoch
    if c.warmup_epochs > 0 and epoch < c.warmup_epochs:
        return (step + 1) / (c.warmup_epochs * steps_per_epoch)
    if c.scheduler == "step":
        return c.gamma ** int(epoch // c.step_size)
    if c.scheduler == "cosine":
        span = max(1e-9, c.epochs - c.warmup_epochs)
        progress = min(1.0, (epoch - c.warmup_epochs) / span)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


class Schedule:
    """Per-step learning rates, with the CNN frozen (factor 0) for ``freeze_cnn_epochs``."""

    def __init__(self, optimizer: torch.optim.Optimizer, c: TrainConfig, steps_per_epoch: int):
        self.optimizer, self.c, self.steps_per_epoch = optimizer, c, steps_per_epoch
        self.base = [g["lr"] for g in optimizer.param_groups]

    def apply(self, step: int) -> float:
        """Set every group's learning rate for `step`; return the head's."""
        factor = lr_factor(step, self.steps_per_epoch, self.c)
        frozen = step < self.c.freeze_cnn_epochs * self.steps_per_epoch
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = 0.0 if frozen and group["name"] == "cnn" else base * factor
        return self.optimizer.param_groups[-1]["lr"]


def cnn_frozen(epoch: int, c: TrainConfig) -> bool:
    """Whether the CNN is frozen in `epoch` (its BatchNorm statistics are then kept too)."""
    return epoch < c.freeze_cnn_epochs


def mix_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    c: TrainConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (half the batches each when both are on) with soft one-hot targets.

    `x` is (B, C, T, H, W); cutmix pastes the same box of a partner clip into every frame.
    Every draw comes from `generator` (torch's global one when None): the choice of mixup or
    cutmix, lambda, the partners and the box. Lambda is drawn by `mix_lambda`, never by
    ``torch.distributions`` (which would use the global RNG), so a resumed epoch that recreates
    its generator mixes its batches exactly as the uninterrupted run did.
    """
    targets = nn.functional.one_hot(y, num_classes).float()  # (B, K)
    alphas = [a for a in (c.mixup_alpha, c.cutmix_alpha) if a > 0]
    if not alphas:
        return x, targets
    use_cutmix = c.cutmix_alpha > 0 and (
        c.mixup_alpha == 0 or torch.rand((), generator=generator).item() < 0.5
    )
    alpha = c.cutmix_alpha if use_cutmix else c.mixup_alpha
    lam = mix_lambda(alpha, generator)
    partner = torch.randperm(x.shape[0], generator=generator).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        bh, bw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        top = int(torch.randint(0, h - bh + 1, (), generator=generator))
        left = int(torch.randint(0, w - bw + 1, (), generator=generator))
        x = x.clone()
        x[..., top : top + bh, left : left + bw] = x[partner][..., top : top + bh, left : left + bw]
        lam = 1 - (bh * bw) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[partner]
    return x, lam * targets + (1 - lam) * targets[partner]


def mix_lambda(alpha: float, generator: torch.Generator | None) -> float:
    """A Beta(`alpha`, `alpha`) draw that depends only on `generator`'s state.

    torch has no Beta sampler that takes a generator, so one seed is drawn from `generator`
    and the stdlib's ``random.Random(seed).betavariate`` draws lambda from it.
    """
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return random.Random(seed).betavariate(alpha, alpha)
