"""The timeline of a prediction: consecutive windows with the same top class form a segment.

A segment's edges lie halfway between the centres of neighbouring windows, so the segments tile
the video. Pure functions of the windows' times and probabilities (no model, no video).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Segment:
    """A stretch of the timeline whose windows share their top class."""

    start: float  # seconds
    end: float
    label: str
    confidence: float  # mean probability of `label` over the segment's windows

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "label": self.label,
            "confidence": self.confidence,
        }


def segments(
    spans: Sequence[tuple[float, float]],
    probabilities: np.ndarray,
    classes: Sequence[str],
    duration: float | None = None,
) -> list[Segment]:
    """Merge consecutive windows with the same top class into segments.

    `spans` are the windows' (start, end) seconds in time order and `probabilities` their
    (N, K) class probabilities. Each window answers for the time from halfway to the previous
    window's centre to halfway to the next one's; the first from 0, the last up to `duration`
    (default: the end of the last window).
    """
    if len(spans) != len(probabilities):
        raise ValueError(f"{len(spans)} windows but {len(probabilities)} rows of probabilities")
    if not spans:
        return []
    centres = [(a + b) / 2 for a, b in spans]
    edges = [0.0, *((x + y) / 2 for x, y in itertools.pairwise(centres))]
    edges.append(spans[-1][1] if duration is None else duration)
    top = probabilities.argmax(axis=1)
    out: list[Segment] = []
    first = 0
    for i in range(1, len(spans) + 1):
        if i == len(spans) or top[i] != top[first]:
            label = int(top[first])
            confidence = float(probabilities[first:i, label].mean())
            out.append(Segment(edges[first], edges[i], classes[label], confidence))
            first = i
    return out
