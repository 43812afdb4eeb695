"""`hmdbattn synthesize`: write the synthetic HMDB51 (also reachable as `download --synthetic`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import typer

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption, resolve_config
from hmdbattn.errors import UserError
from hmdbattn.report import console, print_dataset_summary, print_json

RootOption = typer.Option(
    None, "--root", help="Dataset root (default: data.root).", show_default=False
)


def synthetic_options(panel: str | None = None) -> dict[str, Any]:
    """The generator's options, for `synthesize` and for `download` (there under `panel`)."""

    def option(default: Any, flag: str, text: str, **kwargs: Any) -> Any:
        return typer.Option(default, flag, help=text, rich_help_panel=panel, **kwargs)

    return {
        "classes": option(
            None, "--classes", "Number of classes: the generator's first N (default 8).", min=2
        ),
        "class_names": option(
            None,
            "--class-names",
            "Comma-separated class names instead of --classes, e.g. move_up,move_down,blink.",
        ),
        "videos_per_class": option(100, "--videos-per-class", "Videos per class.", min=1),
        "seconds": option(2.0, "--seconds", "Clip length in seconds (+-25%).", min=0.1),
        "size": option("320x240", "--size", "Frame size, WIDTHxHEIGHT."),
        "fps": option(30, "--fps", "Frames per second.", min=1),
        "seed": option(0, "--seed", "Random seed: same seed, same files."),
        "workers": option(os.cpu_count() or 1, "--workers", "Rendering processes.", min=0),
        "layout": option(
            None,
            "--format",
            "Layout to write, as data.format reads it: hmdb51, ucf101, folders or list "
            "(default: data.format).",
            show_default=False,
        ),
    }


_OPTIONS = synthetic_options()


def parse_size(text: str) -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)`` (width, height); anything else is a UserError."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None or int(match[1]) < 1 or int(match[2]) < 1:
        raise UserError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 320x240")
    return int(match[1]), int(match[2])


def choose_classes(classes: int | None, class_names: str | None) -> int | list[str]:
    """What `generate` takes as `classes`: a number (default 8) or the listed names."""
    from hmdbattn.data.synthetic import DEFAULT_CLASSES

    if class_names is None:
        return DEFAULT_CLASSES if classes is None else classes
    if classes is not None:
        raise UserError("--classes and --class-names both given: use one of them")
    return [name.strip() for name in class_names.split(",") if name.strip()]


def synthesize_into(
    root: Path,
    *,
    classes: int | None,
    class_names: str | None,
    videos_per_class: int,
    seconds: float,
    size: str,
    fps: int,
    seed: int,
    workers: int,
    layout: str = "hmdb51",
) -> dict[str, Any]:
    """Check the options, write the dataset, and return its summary (root, classes, videos).

    For a layout other than hmdb51 the summary's ``settings`` are the config keys that read it.
    """
    from hmdbattn.data import synthetic  # numpy and PyAV: only when needed

    if layout not in synthetic.LAYOUTS:
        raise UserError(f"--format {layout!r}: expected one of {', '.join(synthetic.LAYOUTS)}")

    settings: dict[str, Any] = {
        "classes": choose_classes(classes, class_names),
        "videos_per_class": videos_per_class,
        "seconds": seconds,
        "size": parse_size(size),
        "fps": fps,
        "seed": seed,
    }
    try:
        synthetic.check_settings(**settings)
    except ValueError as exc:
        raise UserError(f"synthetic dataset: {exc}") from None
    try:
        made = synthetic.generate(root, **settings, workers=workers, layout=layout)
    except OSError as exc:  # a full disk, a read-only folder: rerunning resumes once fixed
        raise UserError(f"cannot write the synthetic dataset in {root} ({exc})") from None
    return {
        "root": str(made.root),
        "synthetic": {"classes": made.classes, "videos": made.videos},
        "format": layout,
        "settings": reading_settings(made.root, layout),
    }


def reading_settings(root: Path, layout: str) -> dict[str, str]:
    """The config keys that read a synthetic dataset of `layout` at `root`."""
    settings = {"data.root": str(root), "data.format": layout}
    if layout == "list":
        lists = {"train_list": "train.txt", "test_list": "test.txt", "class_names": "classes.txt"}
        settings |= {f"data.{key}": name for key, name in lists.items()}
    return settings


def print_summary(summary: dict[str, Any], json_out: bool) -> None:
    """The summary as JSON, or as the table and (another format) the keys that read it."""
    if json_out:
        print_json(summary)
        return
    print_dataset_summary(summary, None)
    if summary.get("format", "hmdb51") != "hmdb51":
        keys = " ".join(f"--set {k}={v}" for k, v in summary["settings"].items())
        console.print(f"read it with: {keys}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def synthesize(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    root: Path | None = RootOption,
    classes: int | None = _OPTIONS["classes"],
    class_names: str | None = _OPTIONS["class_names"],
    videos_per_class: int = _OPTIONS["videos_per_class"],
    seconds: float = _OPTIONS["seconds"],
    size: str = _OPTIONS["size"],
    fps: int = _OPTIONS["fps"],
    seed: int = _OPTIONS["seed"],
    workers: int = _OPTIONS["workers"],
    layout: str | None = _OPTIONS["layout"],
    json_out: bool = JsonOption,
) -> None:
    """Write a small synthetic HMDB51 under the dataset root: same layout, real AVIs, offline.

    Only the motion tells the classes apart, and most come in pairs that are each other played
    backwards. Rerunning resumes; other settings into the same root are refused.
    """
    cfg = resolve_config(config, overrides)
    summary = synthesize_into(
        root if root is not None else cfg.data.root,
        classes=classes,
        class_names=class_names,
        videos_per_class=videos_per_class,
        seconds=seconds,
        size=size,
        fps=fps,
        seed=seed,
        workers=workers,
        layout=layout if layout is not None else cfg.data.format,
    )
    print_summary(summary, json_out)
