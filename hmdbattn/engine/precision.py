"""Mixed precision and memory layout: autocast, fp16 (and so loss scaling) and channels-last.

Training, evaluation and prediction all decide here, so the ``train.amp = "auto"`` rule
(bf16 where the GPU supports it, else fp16; nothing on the CPU) is written once.
"""

from __future__ import annotations

import contextlib

import torch

from hmdbattn.config import Config


def resolve_amp(device: torch.device, amp: str) -> str:
    """``train.amp`` on `device`: "off", "bf16" or "fp16" (always "off" off CUDA)."""
    if device.type != "cuda" or amp == "off":
        return "off"
    if amp == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return amp


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA (``auto`` = bf16 where supported); nothing on the CPU."""
    resolved = resolve_amp(device, amp)
    if resolved == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def fp16(config: Config, device: torch.device) -> bool:
    """Whether the run uses fp16 autocast (and so a gradient scaler)."""
    return resolve_amp(device, config.train.amp) == "fp16"


def channels_last(config: Config, device: torch.device) -> bool:
    """channels-last 3D: on by default on CUDA, where cuDNN's 3D convolutions prefer it."""
    wanted = config.train.channels_last
    return device.type == "cuda" if wanted is None else wanted


def memory_format(config: Config, device: torch.device) -> torch.memory_format:
    """The memory format of the model and its input clips (B, C, T, H, W) on `device`."""
    return torch.channels_last_3d if channels_last(config, device) else torch.contiguous_format
