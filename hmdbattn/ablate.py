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
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hmdbattn.config import Config, load_config, parse_overrides, read_toml
from hmdbattn.errors import ConfigError, UserError
from hmdbattn.fileio import atomic_write_text
from hmdbattn.report import err_console, markdown_table, millions, table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GRID_KEYS = ("title", "base", "seeds", "variant")
VARIANT_KEYS = ("label", "set")
# Keys a variant may not set: the ablation names the runs and places them.
RESERVED_KEYS = ("train.out_dir", "train.name")
METRICS = ("train_loss", "val_loss", "val_acc", "clips_per_s")
RESULT_FILES = ("results.md", "results.csv", "results.json")


# --------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class Variant:
    """One row of a grid: its label and the dotted keys it sets."""

    label: str
    overrides: dict[str, Any]

    @property
    def slug(self) -> str:
        return slugify(self.label)


@dataclass(frozen=True)
class Grid:
    """A parsed grid file."""

    path: Path
    title: str | None
    base: Path | None
    seeds: tuple[int, ...] | None
    variants: tuple[Variant, ...]

    @property
    def name(self) -> str:
        return self.path.stem


def slugify(label: str) -> str:
    """A label as a folder name: ``"Baseline - R(2+1)D"`` -> ``"baseline-r-2-1-d"``."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def grid_dirs() -> list[Path]:
    """Where shipped grids are looked for: beside the package (a checkout), then ./configs."""
    import hmdbattn

    dirs = [Path(hmdbattn.__file__).resolve().parents[1] / "configs" / "grids"]
    dirs.append(Path.cwd() / "configs" / "grids")
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def shipped_grids() -> dict[str, Path]:
    """Grid name -> file, over `grid_dirs` (the first folder wins a name)."""
    found: dict[str, Path] = {}
    for folder in grid_dirs():
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def find_grid(name_or_path: str | Path) -> Path:
    """A grid file from a shipped grid's name (``depth``) or a path to a TOML file."""
    text = str(name_or_path)
    path = Path(text)
    if path.is_file():
        return path
    shipped = shipped_grids()
    if text in shipped:
        return shipped[text]
    if path.suffix == ".toml" or "/" in text or "\\" in text:
        raise ConfigError(f"--grid {text}: no such grid file")
    names = ", ".join(shipped) or "none found"
    raise ConfigError(f"--grid {text}: unknown grid; shipped grids: {names}")


def read_grid(path: Path) -> Grid:
    """Parse a grid file; every problem found is reported together, naming file and variant."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read grid file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    problems = [
        f"unknown top-level key {k!r} (expected {_or(GRID_KEYS)})"
        for k in data
        if k not in GRID_KEYS
    ]
    title = _string(data, "title", problems)
    base = _base(path, _string(data, "base", problems), problems)
    seeds = _seeds(data.get("seeds"), problems)
    variants = _variants(data.get("variant"), problems)
    if seeds is not None:
        problems += [
            f"variant {v.label!r}: train.seed is set by the grid's seeds"
            for v in variants
            if "train.seed" in v.overrides
        ]
    if problems:
        raise ConfigError(_problems(path, problems))
    return Grid(path, title, base, seeds, tuple(variants))


def _or(names: Iterable[str]) -> str:
    return ", ".join(names)


def _problems(path: Path, problems: Sequence[str]) -> str:
    if len(problems) == 1:
        return f"{path}: {problems[0]}"
    return f"{path}: {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems)


def _string(data: Mapping[str, Any], key: str, problems: list[str]) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        problems.append(f"{key}: expected a string, got {value!r}")
        return None
    return value


def _base(grid_path: Path, base: str | None, problems: list[str]) -> Path | None:
    """The grid's base config: beside the grid file, else in the folder above it."""
    if base is None:
        return None
    for folder in (grid_path.parent, grid_path.parent.parent):
        if (folder / base).is_file():
            return folder / base
    problems.append(f"base: {base} not found beside the grid or in {grid_path.parent.parent}")
    return None


def _seeds(value: Any, problems: list[str]) -> tuple[int, ...] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and value and all(type(s) is int for s in value)
    if not ok or len(set(value)) != len(value):
        problems.append(f"seeds: expected a list of distinct integers, got {value!r}")
        return None
    return tuple(value)


