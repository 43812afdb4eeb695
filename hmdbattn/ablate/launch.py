"""Running an ablation's variants as jobs through submitit: on SLURM, or as local processes.

``hmdbattn ablate --launcher slurm|local`` submits one job per run that is not finished yet
(finished runs are skipped, interrupted ones resumed: the same decisions as the sequential
``ablate``). Every job trains into its own run folder of the ablation folder; only this
process (the one that submitted) writes ``results.*``, from what the run folders hold, so
jobs never race on them.

- ``slurm``: the runs go out as one job array (at most ``--max-parallel`` running at once);
  a job with ``--gpus-per-job`` N > 1 runs ``torchrun --nproc_per_node N`` of the normal
  ``hmdbattn train`` for its run, a job with one GPU (or none) trains in the job's process.
- ``local``: submitit's local executor starts one process per run; each takes one of
  ``--max-parallel`` slots (a file lock in ``.submitit/slots``) before it trains, so at most
  that many train at once, whether or not this process waits for them.

submitit's files (each job's pickles and its stdout / stderr logs, named by job id) live in
``<ablation folder>/.submitit/jobs/``; ``.submitit/jobs.json`` records which job trains
which run, so ``--report`` can say which runs are still running and which jobs failed.
Once a run has finished (its ``result.json``, which the results table is built from), the
files of its job are deleted, and its entry in jobs.json with them: its log says no more
than the run folder. The files of a job whose run did not finish (it failed, or was killed)
are kept: its log is how you find out why. Deleting ``.submitit/`` while no job runs loses
nothing but those logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from hmdbattn.ablate.resolve import Ablation, Run
from hmdbattn.ablate.results import build_rows
from hmdbattn.ablate.run import Outcome, decide, missing_init, print_notes, select, train_one
from hmdbattn.ablate.tables import show_table, write_results
from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_write_text, os_error_text, os_errors
from hmdbattn.report import err_console

LAUNCHERS = ("local", "slurm")
JOBS_DIR = ".submitit"
MANIFEST = "jobs.json"
INSTALL_HINT = "pip install -e '.[slurm]'"
# sbatch options the launcher sets itself, and the option of ours that sets them.
OWN_SLURM_KEYS = {
    "partition": "--slurm-partition",
    "gpus-per-node": "--gpus-per-job",
    "array": "--max-parallel",
    "time": "--timeout-min",
    "output": None,
    "error": None,
    "job-name": None,
}
SLURM_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
POLL_S = 0.5


@dataclass(frozen=True)
class LaunchOptions:
    """How to run the jobs: where, with how many GPUs each, how many at once, and waiting."""

    launcher: str
    partition: str | None = None
    gpus_per_job: int = 1
    max_parallel: int | None = None  # None: slurm's array limit; one at a time locally
    slurm_args: dict[str, str] = field(default_factory=dict)
    timeout_min: int = 24 * 60
    wait: bool = True

    @property
    def slots(self) -> int:
        """How many local jobs train at once."""
        return self.max_parallel or 1


def parse_slurm_args(items: Sequence[str]) -> dict[str, str]:
    """``["account=proj", "qos=high"]`` -> ``{"account": "proj", "qos": "high"}``.

    A malformed item, or one for a key the launcher sets itself, is a UserError naming it.
    """
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not SLURM_KEY.fullmatch(key) or not value.strip():
            raise UserError(
                f"--slurm-arg {item!r}: expected key=value (an sbatch option without its "
                "dashes), e.g. --slurm-arg account=myproject"
            )
        dashed = key.replace("_", "-")
        if dashed in OWN_SLURM_KEYS:
            option = OWN_SLURM_KEYS[dashed]
            use = f": use {option}" if option else ""
            raise UserError(f"--slurm-arg {item!r}: {dashed} is set by the launcher{use}")
        parsed[key] = value.strip()
    return parsed


def check_options(
    launcher: str | None,
    partition: str | None,
    gpus_per_job: int | None,
    max_parallel: int | None,
    slurm_args: Sequence[str],
    timeout_min: int | None,
    no_wait: bool,
) -> LaunchOptions | None:
    """The command line's launch options, checked; None when the ablation runs in-process."""
    given = {
        "--slurm-partition": partition is not None,
        "--gpus-per-job": gpus_per_job is not None,
        "--max-parallel": max_parallel is not None,
        "--slurm-arg": bool(slurm_args),
        "--timeout-min": timeout_min is not None,
        "--no-wait": no_wait,
    }
    if launcher is None:
        used = [option for option, present in given.items() if present]
        if used:
            raise UserError(f"{used[0]} needs --launcher local or --launcher slurm")
        return None
    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    for option in ("--slurm-partition", "--slurm-arg"):
        if launcher != "slurm" and given[option]:
            raise UserError(f"{option} needs --launcher slurm")
    for option, value in (("--gpus-per-job", gpus_per_job), ("--timeout-min", timeout_min)):
        if value is not None and value < (0 if option == "--gpus-per-job" else 1):
            raise UserError(f"{option} {value}: expected a positive number")
    if max_parallel is not None and max_parallel < 1:
        raise UserError(f"--max-parallel {max_parallel}: expected 1 or more")
    return LaunchOptions(
        launcher,
        partition,
        1 if gpus_per_job is None else gpus_per_job,
        max_parallel,
        parse_slurm_args(slurm_args),
        24 * 60 if timeout_min is None else timeout_min,
        not no_wait,
    )


