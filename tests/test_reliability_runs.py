"""Run directories under user mistakes and faults (issue 12, items 1-9 and 11).

Each test asserts the exit code, that the one line names the file / key / value, that no
traceback is printed, and that the files that were there before are untouched (byte for byte)
or replaced by complete, valid ones. Faults are real where the machine allows: `kill -9` and
SIGINT of a training process, a full disk through a small tmpfs and a read-only folder through a
read-only mount when the tests run as root (else permissions, or an injected ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from climain import cli
from conftest import default_ctrl_c, set_args, tiny_overrides

from hmdbattn import load_config
from hmdbattn.checkpoint import load_checkpoint
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.rundir import RunDir
from hmdbattn.engine.train import train
from hmdbattn.errors import UserError
from hmdbattn.fileio import remove_stale_temps
from hmdbattn.report import quiet

CPU = Runtime(torch.device("cpu"))


# --------------------------------------------------------------------------- helpers


def keys(root: Path, out: Path, name: str, **extra: object) -> dict[str, object]:
    """Tiny settings of a run `name` under `out` (no tensorboard: nothing else writes there)."""
    return tiny_overrides(
        root, out, **{"train.name": name, "train.epochs": 1, "train.tensorboard": False, **extra}
    )


def sets(root: Path, out: Path, name: str, **extra: object) -> list[str]:
    return set_args(keys(root, out, name, **extra))


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes (to compare before / after)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def one_error_line(err: str, *words: str) -> str:
    """The single ``error:`` line of `err` (no traceback), checked to contain `words`."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


