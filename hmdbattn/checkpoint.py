"""Checkpoints: atomic saves and safe loads (the only place that calls ``torch.load``)."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_writer


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside `path`, fsync, rename: never a half-written one."""
    with atomic_writer(path, sync=True) as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            # A failed write (full disk) surfaces as torch's RuntimeError about the zip's end;
            # the OSError behind it says what happened.
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise


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


@contextlib.contextmanager
def damaged(path: Path) -> Iterator[None]:
    """Reading the contents of the checkpoint `path`: a missing key or a bad value is one line.

    A file in our format can still lack keys (written by hand, or by another version) or hold
    the weights of another model; the error names the file and what did not fit.
    """
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        reason = f"missing key {exc}" if isinstance(exc, KeyError) else _reason(exc)
        raise UserError(
            f"{path}: damaged checkpoint, or one of another model ({reason}); use a "
            "checkpoint that `hmdbattn train` wrote for this model"
        ) from None


def load_weights(module: torch.nn.Module, state: Any, path: Path, what: str = "model") -> None:
    """`module.load_state_dict(state)`, refusing in one line weights that do not fit it.

    The line names the first keys that are missing, unexpected or of another shape.
    """
    if not isinstance(state, dict):
        raise UserError(f"{path}: damaged checkpoint ({what}: expected a state dict)")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} (this model: {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and getattr(state[k], "shape", v.shape) != v.shape
    ]
    problems = [
        f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if keys
    ]
    if problems:
        raise UserError(
            f"{path}: its {what} weights do not fit this model ({'; '.join(problems)}): was it "
            "trained with other model.* settings?"
        )
    with damaged(path):
        module.load_state_dict(state)


def _reason(exc: BaseException) -> str:
    """An exception's text on one line, cut to 240 characters (state-dict errors are long)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."
