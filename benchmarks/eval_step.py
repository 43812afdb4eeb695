"""Evaluation throughput with multi-view testing: 1 crop against 3 crops, by head and precision.

A step is ``engine.evaluate.score_batch``, as ``score_clips`` runs it: a batch of uint8 windows
on the device, the evaluation transform (centre crop, or three crops along the longer side), the
forward pass under autocast without gradients, the logits back to the CPU. Heads as in
train_step.py (pool, hmdb51, largest); weights are random. Every head x precision x crops is
timed interleaved (median of rounds).

    python benchmarks/eval_step.py                  # CPU: 8 blocks, 8x56x56, 2 windows a batch
    python benchmarks/eval_step.py --device cuda    # 8 blocks, 16x112x112, 16 windows a batch

Each row: ms per batch, windows (clips) per second, views (model inputs) per second, videos per
second at ``--clips-per-video`` windows a video, GMACs per window. Then the CPU cost per window
of the evaluation loader (EvalClips from the cache + the evaluation transform on the CPU, one
process) with 1 and 3 crops. The last line: ``ratios: ...`` (time per window; above 1 = slower).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import (
    HEADS,
    NUM_CLASSES,
    Size,
    Timings,
    add_size_options,
    amp,
    bench_size,
    device_text,
    ensure_dataset,
    gmacs_per_clip,
    head_config,
    interleaved,
    loader_cpu_cost,
    parse_list,
    parse_sets,
    random_batch,
    research_data_config,
)
from loader import all_videos

from hmdbattn.data.datasets import EvalClips
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.engine.distributed import pick_device
from hmdbattn.engine.evaluate import score_batch
from hmdbattn.models.classifier import build_model

CROPS = (1, 3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_options(
        p,
        cpu_size="8 blocks, 8x56x56, 2 windows a batch, 3 rounds (default on the CPU)",
        batch="windows a batch (default 16 on CUDA, else 2)",
        warmup="untimed batches per row (CUDA 3, else 1)",
    )
    p.add_argument("--precisions", default="fp32,bf16", help="of: fp32,bf16")
    p.add_argument("--channels-last", action="store_true", help="channels-last 3D model/input")
    p.add_argument("--clips-per-video", type=int, default=5, help="windows a video, videos/s")
    p.add_argument("--loader", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--root", type=Path, help="dataset with a cache to use (else made, temp)")
    p.add_argument("--videos", type=int, default=24, help="videos to make without --root")
    p.add_argument("--loader-clips", type=int, default=96, help="windows for the CPU cost")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    return p.parse_args(argv)


class Scorer:
    """One head's model in eval mode, scoring uint8 window batches with ``score_batch``."""

    def __init__(self, head: str, size: Size, device: torch.device, args: argparse.Namespace):
        torch.manual_seed(0)
        self.config = head_config(head, size, parse_sets(args.set))
        self.memory = torch.channels_last_3d if args.channels_last else torch.contiguous_format
        model = build_model(self.config, NUM_CLASSES).to(device).eval()
        self.model = model.to(memory_format=self.memory)
        self.device = device
        data = self.config.data
        self.transforms = {
            n: VideoTransform("eval", data.crop_size, data.mean, data.std, eval_crops=n)
            for n in CROPS
        }

    def score(self, frames: torch.Tensor, precision: str, crops: int) -> torch.Tensor:
        """The package's `score_batch` (as `score_clips` runs it) at `precision`, `crops`."""
        autocast = partial(amp, self.device, precision)
        return score_batch(self.model, self.transforms[crops], frames, autocast, self.memory)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size, rounds, warmup = bench_size(args, device, cuda_batch=16)
    heads = parse_list(args.heads, HEADS, "--heads")
    precisions = parse_list(args.precisions, ("fp32", "bf16"), "--precisions")
    print(f"eval_step: {device_text(device)}")

    frames, _ = random_batch(size, device)
    scorers = {head: Scorer(head, size, device, args) for head in heads}
    combos = [(h, p, n) for h in heads for p in precisions for n in CROPS]

    def key(head: str, precision: str, crops: int) -> str:
        return f"{head} {precision} {crops}-crop"

    steps = {
        key(h, p, n): (lambda s=scorers[h], p=p, n=n: s.score(frames, p, n)) for h, p, n in combos
    }
    times = interleaved(steps, rounds, warmup, device)

    report: dict[str, Any] = {"device": device_text(device), "size": asdict(size)}
    print(
        f"\n== eval: {size.text()} (windows), {device_text(device)}, "
        f"{'channels-last' if args.channels_last else 'contiguous'}; "
        f"median of {rounds} interleaved rounds after {warmup} warm-up batch(es)"
    )
    k = args.clips_per_video
    gmacs = {h: gmacs_per_clip(scorer.config) for h, scorer in scorers.items()}
    report["rows"] = print_rows(times, key, combos, size, gmacs, k)

    if args.loader:
        with tempfile.TemporaryDirectory(prefix="hmdbattn-bench-") as tmp:
            root = ensure_dataset(args.root or Path(tmp) / "data", args.videos)
            report["loader"] = eval_loader(root, k, size.batch, args.loader_clips)

    report["ratios"] = summary_ratios(times, key, heads, precisions)
    print(
        "ratios: " + ", ".join(f"{name} {value:.3f}x" for name, value in report["ratios"].items())
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def print_rows(
    times: Timings,
    key: Callable[[str, str, int], str],
    combos: list[tuple[str, str, int]],
    size: Size,
    gmacs: dict[str, float],
    clips_per_video: int,
) -> list[dict[str, Any]]:
    """The table of every head x precision x crops (its rows, also returned for the JSON)."""
    k = clips_per_video
    print(
        f"{'head':<9}{'precision':<10}{'crops':>6}{'ms/batch':>10}{'clips/s':>10}{'views/s':>10}"
        f"{f'videos/s@{k}':>13}{'GMACs/clip':>12}"
    )
    rows = []
    for h, p, n in combos:
        s = times.seconds(key(h, p, n))
        row = {
            "head": h,
            "precision": p,
            "crops": n,
            "ms_per_batch": 1000 * s,
            "clips_per_s": size.batch / s,
            "views_per_s": size.batch * n / s,
            "videos_per_s": size.batch / s / k,
            "gmacs_per_clip": n * gmacs[h],
        }
        rows.append(row)
        print(
            f"{h:<9}{p:<10}{n:>6}{row['ms_per_batch']:>10.1f}{row['clips_per_s']:>10.2f}"
            f"{row['views_per_s']:>10.2f}{row['videos_per_s']:>13.3f}{row['gmacs_per_clip']:>12.2f}"
        )
    return rows


def eval_loader(root: Path, clips_per_video: int, batch: int, clips: int) -> dict[str, Any]:
    """CPU ms per window of EvalClips (cache) + the evaluation transform, 1 and 3 crops."""
    config = research_data_config(root, 0, batch, clips_per_video=clips_per_video)
    dataset = EvalClips(config, all_videos(config), [])
    print(
        f"\n== eval loader: cache, 16x112x112 from 128x171, {clips_per_video} windows a video, "
        "one process, one thread"
    )
    out = {}
    for crops in CROPS:
        data = config.data
        transform = VideoTransform("eval", data.crop_size, data.mean, data.std, eval_crops=crops)
        cost = loader_cpu_cost(dataset, config, transform, clips)
        out[f"{crops}-crop"] = cost.as_dict()
        print(
            f"eval loader cpu ms/clip, {crops} crop(s): {cost.total:.2f} (read + decode into "
            f"the batch {cost.batch:.2f}, transform {cost.transform:.2f})"
        )
    return out


def summary_ratios(
    times: Timings, key: Callable[[str, str, int], str], heads: list[str], precisions: list[str]
) -> dict[str, float]:
    """Paired time ratios per window (CPU time on the CPU): crops, heads, precision."""
    head = "hmdb51" if "hmdb51" in heads else heads[0]
    p0 = precisions[0]
    out = {"3-crop/1-crop": times.ratio(key(head, p0, 3), key(head, p0, 1))}
    for other in ("hmdb51", "largest"):
        if other in heads and "pool" in heads:
            out[f"{other}/pool"] = times.ratio(key(other, p0, 1), key("pool", p0, 1))
    if "bf16" in precisions and "fp32" in precisions:
        out["bf16/fp32"] = times.ratio(key(head, "bf16", 1), key(head, "fp32", 1))
    return out


if __name__ == "__main__":
    sys.exit(main())