@pytest.fixture(scope="module")
def base_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch tiny run (``train.epochs = 1``) to copy from."""
    out = tmp_path_factory.mktemp("base")
    with quiet():
        train(load_config(None, keys(tiny_dataset, out, "base")), out / "base", CPU)
    return out / "base"


def copy_run(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest)
    return dest


def _mount(*args: str) -> bool:
    result = subprocess.run(["mount", *args], capture_output=True, check=False)
    return result.returncode == 0


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., bool]]:
    """``tmpfs(folder, size, read_only=False)``: mount a tmpfs there (root only); False if not."""
    mounted: list[Path] = []

    def mount(folder: Path, size: int, read_only: bool = False) -> bool:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or not _mount(
            "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)
        ):
            return False
        mounted.append(folder)
        return not read_only or _mount("-o", "remount,ro", str(folder))

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def make_read_only(folder: Path, tmpfs: Callable[..., bool], fill: Path | None = None) -> None:
    """Make `folder` (holding a copy of `fill` if given) read-only: a read-only mount as root,
    else permissions; skips where neither stops a write."""
    if tmpfs(folder, 64 << 20):
        if fill is not None:
            shutil.copy(fill, folder / fill.name)
        assert _mount("-o", "remount,ro", str(folder))
        return
    if os.geteuid() == 0:
        pytest.skip("running as root without mount: no way to make a folder read-only")
    folder.mkdir(parents=True, exist_ok=True)
    if fill is not None:
        shutil.copy(fill, folder / fill.name)
    folder.chmod(0o555)


# --------------------------------------------------------------------------- 1, 3: new runs


def test_a_new_run_refuses_a_folder_holding_an_old_one(capsys, tiny_dataset, tmp_path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    for name in ("best.pt", "result.json", "config.toml"):  # no last.pt: not resumable
        (folder / name).write_bytes(f"the old run's {name}".encode())
    before = files(folder)
    code, _, err = cli(capsys, "train", *sets(tiny_dataset, tmp_path, "old"))
    assert code == 1
    one_error_line(err, str(folder), "best.pt", "result.json", "config.toml", "--overwrite")
    assert files(folder) == before


@pytest.mark.slow
def test_overwrite_starts_from_an_empty_folder(capsys, tiny_dataset, tmp_path, base_run) -> None:
    folder = copy_run(base_run, tmp_path / "x")
    (folder / "eval.json").write_text("{}")  # what `eval` wrote beside the old checkpoint
    old = files(folder)
    args = ["train", "--overwrite", *sets(tiny_dataset, tmp_path, "x")]
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert f"moved the old run {folder} to {tmp_path / 'x.old-1'}" in err
    assert sorted(files(folder)) == [
        "best.pt",
        "config.toml",
        "last.pt",
        "metrics.jsonl",
        "result.json",
    ]
    assert not (tmp_path / "x.old-1").exists()  # deleted once the new run had a checkpoint
    assert load_checkpoint(folder / "last.pt")["config"]["train"]["name"] == "x"
    assert files(folder)["result.json"] != old["result.json"]


@pytest.mark.slow
def test_ctrl_c_before_the_first_checkpoint_keeps_the_old_run(
    capsys, monkeypatch, tiny_dataset, tmp_path, base_run
) -> None:
    import hmdbattn.engine.train as engine

    folder = copy_run(base_run, tmp_path / "x")
    old = files(folder)

    def interrupt(trainer):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "validate", interrupt)  # Ctrl-C at the end of epoch 1
    code, _, err = cli(capsys, "train", "--overwrite", *sets(tiny_dataset, tmp_path, "x"))
    assert code == 130 and "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("interrupted:"))
    assert f"no checkpoint was saved yet in {folder}" in line
    assert "--overwrite" in line and f"the old run is kept in {tmp_path / 'x.old-1'}" in line
    assert files(tmp_path / "x.old-1") == old  # the old run, byte for byte
    assert sorted(files(folder)) == ["config.toml"]


@pytest.mark.slow
def test_a_refused_new_run_leaves_no_folder_and_the_fixed_command_starts(
    capsys, tiny_dataset, tmp_path, base_run
) -> None:
    out = tmp_path / "runs"  # made by the run, and taken back with it
    init = {"model.init": str(base_run / "best.pt")}
    wider = sets(tiny_dataset, out, "n", **init, **{"model.latent_dim": 64})
    code, _, err = cli(capsys, "train", *wider)
    assert code == 1
    one_error_line(err, str(base_run / "best.pt"), "model.init_parts")
    assert not out.exists()  # no config.toml that the next command would meet
    code, _, err = cli(capsys, "train", *sets(tiny_dataset, out, "n", **init))
    assert code == 0, err
    assert "already holds" not in err and "moved the old run" not in err  # a fresh start
    assert json.loads((out / "n" / "result.json").read_text())["epochs"] == 1


def test_a_refused_overwrite_puts_the_old_run_back(
    capsys, tiny_dataset, tmp_path, base_run
) -> None:
    folder = copy_run(base_run, tmp_path / "x")
    (folder / "eval.json").write_text("{}")
    before = files(folder)
    bad = {"model.init": str(base_run / "best.pt"), "model.latent_dim": 64}
    code, _, err = cli(capsys, "train", "--overwrite", *sets(tiny_dataset, tmp_path, "x", **bad))
    assert code == 1
    one_error_line(err, str(base_run / "best.pt"), "model.init_parts")
    assert f"moved the old run back to {folder}" in err
    assert files(folder) == before and not (tmp_path / "x.old-1").exists()


# --------------------------------------------------------------------------- 2, 5: resume


@pytest.mark.slow
def test_resume_refuses_a_changed_model_key_and_keeps_config(capsys, tmp_path, base_run) -> None:
    folder = copy_run(base_run, tmp_path / "r")
    before = files(folder)
    args = ["train", "--resume", folder, "--set", "model.latent_dim=64"]
    code, _, err = cli(capsys, *args, "--set", "train.epochs=2")
    assert code == 1
    one_error_line(err, str(folder / "last.pt"), "model.latent_dim = 32 (now 64)")
    assert files(folder) == before  # config.toml too: a plain --resume still works
    code, _, err = cli(capsys, "train", "--resume", folder, "--set", "train.epochs=2", "--json")
    assert code == 0, err
    assert "resuming" in err and "train.epochs = 2" in err
    assert load_config(folder / "config.toml").train.epochs == 2
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_finished_run_is_not_resumed_for_nothing(capsys, tmp_path, base_run) -> None:
    folder = copy_run(base_run, tmp_path / "done")
    before = files(folder)
    code, _, err = cli(capsys, "train", "--resume", folder)
    assert code == 1
    one_error_line(err, str(folder), "train.epochs = 1", "--set train.epochs=")
    assert files(folder) == before


@pytest.mark.slow
def test_a_larger_step_limit_continues_a_stopped_run(capsys, tiny_dataset, tmp_path) -> None:
    overrides = keys(tiny_dataset, tmp_path, "steps", **{"train.epochs": 3, "train.max_steps": 2})
    with quiet():
        state = train(load_config(None, overrides), tmp_path / "steps", CPU)
    assert state.step == 2 and "step limit" in state.stop_reason
    folder = tmp_path / "steps"
    before = files(folder)
    code, _, err = cli(capsys, "train", "--resume", folder, "--json")  # the same limit
    assert code == 1 and files(folder) == before
    one_error_line(err, "train.max_steps = 2", "--set train.max_steps=")
    code, out, err = cli(
        capsys, "train", "--resume", folder, "--set", "train.max_steps=4", "--json"
    )
    assert code == 0, err
    summary = json.loads(out)[str(folder)]
    assert summary["steps"] == 4 and summary["epochs"] == 2
    assert summary["stop_reason"] == "step limit 4 reached"


def _forged_last(folder: Path, epochs: int, patience: int, **state: object) -> None:
    """A ``last.pt`` whose state is `state` (a resume check reads nothing else), and result.json."""
    config = load_config(None, {"train.epochs": epochs, "train.patience": patience})
    full = {"epoch": 0, "step": 0, "history": [], "best_epoch": -1, "stop_reason": "", **state}
    ckpt = {
        "format": "hmdbattn-checkpoint",
        "version": 1,
        "config": config.model_dump(mode="json"),
        "state": full,
    }
    folder.mkdir()
    torch.save(ckpt, folder / "last.pt")
    (folder / "result.json").write_text("{}")


def test_a_stop_by_patience_is_kept_unless_patience_changes(tmp_path) -> None:
    folder = tmp_path / "p"
    _forged_last(folder, epochs=10, patience=2, epoch=5, step=50, best_epoch=3)
    run = RunDir(folder)
    more_steps = load_config(None, {"train.epochs": 10, "train.patience": 2, "train.max_steps": 99})
    with pytest.raises(UserError, match=r"train\.patience = 2: to train on, raise it"):
        run.resume(more_steps, CPU)
    patient = load_config(None, {"train.epochs": 10, "train.patience": 3})
    assert run.resume(patient, CPU)["state"]["stop_reason"] == ""  # it goes on
    off = load_config(None, {"train.epochs": 10, "train.patience": 0})
    assert run.resume(off, CPU)["state"]["stop_reason"] == ""


def test_a_pretraining_resume_keeps_the_keys_that_shape_its_decoder(tmp_path) -> None:
    folder = tmp_path / "pre"
    _forged_last(folder, epochs=3, patience=0, epoch=1, step=4)
    ckpt = torch.load(folder / "last.pt", weights_only=True)
    ckpt["kind"] = "pretrain"
    torch.save(ckpt, folder / "last.pt")
    run = RunDir(folder, "pretrain")
    wider = load_config(None, {"train.epochs": 3, "pretrain.decoder_dim": 64})
    with pytest.raises(UserError, match=r"pretrain\.decoder_dim = 128 \(now 64\)"):
        run.resume(wider, CPU)
    no_pictures = load_config(None, {"train.epochs": 3, "pretrain.pictures": 0})
    assert run.resume(no_pictures, CPU)["state"]["epoch"] == 1  # drawing is no part of it
    with pytest.raises(UserError, match="a pretraining checkpoint: resume it with `hmdbattn pre"):
        RunDir(folder, "train").resume(no_pictures, CPU)


# --------------------------------------------------------------------------- 4, 8: disk full


@pytest.mark.slow
def test_disk_full_while_saving_best_is_rebuilt_on_resume(
    capsys, monkeypatch, tiny_dataset, tmp_path, base_run, tmpfs
) -> None:
    out = tmp_path / "disk"
    size = (base_run / "last.pt").stat().st_size
    real = tmpfs(out, (size * 3 // 2) // 4096 * 4096)  # room for last.pt, not for best.pt too
    if not real:  # no tmpfs: the same fault, injected
        import hmdbattn.engine.rundir as rundir

        save = rundir.atomic_save

        def full(obj, path):
            if path.name == "best.pt":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            save(obj, path)

        monkeypatch.setattr(rundir, "atomic_save", full)
    code, _, err = cli(capsys, "train", *sets(tiny_dataset, out, "full"))
    folder = out / "full"
    assert code == 1
    one_error_line(err, str(folder / "best.pt"), "No space left on device", "--resume")
    assert sorted(files(folder)) == ["config.toml", "last.pt"]  # and no half-written temp
    assert temps(folder) == []
    if real:
        assert _mount("-o", f"remount,size={64 << 20}", str(out))
    else:
        monkeypatch.undo()
    code, out_text, err = cli(capsys, "train", "--resume", folder, "--json")
    assert code == 0, err
    assert "rebuilt best.pt (epoch 1) and metrics.jsonl" in err
    assert (folder / "best.pt").read_bytes() == (folder / "last.pt").read_bytes()
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads(out_text)[str(folder)]["best_epoch"] == 1


def test_a_read_only_out_dir_is_one_line(capsys, tiny_dataset, tmp_path, tmpfs) -> None:
    out = tmp_path / "ro"
    make_read_only(out, tmpfs)
    code, _, err = cli(capsys, "train", *sets(tiny_dataset, out, "r"))
    assert code == 1
    line = one_error_line(err, str(out / "r"), "train.out_dir")
    assert "Read-only file system" in line or "Permission denied" in line


# --------------------------------------------------------------------------- 6: damaged files


def _damage(src: Path, dest: Path, edit: Callable[[dict], None]) -> Path:
    ckpt = load_checkpoint(src)
    edit(ckpt)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dest)
    return dest


def test_eval_of_a_checkpoint_missing_keys_or_of_another_model(capsys, tmp_path, base_run) -> None:
    no_classes = _damage(
        base_run / "best.pt", tmp_path / "a" / "best.pt", lambda c: c.pop("classes")
    )
    code, _, err = cli(capsys, "eval", "--checkpoint", no_classes)
    assert code == 1
    one_error_line(err, str(no_classes), "missing key 'classes'")

    def other_model(ckpt: dict) -> None:
        ckpt["config"]["model"]["latent_dim"] = 64

    other = _damage(base_run / "best.pt", tmp_path / "b" / "best.pt", other_model)
    code, _, err = cli(capsys, "eval", "--checkpoint", other)
    assert code == 1
    one_error_line(err, str(other), "weights do not fit this model (shape head.", "model.*")


def test_resume_of_a_checkpoint_missing_keys(capsys, tmp_path, base_run) -> None:
    folder = copy_run(base_run, tmp_path / "d")
    _damage(base_run / "last.pt", folder / "last.pt", lambda c: c.pop("optimizer"))
    before = files(folder)
    code, _, err = cli(capsys, "train", "--resume", folder, "--set", "train.epochs=2")
    assert code == 1
    one_error_line(err, str(folder / "last.pt"), "missing key 'optimizer'")
    assert files(folder) == before


GRID = """
[[variant]]
label = "Damaged"
set = { model.head = "pool" }

