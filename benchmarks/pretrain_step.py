"""Pretraining step throughput and peak memory, each objective against the classification step.

Rows, all of one model (the hmdb51 head: 8 blocks + 1 cross + 1 self, or ``--heads largest``)
at one size and batch, on random uint8 clips already on the device:

- ``train``: the classification step of ``hmdbattn train`` (the baseline): the training
  transform on the device, then ``engine.train.train_step`` with cross-entropy.
- ``video-pixels``, ``video-ema``: ``pretrain.mode = "video"``, the whole model
  reconstructing masked tubes (their pixels, or an EMA copy's CNN features).
- ``tokens``: ``pretrain.mode = "tokens"``, the head alone on the frozen CNN predicting
  masked tokens' features.

A pretraining step is the one ``hmdbattn pretrain`` runs (engine/pretrain.py): the transform, a
tube mask drawn on the CPU, ``train_step`` with the pretrainer's own loss, then the objective's
``after_step`` (the EMA update). The configuration is configs/hmdb51-pretrain.toml's model,
train (AdamW, gradient clipping) and pretrain sections on configs/hmdb51.toml, for every row,
so rows differ in the objective only. ``video`` rows mask cells of the CNN's spatial stride (16
pixels at 8 blocks: one mask cell per token, the smallest the EMA target allows) unless
``--set pretrain.patch_size=N``. Weights are random (the cost does not depend on them).

    python benchmarks/pretrain_step.py                 # CPU: 8 blocks, 8x32x32, batch 2, fp32
    python benchmarks/pretrain_step.py --device cuda   # 8 blocks, 16x112x112, batch 32, bf16

Variants: ``fp32`` or ``bf16`` autocast, ``-cl`` for channels-last 3D (``hmdbattn pretrain``
never compiles, so there is no ``-compile``). By default the trainer's: bf16 with and without
channels-last on CUDA, fp32 on the CPU. Figures: ms/step (median of interleaved rounds), clips/s,
peak memory (see benchmarks/common.py), and the step time over the classification step's of
the same head and variant (a paired median). The last line:
``ratios: video-pixels/train <x>, video-ema/train <x>, tokens/train <x>`` (first head and
variant; above 1 = slower).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import (
    HEADS,
    MIB,
    NUM_CLASSES,
    REPO,
    CpuPeak,
    Size,
    Timings,
    Trainee,
    Variant,
    add_size_options,
    bench_size,
    device_text,
    fmt,
    head_config,
    interleaved,
    parse_list,
    parse_sets,
    peak_step_memory,
    random_batch,
    shared_cpu_note,
    step_parts,
    sync,
)

from hmdbattn.config import Config, read_toml
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.engine.distributed import pick_device
from hmdbattn.engine.pretrain import pretrain_optimizer
from hmdbattn.engine.train import train_step
from hmdbattn.errors import UserError
from hmdbattn.models.classifier import build_model
from hmdbattn.models.masking import tube_mask
from hmdbattn.models.pretrain import build_pretrainer, mask_grid

PRETRAIN_TOML = REPO / "configs" / "hmdb51-pretrain.toml"
BASELINE = "train"
# Each row's objective, as overrides on top of everything else (a row is its mode).
ROWS: dict[str, dict[str, Any]] = {
    BASELINE: {},
    "video-pixels": {"pretrain.mode": "video", "pretrain.target": "pixels"},
    "video-ema": {"pretrain.mode": "video", "pretrain.target": "ema"},
    "tokens": {"pretrain.mode": "tokens"},
}
PRETRAIN_HEADS = [h for h in HEADS if h != "pool"]  # pretraining needs cross-attention
# The CPU size's crop: train_step.py's 56 is not a multiple of the CNN's stride at 8 blocks (16),
# which the token grid of `tokens` mode and the EMA target need; and four rows of 8 blocks at 64
# took about 3 minutes on 2 shared cores. At 32 (a 2x2 token grid) the script takes under one.
CPU_CROP = 32


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_options(
        p,
        cpu_size="8 blocks, 8x32x32, batch 2, 3 rounds (default on the CPU)",
        batch="clips per step (default 32 on CUDA, else 2)",
        warmup="untimed steps per row (CUDA 3, else 1)",
    )
    p.set_defaults(heads="hmdb51")
    p.add_argument("--rows", default=",".join(ROWS), help="of: " + ",".join(ROWS))
    p.add_argument(
        "--variants", help="e.g. fp32,bf16,bf16-cl (default: CUDA bf16-cl,bf16; CPU fp32)"
    )
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", type=Path, help="write every figure to this file")
    return p.parse_args(argv)


def parse_variants(text: str | None, device: torch.device) -> list[Variant]:
    """The variants asked for, else the trainer's: bf16 + channels-last and bf16 (CUDA), fp32."""
    default = "bf16-cl,bf16" if device.type == "cuda" else "fp32"
    variants = [Variant.parse(name) for name in (text or default).split(",") if name.strip()]
    if not variants or any(v.compile for v in variants):
        raise SystemExit(
            f"--variants {text!r}: fp32|bf16, optionally -cl (pretrain never compiles)"
        )
    return variants


