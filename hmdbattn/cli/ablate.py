"""`hmdbattn ablate`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption, command_line, on_interrupt
from hmdbattn.errors import UserError
from hmdbattn.report import print_json


@app.command()
def ablate(
    grid: str = typer.Option(
        ...,
        "--grid",
        "-g",
        help="A shipped grid (depth, cnn, attention: configs/grids) or a grid TOML file.",
    ),
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    only: list[str] | None = typer.Option(
        None,
        "--only",
        help="Train only this variant (label or slug). Repeatable.",
        show_default=False,
    ),
    report: bool = typer.Option(
        False, "--report", help="Rebuild the table from the runs on disk; train nothing."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Parameters and GMACs of every variant; no data, no training."
    ),
    json_out: bool = JsonOption,
    launcher: str | None = typer.Option(
        None,
        "--launcher",
        help="Run each unfinished variant as a submitit job: slurm, or local processes.",
        show_default=False,
    ),
    slurm_partition: str | None = typer.Option(
        None, "--slurm-partition", help="SLURM partition of the jobs.", show_default=False
    ),
    gpus_per_job: int | None = typer.Option(
        None,
        "--gpus-per-job",
        help="GPUs per job (default 1); more than 1 runs torchrun of `hmdbattn train`.",
        show_default=False,
    ),
    max_parallel: int | None = typer.Option(
        None,
        "--max-parallel",
        help="At most this many jobs at once (local default 1; slurm: the array's limit).",
        show_default=False,
    ),
    slurm_args: list[str] | None = typer.Option(
        None,
        "--slurm-arg",
        help="Another sbatch option as key=value (e.g. account=proj). Repeatable.",
        show_default=False,
    ),
    timeout_min: int | None = typer.Option(
        None,
        "--timeout-min",
        help="Time limit of each job in minutes (default 1440); a job that reaches it is "
        "requeued and resumes.",
        show_default=False,
    ),
    no_wait: bool = typer.Option(
        False, "--no-wait", help="Submit the jobs and return; see them later with --report."
    ),
) -> None:
    """Train every variant of a grid in its own run and tabulate them like the research.

    Precedence of settings: the config file (--config, else the grid's base) < the variant's
    own settings < --set. Finished runs are skipped and interrupted ones resumed, so the same
    command continues an ablation. The markdown table goes to stdout and, with CSV and JSON,
    to <train.out_dir>/ablate-GRID/results.* (GRID: the grid's name).

    With --launcher, each unfinished variant runs as its own submitit job (on SLURM, or as
    local processes) writing into the same folder; this command waits for them and prints the
    table, or with --no-wait returns at once: `--report` then shows what is done, running or
    failed. The same command again submits only what is still missing.
    """
    from hmdbattn import ablate as core
    from hmdbattn.ablate import launch

    if report and dry_run:
        raise UserError("--report and --dry-run: choose one")
    options = launch.check_options(
        launcher,
        slurm_partition,
        gpus_per_job,
        max_parallel,
        slurm_args or (),
        timeout_min,
        no_wait,
    )
    if options is not None and (report or dry_run):
        raise UserError(f"--launcher and {'--report' if report else '--dry-run'}: choose one")
    ablation = core.load_ablation(core.read_grid(core.find_grid(grid)), config, overrides)
    core.select(ablation, only or ())  # a misspelt --only fails before anything runs
    if dry_run or report:
        core.print_notes(ablation)
        rows = core.dry_run_rows(ablation) if dry_run else launch.report_rows(ablation)
        _output(rows, json_out, core.dry_run_markdown if dry_run else core.results_markdown)
        return
    if options is not None:
        _launch(ablation, options, only or (), json_out)
        return
    from hmdbattn.engine import distributed

    with distributed.session() as runtime:
        line = functools.partial(core.interrupted_text, ablation, command_line())
        with on_interrupt(line if runtime.is_main else None):
            outcome = core.run_ablation(ablation, runtime, only or ())
    if not runtime.is_main:
        return
    _output(outcome.rows, json_out, core.results_markdown)
    error = outcome.error()
    if error is not None:
        raise error


def _launch(ablation: Any, options: Any, only: Sequence[str], json_out: bool) -> None:
    """Submit the variants as jobs; unless --no-wait, wait and print the table."""
    import sys

    from hmdbattn import ablate as core
    from hmdbattn.ablate import launch

    launch.import_submitit()  # the install hint before anything is resolved or submitted
    line = functools.partial(core.interrupted_text, ablation, command_line())
    with on_interrupt(line):
        command = launch.report_command(sys.argv[1:])
        outcome = launch.launch_ablation(ablation, options, only, command)
    if outcome is None:
        return
    _output(outcome.rows, json_out, core.results_markdown)
    error = outcome.error()
    if error is not None:
        raise error


def _output(rows: list[dict], json_out: bool, markdown: Callable[[list[dict]], str]) -> None:
    """Rows as JSON, or the markdown table, on stdout (plain print: no wrapping)."""
    if json_out:
        print_json(rows)
    else:
        print(markdown(rows))
