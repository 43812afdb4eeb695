"""Ablations: a grid of variants of one config, each trained in its own run, then one table.

A grid is a TOML file (the shipped ones are in ``configs/grids``)::

    title = "Ablation study on attention depth"   # optional: the table's title
    base = "../hmdb51.toml"                       # optional: config used when --config is absent
    seeds = [0, 1, 2]                             # optional: one run per seed, mean ± std

    [[variant]]
    label = "8 CNN blocks + 1 Cross Attention + 6 Self Attention"
    set = { model.cnn_blocks = 8, model.cross_layers = 1, model.self_layers = 6 }

``base`` is looked up beside the grid file, then in the folder above it. A variant's config is,
lowest priority first: the config file (``--config``, else ``base``, else the defaults), the
environment (``HMDBATTN_*``), the variant's ``set``, the command line's ``--set`` (so one
``--set`` shrinks every variant), and the grid's seed.

Runs live in ``<train.out_dir>/ablate-<grid name>/<slug of label>[-seed<k>]``; a rerun skips the
runs holding ``result.json`` and resumes those holding only ``last.pt``. The table's metrics are
those of each run's best epoch (best validation video accuracy, the checkpoint ``best.pt``
keeps); clips/s is the mean over its epochs. ``results.md``, ``results.csv`` and
``results.json`` in the ablation folder are rewritten after every run.

The package, one job per module: ``grid`` reads and checks grid files, ``resolve`` turns each
variant into a validated config and run folder, ``results`` reads what is on disk (done,
partial, pending and failed runs), ``tables`` writes the markdown, CSV and JSON tables, and
``run`` trains the runs an ablation still needs; ``launch`` runs them as submitit jobs instead
(SLURM, or parallel local processes: ``--launcher``).
"""

from hmdbattn.ablate.grid import (
    Grid,
    Variant,
    find_grid,
    grid_dirs,
    read_grid,
    shipped_grids,
    slugify,
)
from hmdbattn.ablate.resolve import Ablation, Run, dry_run_rows, load_ablation, profile
from hmdbattn.ablate.results import RunResult, aggregate, build_rows, read_run, report
from hmdbattn.ablate.run import (
    Outcome,
    decide,
    interrupted_text,
    print_notes,
    run_ablation,
    select,
)
from hmdbattn.ablate.tables import (
    dry_run_markdown,
    params_text,
    results_csv,
    results_markdown,
    table_cells,
    write_results,
)

__all__ = [
    "Ablation",
    "Grid",
    "Outcome",
    "Run",
    "RunResult",
    "Variant",
    "aggregate",
    "build_rows",
    "decide",
    "dry_run_markdown",
    "dry_run_rows",
    "find_grid",
    "grid_dirs",
    "interrupted_text",
    "load_ablation",
    "params_text",
    "print_notes",
    "profile",
    "read_grid",
    "read_run",
    "report",
    "results_csv",
    "results_markdown",
    "run_ablation",
    "select",
    "shipped_grids",
    "slugify",
    "table_cells",
    "write_results",
]
