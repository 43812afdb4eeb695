"""Checkpoints: atomic saves and safe loads (the only place that calls ``torch.load``)."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from hmdbattn.errors import UserError


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside `path`, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, no code."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise UserError(
            f"{path}: refused: it holds more than tensors and plain values ({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable PyTorch file ({exc})") from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict (name -> tensor) from `path`, such as torchvision's weight files."""
    state = safe_load(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return state
