"""Checkpoints: atomic saves and safe loads (the only place that calls ``torch.load``)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_writer


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside `path`, then rename: never a half-written file."""
    with atomic_writer(path) as f:
        torch.save(obj, f)


def safe_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, no code."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path}: refused: it holds pickled Python objects besides tensors and plain values "
            "(code could run on loading); nothing from it was used"
        ) from None
    except Exception as exc:  # torch raises many types for files that are not its own
        raise UserError(
            f"{path}: not a readable PyTorch file ({type(exc).__name__}: {exc})"
        ) from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict (name -> tensor) from `path`, such as torchvision's weight files."""
    state = safe_load(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return state


CHECKPOINT_FORMAT = "hmdbattn-checkpoint"
CHECKPOINT_VERSION = 1


def load_checkpoint(path: Path) -> dict[str, Any]:
    """One of our checkpoints (model, classes, config, ...); anything else is refused."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an hmdbattn checkpoint (train one with `hmdbattn train`)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint version {ckpt.get('version')} is not supported")
    return ckpt
