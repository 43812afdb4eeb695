"""Run directories: their names, the resume / overwrite check and the files a run keeps.

One run directory holds::

    config.toml     the resolved config (what `--resume` reads back)
    metrics.jsonl   one JSON line per epoch, rewritten whole after each
    last.pt         the checkpoint of the last finished epoch (a resumed run starts from it)
    best.pt         the checkpoint of the best epoch (training decides what "best" is)
    result.json     the run's outcome, written when it ends

Every file is written atomically (a temporary name, then a rename), so a killed run leaves
complete files only. Any command that trains (`train`, `ablate`, a future `pretrain`) uses this
contract through `RunDir`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmdbattn.checkpoint import atomic_save, load_checkpoint
from hmdbattn.config import Config
from hmdbattn.engine.distributed import Runtime, broadcast
from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_write_text


@dataclass(frozen=True)
class RunDir:
    """One run's folder and the files in it."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    def check_resumable(self) -> None:
        """A UserError unless the folder holds a run to resume (its ``last.pt``)."""
        if not self.last.is_file():
            raise UserError(f"{self.path}: nothing to resume (no last.pt): is it a run directory?")

    def prepare(self, config: Config, resume: bool, overwrite: bool) -> None:
        """Check that a new run does not clobber an old one, and record the resolved config."""
        if resume:
            self.check_resumable()
        elif self.last.exists() and not overwrite:
            raise UserError(
                f"{self.path} already holds a run: resume it with --resume {self.path}, "
                "pass --overwrite to start again, or set train.name"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, config.to_toml())

    def prepare_on_main(
        self, config: Config, runtime: Runtime, resume: bool, overwrite: bool
    ) -> None:
        """`prepare` on rank 0; every rank raises its UserError when rank 0's checks fail."""
        error = None
        if runtime.is_main:
            try:
                self.prepare(config, resume, overwrite)
            except UserError as exc:
                error = str(exc)
        error = broadcast(error, runtime)
        if error:
            raise UserError(error)

    def load_last(self) -> dict[str, Any]:
        """The checkpoint to resume from (``last.pt``)."""
        return load_checkpoint(self.last)

    def save_checkpoint(self, ckpt: dict[str, Any], best: bool) -> None:
        """Write `ckpt` as ``last.pt``, and as ``best.pt`` too when `best`."""
        atomic_save(ckpt, self.last)
        if best:
            atomic_save(ckpt, self.best)

    def write_metrics(self, history: Iterable[dict[str, Any]]) -> None:
        """``metrics.jsonl``: one line per epoch of `history`."""
        atomic_write_text(self.metrics, "".join(json.dumps(row) + "\n" for row in history))

    def write_result(self, result: dict[str, Any]) -> None:
        """``result.json``: the run's outcome."""
        atomic_write_text(self.result, json.dumps(result, indent=2))


def run_name(config: Config, config_path: Path | None) -> str:
    """``train.name``, else the config file's stem, else ``run``."""
    return config.train.name or (config_path.stem if config_path else "run")


def run_dirs(
    config: Config, config_path: Path | None, splits: list[int] | None
) -> list[tuple[Config, Path]]:
    """The (config, run directory) of each run: one, or one per split with `splits`.

    The directory is ``<train.out_dir>/<name>``, or ``<name>-split<k>`` with `splits`.
    """
    name = run_name(config, config_path)
    if not splits:
        return [(config, config.train.out_dir / name)]
    return [
        (
            config.model_copy(update={"data": config.data.model_copy(update={"split": k})}),
            config.train.out_dir / f"{name}-split{k}",
        )
        for k in splits
    ]
