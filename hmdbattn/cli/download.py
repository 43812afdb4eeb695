"""`hmdbattn download`: fetch, extract and verify HMDB51, or write the synthetic dataset."""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption, resolve_config
from hmdbattn.config import DownloadConfig
from hmdbattn.data import verify
from hmdbattn.errors import UserError
from hmdbattn.report import console, print_json, table

# What verification expects; the real HMDB51 counts (tests replace this for small fixtures).
EXPECTED = verify.HMDB51_EXPECTED

RootOption = typer.Option(
    None, "--root", help="Dataset root (default: data.root).", show_default=False
)
FromOption = typer.Option(
    None,
    "--from",
    help="Folder holding hmdb51_org.rar and test_train_splits.rar: no download.",
    file_okay=False,
    show_default=False,
)


def parse_size(text: str) -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)`` (width, height); anything else is a UserError."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None or int(match[1]) < 1 or int(match[2]) < 1:
        raise UserError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 320x240")
    return int(match[1]), int(match[2])


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
    classes: int = typer.Option(8, "--classes", min=2, help="Synthetic: number of classes."),
    videos_per_class: int = typer.Option(100, "--videos-per-class", min=1, help="Synthetic."),
    seconds: float = typer.Option(2.0, "--seconds", min=0.1, help="Synthetic: clip length."),
    size: str = typer.Option("320x240", "--size", help="Synthetic: WIDTHxHEIGHT."),
    fps: int = typer.Option(30, "--fps", min=1, help="Synthetic: frames per second."),
    seed: int = typer.Option(0, "--seed", help="Synthetic: random seed."),
    workers: int = typer.Option(
        os.cpu_count() or 1, "--workers", min=0, help="Synthetic: rendering processes."
    ),
) -> None:
    """Download, extract and verify HMDB51 under the dataset root (or write a synthetic one)."""
    cfg = resolve_config(config, overrides)
    root = root if root is not None else cfg.data.root
    if synthetic:
        from hmdbattn.data.synthetic import generate

        made = generate(
            root,
            classes=classes,
            videos_per_class=videos_per_class,
            seconds=seconds,
            size=parse_size(size),
            fps=fps,
            seed=seed,
            workers=workers,
        )
        summary: dict[str, Any] = {
            "root": str(made.root),
            "synthetic": {"classes": made.classes, "videos": made.videos},
        }
        _finish(summary, None, weights, json_out)
        return
    summary, result = _hmdb51(cfg.download, root, from_dir)
    _finish(summary, result, weights, json_out)


def _hmdb51(
    cfg: DownloadConfig, root: Path, from_dir: Path | None
) -> tuple[dict[str, Any], verify.VerifyResult]:
    """Fetch (or take from `from_dir`), extract and verify; return the summary."""
    from hmdbattn.data.archive import ExtractResult, extract_splits, extract_videos
    from hmdbattn.data.download import SPLITS_ARCHIVE, VIDEOS_ARCHIVE, fetch_archives

    fetched = fetch_archives(cfg, root / "archives", from_dir=from_dir)
    archives = {f.name: f.path for f in fetched}

    def extract(force: bool) -> list[ExtractResult]:
        return [
            extract_splits(archives[SPLITS_ARCHIVE], root, force=force),
            extract_videos(archives[VIDEOS_ARCHIVE], root, force=force),
        ]

    extracted = extract(force=False)
    result = verify.verify_dataset(root, EXPECTED)
    if not result.ok and any(e.skipped for e in extracted):
        # Extracted earlier, but files went missing since: extract again (complete files stay).
        extracted = extract(force=True)
        result = verify.verify_dataset(root, EXPECTED)
    summary = {
        "root": str(root),
        "archives": [asdict(f) | {"path": str(f.path)} for f in fetched],
        "extracted": [
            {"archive": e.archive.name, "written": e.written, "kept": e.kept, "skipped": e.skipped}
            for e in extracted
        ],
        "verification": result.to_dict(),
    }
    return summary, result


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
        _print_summary(summary, result)
    if result is not None and not result.ok:
        raise UserError(
            f"{summary['root']}: the extracted dataset does not match the expected HMDB51 "
            "counts (see the verification table); the archives' MD5s matched, so check the "
            "disk space and the files listed as missing"
        )


def _print_summary(summary: dict[str, Any], result: verify.VerifyResult | None) -> None:
    """Rich tables on stdout: archives, then verification and a few missing files."""
    if "synthetic" in summary:
        syn = summary["synthetic"]
        console.print(f"synthetic dataset: {len(syn['classes'])} classes, {syn['videos']} videos")
    if summary.get("archives"):
        rows = [(f["name"], f["action"], f["md5"]) for f in summary["archives"]]
        console.print(table("Archives", ["archive", "action", "MD5"], rows))
    for e in summary.get("extracted", []):
        done = "already extracted" if e["skipped"] else f"{e['written']} files written"
        kept = f", {e['kept']} kept" if e["kept"] else ""
        console.print(f"{e['archive']}: {done}{kept}", highlight=False, markup=False)
    if result is not None:
        columns = ["check", "expected", "found", "status"]
        console.print(table("Verification", columns, result.rows()))
        for rel in result.missing[: verify.MAX_MISSING_SHOWN]:
            console.print(f"missing: videos/{rel}", highlight=False, markup=False)
        if len(result.missing) > verify.MAX_MISSING_SHOWN:
            more = len(result.missing) - verify.MAX_MISSING_SHOWN
            console.print(f"... and {more} more missing", highlight=False, markup=False)
    if "weights" in summary:
        console.print(f"Kinetics-400 weights: {summary['weights']}", highlight=False, markup=False)
    console.print(f"dataset root: {summary['root']}", highlight=False, markup=False)
