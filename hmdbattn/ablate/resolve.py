"""A grid resolved against a config: one validated config and run folder per variant and seed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmdbattn.ablate.grid import Grid, Variant, problems_message
from hmdbattn.config import Config, flatten, load_config, parse_overrides
from hmdbattn.errors import ConfigError


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
    """Resolve every run of `grid` (see the package docstring for the precedence).

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
        raise ConfigError(problems_message(grid.path, problems))
    return Ablation(grid, folder, runs, notes=_shadowed(grid, cli))


def run_name(variant: Variant, seed: int | None) -> str:
    """A run's folder in the ablation folder."""
    return variant.slug if seed is None else f"{variant.slug}-seed{seed}"


def variant_config(
    path: Path | None, variant: Variant, cli: Mapping[str, Any], seed: int | None
) -> Config:
    """The config of one run: file < variant set < --set < the grid's seed."""
    seed_set = {} if seed is None else {"train.seed": seed}
    layers = {"variant set": variant.overrides, "--set": cli, "grid seeds": seed_set}
    return load_config(path, layers=layers)


def _shadowed(grid: Grid, cli: Mapping[str, Any]) -> list[str]:
    """Notes on --set keys that replace values the grid's variants set themselves."""
    notes = []
    for key, value in cli.items():
        values = {repr(v.overrides[key]) for v in grid.variants if key in v.overrides}
        if values:
            grid_values = ", ".join(sorted(values))
            notes.append(f"--set {key}={value!r} replaces the grid's {key} ({grid_values})")
    return notes


def profile(ablation: Ablation, variant: Variant) -> tuple[Any, float, tuple]:
    """(ParamCounts, GMACs per clip, token grid) of a variant, built on the meta device once."""
    from hmdbattn.models.classifier import clip_profile

    if variant.slug not in ablation.profiles:
        ablation.profiles[variant.slug] = clip_profile(ablation.runs_of(variant)[0].config)
    return ablation.profiles[variant.slug]


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
