"""Running an ablation: which runs, skip / resume / start each, train, and the final outcome."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmdbattn.ablate.grid import RESERVED_KEYS, Variant, slugify
from hmdbattn.ablate.resolve import Ablation, Run
from hmdbattn.ablate.results import build_rows
from hmdbattn.ablate.tables import show_table, write_results
from hmdbattn.config import flatten, read_toml
from hmdbattn.errors import UserError
from hmdbattn.report import err_console

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class Outcome:
    """The final rows and the runs that failed (label -> error)."""

    rows: list[dict]
    failures: dict[str, str]

    def error(self) -> UserError | None:
        """One line naming the failed runs, or None when every selected run finished."""
        if not self.failures:
            return None
        label, message = next(iter(self.failures.items()))
        return UserError(
            f"{len(self.failures)} run(s) failed; {label}: {message} (finished runs are kept: "
            "fix the problem and rerun the same command)"
        )


def select(ablation: Ablation, only: Sequence[str] = ()) -> list[Run]:
    """The runs to train: all, or those of the variants named by label or slug."""
    if not only:
        return list(ablation.runs)
    chosen = set()
    for text in only:
        names = {v.label for v in ablation.grid.variants if _matches(text, v)}
        if not names:
            labels = "; ".join(v.label for v in ablation.grid.variants)
            raise UserError(f"--only {text!r}: no such variant in {ablation.grid.path} ({labels})")
        chosen |= names
    return [r for r in ablation.runs if r.variant.label in chosen]


def _matches(text: str, variant: Variant) -> bool:
    return text.casefold() == variant.label.casefold() or slugify(text) == variant.slug


def decide(run: Run) -> tuple[str, str | None]:
    """("skip" | "resume" | "start", error or None) for a run, from its folder."""
    if (run.run_dir / "result.json").is_file():
        changed = changed_keys(run)
        if changed:
            err_console.print(
                f"[yellow]kept[/] {run.run_dir} (finished) though the settings changed: "
                f"{', '.join(changed)}; delete the folder to run it again",
                highlight=False,
            )
        return "skip", None
    if (run.run_dir / "last.pt").is_file():
        from hmdbattn.engine.rundir import fixed_on_resume

        changed = changed_keys(run)
        fixed = [k for k, values in changed.items() if fixed_on_resume(k, values)]
        if fixed:
            return "resume", (
                f"{run.run_dir} was started with other model or input settings "
                f"({', '.join(fixed)}): delete the folder to start it again"
            )
        if changed:
            err_console.print(f"[yellow]resuming with changed {', '.join(changed)}[/]")
        return "resume", None
    return "start", None


def changed_keys(run: Run) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose value differs from the run folder's config.toml: (saved, wanted).

    train.out_dir and train.name are left out: the ablation places the run (a job that
    trains it through `hmdbattn train` records them as the folder it names).
    """
    saved_path = run.run_dir / "config.toml"
    if not saved_path.is_file():
        return {}
    saved = flatten(read_toml(saved_path))
    wanted = flatten(tomllib.loads(run.config.to_toml()))
    keys = (saved.keys() | wanted.keys()) - set(RESERVED_KEYS)
    return {k: (saved.get(k), wanted.get(k)) for k in sorted(keys) if saved.get(k) != wanted.get(k)}


def run_ablation(
    ablation: Ablation,
    runtime: Any,
    only: Sequence[str] = (),
) -> Outcome:
    """Train every selected run not finished yet (resuming interrupted ones), in grid order.

    Rank 0 prints the table on stderr and rewrites the result files after each run. A run that
    fails with a UserError is reported and the others go on.
    """
    from hmdbattn.engine.distributed import broadcast, on_main

    selected = select(ablation, only)
    failures: dict[Path, str] = {}
    main = runtime.is_main
    if main:
        print_notes(ablation)
        show_table(ablation, build_rows(ablation))
    for number, run in enumerate(selected, start=1):
        action, error = broadcast(decide(run) if main else None, runtime)
        if action == "skip":
            continue
        if error is None and action == "start":
            error = missing_init(run)
        if error is None:
            if main:
                _announce(run, action, number, len(selected))
            error = train_one(run, runtime, action == "resume")
        if error is not None:
            failures[run.run_dir] = error
            if main:
                err_console.print(f"[bold red]failed:[/] {run.run_dir}: {error}", highlight=False)
        on_main(lambda: _record(ablation, failures), runtime, "write the ablation's results")
    return _finish(ablation, selected, failures, main)


def _record(ablation: Ablation, failures: Mapping[Path, str]) -> None:
    """Rank 0's part after each run: rewrite the result files and show the table."""
    rows = build_rows(ablation, failures)
    write_results(ablation, rows)
    show_table(ablation, rows)


def missing_init(run: Run) -> str | None:
    """Why a run cannot start: the checkpoint its ``model.init`` names is not there yet."""
    init = run.config.model.init
    if init is None or init.is_file():
        return None
    make = f": make it with `{run.variant.needs}`" if run.variant.needs else ""
    return f"model.init {init} does not exist yet{make}"


def _announce(run: Run, action: str, number: int, total: int) -> None:
    verb = "resuming" if action == "resume" else "training"
    err_console.print(
        f"[bold]ablation {number}/{total}[/]: {verb} {run.variant.label!r}"
        + (f" seed {run.seed}" if run.seed is not None else "")
        + f" in {run.run_dir}",
        highlight=False,
    )


def train_one(run: Run, runtime: Any, resume: bool) -> str | None:
    """Train (or resume) one run; None when it finished, else its UserError's line."""
    from hmdbattn.engine.train import train

    try:
        # A run that is not resumed holds no checkpoint (see `decide`): what a killed start
        # left there is replaced, not mixed with the new run.
        train(run.config, run.run_dir, runtime, resume=resume, overwrite=not resume)
    except UserError as exc:
        return str(exc)
    return None


def _finish(
    ablation: Ablation, selected: Sequence[Run], failures: Mapping[Path, str], main: bool
) -> Outcome:
    rows = build_rows(ablation, failures)
    if main and (selected or ablation.folder.is_dir()):
        write_results(ablation, rows)
    by_label = {
        run.variant.label + (f" seed {run.seed}" if run.seed is not None else ""): failures[d]
        for run in selected
        if (d := run.run_dir) in failures
    }
    return Outcome(rows, by_label)


def print_notes(ablation: Ablation) -> None:
    """The notes of resolving (e.g. --set keys that replace the grid's values) on stderr."""
    for note in ablation.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)


def interrupted_text(ablation: Ablation, command: str) -> str:
    """A Ctrl-C's line: the runs kept (finished, or partly) and how to go on (`command`)."""
    from hmdbattn.ablate.results import read_run

    results = [(run, read_run(run.run_dir)) for run in ablation.runs]
    done = sum(result.status == "done" for _, result in results)
    partial = [
        f"{run.run_dir.name} ({result.epochs} epochs)"
        for run, result in results
        if result.status == "partial"
    ]
    kept = f", partly: {', '.join(partial)}" if partial else ""
    return (
        f"{done} of {len(results)} runs finished in {ablation.folder}{kept}; the same command "
        f"goes on from there: `{command}`"
    )