[[variant]]
label = "Fine"
set = { model.head = "perceiver" }
"""


@pytest.mark.slow
def test_ablate_marks_a_damaged_run_failed_and_goes_on(capsys, tiny_dataset, tmp_path) -> None:
    from hmdbattn import ablate

    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    overrides = keys(tiny_dataset, tmp_path, "unused")
    overrides.pop("train.name")
    damaged = ablate.load_ablation(ablate.read_grid(grid), None, overrides).runs[0]
    _forged_run(damaged.config, damaged.run_dir)
    before = files(damaged.run_dir)
    code, _, err = cli(capsys, "ablate", "--grid", grid, *set_args(overrides))
    assert code == 1
    line = one_error_line(err, "1 run(s) failed; Damaged:", "damaged checkpoint", "missing key")
    assert str(damaged.run_dir / "last.pt") in line
    assert (tmp_path / "ablate-g" / "fine" / "result.json").is_file()  # the grid went on
    assert files(damaged.run_dir) == before


def _forged_run(config, folder: Path) -> None:
    """A run folder whose last.pt (in our format, with the right config) lacks its weights."""
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(config.to_toml())
    state = {"epoch": 0, "step": 0, "history": [], "best_epoch": -1, "stop_reason": ""}
    ckpt = {"format": "hmdbattn-checkpoint", "version": 1, "state": state}
    ckpt["config"] = config.model_dump(mode="json")
    torch.save(ckpt, folder / "last.pt")


# --------------------------------------------------------------------------- 7: kill -9, fsync

# Runs `hmdbattn train` with a checkpoint write that stalls halfway (a slow disk) at epoch 1's
# best.pt, after its last.pt, so that a kill -9 lands inside it; or with a training step that
# stalls ("step:<n>": the n-th step of the run), so that a signal lands inside an epoch.
STALL = """
import sys, time, torch
import hmdbattn.engine.rundir as rundir, hmdbattn.engine.train as engine
from hmdbattn.fileio import atomic_writer
calls, save, step = [], rundir.atomic_save, engine.train_step
mode, marker = sys.argv[1:3]
def slow_save(obj, path):
    calls.append(path.name)
    if mode == "save" and path.name == "best.pt":
        with atomic_writer(path, sync=True) as f:
            torch.save(obj, f)
            f.flush()
            open(marker, "w").close()
            time.sleep(600)
    save(obj, path)
