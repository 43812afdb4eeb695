"""`hmdbattn ablate`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

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
) -> None:
    """Train every variant of a grid in its own run and tabulate them like the research.

    Precedence of settings: the config file (--config, else the grid's base) < the variant's
    own settings < --set. Finished runs are skipped and interrupted ones resumed, so the same
    command continues an ablation. The markdown table goes to stdout and, with CSV and JSON,
    to <train.out_dir>/ablate-GRID/results.* (GRID: the grid's name).
    """
    from hmdbattn import ablate as core

    if report and dry_run:
        raise UserError("--report and --dry-run: choose one")
    ablation = core.load_ablation(core.read_grid(core.find_grid(grid)), config, overrides)
    core.select(ablation, only or ())  # a misspelt --only fails before anything runs
    if dry_run or report:
        core.print_notes(ablation)
        rows = core.dry_run_rows(ablation) if dry_run else core.report(ablation)
        _output(rows, json_out, core.dry_run_markdown if dry_run else core.results_markdown)
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


def _output(rows: list[dict], json_out: bool, markdown: Callable[[list[dict]], str]) -> None:
    """Rows as JSON, or the markdown table, on stdout (plain print: no wrapping)."""
    if json_out:
        print_json(rows)
    else:
        print(markdown(rows))
