"""torchrun: two CPU processes on gloo train one model and evaluate like one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import set_args, tiny_overrides

from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.evaluate import evaluate_checkpoint
from hmdbattn.report import quiet

CPU_RUNTIME = Runtime(torch.device("cpu"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def ddp_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    overrides = tiny_overrides(tiny_dataset, out, **{"train.name": "ddp", "train.epochs": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [*TORCHRUN, "-m", "hmdbattn", "train", *set_args(overrides), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out / "ddp"


def test_two_ranks_train_one_model(ddp_run: Path) -> None:
    result = json.loads((ddp_run / "result.json").read_text())
    assert result["ranks"] == 2 and result["epochs"] == 2
    first, second = result["rank_checksums"]
    assert first == second  # DDP kept the replicas identical
    lines = (ddp_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone writes


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
