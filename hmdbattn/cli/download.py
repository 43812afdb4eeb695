"""`hmdbattn download`: fetch, extract and verify HMDB51 (or, with --synthetic, `synthesize`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption, resolve_config
from hmdbattn.cli.synthesize import RootOption, synthesize_into, synthetic_options
from hmdbattn.data import verify
from hmdbattn.errors import UserError
from hmdbattn.report import print_dataset_summary, print_json

# What verification expects; the real HMDB51 counts (tests replace this for small fixtures).
EXPECTED = verify.HMDB51_EXPECTED

FromOption = typer.Option(
    None,
    "--from",
    help="Folder holding hmdb51_org.rar and test_train_splits.rar: no download.",
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
) -> None:
    """Download, extract and verify HMDB51 under the dataset root (or write a synthetic one)."""
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
        )
        _finish(summary, None, weights, json_out)
        return
    from hmdbattn.data.install import install_hmdb51

    installed = install_hmdb51(cfg.download, root, from_dir=from_dir, expected=EXPECTED)
    _finish(installed.to_dict(), installed.verification, weights, json_out)


def _finish(
    summary: dict[str, Any], result: verify.VerifyResult | None, weights: bool, json_out: bool
) -> None:
    """Fetch weights if asked, print the summary, and fail on an incomplete dataset."""
    if weights:
        from hmdbattn.data.download import fetch_kinetics_weights

        summary["weights"] = str(fetch_kinetics_weights())
    if json_out:
        print_json(summary)
    else:
        print_dataset_summary(summary, result)
    if result is not None and not result.ok:
        raise UserError(
            f"{summary['root']}: the extracted dataset does not match the expected HMDB51 "
            "counts (see the verification table); the archives' MD5s matched, so check the "
            "disk space and the files listed as missing"
        )