def pretrain_size(args: argparse.Namespace, device: torch.device) -> tuple[Size, int, int]:
    """`bench_size`'s size, rounds and warm-up, with the CPU size's crop 32 (see CPU_CROP)."""
    size, rounds, warmup = bench_size(args, device, cuda_batch=32)
    if args.crop is None and size.crop == 56:  # the CPU preset's crop
        size = dataclasses.replace(size, crop=CPU_CROP)
    return size, rounds, warmup


def file_overrides() -> dict[str, Any]:
    """configs/hmdb51-pretrain.toml's model, train and pretrain sections, as dotted keys.

    Less what `head_config` sets itself: the blocks (from the size) and random weights (no
    download; the cost does not depend on the weights).
    """
    data = read_toml(PRETRAIN_TOML)
    sections = ("model", "train", "pretrain")
    keys = {f"{s}.{key}": value for s in sections for key, value in data.get(s, {}).items()}
    return {k: v for k, v in keys.items() if k not in ("model.cnn_blocks", "model.pretrained")}


def row_config(head: str, row: str, size: Size, sets: dict[str, Any]) -> Config:
    """The config of one row: hmdb51.toml, then hmdb51-pretrain.toml, the head, --set, the row.

    ``video`` rows mask cells of the CNN's spatial stride unless --set names a patch size.
    A crop the stride does not divide is refused (one line): the token grid of ``tokens`` mode
    would not be the mask's.
    """
    config = head_config(head, size, {**file_overrides(), **HEADS[head], **sets, **ROWS[row]})
    with torch.device("meta"):  # the stride only: no weights to make
        stride = build_model(config, NUM_CLASSES).backbone.spatial_stride
    if size.crop % stride:
        raise SystemExit(
            f"--crop {size.crop}: pretraining needs a multiple of the CNN's spatial stride "
            f"{stride} at {size.blocks} blocks, e.g. {stride * max(1, round(size.crop / stride))}"
        )
    if config.pretrain.mode == "video" and "pretrain.patch_size" not in sets:
        config.pretrain.patch_size = stride
    return config


class Pretrainee:
    """A pretraining objective and its optimiser, stepped as ``hmdbattn pretrain`` steps it.

    Built as engine/pretrain.py's `build_run` builds a run (the trainer's optimiser of the model
    plus a parameter group for the decoder) and stepped as its `pretrain_epoch` steps one.
    """

    def __init__(self, config: Config, device: torch.device, channels_last: bool) -> None:
        torch.manual_seed(0)
        model = build_model(config, NUM_CLASSES)
        self.config, self.device = config, device
        self.memory = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.pretrainer = build_pretrainer(model, config).to(device).train()
        self.pretrainer = self.pretrainer.to(memory_format=self.memory)
        self.optimizer = pretrain_optimizer(self.pretrainer, config)
        self.grid = mask_grid(config, model)
        self.parts = {
            p: dataclasses.replace(
                step_parts(self.pretrainer, self.pretrainer, self.optimizer, config, p),
                loss=lambda loss, _: loss,  # the pretrainer returns its own loss
            )
            for p in ("fp32", "bf16")
        }
        self.transform = VideoTransform.from_config(config.data, "train")
        self.generator = torch.Generator().manual_seed(0)  # crops, flips and masks

    @property
    def model(self) -> torch.nn.Module:
        """Everything the step holds: CNN, head, decoder (and the EMA copy), for peak memory."""
        return self.pretrainer

    def step(self, frames: torch.Tensor, labels: torch.Tensor, precision: str) -> torch.Tensor:
        """One pretraining step on uint8 `frames` (B, T, H, W, 3) on the device (no labels)."""
        x = self.transform(frames, self.generator).contiguous(memory_format=self.memory)
        ratio = self.config.pretrain.mask_ratio
        mask = tube_mask(len(x), self.grid, ratio, self.generator).to(self.device)
        parts = dataclasses.replace(
            self.parts[precision], forward=partial(self.pretrainer, mask=mask)
        )
        loss, _ = train_step(parts, x, x.new_zeros(()))
        self.pretrainer.after_step()
        return loss


Stepper = Trainee | Pretrainee


def key(head: str, row: str, v: Variant) -> str:
    return f"{head} {row} {v.name}"


def build_steppers(
    heads: list[str],
    rows: list[str],
    variants: list[Variant],
    size: Size,
    device: torch.device,
    sets: dict[str, Any],
) -> dict[tuple[str, str, bool], Stepper]:
    """One model per head, row and layout; precisions share it (autocast only)."""
    steppers: dict[tuple[str, str, bool], Stepper] = {}
    for head in heads:
        for row in rows:
            config = row_config(head, row, size, sets)
            for layout in dict.fromkeys(v.channels_last for v in variants):
                if row == BASELINE:
                    steppers[head, row, layout] = Trainee(config, device, layout, False)
                else:
                    steppers[head, row, layout] = Pretrainee(config, device, layout)
    return steppers