def _variants(value: Any, problems: list[str]) -> list[Variant]:
    """The [[variant]] tables: labels unique (as folder names too), keys known."""
    if not isinstance(value, list) or not value:
        problems.append("no [[variant]] tables: a grid needs at least one")
        return []
    variants: list[Variant] = []
    slugs: dict[str, str] = {}
    for number, item in enumerate(value, start=1):
        variant = _variant(number, item, problems)
        if variant is None:
            continue
        if variant.slug in slugs:
            problems.append(
                f"variant {variant.label!r}: same folder name {variant.slug!r} as "
                f"{slugs[variant.slug]!r}; make the labels differ"
            )
        slugs.setdefault(variant.slug, variant.label)
        variants.append(variant)
    return variants


def _variant(number: int, item: Any, problems: list[str]) -> Variant | None:
    label = item.get("label") if isinstance(item, dict) else None
    if not isinstance(label, str) or not slugify(label):
        problems.append(f"variant #{number}: needs a label (a string with letters or digits)")
        return None
    where = f"variant {label!r}"
    problems += [
        f"{where}: unknown key {k!r} (expected {_or(VARIANT_KEYS)})"
        for k in item
        if k not in VARIANT_KEYS
    ]
    settings = item.get("set", {})
    if not isinstance(settings, dict):
        problems.append(f"{where}: set must be a table of section.key = value")
        return None
    overrides = flatten(settings)
    for key in overrides:
        problem = check_key(key)
        if problem is None and key in RESERVED_KEYS:
            problem = f"{key} is decided by the ablation (set it with --set)"
        if problem:
            problems.append(f"{where}: {problem}")
    return Variant(label, overrides)


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"cnn_blocks": 8}}`` and ``{"model.cnn_blocks": 8}`` -> dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def known_keys() -> dict[str, list[str]]:
    """Config section -> its keys."""
    keys = {}
    for section, info in Config.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            keys[section] = list(model.model_fields)
    return keys


def check_key(key: str) -> str | None:
    """Why `key` is not a config key (with the closest match), or None when it is."""
    sections = known_keys()
    section, _, name = key.partition(".")
    if section not in sections or not name:
        return f"unknown key {key!r}: expected section.key with a section of {_or(sections)}"
    if name not in sections[section]:
        close = difflib.get_close_matches(name, sections[section], n=1)
        hint = f"; did you mean {section}.{close[0]}?" if close else ""
        return f"unknown key {key!r}{hint}"
    return None


# --------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class Run:
    """One training run of an ablation: a variant, maybe a seed, its config and folder."""

    variant: Variant
    seed: int | None
    config: Config
    run_dir: Path


@dataclass
class Ablation:
    """A grid resolved against a config: every run, validated, and where results go."""

    grid: Grid
    folder: Path
    runs: list[Run]
    notes: list[str] = field(default_factory=list)
    profiles: dict[str, tuple[Any, float, tuple]] = field(default_factory=dict)

    def runs_of(self, variant: Variant) -> list[Run]:
        return [r for r in self.runs if r.variant.label == variant.label]


