"""`hmdbattn train`."""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from hmdbattn.cli import app
from hmdbattn.cli.common import (
    ConfigOption,
    JsonOption,
    SetOption,
    command_line,
    on_interrupt,
    resolve_config,
)
from hmdbattn.config import Config, load_config
from hmdbattn.errors import UserError
from hmdbattn.report import print_json, print_model_summary, print_run_summary


def parse_splits(text: str) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3]; anything else is a UserError naming the value."""
    try:
        splits = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        splits = []
    if not splits or any(s not in (1, 2, 3) for s in splits):
        raise UserError(f"--splits {text!r}: expected split numbers 1-3, e.g. 1,2,3")
    return splits


def dry_run(cfg: Config, json_out: bool) -> None:
    """Resolve the config and build the model on the meta device: no data, no weights."""
    from hmdbattn.models.classifier import clip_profile

    params, gmacs, grid = clip_profile(cfg)
    summary = {
        "config": cfg.model_dump(mode="json"),
        "params": params.to_dict(),
        "gmacs": round(gmacs, 3),
        "token_grid": list(grid),
        "tokens": grid[0] * grid[1] * grid[2],
    }
    if cfg.model.init is not None:
        from hmdbattn.models.init import plan_init

        summary["init"] = plan_init(cfg)
    if json_out:
        print_json(summary)
    else:
        print_model_summary(summary)


@app.command()
def train(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the run in this directory from its last.pt."
    ),
    splits: str | None = typer.Option(
        None, "--splits", help="Train one run per split (hmdb51, ucf101), e.g. 1,2,3."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run."),
    dry_run_: bool = typer.Option(
        False, "--dry-run", help="Resolve the config and build the model; touch no data."
    ),
    json_out: bool = JsonOption,
) -> None:
    """Train a model; under torchrun, one process per GPU (DDP)."""
    from hmdbattn.engine.rundir import RunDir, run_dirs  # imports torch: not at `--help`

    if resume is not None:
        if config is not None or splits:
            raise UserError("--resume takes the run's own config.toml: drop --config / --splits")
        RunDir(resume).check_resumable()
        runs = [(load_config(RunDir(resume).config, overrides or []), resume)]
    else:
        cfg = resolve_config(config, overrides)
        if dry_run_:
            dry_run(cfg, json_out)
            return
        runs = run_dirs(cfg, config, parse_splits(splits) if splits else None)

    from hmdbattn.engine import distributed
    from hmdbattn.engine.train import summary
    from hmdbattn.engine.train import train as train_run

    results = {}
    with distributed.session() as runtime:
        for number, (run_cfg, run_dir) in enumerate(runs):
            line = functools.partial(interrupted_line, runs, number)
            with on_interrupt(line if runtime.is_main else None):
                state = train_run(
                    run_cfg, run_dir, runtime, resume=resume is not None, overwrite=overwrite
                )
            results[str(run_dir)] = summary(state)
    if not runtime.is_main:
        return
    if json_out:
        print_json(results)
    else:
        print_run_summary(results)


def interrupted_line(runs: list[tuple[Config, Path]], number: int) -> str:
    """What a Ctrl-C in run `number` of `runs` kept, and the commands that go on from there."""
    from hmdbattn.engine.rundir import RunDir

    line = RunDir(runs[number][1]).interrupted(command_line(add="--overwrite"))
    left = [str(cfg.data.split) for cfg, _ in runs[number + 1 :]]
    if left:
        rest = command_line(replace={"--splits": ",".join(left)})
        line += f"; then train the splits not started with `{rest}`"
    return line
