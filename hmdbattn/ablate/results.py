"""What is on disk: each run's state (done, partial, pending, failed) and the table's rows."""

from __future__ import annotations

import json
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmdbattn.ablate.resolve import Ablation, Run, profile
from hmdbattn.ablate.tables import METRICS, write_results
from hmdbattn.errors import UserError


@dataclass
class RunResult:
    """What a run's folder says: done, partial (interrupted), pending or failed."""

    status: str
    epochs: int = 0  # epochs recorded
    best_epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def read_run(run_dir: Path) -> RunResult:
    """A run's state and, once finished, its best epoch's metrics and mean clips/s."""
    history = _read_history(run_dir / "metrics.jsonl")
    if not (run_dir / "result.json").is_file():
        status = "partial" if (run_dir / "last.pt").is_file() else "pending"
        return RunResult(status, len(history) if status == "partial" else 0)
    result = _read_json(run_dir / "result.json")
    best = result.get("best") or {}
    rates = [row["clips_per_s"] for row in history if "clips_per_s" in row]
    values = {
        "train_loss": best.get("train_loss"),
        "val_loss": best.get("val_loss"),
        "val_acc": best.get("val_video_acc"),
        "clips_per_s": statistics.fmean(rates) if rates else best.get("clips_per_s"),
    }
    metrics = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    return RunResult(
        "done", int(result.get("epochs", 0)), int(result.get("best_epoch", 0)), metrics
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read ({exc}); delete the run folder to redo it") from None
    return data if isinstance(data, dict) else {}


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read ({exc}); delete the run folder to redo it") from None


def build_rows(
    ablation: Ablation,
    failures: Mapping[Path, str] | None = None,
    running: Collection[Path] = (),
) -> list[dict]:
    """One row per variant from what is on disk: parameters, GMACs, status and metrics.

    Unfinished runs in `failures` are marked failed, those in `running` (a job trains them
    now: see `launch`) running.
    """
    failures = failures or {}
    rows = []
    for variant in ablation.grid.variants:
        runs = ablation.runs_of(variant)
        results = [read_run(r.run_dir) for r in runs]
        for run, result in zip(runs, results, strict=True):
            if run.run_dir in failures and result.status != "done":
                result.status = "failed"
            elif run.run_dir in running and result.status != "done":
                result.status = "running"
        params, gmacs, _ = profile(ablation, variant)
        row: dict[str, Any] = {
            "label": variant.label,
            "slug": variant.slug,
            "status": _status(results),
            "params": {"cnn": params.cnn, "attention": params.attention},
            "gmacs": round(gmacs, 3),
        }
        row |= aggregate(results)
        row["runs"] = [_run_row(run, result) for run, result in zip(runs, results, strict=True)]
        errors = [failures[r.run_dir] for r in runs if r.run_dir in failures]
        if errors:
            row["error"] = errors[0]
        rows.append(row)
    return rows


def _status(results: Sequence[RunResult]) -> str:
    statuses = {r.status for r in results}
    for status in ("failed", "running", "pending", "done"):
        if statuses == {status} or (status in ("failed", "running") and status in statuses):
            return status
    return "partial"


def aggregate(results: Sequence[RunResult]) -> dict[str, float]:
    """Means over the finished runs; with several runs, the sample std as ``<metric>_std``."""
    out: dict[str, float] = {}
    for name in METRICS:
        values = [r.metrics[name] for r in results if name in r.metrics]
        if values:
            out[name] = statistics.fmean(values)
        if len(results) > 1 and len(values) > 1:
            out[f"{name}_std"] = statistics.stdev(values)
    return out


def _run_row(run: Run, result: RunResult) -> dict[str, Any]:
    return {
        "seed": run.config.train.seed,
        "dir": run.run_dir.name,
        "status": result.status,
        "epochs": result.epochs,
        "max_epochs": run.config.train.epochs,
        "best_epoch": result.best_epoch,
        **result.metrics,
    }


def report(ablation: Ablation) -> list[dict]:
    """The rows from disk (nothing trained); the result files are rewritten if the folder exists."""
    rows = build_rows(ablation)
    if ablation.folder.is_dir():
        write_results(ablation, rows)
    return rows
