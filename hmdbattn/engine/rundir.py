"""Run directories: their names, starting / resuming one safely, and the files a run keeps.

One run directory holds::

    config.toml     the resolved config (what `--resume` reads back)
    metrics.jsonl   one JSON line per epoch, rewritten whole after each
    last.pt         the checkpoint of the last finished epoch (a resumed run starts from it)
    best.pt         the checkpoint of the best epoch (training decides what "best" is)
    result.json     the run's outcome, written when it ends

The contract, shared by every command that trains (`train`, `ablate`, `pretrain`) through
`RunDir`:

- Every file is written atomically and fsynced (file, then folder), so a killed run leaves
  complete files only; the temporary files of a killed writer are removed when a run starts.
- A new run never mixes with an old one: a folder holding a run is refused, or with
  ``--overwrite`` moved aside to ``<name>.old-<n>`` and deleted once the new run has saved its
  first checkpoint.
- A new run refused before it trains (a check of `build_trainer` fails, say) takes its start
  back: no folder left behind, an --overwrite's old run moved back in place.
- A resume restores ``last.pt`` before anything is written, refuses keys that would change the
  model or the shape of its input, and rebuilds ``best.pt`` / ``metrics.jsonl`` from ``last.pt``
  when a crash came between their writes (``last.pt`` is written first, so it is always the
  newest; ``best.pt`` equals it whenever its epoch is the best one).
- A write that fails (full disk, read-only folder) is one line naming the file, saying what to
  do and what a resume would start from.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hmdbattn.checkpoint import atomic_save, damaged, load_checkpoint
from hmdbattn.config import Config, TrainConfig, flatten
from hmdbattn.engine.distributed import Runtime, broadcast
from hmdbattn.errors import UserError
from hmdbattn.fileio import (
    atomic_write_text,
    atomic_writer,
    os_error_text,
    remove_stale_temps,
)
from hmdbattn.report import err_console

# The files that make a folder a run directory.
RUN_FILES = ("config.toml", "metrics.jsonl", "last.pt", "best.pt", "result.json")
# Every file a run writes atomically in its folder (whose killed writers leave temp files).
WRITTEN_FILES = (*RUN_FILES, "train_videos.txt", "videos.txt")
# Keys a resume may not change: they fix the shapes of the weights or of the model's input.
FIXED_PREFIXES = ("model.",)
FIXED_KEYS = ("data.resize", "data.crop_size", "data.num_frames")
# And for pretraining runs, the keys that shape the objective's decoder and targets.
PRETRAIN_FIXED_KEYS = (
    "pretrain.mode",
    "pretrain.target",
    "pretrain.patch_size",
    "pretrain.patch_frames",
    "pretrain.decoder_dim",
    "pretrain.decoder_heads",
)


class RunDir:
    """One run's folder and the files in it; `command` (train / pretrain) names it in messages."""

    def __init__(self, path: Path, command: str = "train") -> None:
        self.path = Path(path)
        self.command = command
        self.config = self.path / "config.toml"
        self.metrics = self.path / "metrics.jsonl"
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.result = self.path / "result.json"
        self.replaced: Path | None = None  # the old run moved aside by --overwrite
        self.saved_epoch = 0  # the epoch last.pt holds, once known
        self.started = False  # whether `start` began a new run here (`undo_start` undoes it)
        self._made: list[Path] = []  # the folders `start` created, deepest first
        self._had: set[str] = set()  # the `WRITTEN_FILES` the folder held before `start`

    # ------------------------------------------------------------------ starting a new run

    def check_resumable(self) -> None:
        """A UserError unless the folder holds a run to resume (its ``last.pt``)."""
        if not self.last.is_file():
            raise UserError(f"{self.path}: nothing to resume (no last.pt): is it a run directory?")

    def run_files(self) -> list[str]:
        """The run files the folder holds (`RUN_FILES` present), e.g. ``["best.pt"]``."""
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def start(self, config: Config, overwrite: bool) -> None:
        """Begin a new run: refuse to mix with an old one (or move it aside), record the config."""
        found = self.run_files()
        if found and not overwrite:
            hint = f"resume it with --resume {self.path}, " if "last.pt" in found else ""
            raise UserError(
                f"{self.path} already holds a run ({', '.join(found)}): {hint}pass --overwrite "
                "to replace it, or set train.name"
            )
        if found:
            self.replaced = self._move_aside()
        self.started = True
        self._made = _missing_folders(self.path)
        self._had = {name for name in WRITTEN_FILES if (self.path / name).exists()}
        try:
            with self.writing(self.path, "set train.out_dir to a writable folder"):
                self.path.mkdir(parents=True, exist_ok=True)
                remove_stale_temps(self.path, WRITTEN_FILES)
                atomic_write_text(self.config, config.to_toml(), sync=True)
        except UserError:
            self.undo_start()
            raise

    def start_on_main(self, config: Config, runtime: Runtime, overwrite: bool) -> None:
        """`start` on rank 0; every rank raises its UserError when rank 0's checks fail."""
        error = None
        if runtime.is_main:
            try:
                self.start(config, overwrite)
            except UserError as exc:
                error = str(exc)
        error = broadcast(error, runtime)
        if error:
            raise UserError(error)

    @contextlib.contextmanager
    def starting(self, runtime: Runtime) -> Iterator[None]:
        """The checks and setup between `start` and training: an error in them undoes `start`.

        A new run refused there (an init checkpoint that does not fit, features made with
        other settings...) so leaves the folder as it found it, and the same command, fixed,
        starts afresh instead of meeting a run of nothing but config.toml. A resumed run
        (nothing started) keeps all it has.
        """
        try:
            yield
        except Exception:
            if runtime.is_main:
                self.undo_start()
            raise

    def undo_start(self) -> None:
        """Take back what `start` did: the files the new run wrote, the folders it made, and
        an --overwrite's move (the old run goes back in place). A warning if it cannot."""
        if not self.started:
            return
        self.started = False
        try:
            for name in set(WRITTEN_FILES) - self._had:
                (self.path / name).unlink(missing_ok=True)
            for folder in self._made:  # deepest first; one holding anything else stays
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            if self.replaced is not None and not self.path.exists():
                self.replaced.rename(self.path)
                err_console.print(
                    f"--overwrite: the new run did not start: moved the old run back to "
                    f"{self.path}",
                    highlight=False,
                )
                self.replaced = None
        except OSError as exc:
            err_console.print(
                f"[yellow]warning:[/] could not take back the start of {self.path} "
                f"({os_error_text(exc)}): delete what it holds yourself"
                + (f" and move {self.replaced} back to it" if self.replaced else ""),
                highlight=False,
            )

    def _move_aside(self) -> Path:
        """Rename the old run to ``<name>.old-<n>`` (deleted once the new run has a checkpoint)."""
        number = 1
        while (aside := self.path.with_name(f"{self.path.name}.old-{number}")).exists():
            number += 1
        with self.writing(self.path, "move or delete the old run yourself"):
            self.path.rename(aside)
        err_console.print(
            f"--overwrite: moved the old run {self.path} to {aside}; it is deleted once the new "
            "run has saved its first checkpoint",
            highlight=False,
        )
        return aside

    def _drop_replaced(self) -> None:
        """Delete the old run moved aside, now that the new one has a checkpoint of its own."""
        if self.replaced is None:
            return
        try:
            shutil.rmtree(self.replaced)
        except OSError as exc:
            err_console.print(
                f"[yellow]warning:[/] could not delete the old run {self.replaced} "
                f"({exc.strerror}): delete it yourself",
                highlight=False,
            )
        self.replaced = None

    # ------------------------------------------------------------------ resuming

    def load_last(self) -> dict[str, Any]:
        """The checkpoint to resume from (``last.pt``)."""
        return load_checkpoint(self.last)

    def resume(self, config: Config, runtime: Runtime) -> dict[str, Any]:
        """``last.pt``, checked against `config`: nothing is written (see `after_restore`).

        Refuses changed keys that fix the model or its input, and a finished run with nothing
        left to train; the checkpoint's stop reason is re-judged with `config`'s limits (a
        larger ``train.max_steps`` continues a run that stopped at the old one). Every rank
        runs it and reaches the same verdict.
        """
        self.check_resumable()
        ckpt = self.load_last()
        self._check_kind(ckpt)
        with damaged(self.last):
            saved = flatten(ckpt["config"])
            state = ckpt["state"]
            epoch, step = int(state["epoch"]), int(state["step"])
            best_epoch = state.get("best_epoch")
        self._check_fixed(saved, config, pretrain=self.command == "pretrain")
        state["stop_reason"] = stop_reason(config.train, epoch, step, best_epoch)
        left = nothing_left(config.train, epoch, state["stop_reason"])
        if left and self.result.is_file():
            raise UserError(f"{self.path}: nothing to resume: the run {left}")
        if runtime.is_main:
            self._note_changes(saved, config)
        self.saved_epoch = epoch
        return ckpt

    def _check_kind(self, ckpt: dict[str, Any]) -> None:
        """A UserError unless `self.command` wrote `ckpt` (train and pretrain runs differ)."""
        kind = ckpt.get("kind", "train")
        if kind == self.command:
            return
        if self.command == "pretrain":
            raise UserError(
                f"{self.last}: not a pretraining checkpoint (made by `hmdbattn train`?)"
            )
        raise UserError(
            f"{self.last}: a pretraining checkpoint: resume it with "
            f"`hmdbattn pretrain --resume {self.path}`"
        )

    def _check_fixed(self, saved: dict[str, Any], config: Config, pretrain: bool) -> None:
        """A UserError naming the keys that differ from ``last.pt``'s and fix model or input."""
        changed = [
            f"{key} = {saved.get(key)!r} (now {value!r})"
            for key, value in changed_keys(saved, config).items()
            if fixed_on_resume(key, (saved.get(key), value), pretrain)
        ]
        if changed:
            raise UserError(
                f"{self.last} was trained with {'; '.join(changed)}: these keys fix the model or "
                "its input, so a resume keeps them; drop them from --set (or config.toml), or "
                "start a new run with another train.name"
            )

    def _note_changes(self, saved: dict[str, Any], config: Config) -> None:
        changed = changed_keys(saved, config)
        if changed:
            text = ", ".join(f"{k} = {v!r}" for k, v in changed.items())
            err_console.print(f"resuming {self.path} with {text}", highlight=False)

    def after_restore(self, config: Config, ckpt: dict[str, Any]) -> None:
        """On rank 0, once `ckpt` is restored: clean up, rebuild what a crash lost, save config.

        ``best.pt`` and ``metrics.jsonl`` are written after ``last.pt``: a run killed (or out
        of disk) between those writes left them behind ``last.pt``, which holds all they say.
        """
        with self.writing(self.path):
            remove_stale_temps(self.path, WRITTEN_FILES)
            rebuilt = self._rebuild(ckpt["state"])
            atomic_write_text(self.config, config.to_toml(), sync=True)
        if rebuilt:
            err_console.print(
                f"rebuilt {' and '.join(rebuilt)} in {self.path} from last.pt (epoch "
                f"{self.saved_epoch}): the run had stopped before writing them",
                highlight=False,
            )

    def _rebuild(self, state: dict[str, Any]) -> list[str]:
        """Bring ``best.pt`` and ``metrics.jsonl`` in line with ``last.pt``; the names rebuilt."""
        rebuilt = []
        best_is_last = state.get("best_epoch") == state["epoch"]
        if best_is_last and not (self.best.is_file() and filecmp.cmp(self.best, self.last, False)):
            with atomic_writer(self.best, sync=True) as f, self.last.open("rb") as source:
                shutil.copyfileobj(source, f)
            rebuilt.append(f"best.pt (epoch {state['epoch']})")
        if _read_lines(self.metrics) != state["history"]:
            self._write_metrics(state["history"])
            rebuilt.append("metrics.jsonl")
        return rebuilt

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writing(self, path: Path, advice: str | None = None) -> Iterator[None]:
        """Turn an OSError (full disk, read-only folder) while writing `path` into one line."""
        try:
            yield
        except OSError as exc:
            raise UserError(
                f"{path}: cannot write ({os_error_text(exc)}); {advice or self.kept()}"
            ) from None

    def save_checkpoint(self, ckpt: dict[str, Any], best: bool) -> None:
        """Write `ckpt` as ``last.pt``, then as ``best.pt`` too when `best`.

        ``last.pt`` first: it carries the history and the best epoch, so whatever a crash
        leaves, a resume can rebuild ``best.pt`` from it (see `after_restore`).
        """
        with self.writing(self.last):
            atomic_save(ckpt, self.last)
        self.saved_epoch = int(ckpt["state"]["epoch"])
        self._drop_replaced()
        if best:
            with self.writing(self.best):
                atomic_save(ckpt, self.best)

    def write_metrics(self, history: Iterable[dict[str, Any]]) -> None:
        """``metrics.jsonl``: one line per epoch of `history`."""
        with self.writing(self.metrics):
            self._write_metrics(history)

    def _write_metrics(self, history: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(row) + "\n" for row in history)
        atomic_write_text(self.metrics, text, sync=True)

    def write_result(self, result: dict[str, Any]) -> None:
        """``result.json``: the run's outcome."""
        with self.writing(self.result):
            atomic_write_text(self.result, json.dumps(result, indent=2), sync=True)

    def write_text(self, name: str, text: str) -> Path:
        """Another file of the run (e.g. the list of its videos); its path."""
        path = self.path / name
        with self.writing(path):
            atomic_write_text(path, text)
        return path

    # ------------------------------------------------------------------ telling the user

    def kept(self) -> str:
        """What the folder keeps for a resume, and the command that resumes it."""
        if not self.last.is_file():
            return f"no checkpoint was saved yet in {self.path}: start the run again (--overwrite)"
        epoch = self.saved_epoch or _checkpoint_epoch(self.last)
        return (
            f"{self.last} keeps epoch {epoch}: resume with "
            f"`hmdbattn {self.command} --resume {self.path}`"
        )

    def interrupted(self, restart: str) -> str:
        """A Ctrl-C's line: what is kept and the command that continues (`restart` if none)."""
        if self.last.is_file():
            return self.kept()
        old = sorted(self.path.parent.glob(f"{self.path.name}.old-*"))
        aside = f"; the old run is kept in {', '.join(map(str, old))}" if old else ""
        return f"no checkpoint was saved yet in {self.path}; start again with `{restart}`{aside}"


