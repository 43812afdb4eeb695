"""`hmdbattn eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption
from hmdbattn.report import print_eval, print_json


@app.command("eval")
def eval_(
    checkpoints: list[Path] = typer.Option(
        ..., "--checkpoint", help="A checkpoint (best.pt / last.pt). Repeat for one per split."
    ),
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    split: int | None = typer.Option(None, "--split", min=1, max=3, help="Dataset split."),
    subset: Literal["test", "unused", "train"] | None = typer.Option(
        None, "--subset", help="Which videos of the split to score (default eval.subset)."
    ),
    time_reversed: bool = typer.Option(
        False, "--time-reversed", help="Play every clip backwards (does the model use order?)."
    ),
    json_out: bool = JsonOption,
) -> None:
    """Evaluate checkpoints: clip and video accuracy, per class, confusion matrix.

    The config saved in the checkpoint is used, with --config and --set on top. With several
    checkpoints (one per split) the mean and standard deviation over them are reported too.
    """
    from hmdbattn.engine import distributed
    from hmdbattn.engine.evaluate import evaluate_checkpoint, write_eval_files
    from hmdbattn.engine.metrics import summarise_splits

    extra = list(overrides or [])
    extra += [f"data.split={split}"] if split else []
    extra += [f"eval.subset={subset}"] if subset else []
    with distributed.session() as runtime:
        results = [
            evaluate_checkpoint(path, config, extra, runtime, time_reversed, write=False)
            for path in checkpoints
        ]
    if not runtime.is_main:
        return
    summary = summarise_splits([r.metrics.scalars() for r in results]) if len(results) > 1 else {}
    if json_out:
        print_json(
            {
                "results": [r.to_dict() for r in results],
                "mean_std": {k: {"mean": m, "std": s} for k, (m, s) in summary.items()},
            }
        )
    else:
        print_eval(results, summary)
    # Written once printed: a folder that takes no files (read-only, full) loses no result.
    for result in results:
        write_eval_files(result, result.checkpoint.parent)
