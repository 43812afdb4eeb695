"""torchrun: two CPU processes on gloo train one model and evaluate like one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import set_args, tiny_overrides
from test_reliability_runs import tmpfs  # noqa: F401 (a fixture: a small disk, mounted as root)

from hmdbattn import build_model, load_config
from hmdbattn.checkpoint import load_checkpoint
from hmdbattn.data.datasets import TrainClips
from hmdbattn.data.preprocess import preprocess
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.evaluate import evaluate_checkpoint
from hmdbattn.engine.train import train
from hmdbattn.report import quiet

CPU_RUNTIME = Runtime(torch.device("cpu"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


# `hmdbattn ARGS...` that also writes, to argv[1]/rank<RANK>.json, the (epoch, item) of every
# training clip this process loaded.
RECORD_CLIPS = """
import json, os, sys
from hmdbattn.cli import main
from hmdbattn.data.datasets import TrainClips
seen, real = [], TrainClips._item
def item(self, index, out):
    seen.append((self.epoch, index))
    return real(self, index, out)
TrainClips._item = item
out, sys.argv = sys.argv[1], ["hmdbattn", *sys.argv[2:]]
try:
    main()
finally:
    with open(os.path.join(out, f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
        json.dump(seen, f)
"""


def comparable(tiny_dataset: Path, out: Path, batch_size: int) -> dict[str, object]:
    """A run whose every step a single process can repeat exactly with the same global batch.

    Frames the size of the crop and no flips: the augmentation draws from each rank's own
    generator, so it must have nothing to choose. The CNN frozen (its BatchNorm in eval
    mode): in training mode BatchNorm normalises each rank's half batch by that half's
    statistics, which no single process reproduces (see test_two_ranks_train_one_model).
    """
    cache = out.parent / "cache16"
    extra = {"data.resize": [16, 16], "data.cache_dir": str(cache), "data.hflip": False}
    extra |= {"train.freeze_cnn_epochs": 2, "data.batch_size": batch_size}
    return tiny_overrides(tiny_dataset, out, **extra)


@pytest.fixture(scope="module")
def ddp_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "runs"
    overrides = comparable(tiny_dataset, out, batch_size=4) | {"train.name": "ddp"}
    with quiet():
        preprocess(load_config(None, overrides), workers=0)  # the 16 x 16 cache
    script = out.parent / "record_clips.py"
    script.write_text(RECORD_CLIPS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [*TORCHRUN, str(script), str(out.parent), "train", *set_args(overrides), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out / "ddp"


def test_two_ranks_train_one_model(ddp_run: Path, tiny_dataset: Path, monkeypatch) -> None:
    """Each epoch the ranks split the training clips, and 2 ranks x 4 clips train the model
    that 1 process x 8 clips in the same order trains."""
    result = json.loads((ddp_run / "result.json").read_text())
    assert result["ranks"] == 2 and result["epochs"] == 2
    assert len((ddp_run / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 alone writes
    seen = [json.loads((ddp_run.parent.parent / f"rank{r}.json").read_text()) for r in (0, 1)]
    # The same run in one process, batches of 8: every clip it loads, in order.
    single_seen: list[tuple[int, int]] = []
    item = TrainClips._item  # every clip read, one by one or into a batch
    monkeypatch.setattr(
        TrainClips, "_item", lambda d, i, out: single_seen.append((d.epoch, i)) or item(d, i, out)
    )
    overrides = comparable(tiny_dataset, ddp_run.parent, batch_size=8)
    with quiet():
        train(load_config(None, overrides), ddp_run.parent / "single", CPU_RUNTIME)
    for epoch in (0, 1):
        mine = [sorted(i for e, i in ranks if e == epoch) for ranks in seen]
        everything = sorted(i for e, i in single_seen if e == epoch)
        assert everything == list(range(len(everything))) and len(everything) >= 8
        assert not set(mine[0]) & set(mine[1])  # disjoint...
        assert sorted(mine[0] + mine[1]) == everything  # ...and together the whole epoch
    ddp = load_checkpoint(ddp_run / "last.pt")["model"]
    single = load_checkpoint(ddp_run.parent / "single" / "last.pt")["model"]
    start = build_model(load_config(None, overrides), 4).state_dict()
    moved = max((single[k].double() - start[k]).abs().max().item() for k in single)
    worst = max((ddp[k].double() - single[k]).abs().max().item() for k in single)
    # Measured: 1e-6 apart after weights moved by 0.65 (float summation order); with the CNN
    # training, BatchNorm's per-rank statistics put them ~1e-2 apart, as far as the updates.
    assert moved > 1e-2 and worst < 1e-4, (moved, worst)


def test_distributed_eval_equals_single_process_eval(ddp_run: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "best.pt"
    shutil.copy(ddp_run / "best.pt", checkpoint)
    with quiet():
        single = evaluate_checkpoint(checkpoint, runtime=Runtime(torch.device("cpu"))).to_dict()
    run = subprocess.run(
        [*TORCHRUN, "-m", "hmdbattn", "eval", "--checkpoint", str(checkpoint), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    distributed = json.loads(run.stdout)["results"][0]
    for key in (
        "num_clips",
        "num_videos",
        "clip_top1",
        "clip_top5",
        "video_vote_top1",
        "video_top1",
        "video_top5",
        "mean_class_accuracy",
        "confusion",
    ):
        assert distributed[key] == single[key], key
    assert distributed["loss"] == pytest.approx(single["loss"], rel=1e-5)


# `hmdbattn ARGS...` whose checkpoint writes find the disk full: the fault a small tmpfs
# stages for real where the tests may mount one (as root), injected where they may not.
FULL_DISK = """
import errno, os, sys
import hmdbattn.engine.rundir as rundir
def full(obj, path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
rundir.atomic_save = full
from hmdbattn.cli import main
sys.argv = ["hmdbattn", *sys.argv[1:]]
main()
"""


def stopping_torchrun(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Two processes of `args` (a script or ``-m hmdbattn``, then its arguments) that are
    expected to stop on an error; the result and the seconds they took (within 3 minutes)."""
    start = time.monotonic()
    run = subprocess.run(
        [*TORCHRUN, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=180,
        check=False,
    )
    return run, time.monotonic() - start


@pytest.mark.slow
def test_a_failed_save_on_rank_0_stops_every_rank_at_once(
    tiny_dataset,
    tmp_path,
    tmpfs,  # noqa: F811 (the fixture imported above)
) -> None:
    """Rank 0 alone writes: when it cannot, rank 1 must not wait for it in the next collective
    (for the process group's 30-minute timeout) but stop too, with one line of its own."""
    out = tmp_path / "full"
    keys = {"train.name": "f", "train.tensorboard": False}
    real = tmpfs(out, 64 << 10)  # room for config.toml, not for a checkpoint
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    hmdbattn = ["-m", "hmdbattn"] if real else [str(script)]
    run, seconds = stopping_torchrun(
        *hmdbattn, "train", *set_args(tiny_overrides(tiny_dataset, out, **keys))
    )
    assert run.returncode != 0 and seconds < 60, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {out / 'f' / 'last.pt'}: cannot write (No space left on device: free space on "
        f"that disk (or use another folder)); no checkpoint was saved yet in {out / 'f'}: start "
        "the run again (--overwrite)",
        "error: rank 1: stopped because rank 0 could not save epoch 1: see rank 0's error",
    ], run.stderr[-3000:]
    assert "[rank1]" not in run.stderr  # no traceback of a rank cut off by its peer's exit


def test_session_tears_down_however_the_block_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    from hmdbattn.engine import distributed

    calls: list[str] = []
    monkeypatch.setattr(distributed, "setup", lambda: calls.append("setup") or CPU_RUNTIME)
    monkeypatch.setattr(distributed, "teardown", lambda: calls.append("teardown"))
    with distributed.session() as runtime:
        assert runtime is CPU_RUNTIME and calls == ["setup"]
    with pytest.raises(KeyError), distributed.session():
        raise KeyError("a failing run")
    assert calls == ["setup", "teardown", "setup", "teardown"]


def test_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from hmdbattn.engine.distributed import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device() == torch.device("cuda", 1)


# `hmdbattn ARGS...` on a disk that has no room for an ablation's result files.
NO_ROOM_FOR_RESULTS = """
import errno, os, sys
import hmdbattn.ablate.tables as tables
real = tables.atomic_write_text
def full(path, text, sync=False):
    if path.name.startswith("results."):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return real(path, text, sync)
tables.atomic_write_text = full
from hmdbattn.cli import main
sys.argv = ["hmdbattn", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_ablate_stops_every_rank_when_rank_0_cannot_write_the_results(
    tiny_dataset, tmp_path
) -> None:
    grid = tmp_path / "two.toml"
    grid.write_text(
        'title = "two"\n'
        '[[variant]]\nlabel = "pool"\nset = { model.head = "pool" }\n'
        '[[variant]]\nlabel = "attention"\nset = { model.head = "perceiver" }\n'
    )
    script = tmp_path / "no_room.py"
    script.write_text(NO_ROOM_FOR_RESULTS)
    keys = {"train.epochs": 1, "train.tensorboard": False}
    sets = set_args(tiny_overrides(tiny_dataset, tmp_path / "runs", **keys))
    run, seconds = stopping_torchrun(str(script), "ablate", "--grid", str(grid), *sets)
    assert run.returncode != 0 and seconds < 120, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "results.md" in errors[0], run.stderr[-3000:]
    assert errors[1] == (
        "error: rank 1: stopped because rank 0 could not write the ablation's results: "
        "see rank 0's error"
    )
    assert "[rank1]" not in run.stderr
    assert not (tmp_path / "runs" / "ablate-two" / "attention").exists()  # stopped after one
