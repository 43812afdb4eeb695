"""Confusion matrix files: a CSV of counts and a heat-map PNG, written beside a checkpoint.

Reporting, not computing: the matrix itself comes from `hmdbattn.engine.metrics.confusion_matrix`
(rows true, columns predicted); this module only lays it out for people to read.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from hmdbattn.fileio import atomic_write_text, atomic_writer

__all__ = ["write_confusion_csv", "write_confusion_png"]


def _as_matrix(
    matrix: torch.Tensor | Sequence[Sequence[int]], class_names: Sequence[str]
) -> torch.Tensor:
    """The matrix as a (K, K) int64 CPU tensor, K matching the class names."""
    counts = torch.as_tensor(matrix).detach().cpu().long()
    size = len(class_names)
    if counts.shape != (size, size):
        raise ValueError(f"confusion matrix must be ({size}, {size}), got {tuple(counts.shape)}")
    return counts


def write_confusion_csv(
    path: str | os.PathLike[str],
    matrix: torch.Tensor | Sequence[Sequence[int]],
    class_names: Sequence[str],
) -> None:
    """Write the matrix as CSV: a header of predicted class names, then one row per true class."""
    rows = _as_matrix(matrix, class_names).tolist()

    lines: list[list[str]] = [["true/predicted", *class_names]]
    lines += [[name, *map(str, row)] for name, row in zip(class_names, rows, strict=True)]
    atomic_write_text(Path(path), _csv_text(lines))


def _csv_text(lines: list[list[str]]) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    return buffer.getvalue()


# Heat-map look: small matrices get cells wide enough for their counts.
_COUNTS_UP_TO = 20  # write counts in cells for at most this many classes
_CELL_WITH_COUNTS = 28
_CELL = 16
_PAD = 8
_WHITE = (255, 255, 255)
_DARK = (8, 48, 107)  # the end of a white-to-blue scale
_GRID = (225, 225, 225)
_INK = (0, 0, 0)


def _shade(value: float) -> tuple[int, int, int]:
    """Colour of a row-normalised value in [0, 1], from white to dark blue."""
    r, g, b = (round(w + (d - w) * value) for w, d in zip(_WHITE, _DARK, strict=True))
    return (r, g, b)


def _text_size(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - left), int(bottom - top)


def _draw_text(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    fill: tuple[int, int, int],
    align: str = "center",
) -> None:
    """Draw ``text`` centred vertically in ``box``, horizontally centred or right-aligned."""
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    x0, y0, x1, y1 = box
    x = (x0 + x1 - (right - left)) // 2 if align == "center" else x1 - (right - left)
    y = (y0 + y1 - (bottom - top)) // 2
    draw.text((x - left, y - top), text, font=font, fill=fill)


def write_confusion_png(
    path: str | os.PathLike[str],
    matrix: torch.Tensor | Sequence[Sequence[int]],
    class_names: Sequence[str],
) -> None:
    """Draw the matrix as a heat-map PNG: rows true, columns predicted, names on both axes.

    Cells are shaded by row-normalised value (the share of each true class predicted as each
    class); non-zero counts are written in the cells when there are at most 20 classes.
    """
    counts = _as_matrix(matrix, class_names)
    size = len(class_names)
    show_counts = size <= _COUNTS_UP_TO
    cell = _CELL_WITH_COUNTS if show_counts else _CELL
    font = ImageFont.load_default()
    captions = ["rows: true", "columns: predicted"]
    name_width = max([_text_size(font, name)[0] for name in class_names] + [0])
    line_height = _text_size(font, "Ag")[1] + 2
    left = max(name_width, *(_text_size(font, c)[0] for c in captions)) + 2 * _PAD
    top = max(name_width, len(captions) * line_height) + 2 * _PAD
    image = Image.new("RGB", (left + size * cell + _PAD, top + size * cell + _PAD), _WHITE)
    draw = ImageDraw.Draw(image)
    for number, caption in enumerate(captions):
        draw.text((_PAD, _PAD + number * line_height), caption, font=font, fill=_INK)
    _draw_names(image, draw, font, class_names, (left, top), cell)
    _draw_cells(draw, font, counts, (left, top), cell, show_counts)

    with atomic_writer(Path(path)) as stream:
        image.save(stream, format="PNG")


def _draw_names(
    image: Image.Image,
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    class_names: Sequence[str],
    origin: tuple[int, int],
    cell: int,
) -> None:
    """Row names right-aligned left of the grid; column names rotated to read upwards above it."""
    left, top = origin
    for i, name in enumerate(class_names):
        y = top + i * cell
        _draw_text(draw, (0, y, left - _PAD // 2, y + cell), name, font, _INK, align="right")
        width, height = _text_size(font, name)
        label = Image.new("RGB", (max(width, 1), height + 2), _WHITE)
        _draw_text(ImageDraw.Draw(label), (0, 0, *label.size), name, font, _INK)
        label = label.rotate(90, expand=True)
        x = left + i * cell + (cell - label.width) // 2
        image.paste(label, (x, top - _PAD // 2 - label.height))


def _draw_cells(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    counts: torch.Tensor,
    origin: tuple[int, int],
    cell: int,
    show_counts: bool,
) -> None:
    """Shade each cell by its share of the row; write non-zero counts if asked."""
    left, top = origin
    # an empty row (a class with no videos) stays white instead of dividing by zero
    shares = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    for i, row in enumerate(counts.tolist()):
        for j, count in enumerate(row):
            share = float(shares[i, j])
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=_shade(share), outline=_GRID)
            if show_counts and count:
                ink = _WHITE if share > 0.5 else _INK
                _draw_text(draw, box, str(count), font, ink)