def load_ablation(
    grid: Grid,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> Ablation:
    """Resolve every run of `grid` (see the module docstring for the precedence).

    ``overrides`` are the command line's ``--set`` (strings or a dict of dotted keys). Every
    variant is validated before anything runs; all their problems are raised together.
    """
    path = config_path if config_path is not None else grid.base
    cli = flatten(parse_overrides(overrides))
    if grid.seeds is not None and "train.seed" in cli:
        raise ConfigError(
            f"--set train.seed: {grid.path} runs every variant with seeds {list(grid.seeds)}"
        )
    folder = load_config(path, cli).train.out_dir / f"ablate-{grid.name}"
    runs, problems = [], []
    for variant in grid.variants:
        try:
            for seed in grid.seeds or (None,):
                config = variant_config(path, variant, cli, seed)
                runs.append(Run(variant, seed, config, folder / run_name(variant, seed)))
        except ConfigError as exc:
            problems.append(f"variant {variant.label!r}: {exc}".replace("\n", "\n  "))
    if problems:
        raise ConfigError(_problems(grid.path, problems))
    return Ablation(grid, folder, runs, notes=_shadowed(grid, cli))


def run_name(variant: Variant, seed: int | None) -> str:
    """A run's folder in the ablation folder."""
    return variant.slug if seed is None else f"{variant.slug}-seed{seed}"


def variant_config(
    path: Path | None, variant: Variant, cli: Mapping[str, Any], seed: int | None
) -> Config:
    """The config of one run: file < variant set < --set < the grid's seed."""
    seed_set = {} if seed is None else {"train.seed": seed}
    try:
        return load_config(path, {**variant.overrides, **cli, **seed_set})
    except ConfigError as exc:
        sources = {"grid seeds": seed_set, "--set": cli, "variant set": variant.overrides}
        raise ConfigError(_retag(str(exc), sources)) from None


def _retag(message: str, sources: Mapping[str, Mapping[str, Any]]) -> str:
    """load_config calls every override `--set`; name the source(s) that set the key instead."""

    def origin(match: re.Match[str]) -> str:
        key = match[2]
        names = [
            name
            for name, keys in sources.items()
            if any(k == key or k.startswith(key + ".") for k in keys)
        ]
        # A key set by a higher source hides the lower ones, except for section-wide checks.
        names = names if "." not in key else names[:1]
        return f"{match[1]}[{' / '.join(names) or '--set'}]"

    return re.sub(r"(?m)^(\s*([\w.]+):.*)\[--set\]$", origin, message)


def _shadowed(grid: Grid, cli: Mapping[str, Any]) -> list[str]:
    """Notes on --set keys that replace values the grid's variants set themselves."""
    notes = []
    for key, value in cli.items():
        values = {repr(v.overrides[key]) for v in grid.variants if key in v.overrides}
        if values:
            grid_values = ", ".join(sorted(values))
            notes.append(f"--set {key}={value!r} replaces the grid's {key} ({grid_values})")
    return notes


# --------------------------------------------------------------------------- results on disk


@dataclass
class RunResult:
    """What a run's folder says: done, partial (interrupted), pending or failed."""

    status: str
    epochs: int = 0  # epochs recorded
    best_epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def read_run(run_dir: Path) -> RunResult:
    """A run's state and, once finished, its best epoch's metrics and mean clips/s."""
    history = _read_history(run_dir / "metrics.jsonl")
    if not (run_dir / "result.json").is_file():
        status = "partial" if (run_dir / "last.pt").is_file() else "pending"
        return RunResult(status, len(history) if status == "partial" else 0)
    result = _read_json(run_dir / "result.json")
    best = result.get("best") or {}
    rates = [row["clips_per_s"] for row in history if "clips_per_s" in row]
    values = {
        "train_loss": best.get("train_loss"),
        "val_loss": best.get("val_loss"),
        "val_acc": best.get("val_video_acc"),
        "clips_per_s": statistics.fmean(rates) if rates else best.get("clips_per_s"),
    }
    metrics = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    return RunResult(
        "done", int(result.get("epochs", 0)), int(result.get("best_epoch", 0)), metrics
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read ({exc}); delete the run folder to redo it") from None
    return data if isinstance(data, dict) else {}


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read ({exc}); delete the run folder to redo it") from None


def profile(ablation: Ablation, variant: Variant) -> tuple[Any, float, tuple]:
    """(ParamCounts, GMACs per clip, token grid) of a variant, built on the meta device once."""
    from hmdbattn.models.classifier import clip_profile

    if variant.slug not in ablation.profiles:
        ablation.profiles[variant.slug] = clip_profile(ablation.runs_of(variant)[0].config)
    return ablation.profiles[variant.slug]


def build_rows(ablation: Ablation, failures: Mapping[Path, str] | None = None) -> list[dict]:
    """One row per variant from what is on disk: parameters, GMACs, status and metrics."""
    failures = failures or {}
    rows = []
    for variant in ablation.grid.variants:
        runs = ablation.runs_of(variant)
        results = [read_run(r.run_dir) for r in runs]
        for run, result in zip(runs, results, strict=True):
            if run.run_dir in failures and result.status != "done":
                result.status = "failed"
        params, gmacs, _ = profile(ablation, variant)
        row: dict[str, Any] = {
            "label": variant.label,
            "slug": variant.slug,
            "status": _status(results),
            "params": {"cnn": params.cnn, "attention": params.attention},
            "gmacs": round(gmacs, 3),
        }
        row |= _aggregate(results)
        row["runs"] = [_run_row(run, result) for run, result in zip(runs, results, strict=True)]
        errors = [failures[r.run_dir] for r in runs if r.run_dir in failures]
        if errors:
            row["error"] = errors[0]
        rows.append(row)
    return rows


def _status(results: Sequence[RunResult]) -> str:
    statuses = {r.status for r in results}
    for status in ("failed", "pending", "done"):
        if statuses == {status} or (status == "failed" and status in statuses):
            return status
    return "partial"


def _aggregate(results: Sequence[RunResult]) -> dict[str, float]:
    """Means over the finished runs; with several runs, the sample std as ``<metric>_std``."""
    out: dict[str, float] = {}
    for name in METRICS:
        values = [r.metrics[name] for r in results if name in r.metrics]
        if values:
            out[name] = statistics.fmean(values)
        if len(results) > 1 and len(values) > 1:
            out[f"{name}_std"] = statistics.stdev(values)
    return out


def _run_row(run: Run, result: RunResult) -> dict[str, Any]:
    return {
        "seed": run.config.train.seed,
        "dir": run.run_dir.name,
        "status": result.status,
        "epochs": result.epochs,
        "max_epochs": run.config.train.epochs,
        "best_epoch": result.best_epoch,
        **result.metrics,
    }


# --------------------------------------------------------------------------- tables

COLUMNS = (
    "Architecture",
    "Train loss",
    "Val loss",
    "Val Acc",
    "CNN params",
    "Attention params",
    "GMACs/clip",
    "Train clips/s",
)
CELL_FORMATS = {"train_loss": ".4g", "val_loss": ".4g", "val_acc": ".4f", "clips_per_s": ".1f"}


def params_text(count: int) -> str:
    """``31.3M`` as the research prints it, and ``0`` for no parameters (the pool head)."""
    return "0" if count == 0 else millions(count)


def _metric(row: Mapping[str, Any], name: str) -> str:
    if name not in row:
        return "–"
    spec = CELL_FORMATS[name]
    text = format(row[name], spec)
    std = row.get(f"{name}_std")
    return text if std is None else f"{text} ± {format(std, spec)}"


def status_text(row: Mapping[str, Any]) -> str:
    """``done``, ``pending``, ``failed``, ``2/30 epochs`` (one run) or ``1/3 runs``."""
    if row["status"] != "partial":
        return str(row["status"])
    runs = row["runs"]
    if len(runs) == 1:
        return f"{runs[0]['epochs']}/{runs[0]['max_epochs']} epochs"
    return f"{sum(r['status'] == 'done' for r in runs)}/{len(runs)} runs"


def table_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Columns and text cells of the results table; a Status column while runs are missing."""
    columns = list(COLUMNS)
    cells = []
    for row in rows:
        cells.append(
            [
                row["label"],
                *(_metric(row, m) for m in ("train_loss", "val_loss", "val_acc")),
                params_text(row["params"]["cnn"]),
                params_text(row["params"]["attention"]),
                f"{row['gmacs']:.2f}",
                _metric(row, "clips_per_s"),
            ]
        )
    if any(row["status"] != "done" for row in rows):
        columns.append("Status")
        for row, line in zip(rows, cells, strict=True):
            line.append(status_text(row))
    return columns, cells


def results_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results as a GitHub markdown table (what the research's README shows)."""
    return markdown_table(*table_cells(rows))


def results_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results as CSV with raw numbers (empty cells where there are none)."""
    names = ["label", "status", "cnn_params", "attention_params", "gmacs"]
    names += [n for m in METRICS for n in (m, f"{m}_std")]
    out = io.StringIO()
    writer = csv.DictWriter(out, names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = dict(row, cnn_params=row["params"]["cnn"])
        flat["attention_params"] = row["params"]["attention"]
        writer.writerow(flat)
    return out.getvalue()


def write_results(ablation: Ablation, rows: Sequence[Mapping[str, Any]]) -> None:
    """results.md, results.csv and results.json in the ablation folder, each written atomically."""
    folder = ablation.folder
    document = {
        "grid": str(ablation.grid.path),
        "title": ablation.grid.title,
        "rows": list(rows),
    }
    atomic_write_text(folder / "results.md", results_markdown(rows) + "\n")
    atomic_write_text(folder / "results.csv", results_csv(rows))
    atomic_write_text(folder / "results.json", json.dumps(document, indent=2) + "\n")


def show_table(ablation: Ablation, rows: Sequence[Mapping[str, Any]]) -> None:
    """The results table on stderr (a rich table: progress while the ablation runs)."""
    columns, cells = table_cells(rows)
    title = f"{ablation.grid.title or 'ablation ' + ablation.grid.name} ({ablation.folder})"
    if err_console.is_terminal:
        err_console.print(table(title, columns, cells))
    else:  # a log file: markdown does not wrap at 80 columns
        err_console.print(
            f"{title}\n{markdown_table(columns, cells)}", markup=False, soft_wrap=True
        )


def dry_run_rows(ablation: Ablation) -> list[dict]:
    """Parameters, GMACs and token grid of every variant: no data, no weights, no training."""
    rows = []
    for variant in ablation.grid.variants:
        params, gmacs, grid = profile(ablation, variant)
        rows.append(
            {
                "label": variant.label,
                "slug": variant.slug,
                "set": variant.overrides,
                "params": params.to_dict(),
                "gmacs": round(gmacs, 3),
                "token_grid": list(grid),
            }
        )
    return rows


def dry_run_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The dry run's table: the research's parameter columns, GMACs and tokens per clip."""
    columns = ("Architecture", "CNN params", "Attention params", "GMACs/clip", "Tokens (T'xH'xW')")
    cells = [
        (
            row["label"],
            params_text(row["params"]["cnn"]),
            params_text(row["params"]["attention"]),
            f"{row['gmacs']:.2f}",
            "x".join(map(str, row["token_grid"])),
        )
        for row in rows
    ]
    return markdown_table(columns, cells)


# --------------------------------------------------------------------------- running


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
        changed = _changed_keys(run)
        if changed:
            err_console.print(
                f"[yellow]kept[/] {run.run_dir} (finished) though the settings changed: "
                f"{', '.join(changed)}; delete the folder to run it again",
                highlight=False,
            )
        return "skip", None
    if (run.run_dir / "last.pt").is_file():
        changed = _changed_keys(run)
        model = [k for k in changed if k.startswith("model.")]
        if model:
            return "resume", (
                f"{run.run_dir} was started with other model settings ({', '.join(model)}): "
                "delete the folder to start it again"
            )
        if changed:
            err_console.print(f"[yellow]resuming with changed {', '.join(changed)}[/]")
        return "resume", None
    return "start", None


def _changed_keys(run: Run) -> list[str]:
    """Dotted keys whose value differs from the run folder's config.toml."""
    saved_path = run.run_dir / "config.toml"
    if not saved_path.is_file():
        return []
    saved = flatten(read_toml(saved_path))
    wanted = flatten(tomllib.loads(run.config.to_toml()))
    return sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))