def executor_parameters(options: LaunchOptions, name: str) -> dict[str, Any]:
    """The keyword arguments of submitit's ``AutoExecutor.update_parameters`` for `options`.

    One task per job: a job with several GPUs starts its processes itself (torchrun).
    """
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": options.timeout_min,
        "nodes": 1,
        "tasks_per_node": 1,
    }
    if options.gpus_per_job > 0:
        params["gpus_per_node"] = options.gpus_per_job
    if options.launcher == "slurm":
        if options.partition:
            params["slurm_partition"] = options.partition
        if options.max_parallel is not None:
            params["slurm_array_parallelism"] = options.max_parallel
        if options.slurm_args:
            params["slurm_additional_parameters"] = dict(options.slurm_args)
    return params


def import_submitit() -> ModuleType:
    """The submitit module, or a UserError saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise UserError(
            f"--launcher needs submitit, which is not installed: {INSTALL_HINT}"
        ) from None
    return submitit


def make_executor(options: LaunchOptions, folder: Path, name: str) -> Any:
    """A submitit executor for `options`, its files in ``<folder>/.submitit/jobs``."""
    submitit = import_submitit()
    try:
        executor = submitit.AutoExecutor(folder / JOBS_DIR / "jobs", cluster=options.launcher)
    except RuntimeError as exc:  # SlurmExecutor without `srun` on the PATH
        raise UserError(
            f"--launcher slurm: {exc} (run this on a machine that submits SLURM jobs, or use "
            "--launcher local)"
        ) from None
    executor.update_parameters(**executor_parameters(options, name))
    return executor


# --------------------------------------------------------------------------- in the job


@dataclass
class VariantJob:
    """What one job runs: train (or resume) one run of the ablation.

    submitit pickles it; `checkpoint` makes it requeue itself when SLURM times the job out or
    preempts it, and the requeued job resumes from the run's ``last.pt``.
    """

    run: Run
    gpus: int
    slots: Path | None = None  # local jobs: the folder of slot locks
    slot_count: int = 1

    def __call__(self) -> str | None:
        """None once the run is trained; the error, one line, when it cannot be."""
        with contextlib.ExitStack() as stack:
            if self.slots is not None:
                stack.enter_context(slot(self.slots, self.slot_count, self.run.run_dir.name))
            return train_variant(self.run, self.gpus)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on a timeout or preemption: requeue this same job."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def train_variant(run: Run, gpus: int) -> str | None:
    """Decide (skip / resume / start) as the sequential ablation does, then train the run."""
    action, error = decide(run)
    if action == "skip":
        return None
    if error is None and action == "start":
        error = missing_init(run)
    if error is not None:
        return error
    resume = action == "resume"
    if gpus > 1:
        return torchrun(run, gpus, resume)
    from hmdbattn.engine import distributed

    with distributed.session() as runtime:
        return train_one(run, runtime, resume)


def job_config(run: Run) -> Any:
    """The run's config with train.out_dir / train.name naming its folder, for `hmdbattn train`."""
    train = run.config.train.model_copy(
        update={"out_dir": run.run_dir.parent, "name": run.run_dir.name}
    )
    return run.config.model_copy(update={"train": train})


