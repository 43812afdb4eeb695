"""The results as tables: markdown (stdout, results.md), CSV, JSON and the rich progress view."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from hmdbattn.ablate.resolve import Ablation
from hmdbattn.fileio import atomic_write_text
from hmdbattn.report import err_console, markdown_table, millions, table

COLUMNS = (
    "Architecture",
    "Train loss",
    "Val loss",
    "Val Acc",
    "CNN params",
    "Attention params",
    "GMACs/clip",
    "Train clips/s",
)
CELL_FORMATS = {"train_loss": ".4g", "val_loss": ".4g", "val_acc": ".4f", "clips_per_s": ".1f"}
# A row's metrics (each with ``<name>_std`` over seeds): the CSV's numeric columns.
METRICS = ("train_loss", "val_loss", "val_acc", "clips_per_s")


def params_text(count: int) -> str:
    """``31.3M`` as the research prints it, and ``0`` for no parameters (the pool head)."""
    return "0" if count == 0 else millions(count)


def _metric(row: Mapping[str, Any], name: str) -> str:
    if name not in row:
        return "–"
    spec = CELL_FORMATS[name]
    text = format(row[name], spec)
    std = row.get(f"{name}_std")
    return text if std is None else f"{text} ± {format(std, spec)}"


def status_text(row: Mapping[str, Any]) -> str:
    """``done``, ``pending``, ``failed``, ``2/30 epochs`` (one run) or ``1/3 runs``."""
    if row["status"] != "partial":
        return str(row["status"])
    runs = row["runs"]
    if len(runs) == 1:
        return f"{runs[0]['epochs']}/{runs[0]['max_epochs']} epochs"
    return f"{sum(r['status'] == 'done' for r in runs)}/{len(runs)} runs"


def table_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Columns and text cells of the results table; a Status column while runs are missing."""
    columns = list(COLUMNS)
    cells = []
    for row in rows:
        cells.append(
            [
                row["label"],
                *(_metric(row, m) for m in ("train_loss", "val_loss", "val_acc")),
                params_text(row["params"]["cnn"]),
                params_text(row["params"]["attention"]),
                f"{row['gmacs']:.2f}",
                _metric(row, "clips_per_s"),
            ]
        )
    if any(row["status"] != "done" for row in rows):
        columns.append("Status")
        for row, line in zip(rows, cells, strict=True):
            line.append(status_text(row))
    return columns, cells


def results_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results as a GitHub markdown table (what the research's README shows)."""
    return markdown_table(*table_cells(rows))


def results_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results as CSV with raw numbers (empty cells where there are none)."""
    names = ["label", "status", "cnn_params", "attention_params", "gmacs"]
    names += [n for m in METRICS for n in (m, f"{m}_std")]
    out = io.StringIO()
    writer = csv.DictWriter(out, names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = dict(row, cnn_params=row["params"]["cnn"])
        flat["attention_params"] = row["params"]["attention"]
        writer.writerow(flat)
    return out.getvalue()


def results_json(ablation: Ablation, rows: Sequence[Mapping[str, Any]]) -> str:
    """results.json: the grid, its title and the rows."""
    document = {"grid": str(ablation.grid.path), "title": ablation.grid.title, "rows": list(rows)}
    return json.dumps(document, indent=2) + "\n"


def write_results(ablation: Ablation, rows: Sequence[Mapping[str, Any]]) -> None:
    """results.md, results.csv and results.json in the ablation folder, each written atomically."""
    folder = ablation.folder
    atomic_write_text(folder / "results.md", results_markdown(rows) + "\n")
    atomic_write_text(folder / "results.csv", results_csv(rows))
    atomic_write_text(folder / "results.json", results_json(ablation, rows))


def show_table(ablation: Ablation, rows: Sequence[Mapping[str, Any]]) -> None:
    """The results table on stderr (a rich table: progress while the ablation runs)."""
    columns, cells = table_cells(rows)
    title = f"{ablation.grid.title or 'ablation ' + ablation.grid.name} ({ablation.folder})"
    if err_console.is_terminal:
        err_console.print(table(title, columns, cells))
    else:  # a log file: markdown does not wrap at 80 columns
        err_console.print(
            f"{title}\n{markdown_table(columns, cells)}", markup=False, soft_wrap=True
        )


def dry_run_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The dry run's table: the research's parameter columns, GMACs and tokens per clip."""
    columns = ("Architecture", "CNN params", "Attention params", "GMACs/clip", "Tokens (T'xH'xW')")
    cells = [
        (
            row["label"],
            params_text(row["params"]["cnn"]),
            params_text(row["params"]["attention"]),
            f"{row['gmacs']:.2f}",
            "x".join(map(str, row["token_grid"])),
        )
        for row in rows
    ]
    return markdown_table(columns, cells)