def slow_step(*args, **kwargs):
    calls.append("step")
    if mode.startswith("step:") and calls.count("step") == int(mode[5:]):
        open(marker, "w").close()
        time.sleep(600)
    return step(*args, **kwargs)
rundir.atomic_save, engine.train_step = slow_save, slow_step
from hmdbattn.cli import main
sys.argv = ["hmdbattn", *sys.argv[3:]]
main()
"""


def _stalled_train(mode: str, marker: Path, args: list[str], stderr: int = subprocess.DEVNULL):
    command = [sys.executable, "-c", STALL, mode, str(marker), "train", *args]
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        preexec_fn=default_ctrl_c,
    )


def _wait_for(found: Callable[[], bool], proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while not found() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert found(), "the run never got there"


@pytest.mark.slow
def test_kill_9_while_writing_best_is_repaired_on_resume(capsys, tiny_dataset, tmp_path) -> None:
    folder, marker = tmp_path / "k", tmp_path / "in-save"
    proc = _stalled_train("save", marker, sets(tiny_dataset, tmp_path, "k"))
    _wait_for(marker.exists, proc)  # last.pt written, best.pt half written
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [n.startswith(".best.pt.") for n in temps(folder)] == [True]
    assert sorted(n for n in files(folder) if not n.startswith(".")) == ["config.toml", "last.pt"]
    last = (folder / "last.pt").read_bytes()
    code, _, err = cli(capsys, "train", "--resume", folder)
    assert code == 0, err
    assert "rebuilt best.pt (epoch 1) and metrics.jsonl" in err
    assert temps(folder) == []  # the killed writer's temp file is gone
    assert (folder / "best.pt").read_bytes() == (folder / "last.pt").read_bytes() == last
    assert json.loads((folder / "result.json").read_text())["best_epoch"] == 1


@pytest.mark.slow
def test_kill_9_in_the_middle_of_the_first_epoch(capsys, tiny_dataset, tmp_path) -> None:
    folder, marker = tmp_path / "m", tmp_path / "in-epoch"
    args = sets(tiny_dataset, tmp_path, "m")
    proc = _stalled_train("step:3", marker, args)
    _wait_for(marker.exists, proc)  # two optimiser steps done, the third under way
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sorted(files(folder)) == ["config.toml"]
    code, _, err = cli(capsys, "train", "--resume", folder)
    assert code == 1
    one_error_line(err, str(folder), "nothing to resume")
    code, _, err = cli(capsys, "train", *args)
    assert code == 1
    one_error_line(err, str(folder), "(config.toml)", "--overwrite")


def test_stale_temps_are_those_of_dead_writers_only(tmp_path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    try:
        names = {
            f".last.pt.{dead_pid}.abc.tmp": False,  # its writer was killed: removed
            ".last.pt.old1234.tmp": False,  # an older version's name, no pid: removed
            f".best.pt.{sleeper.pid}.abc.tmp": True,  # being written right now: kept
            f".videos.mp4.{dead_pid}.abc.tmp": True,  # not a run file: kept
        }
        for name in names:
            (tmp_path / name).write_bytes(b"partial")
        remove_stale_temps(tmp_path, ["last.pt", "best.pt"])
        assert {n: (tmp_path / n).exists() for n in names} == names
    finally:
        sleeper.kill()
        sleeper.wait()


def test_checkpoints_are_fsynced_file_then_folder(monkeypatch, tmp_path) -> None:
    import stat

    import hmdbattn.fileio as fileio

    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def record_replace(src, dst) -> None:
        events.append(f"rename to {Path(dst).name}")
        replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", record_fsync)
    monkeypatch.setattr(fileio.os, "replace", record_replace)
    run = RunDir(tmp_path / "f")
    ckpt = {"format": "hmdbattn-checkpoint", "version": 1, "state": {"epoch": 1}}
    run.save_checkpoint(ckpt, best=False)
    run.write_result({"epochs": 1})
    assert events == [
        "fsync file",
        "rename to last.pt",
        "fsync folder",
        "fsync file",
        "rename to result.json",
        "fsync folder",
    ]


# --------------------------------------------------------------------------- 9: eval


def test_eval_prints_its_results_before_a_failed_write(capsys, tmp_path, base_run, tmpfs) -> None:
    folder = tmp_path / "ro"
    make_read_only(folder, tmpfs, fill=base_run / "best.pt")
    before = files(folder)
    code, out, err = cli(capsys, "eval", "--checkpoint", folder / "best.pt")
    assert code == 1
    line = one_error_line(err, str(folder / "eval.json"), "the results printed above")
    assert "Read-only file system" in line or "Permission denied" in line
    assert "video_vote_top1" in out and "per class" in out  # scored and printed
    assert files(folder) == before


# --------------------------------------------------------------------------- 11: Ctrl-C


@pytest.mark.slow
def test_ctrl_c_of_train_names_what_was_kept_and_the_command(
    capsys, tiny_dataset, tmp_path
) -> None:
    folder, marker = tmp_path / "c", tmp_path / "in-epoch-2"
    args = sets(tiny_dataset, tmp_path, "c", **{"train.epochs": 2})
    proc = _stalled_train("step:6", marker, args, stderr=subprocess.PIPE)  # 4 steps an epoch
    _wait_for(marker.exists, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    line = next(line for line in err.splitlines() if line.startswith("interrupted:"))
    assert f"{folder / 'last.pt'} keeps epoch 1" in line
    assert f"`hmdbattn train --resume {folder}`" in line  # it works: see the kill -9 tests
    assert load_checkpoint(folder / "last.pt")["state"]["epoch"] == 1


@pytest.mark.slow
def test_ctrl_c_of_pretrain_and_ablate(capsys, monkeypatch, tiny_dataset, tmp_path) -> None:
    import hmdbattn.engine.pretrain as pretraining
    import hmdbattn.engine.train as engine

    end_epoch = pretraining.end_epoch

    def then_interrupt(run, row):
        end_epoch(run, row)
        raise KeyboardInterrupt

    monkeypatch.setattr(pretraining, "end_epoch", then_interrupt)
    pre = sets(tiny_dataset, tmp_path, "pre", **{"train.epochs": 2, "pretrain.pictures": 0})
    code, _, err = cli(capsys, "pretrain", *pre)
    assert code == 130 and "Traceback" not in err
    folder = tmp_path / "pre"
    assert (
        f"{folder / 'last.pt'} keeps epoch 1: resume with `hmdbattn pretrain --resume {folder}`"
        in err
    )

    def interrupt(trainer):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "validate", interrupt)
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    overrides = keys(tiny_dataset, tmp_path, "unused")
    overrides.pop("train.name")
    args = ["ablate", "--grid", str(grid), *set_args(overrides)]
    code, _, err = cli(capsys, *args)
    assert code == 130 and "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("interrupted:"))
    assert f"0 of 2 runs finished in {tmp_path / 'ablate-g'}" in line
    assert f"`hmdbattn {args[0]} --grid {grid}" in line
