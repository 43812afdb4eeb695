"""The GPU run's summary: the benchmarks' JSON files into gpu.json and summary.txt.

python benchmarks/gpu_summary.py OUT_DIR     # what benchmarks/gpu.sh runs last
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import fmt, percent  # benchmarks/common.py (scripts run from here)


def write_summary(out_dir: str | Path) -> dict[str, Any]:
    """Gather train_step.json, eval_step.json and pretrain_step.json of `out_dir` into gpu.json
    and summary.txt.

    The checks: data wait under 5% of a real training loop's time, and the 1.08x step ratio
    (the CPU's target, shown for reference on the GPU). What a run did not produce is "n/a".
    """
    out = Path(out_dir)
    figures: dict[str, Any] = {}
    for name in ("train_step", "eval_step", "pretrain_step"):
        path = out / f"{name}.json"
        figures[name] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    train, evals = figures["train_step"] or {}, figures["eval_step"] or {}
    pretrain = figures["pretrain_step"] or {}
    loop, loader, target = train.get("loop"), train.get("loader"), train.get("target")
    figures["checks"] = {
        "data_wait_share": None if loop is None else loop["wait_share"],
        "data_wait_under_5pct": None if loop is None else loop["met"],
        "hmdb51_pool_step_ratio": None if target is None else target["ratio"],
    }
    lines = [f"device: {train.get('device') or evals.get('device') or 'n/a'}"]
    for row in train.get("rows", []):
        lines.append(
            f"train {row['head']:<8}{row['variant']:<14}{row['ms_per_step']:8.1f} ms/step"
            f"{row['clips_per_s']:9.1f} clips/s  peak {fmt(row['peak_mib'], '.0f')} MiB"
            f"  MFU {percent(row['mfu'])}%"
        )
    for key, why in train.get("failed", {}).items():
        lines.append(f"train {key}: failed ({why})")
    if target:
        lines.append(f"hmdb51/pool step ({target['variant']}): {target['ratio']:.3f}")
    if loader:
        cost = loader["cpu_ms_per_clip"]
        lines.append(
            f"loader: {cost['total']:.2f} CPU ms/clip (target < 2; without the transform "
            f"{cost['total'] - cost['transform']:.2f}), {loader['clips_per_s']:.0f} clips/s "
            f"with {loader['workers']} workers"
        )
    if loop:
        verdict = "met" if loop["met"] else "MISSED"
        lines.append(
            f"loop ({loop['head']} {loop['variant']}, {loop['workers']} workers): "
            f"{loop['clips_per_s']:.0f} clips/s, data wait {100 * loop['wait_share']:.2f}% "
            f"(target < 5%) {verdict}, MFU {percent(loop['mfu'])}%"
        )
    for row in evals.get("rows", []):
        lines.append(
            f"eval {row['head']:<8}{row['precision']:<6}{row['crops']}-crop"
            f"{row['clips_per_s']:9.1f} clips/s{row['views_per_s']:9.1f} views/s"
        )
    lines += pretrain_lines(pretrain)
    for name, part in (("train", train), ("eval", evals), ("pretrain", pretrain)):
        ratios = part.get("ratios") or {}
        text = ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}x'}" for k, v in ratios.items())
        lines.append(f"{name} ratios: {text or 'n/a'}")
    (out / "gpu.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    (out / "summary.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return figures


def pretrain_lines(pretrain: dict[str, Any]) -> list[str]:
    """One line per row of pretrain_step.json: its rate, memory and step over the train step's."""
    return [
        f"pretrain {row['head']:<8}{row['row']:<14}{row['variant']:<9}"
        f"{row['ms_per_step']:8.1f} ms/step{row['clips_per_s']:9.1f} clips/s"
        f"  peak {fmt(row['peak_mib'], '.0f')} MiB  x train {fmt(row['vs_train'], '.3f')}"
        for row in pretrain.get("rows", [])
    ]


if __name__ == "__main__":
    write_summary(sys.argv[1])