def step_fns(
    steppers: dict[tuple[str, str, bool], Stepper],
    variants: list[Variant],
    frames: torch.Tensor,
    labels: torch.Tensor,
) -> dict[str, Callable[[], object]]:
    """Every head x row x variant's step, in table order."""
    return {
        key(head, row, v): partial(s.step, frames, labels, v.precision)
        for (head, row, layout), s in steppers.items()
        for v in variants
        if v.channels_last == layout
    }


def measure_memory(
    steppers: dict[tuple[str, str, bool], Stepper],
    variants: list[Variant],
    fns: dict[str, Callable[[], object]],
    device: torch.device,
) -> dict[str, int | None]:
    """Peak memory of one step of each (after the timings: on the CPU it changes malloc)."""
    cpu_peak = CpuPeak()
    if device.type == "cpu":
        cpu_peak.enable()
    out = {}
    for (head, row, layout), s in steppers.items():
        for v in (v for v in variants if v.channels_last == layout):
            name = key(head, row, v)
            out[name] = peak_step_memory(s.model, s.optimizer, fns[name], device, cpu_peak)
    return out


def table(
    times: Timings, memory: dict[str, int | None], size: Size, names: list[tuple[str, str, Variant]]
) -> list[dict[str, Any]]:
    """The figures of every row, with its step time over the baseline's (same head, variant)."""
    out = []
    for head, row, v in names:
        name, base = key(head, row, v), key(head, BASELINE, v)
        s, mem = times.seconds(name), memory.get(name)
        out.append(
            {
                "head": head,
                "row": row,
                "variant": v.name,
                "ms_per_step": 1000 * s,
                "cpu_ms_per_step": 1000 * times.seconds(name, "cpu"),
                "clips_per_s": size.batch / s,
                "peak_mib": None if mem is None else mem / MIB,
                "vs_train": times.ratio(name, base) if base in times else None,
                "rounds_s": {"wall": times.wall[name], "cpu": times.cpu[name]},
            }
        )
    return out


def print_table(
    rows: list[dict[str, Any]],
    size: Size,
    device: torch.device,
    rounds: int,
    warmup: int,
    clock: str,
) -> None:
    print(
        f"\n== pretrain step: {size.text()}, {device_text(device)}; median of {rounds} "
        f"interleaved rounds after {warmup} warm-up step(s)"
    )
    print(
        f"{'head':<9}{'row':<14}{'variant':<10}{'ms/step':>10}{'CPU ms':>10}{'clips/s':>10}"
        f"{'peak MiB':>10}{'x train':>9}"
    )
    for r in rows:
        print(
            f"{r['head']:<9}{r['row']:<14}{r['variant']:<10}{r['ms_per_step']:>10.1f}"
            f"{r['cpu_ms_per_step']:>10.1f}{r['clips_per_s']:>10.2f}"
            f"{fmt(r['peak_mib'], '.0f'):>10}{fmt(r['vs_train'], '.3f'):>9}"
        )
    growth = "max_memory_allocated" if device.type == "cuda" else "RSS (VmHWM)"
    print(
        f"x train: step time over the classification step's (same head and variant, paired "
        f"by round, {clock} time); peak MiB: params (decoder and EMA copy included) + optimiser "
        f"state + the {growth} growth during a step (see benchmarks/common.py)"
    )


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each objective's step over the classification step, for the first head and variant."""
    first = rows[0]
    mine = {
        r["row"]: r["vs_train"]
        for r in rows
        if (r["head"], r["variant"]) == (first["head"], first["variant"])
    }
    return {f"{row}/{BASELINE}": mine.get(row) for row in ROWS if row != BASELINE}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size, rounds, warmup = pretrain_size(args, device)
    heads = parse_list(args.heads, PRETRAIN_HEADS, "--heads")
    rows = parse_list(args.rows, ROWS, "--rows")
    variants = parse_variants(args.variants, device)
    sets = parse_sets(args.set)
    print(f"pretrain_step: {device_text(device)}")
    try:
        steppers = build_steppers(heads, rows, variants, size, device, sets)
    except UserError as exc:  # a size or --set the objectives cannot take: one line
        raise SystemExit(str(exc)) from None
    frames, labels = random_batch(size, device)
    fns = step_fns(steppers, variants, frames, labels)
    times = interleaved(fns, rounds, warmup, device)
    sync(device)
    memory = measure_memory(steppers, variants, fns, device) if args.memory else {}
    names = [(h, r, v) for h in heads for r in rows for v in variants]
    figures = table(times, memory, size, names)
    print_table(figures, size, device, rounds, warmup, times.clock)
    note = shared_cpu_note(device)
    if note:
        print(note)
    report: dict[str, Any] = {
        "device": device_text(device),
        "size": dataclasses.asdict(size),
        "clock": times.clock,
        "rows": figures,
        "ratios": ratios(figures),
    }
    text = ", ".join(
        f"{name} {'n/a' if value is None else f'{value:.3f}x'}"
        for name, value in report["ratios"].items()
    )
    print(f"ratios: {text}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
