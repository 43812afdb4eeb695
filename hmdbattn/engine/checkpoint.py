"""Checkpoint loading moved to :mod:`hmdbattn.checkpoint` (``models/`` must not import ``engine/``).

These names stay importable from here while ``hmdbattn/predict.py`` still imports them.
"""

from __future__ import annotations

from hmdbattn.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    atomic_save,
    load_checkpoint,
    load_tensors,
    safe_load,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "atomic_save",
    "load_checkpoint",
    "load_tensors",
    "safe_load",
]
