"""`hmdbattn pretrain`."""

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
from hmdbattn.config import load_config
from hmdbattn.errors import UserError
from hmdbattn.report import console, print_json, table


@app.command()
def pretrain(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the pretraining run in this directory from its last.pt."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run."),
    json_out: bool = JsonOption,
) -> None:
    """Self-supervised pretraining on the dataset's videos (no labels); under torchrun, DDP.

    The `[pretrain]` section picks the objective; `[train]` the optimiser, epochs and run
    directory. Fine-tune from the result with `--set model.init=<run>/last.pt`.
    """
    from hmdbattn.engine import distributed  # imports torch: not at `--help`
    from hmdbattn.engine.pretrain import pretrain as pretrain_run
    from hmdbattn.engine.rundir import RunDir, run_name

    if resume is not None:
        if config is not None:
            raise UserError("--resume takes the run's own config.toml: drop --config")
        RunDir(resume).check_resumable()
        cfg, run_dir = load_config(RunDir(resume).config, overrides or []), resume
    else:
        cfg = resolve_config(config, overrides)
        run_dir = cfg.train.out_dir / run_name(cfg, config)
    restart = command_line(add="--overwrite")
    with distributed.session() as runtime:
        line = RunDir(run_dir, "pretrain").interrupted
        with on_interrupt(functools.partial(line, restart) if runtime.is_main else None):
            result = pretrain_run(
                cfg, run_dir, runtime, resume=resume is not None, overwrite=overwrite
            )
    if not runtime.is_main:
        return
    if json_out:
        print_json({str(run_dir): result})
        return
    rows = [(key, "" if value is None else value) for key, value in result.items()]
    console.print(table(f"pretraining run {run_dir}", ("", "value"), rows))
