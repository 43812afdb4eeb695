"""Tube masking (VideoMAE): the same spatial cells are hidden in every frame of a clip.

A mask that changed from frame to frame would let a model copy a hidden cell from a neighbouring
frame; a tube hides the cell for the whole clip, so it has to be inferred from the motion around
it. Masks are drawn from an explicit generator, so a resumed run masks as the first one did.
"""

from __future__ import annotations

import torch


def masked_count(cells: int, ratio: float) -> int:
    """How many of `cells` a ratio hides: at least one, and at least one stays visible."""
    return min(cells - 1, max(1, round(ratio * cells)))


def tube_mask(
    batch: int, grid: tuple[int, int], ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, h, w) bool, True = hidden; exactly ``masked_count(h * w, ratio)`` cells per clip."""
    h, w = grid
    hidden = masked_count(h * w, ratio)
    order = torch.rand(batch, h * w, generator=generator).argsort(dim=1)  # (B, h*w)
    mask = torch.zeros(batch, h * w, dtype=torch.bool)
    mask.scatter_(1, order[:, :hidden], True)
    return mask.view(batch, h, w)


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, h, w) cells -> (B, h * factor, w * factor): each cell covers factor x factor."""
    return mask.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def over_time(mask: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, h, w) -> (B, T * h * w) flat, the same cells hidden in each of `frames` steps."""
    return mask.unsqueeze(1).expand(-1, frames, -1, -1).flatten(1)  # (B, T, h, w) -> (B, T*h*w)


def split_indices(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (B, N) masks with the same count per row -> hidden (B, M) and visible (B, N-M) indices.

    Indices come in ascending order, so gathered tokens keep their space-time order.
    """
    order = flat.to(torch.int8).argsort(dim=1, descending=True, stable=True)  # hidden first
    hidden = int(flat[0].sum())
    return order[:, :hidden].sort(dim=1).values, order[:, hidden:].sort(dim=1).values


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens at (B, M) indices -> (B, M, C)."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
