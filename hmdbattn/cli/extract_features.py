"""`hmdbattn extract-features`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Literal

import typer
from rich.markup import escape

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption, resolve_config
from hmdbattn.config import Config
from hmdbattn.report import err_console, print_json, print_table


@app.command("extract-features")
def extract_features_command(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    frames: Literal["cache", "video"] = typer.Option(
        "cache", "--frames", help="Where the frames come from: the frame cache or the videos."
    ),
    device: str | None = typer.Option(
        None, "--device", help="cpu, cuda, cuda:1... (default: cuda if there is one)."
    ),
    json_out: bool = JsonOption,
) -> None:
    """Run the frozen CNN once over data.feature_clips training clips per video and every
    evaluation window, storing its feature maps (fp16) for `data.source = "features"`
    (resumable: a rerun finishes what a killed run left).
    """
    import torch  # imports torch: not at `--help`

    from hmdbattn.engine.extract import extract_features

    cfg = resolve_config(config, overrides)
    try:
        summary = extract_features(cfg, frames, torch.device(device) if device else None)
    except KeyboardInterrupt:
        _interrupted(cfg)
        raise typer.Exit(130) from None
    if json_out:
        print_json(summary.to_dict())
    else:
        rows = [
            ("training videos", summary.train_videos),
            ("evaluation videos", summary.eval_videos),
            ("extracted now", summary.extracted),
            ("already extracted", summary.skipped),
            ("training clips", summary.train_clips),
            ("evaluation clips", summary.eval_rows),
            ("clip shape (C, T, H, W)", "x".join(map(str, summary.shape))),
            ("size (MB)", round(summary.bytes / 1e6, 1)),
            ("seconds", round(summary.seconds, 1)),
        ]
        print_table(f"CNN features {summary.folder}", ["", "value"], rows)
    for line in summary.rebuilt:
        err_console.print(f"[yellow]warning:[/] {escape(line)}")


def _interrupted(cfg: Config) -> None:
    """One line on Ctrl-C: what is kept and the command that resumes."""
    folder = cfg.data.features_path
    kept = sum(1 for part in ("train", "eval") for _ in (folder / part).rglob("*.npy"))
    again = shlex.join(["hmdbattn", *sys.argv[1:]])
    err_console.print(
        f"[yellow]interrupted:[/] {kept} videos' features in {escape(str(folder))} are kept; "
        f"`{escape(again)}` resumes",
        highlight=False,
    )
