"""Grid files: finding them, reading them and checking every variant before anything runs."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmdbattn.config import check_key, flatten, read_toml
from hmdbattn.errors import ConfigError

GRID_KEYS = ("title", "base", "seeds", "variant")
VARIANT_KEYS = ("label", "set", "needs")
# Keys a variant may not set: the ablation names the runs and places them.
RESERVED_KEYS = ("train.out_dir", "train.name")


@dataclass(frozen=True)
class Variant:
    """One row of a grid: its label and the dotted keys it sets."""

    label: str
    overrides: dict[str, Any]
    needs: str | None = None  # the command that makes what the variant starts from

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
    data = read_toml(path, "grid file")
    problems = [
        f"unknown top-level key {k!r} (expected {', '.join(GRID_KEYS)})"
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
        raise ConfigError(problems_message(path, problems))
    return Grid(path, title, base, seeds, tuple(variants))


def problems_message(path: Path, problems: Sequence[str]) -> str:
    """One problem on the file's line, or a count and one indented line each."""
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
        f"{where}: unknown key {k!r} (expected {', '.join(VARIANT_KEYS)})"
        for k in item
        if k not in VARIANT_KEYS
    ]
    settings = item.get("set", {})
    if not isinstance(settings, dict):
        problems.append(f"{where}: set must be a table of section.key = value")
        return None
    needs = item.get("needs")
    if needs is not None and not isinstance(needs, str):
        problems.append(f"{where}: needs must be a string (the command that makes model.init)")
        needs = None
    overrides = flatten(settings)
    for key in overrides:
        problem = check_key(key)
        if problem is None and key in RESERVED_KEYS:
            problem = f"{key} is decided by the ablation (set it with --set)"
        if problem:
            problems.append(f"{where}: {problem}")
    return Variant(label, overrides, needs)
