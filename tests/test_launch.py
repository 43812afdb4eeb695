"""Ablations as submitit jobs: local jobs give the sequential run's table, a killed job is
resumed by a resubmission, --no-wait / --report, the one-line errors, and the SLURM
parameters as submitit writes them into the sbatch file (no SLURM needed)."""

from __future__ import annotations

import builtins
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


def files_of(folder: Path) -> dict[Path, tuple[int, bytes]]:
    """Each file of a run folder: its mtime and bytes (unchanged: not trained again)."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir() if p.is_file()}


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
    # Both runs finished and their results are recorded: their jobs' pickles and logs are gone.
    assert json.loads((folder / ".submitit" / "jobs.json").read_text()) == {}
    assert list((folder / ".submitit" / "jobs").iterdir()) == []


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
    epoch_1 = (attn / "metrics.jsonl").read_text().splitlines()[0]  # with its timing
    wait_until(lambda: not launch.job_alive(jobs[POOL]) and not launch.job_alive(jobs[ATTN]))
    assert (pool / "result.json").exists()

    code, out, err = cli(capsys, *args, "--report", "--json")
    assert code == 0, err
    statuses = [row["status"] for row in json.loads(out)]
    assert statuses == ["done", "failed"]
    assert f"failed: {attn}: job {jobs[ATTN]['job_id']} ended without finishing the run" in err
    assert jobs[ATTN]["stderr"] in err and Path(jobs[ATTN]["stderr"]).is_file()  # kept
    assert not Path(jobs[POOL]["stderr"]).exists()  # a finished run's job: its files deleted
    assert set(json.loads((folder / ".submitit" / "jobs.json").read_text())) == {ATTN}

    kept = files_of(pool)
    code, out, err = cli(capsys, *args, *LOCAL)
    assert code == 0, err
    assert "jobs: 1/1 done, 0 running, 0 queued, 0 failed" in err  # the pool run: not again
    assert {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in pool.iterdir() if p.is_file()
    } == kept
    assert (attn / "metrics.jsonl").read_text().splitlines()[0] == epoch_1  # resumed at 2
    assert rows_without_timing(folder) == rows_without_timing(sequential)
    # The resumed job finished its run: its files are gone; the killed job's log is kept.
    assert json.loads((folder / ".submitit" / "jobs.json").read_text()) == {}
    left = sorted(p.name for p in (folder / ".submitit" / "jobs").iterdir())
    killed = jobs[ATTN]["job_id"]
    assert left == sorted(f"{killed}_{n}" for n in ("0_log.err", "0_log.out", "submitted.pkl"))


# --------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--launcher", "slurm", "--slurm-arg", "account"],
            "--slurm-arg 'account': expected key=value (an sbatch option without its dashes), "
            "e.g. --slurm-arg account=myproject",
        ),
        (
            ["--launcher", "slurm", "--slurm-arg", "partition=gpu"],
            "--slurm-arg 'partition=gpu': partition is set by the launcher: use --slurm-partition",
        ),
        (["--max-parallel", "2"], "--max-parallel needs --launcher local or --launcher slurm"),
        (
            ["--launcher", "local", "--slurm-partition", "gpu"],
            "--slurm-partition needs --launcher slurm",
        ),
        (["--launcher", "pbs"], "--launcher 'pbs': expected one of local, slurm"),
        (["--launcher", "local", "--max-parallel", "0"], "--max-parallel 0: expected 1 or more"),
        (["--launcher", "local", "--report"], "--launcher and --report: choose one"),
    ],
)
def test_bad_launch_options_are_one_line(capsys, tmp_path, args, message) -> None:
    grid = write_grid(tmp_path)
    code, out, err = cli(capsys, "ablate", "--grid", grid, *args)
    assert code == 1 and out == ""
    assert err.strip() == f"error: {message}"


def test_missing_submitit_is_one_line_with_the_install_hint(capsys, tmp_path, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_submitit(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "submitit" or name.startswith("submitit."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    grid = write_grid(tmp_path)
    sets_ = ["--set", f"train.out_dir={tmp_path}"]
    code, out, err = cli(capsys, "ablate", "--grid", grid, "--launcher", "local", *sets_)
    assert code == 1 and out == ""
    assert err.strip() == (
        "error: --launcher needs submitit, which is not installed: pip install -e '.[slurm]'"
    )
    assert not (tmp_path / "ablate-tiny").exists()  # nothing submitted, nothing written


# --------------------------------------------------------------------------- SLURM parameters


def test_slurm_options_land_in_the_sbatch_file(tmp_path, monkeypatch) -> None:
    options = launch.check_options(
        "slurm", "gpu", 4, 2, ["account=proj", "qos=high", "mem_per_gpu=40G"], 90, False
    )
    assert options is not None
    params = launch.executor_parameters(options, "ablate-depth")
    assert params == {
        "name": "ablate-depth",
        "timeout_min": 90,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": 4,
        "slurm_partition": "gpu",
        "slurm_array_parallelism": 2,
        "slurm_additional_parameters": {"account": "proj", "qos": "high", "mem_per_gpu": "40G"},
    }
    # submitit itself turns them into the sbatch file of a 3-job array (`srun` faked present).
    from submitit.slurm import slurm

    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    executor = submitit.AutoExecutor(tmp_path, cluster="slurm")
    executor.update_parameters(**params)
    text = slurm._make_sbatch_string(
        command="run", folder=tmp_path, map_count=3, **executor._executor.parameters
    )
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --array=0-2%2",
        "#SBATCH --time=90",
        "#SBATCH --job-name=ablate-depth",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --mem-per-gpu=40G",
    ):
        assert line in text.splitlines()


def test_cpu_jobs_ask_for_no_gpu_and_defaults_leave_slurm_its_own() -> None:
    options = launch.check_options("slurm", None, 0, None, [], None, True)
    assert options is not None and not options.wait
    assert launch.executor_parameters(options, "x") == {
        "name": "x",
        "timeout_min": 24 * 60,
        "nodes": 1,
        "tasks_per_node": 1,
    }
    assert launch.check_options(None, None, None, None, [], None, False) is None


def test_several_gpus_run_torchrun_of_the_normal_train(grid, tmp_path) -> None:
    from hmdbattn import ablate

    ablation = ablate.load_ablation(ablate.read_grid(grid), None, [f"train.out_dir={tmp_path}"])
    run = ablation.runs[1]
    spec = tmp_path / "spec.toml"
    start = launch.torchrun_argv(run, 4, False, spec)
    assert start == [
        sys.executable,
        *("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"),
        *("-m", "hmdbattn", "train", "--config", str(spec), "--overwrite"),
    ]
    resume = launch.torchrun_argv(run, 2, True, spec)
    assert resume[resume.index("--nproc_per_node") + 1] == "2"
    assert resume[-2:] == ["--resume", str(run.run_dir)]
    # `hmdbattn train --config spec` trains into the run's own folder.
    config = launch.job_config(run)
    assert config.train.out_dir / config.train.name == run.run_dir


def test_report_command_drops_the_launch_options() -> None:
    argv = ["ablate", "--grid", "g.toml", "--launcher", "slurm", "--slurm-arg", "qos=x"]
    argv += ["--max-parallel=3", "--no-wait", "--set", "train.epochs=1"]
    assert launch.report_command(argv) == (
        "hmdbattn ablate --grid g.toml --set train.epochs=1 --report"
    )


# --------------------------------------------------------------------------- waiting


class FakeJob:
    """A finished submitit job as `wait_for` sees it: its id, files and outcome."""

    def __init__(self, folder: Path, job_id: str, outcome: object) -> None:
        self.job_id = job_id
        self.outcome = outcome
        self.paths = type(
            "Paths",
            (),
            {
                "stderr": folder / f"{job_id}_0_log.err",
                "result_pickle": folder / f"{job_id}_0_result.pkl",
            },
        )()
        if outcome != "killed":
            self.paths.result_pickle.write_bytes(b"")

    def done(self) -> bool:
        return True

    def result(self) -> object:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def test_failed_jobs_are_one_line_each_with_their_log(capsys, grid, tmp_path) -> None:
    from hmdbattn import ablate

    ablation = ablate.load_ablation(ablate.read_grid(grid), None, [f"train.out_dir={tmp_path}"])
    trace = "Traceback (most recent call last):\n  File x\nValueError: bad clip\n"
    failed = submitit.core.utils.FailedJobError(
        f"Job (task=0) failed during processing with trace:\n----------------------\n{trace}"
        "----------------------\nYou can check full logs with ..."
    )
    pool, attn = ablation.runs
    jobs = [(pool, FakeJob(tmp_path, "11", None)), (attn, FakeJob(tmp_path, "12", failed))]
    failures = launch.wait_for(ablation, jobs, "slurm")
    log = tmp_path / "12_0_log.err"
    assert failures == {attn.run_dir: f"ValueError: bad clip (job 12; log: {log})"}
    err = capsys.readouterr().err
    assert f"failed: {attn.run_dir}: ValueError: bad clip (job 12; log: {log})" in err
    assert "jobs: 1/2 done, 0 running, 0 queued, 1 failed" in err
    killed = launch.wait_for(ablation, [(attn, FakeJob(tmp_path, "13", "killed"))], "local")
    assert killed[attn.run_dir].startswith("job ended without a result: killed? (job 13; log:")
    message = launch.wait_for(ablation, [(attn, FakeJob(tmp_path, "14", "no data"))], "local")
    assert message[attn.run_dir].startswith("no data (job 14; log:")


def test_slurm_without_srun_is_one_line(capsys, tmp_path, monkeypatch) -> None:
    from submitit.slurm import slurm

    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    grid = write_grid(tmp_path)
    args = ["--launcher", "slurm", "--set", f"train.out_dir={tmp_path}"]
    code, out, err = cli(capsys, "ablate", "--grid", grid, *args)
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.startswith('error: --launcher slurm: Could not detect "srun"')
    assert "or use --launcher local" in err and len(err.strip().splitlines()) == 1


def test_an_array_job_leaves_the_arrays_sbatch_script_to_its_last_job(tmp_path) -> None:
    """SLURM names a job array's jobs ``<array>_<index>`` and writes one script for all."""
    names = ("submitted.pkl", "0_result.pkl", "0_log.out", "0_log.err")
    for job in ("77_0", "77_1"):
        for name in names:
            (tmp_path / f"{job}_{name}").write_bytes(b"")
    (tmp_path / "77_submission.sh").write_text("#!/bin/bash")
    (tmp_path / "770_0_log.err").write_text("another job")

    def entry(job: str) -> dict[str, str]:
        return {"job_id": job, "result": str(tmp_path / f"{job}_0_result.pkl")}

    first = launch.job_files(entry("77_0"))
    assert sorted(p.name for p in first if p.exists()) == sorted(f"77_0_{n}" for n in names)
    for path in first:
        path.unlink(missing_ok=True)
    last = {p.name for p in launch.job_files(entry("77_1")) if p.exists()}
    assert last == {f"77_1_{n}" for n in names} | {"77_submission.sh"}