def run_ablation(
    ablation: Ablation,
    runtime: Any,
    only: Sequence[str] = (),
    show_progress: bool = True,
) -> Outcome:
    """Train every selected run not finished yet (resuming interrupted ones), in grid order.

    Rank 0 prints the table on stderr and rewrites the result files after each run. A run that
    fails with a UserError is reported and the others go on.
    """
    from hmdbattn.engine.distributed import broadcast

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
        if error is None:
            if main:
                _announce(run, action, number, len(selected))
            error = _train(run, runtime, action == "resume", show_progress)
        if error is not None:
            failures[run.run_dir] = error
            if main:
                err_console.print(f"[bold red]failed:[/] {run.run_dir}: {error}", highlight=False)
        if main:
            rows = build_rows(ablation, failures)
            write_results(ablation, rows)
            show_table(ablation, rows)
    return _finish(ablation, selected, failures, main)


def _announce(run: Run, action: str, number: int, total: int) -> None:
    verb = "resuming" if action == "resume" else "training"
    err_console.print(
        f"[bold]ablation {number}/{total}[/]: {verb} {run.variant.label!r}"
        + (f" seed {run.seed}" if run.seed is not None else "")
        + f" in {run.run_dir}",
        highlight=False,
    )


def _train(run: Run, runtime: Any, resume: bool, show_progress: bool) -> str | None:
    from hmdbattn.engine.train import train

    try:
        train(run.config, run.run_dir, runtime, resume=resume, show_progress=show_progress)
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


def report(ablation: Ablation) -> list[dict]:
    """The rows from disk (nothing trained); the result files are rewritten if the folder exists."""
    rows = build_rows(ablation)
    if ablation.folder.is_dir():
        write_results(ablation, rows)
    return rows


def print_notes(ablation: Ablation) -> None:
    """The notes of resolving (e.g. --set keys that replace the grid's values) on stderr."""
    for note in ablation.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
