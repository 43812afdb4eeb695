"""Ablations as submitit jobs: local jobs give the sequential run's table, a killed job is
resumed by a resubmission, --no-wait / --report, the one-line errors, and the SLURM
parameters as submitit writes them into the sbatch file (no SLURM needed)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest
from climain import cli
from test_ablate import TINY_GRID, rows_without_timing, set_args, write_grid

from hmdbattn.ablate import launch

# Epochs from the variants: 1 for the pool baseline, 2 for the perceiver (killed after one).
GRID = TINY_GRID.replace('"pool" }', '"pool", train.epochs = 1 }').replace(
    "self_layers = 1 }", "self_layers = 1, train.epochs = 2 }"
)
LOCAL = ("--launcher", "local", "--max-parallel", "2")
POOL, ATTN = "pool-baseline", "1-cross-1-self"

submitit = pytest.importorskip("submitit")


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_grid(tmp_path_factory.mktemp("grid"), GRID)


@pytest.fixture(scope="module")
def sequential(tiny_dataset: Path, grid: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ablation folder of the grid trained in-process, one run after the other."""
    from hmdbattn.cli import main

    out = tmp_path_factory.mktemp("sequential")
    argv = sys.argv
    sys.argv = ["hmdbattn", "ablate", "--grid", str(grid), *sets(tiny_dataset, out)]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    assert exc.value.code == 0
    return out / "ablate-tiny"


def sets(root: Path, out: Path) -> list[str]:
    return set_args(root, out, **{"train.epochs": None})


def job_worker(controller: int) -> int:
    """The process a local job trains in: the child of its submitit controller (Linux)."""
    children = Path(f"/proc/{controller}/task/{controller}/children")
    deadline = time.time() + 60
    while time.time() < deadline:
        pids = children.read_text().split() if children.exists() else []
        if pids:
            return int(pids[0])
        time.sleep(0.05)
    raise AssertionError(f"job {controller} started no worker")


def wait_until(condition, seconds: float = 180) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_local_jobs_give_the_sequential_table(
    capsys, tiny_dataset, grid, sequential, tmp_path
) -> None:
    code, out, err = cli(capsys, "ablate", "--grid", grid, *LOCAL, *sets(tiny_dataset, tmp_path))
    assert code == 0, err
    folder = tmp_path / "ablate-tiny"
    assert rows_without_timing(folder) == rows_without_timing(sequential)
    assert out.splitlines()[0].startswith("| Architecture | Train loss |") and "Status" not in out
    assert "jobs: 2/2 done, 0 running, 0 queued, 0 failed" in err
    manifest = json.loads((folder / ".submitit" / "jobs.json").read_text())
    assert set(manifest) == {POOL, ATTN}
    assert all(Path(e["stderr"]).is_file() for e in manifest.values())


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the job's process in /proc")
def test_a_killed_job_is_resumed_by_a_resubmission(
    capsys, tiny_dataset, grid, sequential, tmp_path
) -> None:
    args = ["ablate", "--grid", grid, *sets(tiny_dataset, tmp_path)]
    code, out, err = cli(capsys, *args, *LOCAL, "--no-wait")
    assert code == 0, err
    folder = tmp_path / "ablate-tiny"
    jobs = json.loads((folder / ".submitit" / "jobs.json").read_text())
    assert f"submitted {ATTN}: job {jobs[ATTN]['job_id']}" in out
    command = out.rstrip().rsplit("`", 2)[1]  # the --report command, launch options dropped
    assert command == "hmdbattn " + shlex.join([*map(str, args), "--report"])
    worker = job_worker(int(jobs[ATTN]["job_id"]))
    pool, attn = folder / POOL, folder / ATTN
    wait_until(lambda: (attn / "metrics.jsonl").exists())  # its first of two epochs is saved
    os.kill(worker, signal.SIGKILL)
    assert not (attn / "result.json").exists(), "the kill came too late to interrupt the run"
    wait_until(lambda: not launch.job_alive(jobs[POOL]) and not launch.job_alive(jobs[ATTN]))
    assert (pool / "result.json").exists()

    code, out, err = cli(capsys, *args, "--report", "--json")
    assert code == 0, err
    statuses = [row["status"] for row in json.loads(out)]
    assert statuses == ["done", "failed"]
    assert f"failed: {attn}: job {jobs[ATTN]['job_id']} ended without finishing the run" in err
    assert jobs[ATTN]["stderr"] in err

    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in pool.iterdir() if p.is_file()}
    code, out, err = cli(capsys, *args, *LOCAL)
    assert code == 0, err
    assert "jobs: 1/1 done, 0 running, 0 queued, 0 failed" in err  # the pool run: not again
    assert {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in pool.iterdir() if p.is_file()
    } == kept
    again = json.loads((folder / ".submitit" / "jobs.json").read_text())
    assert again[POOL] == jobs[POOL] and again[ATTN]["job_id"] != jobs[ATTN]["job_id"]
    assert "epoch 1:" not in Path(again[ATTN]["stderr"]).read_text()  # resumed at epoch 2
    assert rows_without_timing(folder) == rows_without_timing(sequential)
