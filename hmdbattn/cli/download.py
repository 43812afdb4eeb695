"""`hmdbattn download`: fetch, extract and verify HMDB51 or UCF101 (or, with --synthetic,
`synthesize`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption, resolve_config
from hmdbattn.cli.synthesize import RootOption, print_summary, synthesize_into, synthetic_options
from hmdbattn.data import ucf101, verify
from hmdbattn.errors import UserError
from hmdbattn.report import print_dataset_summary, print_json

# What verification expects; the real counts (tests replace these for small fixtures).
EXPECTED = verify.HMDB51_EXPECTED
UCF101_EXPECTED = ucf101.UCF101_EXPECTED
DATASETS = {"hmdb51": "HMDB51", "ucf101": "UCF101"}

FromOption = typer.Option(
    None,
    "--from",
    help="Folder holding the dataset's two archives (hmdb51_org.rar and test_train_splits.rar; "
    "UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip): no download.",
    file_okay=False,
    show_default=False,
)
_SYNTHETIC = synthetic_options(panel="With --synthetic (as hmdbattn synthesize)")


@app.command()
def download(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    root: Path | None = RootOption,
    from_dir: Path | None = FromOption,
    weights: bool = typer.Option(False, "--weights", help="Also fetch the Kinetics-400 weights."),
    json_out: bool = JsonOption,
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        help="hmdb51 or ucf101 (default: data.format when it is one of them, else hmdb51).",
        show_default=False,
    ),
    synthetic: bool = typer.Option(
        False, "--synthetic", help="Write the small synthetic dataset instead of HMDB51."
    ),
    classes: int | None = _SYNTHETIC["classes"],
    class_names: str | None = _SYNTHETIC["class_names"],
    videos_per_class: int = _SYNTHETIC["videos_per_class"],
    seconds: float = _SYNTHETIC["seconds"],
    size: str = _SYNTHETIC["size"],
    fps: int = _SYNTHETIC["fps"],
    seed: int = _SYNTHETIC["seed"],
    workers: int = _SYNTHETIC["workers"],
    layout: str | None = _SYNTHETIC["layout"],
) -> None:
    """Download, extract and verify HMDB51 or UCF101 under the dataset root (or write a
    synthetic dataset)."""
    cfg = resolve_config(config, overrides)
    root = root if root is not None else cfg.data.root
    if synthetic:
        summary = synthesize_into(
            root,
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
        _finish(summary, None, weights, json_out)
        return
    from hmdbattn.data.install import install_hmdb51, install_ucf101

    name = choose_dataset(dataset, cfg.data.format)
    if name == "ucf101":
        installed = install_ucf101(cfg.download, root, from_dir=from_dir, expected=UCF101_EXPECTED)
    else:
        installed = install_hmdb51(cfg.download, root, from_dir=from_dir, expected=EXPECTED)
    _finish(installed.to_dict(), installed.verification, weights, json_out, DATASETS[name])


def choose_dataset(dataset: str | None, data_format: str) -> str:
    """``--dataset``, else data.format when it names a downloadable dataset, else hmdb51."""
    if dataset is None:
        return data_format if data_format in DATASETS else "hmdb51"
    if dataset not in DATASETS:
        raise UserError(f"--dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    return dataset


def _finish(
    summary: dict[str, Any],
    result: verify.VerifyResult | None,
    weights: bool,
    json_out: bool,
    dataset: str = "HMDB51",
) -> None:
    """Fetch weights if asked, print the summary, and fail on an incomplete dataset."""
    if weights:
        from hmdbattn.data.download import fetch_kinetics_weights

        summary["weights"] = str(fetch_kinetics_weights())
    if "synthetic" in summary:
        print_summary(summary, json_out)
    elif json_out:
        print_json(summary)
    else:
        print_dataset_summary(summary, result)
    if result is not None and not result.ok:
        raise UserError(
            f"{summary['root']}: the extracted dataset does not match the expected {dataset} "
            "counts (see the verification table); the archives' MD5s matched, so check the "
            "disk space and the files listed as missing"
        )