def _missing_folders(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def fixed_on_resume(key: str, values: tuple[Any, Any], pretrain: bool = False) -> bool:
    """Whether a resume must keep the dotted `key`, changing from ``values[0]`` to ``values[1]``.

    Fixed: the keys that shape the model or its input, and a move to or from cached features
    (which train the head alone, with other optimiser groups); cache <-> video may change.
    """
    if key == "data.source":
        return "features" in values
    fixed = FIXED_KEYS + (PRETRAIN_FIXED_KEYS if pretrain else ())
    return key.startswith(FIXED_PREFIXES) or key in fixed


def changed_keys(saved: dict[str, Any], config: Config) -> dict[str, Any]:
    """Dotted keys of `config` whose value differs from `saved` (a flattened JSON config)."""
    wanted = flatten(config.model_dump(mode="json"))
    keys = sorted(saved.keys() | wanted.keys())
    return {k: wanted.get(k) for k in keys if saved.get(k) != wanted.get(k)}


def stop_reason(train: TrainConfig, epoch: int, step: int, best_epoch: int | None) -> str:
    """Why a run at `epoch` / `step` stops early under `train`'s limits ('' when it goes on).

    `best_epoch` is None for runs without a validation score (pretraining): no patience.
    """
    if train.max_steps and step >= train.max_steps:
        return f"step limit {train.max_steps} reached"
    if best_epoch is not None and train.patience and epoch - best_epoch >= train.patience:
        return f"early stop: no better video accuracy for {train.patience} epochs"
    return ""


def nothing_left(train: TrainConfig, epoch: int, reason: str) -> str:
    """Why a run at `epoch` stopping for `reason` has nothing left to train, naming the key."""
    if reason.startswith("step limit"):
        return (
            f"stopped at train.max_steps = {train.max_steps}: to train on, raise it (0 = no "
            "limit) with --set train.max_steps=..."
        )
    if reason:
        return (
            f"stopped early by train.patience = {train.patience}: to train on, raise it (0 = "
            "off) with --set train.patience=..."
        )
    if epoch >= train.epochs:
        return (
            f"finished its train.epochs = {train.epochs}: to train on, raise it with "
            "--set train.epochs=..."
        )
    return ""


def _read_lines(path: Path) -> list[Any] | None:
    """The JSON lines of `path`, or None if it is missing or unreadable."""
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError):
        return None


def _checkpoint_epoch(path: Path) -> Any:
    """The epoch a checkpoint holds ('?' if it cannot be read)."""
    try:
        return load_checkpoint(path)["state"]["epoch"]
    except (UserError, KeyError, TypeError):
        return "?"


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