def torchrun_argv(run: Run, gpus: int, resume: bool, spec: Path) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m hmdbattn train ...`` for `run`.

    A start reads the run's config from `spec` (replacing what a killed start left, as the
    sequential ablation does); a resume reads the run folder's own config.toml.
    ``--standalone`` picks a free port, so several jobs can share a node.
    """
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    argv += ["--nproc_per_node", str(gpus), "-m", "hmdbattn", "train"]
    if resume:
        return [*argv, "--resume", str(run.run_dir)]
    return [*argv, "--config", str(spec), "--overwrite"]


def torchrun(run: Run, gpus: int, resume: bool) -> str | None:
    """Train `run` with `gpus` processes; the error line when torchrun fails."""
    from hmdbattn.ablate.run import changed_keys

    spec = run.run_dir.parent / JOBS_DIR / f"{run.run_dir.name}.toml"
    with os_errors(spec, "write"):
        atomic_write_text(spec, job_config(run).to_toml())
        if resume and changed_keys(run):
            # `train --resume` trains with the folder's config.toml: make it this run's.
            atomic_write_text(run.run_dir / "config.toml", job_config(run).to_toml(), sync=True)
    code = subprocess.call(torchrun_argv(run, gpus, resume, spec))
    if code != 0:
        return f"torchrun of `hmdbattn train` exited with code {code} (its output is in the log)"
    return None


@contextlib.contextmanager
def slot(folder: Path, count: int, name: str) -> Iterator[None]:
    """Hold one of `count` slot locks (waiting for one) while the block runs.

    The kernel drops a lock when its process ends, however it ends (kill -9 included), so a
    dead job never keeps a slot. The slot file names the run that holds it.
    """
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for number in range(count):
            handle = (folder / f"slot-{number}").open("a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            with handle:
                handle.truncate(0)
                handle.write(name)
                handle.flush()
                yield
            return
        time.sleep(POLL_S)


def slot_holders(folder: Path) -> set[str]:
    """The runs that hold a slot in `folder` now (those training, not waiting for a slot)."""
    import fcntl

    holders = set()
    for path in sorted(folder.glob("slot-*")) if folder.is_dir() else []:
        with path.open("r", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holders.add(handle.read().strip())
    return holders


# --------------------------------------------------------------------------- jobs on disk


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """``.submitit/jobs.json``: run folder name -> its latest job (id, launcher, log paths)."""
    path = folder / JOBS_DIR / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read ({exc}); delete it to forget the jobs") from None
    return data if isinstance(data, dict) else {}


def record_jobs(folder: Path, jobs: Sequence[tuple[Run, Any]], launcher: str) -> None:
    """Add the submitted `jobs` to ``.submitit/jobs.json`` (atomically; only this process)."""
    entries = read_manifest(folder)
    for run, job in jobs:
        entries[run.run_dir.name] = {
            "job_id": str(job.job_id),
            "launcher": launcher,
            "host": socket.gethostname(),
            "stderr": str(job.paths.stderr),
            "result": str(job.paths.result_pickle),
            "submitted": time.time(),
        }
    path = folder / JOBS_DIR / MANIFEST
    with os_errors(path, "write"):
        atomic_write_text(path, json.dumps(entries, indent=2) + "\n")


def job_files(entry: Mapping[str, Any]) -> list[Path]:
    """The files submitit keeps for the job of a manifest entry (its names, see its JobPaths):
    the submitted and result pickles, the stdout / stderr logs, and the sbatch script (one
    per job array on SLURM, so left to the array's last job)."""
    folder, job_id = Path(entry["result"]).parent, str(entry["job_id"])
    names = [f"{job_id}_submitted.pkl", f"{job_id}_0_result.pkl"]
    names += [f"{job_id}_0_log.out", f"{job_id}_0_log.err", f"{job_id}_submission.sh"]
    array, _, index = job_id.partition("_")
    if index:  # an array's job: ``<array>_<index>``
        script = f"{array}_submission.sh"
        others = {p.name for p in folder.glob(f"{array}_*")} - {*names, script}
        if not others:
            names.append(script)
    return [folder / name for name in names]


def clean_finished_jobs(ablation: Ablation, keep: Collection[Path] = ()) -> None:
    """Delete the submitit files of the jobs whose run finished, and their jobs.json entries.

    A finished run (``result.json``) is recorded in the results; its job's pickles and logs
    are no more use. Runs in `keep` (reported failed: their line names the log) keep theirs,
    as do the jobs of unfinished runs. Only the submitting process calls it, like
    `record_jobs`.
    """
    manifest = read_manifest(ablation.folder)
    finished = [
        run.run_dir.name
        for run in ablation.runs
        if run.run_dir.name in manifest
        and run.run_dir not in keep
        and (run.run_dir / "result.json").is_file()
        and not job_alive(manifest[run.run_dir.name])
    ]
    if not finished:
        return
    jobs = ablation.folder / JOBS_DIR
    try:
        for name in finished:
            for job_file in job_files(manifest.pop(name)):
                job_file.unlink(missing_ok=True)
            (jobs / f"{name}.toml").unlink(missing_ok=True)  # the config of a torchrun job
        atomic_write_text(jobs / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    except OSError as exc:  # the results are recorded: leftover files are no reason to fail
        err_console.print(
            f"[yellow]warning:[/] could not delete the files of finished jobs in {jobs} "
            f"({os_error_text(exc)}); they can be deleted",
            highlight=False,
        )


def job_alive(entry: Mapping[str, Any]) -> bool:
    """Whether the job of a manifest entry may still run (queued or running).

    A job that wrote its result has ended. A local job is its controller's process id on this
    host; a SLURM job's state comes from ``sacct`` through submitit (unknown counts as alive).
    """
    if Path(entry["result"]).exists():
        return False
    if entry["launcher"] == "local":
        return entry.get("host") == socket.gethostname() and _process_alive(int(entry["job_id"]))
    try:
        submitit = import_submitit()
        state = submitit.SlurmJob(Path(entry["result"]).parent, entry["job_id"]).state
    except Exception:  # no submitit or no sacct here: the job cannot be ruled out
        return True
    return state.split()[0] in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "UNKNOWN")


def _process_alive(pid: int) -> bool:
    """Whether `pid` runs; a child of this process that ended (a zombie) is reaped: not alive."""
    with contextlib.suppress(ChildProcessError):  # not a child of ours: its parent reaps it
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_states(ablation: Ablation) -> tuple[dict[Path, str], set[Path]]:
    """(failed run folder -> error with log path, running run folders) for unfinished runs.

    Only runs with a recorded job count: one whose job ended without finishing the run
    failed, one whose job is alive is running.
    """
    manifest = read_manifest(ablation.folder)
    failures, running = {}, set()
    for run in ablation.runs:
        entry = manifest.get(run.run_dir.name)
        if entry is None or (run.run_dir / "result.json").is_file():
            continue
        if job_alive(entry):
            running.add(run.run_dir)
        else:
            failures[run.run_dir] = (
                f"job {entry['job_id']} ended without finishing the run (log: {entry['stderr']})"
            )
    return failures, running


def report_rows(ablation: Ablation) -> list[dict]:
    """`--report`'s rows: what is on disk, with the runs whose jobs run or failed marked."""
    failures, running = job_states(ablation)
    rows = build_rows(ablation, failures, running)
    if ablation.folder.is_dir():
        write_results(ablation, rows)
        clean_finished_jobs(ablation, failures)
    for run_dir, error in failures.items():
        err_console.print(f"[bold red]failed:[/] {run_dir}: {error}", highlight=False)
    return rows


# --------------------------------------------------------------------------- submitting


def plan(ablation: Ablation, selected: Sequence[Run]) -> tuple[list[Run], dict[Path, str]]:
    """(runs to submit, run folder -> error for runs that cannot start) among `selected`.

    Finished runs are skipped, and so are runs whose earlier job is still alive (submitting
    them again would train one folder twice).
    """
    manifest = read_manifest(ablation.folder)
    todo, failures = [], {}
    for run in selected:
        action, error = decide(run)
        if action == "skip":
            continue
        if error is None and action == "start":
            error = missing_init(run)
        entry = manifest.get(run.run_dir.name)
        if error is None and entry is not None and job_alive(entry):
            err_console.print(
                f"[yellow]still running:[/] {run.run_dir} in job {entry['job_id']}; "
                "not submitted again",
                highlight=False,
            )
            continue
        if error is not None:
            failures[run.run_dir] = error
            err_console.print(f"[bold red]failed:[/] {run.run_dir}: {error}", highlight=False)
        else:
            todo.append(run)
    return todo, failures


def submit(ablation: Ablation, runs: Sequence[Run], options: LaunchOptions) -> list[Any]:
    """Submit one job per run (one job array on SLURM); the jobs, recorded in jobs.json."""
    executor = make_executor(options, ablation.folder, f"ablate-{ablation.grid.name}")
    slots = ablation.folder / JOBS_DIR / "slots" if options.launcher == "local" else None
    with executor.batch():
        jobs = [
            executor.submit(VariantJob(run, options.gpus_per_job, slots, options.slots))
            for run in runs
        ]
    record_jobs(ablation.folder, list(zip(runs, jobs, strict=True)), options.launcher)
    return jobs


def launch_ablation(
    ablation: Ablation, options: LaunchOptions, only: Sequence[str], report_command: str
) -> Outcome | None:
    """Submit the runs the ablation still needs; wait for them (Outcome) or return (None)."""
    print_notes(ablation)
    runs, failures = plan(ablation, select(ablation, only))
    jobs = submit(ablation, runs, options) if runs else []
    if not options.wait:
        for run, job in zip(runs, jobs, strict=True):
            print(f"submitted {run.run_dir.name}: job {job.job_id} (log: {job.paths.stderr})")
        print(f"{len(jobs)} job(s) submitted; see where they are with `{report_command}`")
        clean_finished_jobs(ablation)  # those of earlier launches whose runs finished since
        return None
    failures |= wait_for(ablation, list(zip(runs, jobs, strict=True)), options.launcher)
    rows = build_rows(ablation, failures)
    write_results(ablation, rows)
    clean_finished_jobs(ablation, failures)  # the results are recorded: their jobs are done
    show_table(ablation, rows)
    by_label = {
        run.variant.label + (f" seed {run.seed}" if run.seed is not None else ""): failures[d]
        for run in ablation.runs
        if (d := run.run_dir) in failures
    }
    return Outcome(rows, by_label)


# --------------------------------------------------------------------------- waiting


def wait_for(ablation: Ablation, jobs: Sequence[tuple[Run, Any]], launcher: str) -> dict[Path, str]:
    """Poll the jobs until all ended, showing done / running / failed; the failures.

    A failed job is reported when it ends, in one line with its log; the others go on.
    """
    failures: dict[Path, str] = {}
    pending = list(jobs)
    counts = Counts(total=len(jobs))
    with counts.display() as show:
        while pending:
            still = []
            for run, job in pending:
                if not job.done():
                    still.append((run, job))
                    continue
                error = job_error(job, launcher)
                if error is None:
                    counts.done += 1
                else:
                    counts.failed += 1
                    failures[run.run_dir] = error
                    show(f"[bold red]failed:[/] {run.run_dir}: {error}")
            pending = still
            counts.running, counts.queued = _split_pending(ablation, pending, launcher)
            show(None)
            if pending:
                time.sleep(POLL_S)
    return failures


def _split_pending(
    ablation: Ablation, pending: Sequence[tuple[Run, Any]], launcher: str
) -> tuple[int, int]:
    """(running, queued) among the jobs not ended: local ones run once they hold a slot."""
    if launcher == "local":
        holders = slot_holders(ablation.folder / JOBS_DIR / "slots")
        running = sum(run.run_dir.name in holders for run, _ in pending)
    else:
        running = sum(str(job.state).startswith("RUNNING") for _, job in pending)
    return running, len(pending) - running


def job_error(job: Any, launcher: str) -> str | None:
    """None when the job trained its run; else why not, in one line naming its log."""
    log = f"(job {job.job_id}; log: {job.paths.stderr})"
    if launcher == "local" and not job.paths.result_pickle.exists():
        # Its process is gone without a result: killed. (submitit would wait 15 s for one.)
        return f"job ended without a result: killed? {log}"
    try:
        message = job.result()
    except Exception as exc:  # the job raised: its traceback is in the log
        return f"{last_line(str(exc))} {log}"
    return None if message is None else f"{message} {log}"


def last_line(text: str) -> str:
    """The line of a submitit error that says what went wrong (its traceback's last line)."""
    parts = text.split("----------------------\n")
    trace = parts[1] if len(parts) > 2 else text
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    return lines[-1] if lines else "the job failed"


@dataclass
class Counts:
    """How many jobs are done, running, queued and failed: the waiting display."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    queued: int = 0
    _last: str = ""

    def text(self) -> str:
        return (
            f"{self.done}/{self.total} done, {self.running} running, {self.queued} queued, "
            f"{self.failed} failed"
        )

    @contextlib.contextmanager
    def display(self) -> Iterator[Any]:
        """A ``show(line)`` function: prints `line` (if any) and refreshes the counts.

        On a terminal the counts are a live rich status line; in a log, a line each time
        they change.
        """
        if not err_console.is_terminal:
            yield self._print_changes
            return
        with err_console.status(self.text()) as status:

            def show(line: str | None) -> None:
                if line:
                    err_console.print(line, highlight=False)
                status.update(f"jobs: {self.text()}")

            yield show

    def _print_changes(self, line: str | None) -> None:
        if line:
            err_console.print(line, highlight=False)
        if self.text() != self._last:
            self._last = self.text()
            err_console.print(f"jobs: {self._last}", highlight=False)


# --------------------------------------------------------------------------- the command line

LAUNCH_OPTIONS = (
    "--launcher",
    "--slurm-partition",
    "--gpus-per-job",
    "--max-parallel",
    "--slurm-arg",
    "--timeout-min",
)


def report_command(argv: Sequence[str]) -> str:
    """``hmdbattn ablate ...`` with the launch options dropped and ``--report`` added."""
    import shlex

    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif arg != "--no-wait" and not arg.startswith(tuple(o + "=" for o in LAUNCH_OPTIONS)):
            kept.append(arg)
    return "hmdbattn " + shlex.join([*kept, "--report"])
