"""Training: run directory, checkpoints, resume after a kill, stops, schedule, mixing, the step."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import set_args, tiny_overrides

from hmdbattn import load_config
from hmdbattn.checkpoint import load_checkpoint
from hmdbattn.config import TrainConfig
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.optim import build_optimizer, lr_factor, mix_batch
from hmdbattn.engine.precision import fp16, memory_format, resolve_amp
from hmdbattn.engine.rundir import RunDir, run_dirs
from hmdbattn.engine.train import StepParts, train, train_step
from hmdbattn.errors import UserError
from hmdbattn.report import quiet

CPU = Runtime(torch.device("cpu"))
TIMING = ("seconds", "clips_per_s")


def run(root: Path, out: Path, name: str, **extra: object):
    config = load_config(None, tiny_overrides(root, out, **{"train.name": name, **extra}))
    with quiet():
        return train(config, out / name, CPU)


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_run_directory_holds_config_metrics_and_checkpoints(tiny_dataset, tmp_path) -> None:
    state = run(tiny_dataset, tmp_path, "a")
    run_dir = tmp_path / "a"
    assert state.epoch == 2 and state.stop_reason == "finished"
    assert load_config(run_dir / "config.toml").data.root == tiny_dataset
    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "val_loss", "val_clip_acc", "val_video_acc", "lr"):
        assert all(isinstance(r[key], float) for r in rows), key
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["classes"] == sorted(p.name for p in (tiny_dataset / "videos").iterdir())
    assert ckpt["config"]["model"]["cnn_blocks"] == 1
    assert set(ckpt) >= {"model", "optimizer", "scaler", "state", "rng", "classes", "config"}
    best = load_checkpoint(run_dir / "best.pt")["state"]
    assert best["best_accuracy"] == max(r["val_video_acc"] for r in rows)
    assert json.loads((run_dir / "result.json").read_text())["epochs"] == 2


def test_existing_run_is_not_clobbered(tiny_dataset, tmp_path) -> None:
    run(tiny_dataset, tmp_path, "b", **{"train.epochs": 1})
    with pytest.raises(UserError, match="already holds a run"):
        run(tiny_dataset, tmp_path, "b", **{"train.epochs": 1})


# Every random draw of a training step in use: dropout (torch's global RNG, which a checkpoint
# saves), mixup and cutmix (the epoch generator, recreated from the seed and epoch).
RANDOM_STEP = {
    "model.attn_dropout": 0.1,
    "model.ff_dropout": 0.1,
    "model.head_dropout": 0.3,
    "train.mixup_alpha": 0.8,
    "train.cutmix_alpha": 1.0,
}
# Runs `hmdbattn ARGS...` and SIGKILLs it (no clean-up at all) as optimiser step argv[1] begins.
KILL_AT_STEP = """
import os, signal, sys
from hmdbattn.cli import main
from hmdbattn.engine import train
kill_at, real, taken = int(sys.argv[1]), train.train_step, []
def train_step(*args, **kwargs):
    taken.append(1)
    if len(taken) > kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
train.train_step = train_step
sys.argv = ["hmdbattn", *sys.argv[2:]]
main()
"""


def _train_cli(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    overrides = tiny_overrides(root, out, **{"train.name": name, "train.epochs": 2, **RANDOM_STEP})
    return ["train", *set_args(overrides), *extra]


def test_killed_mid_epoch_and_resumed_matches_uninterrupted(tiny_dataset, tmp_path) -> None:
    hmdbattn = [sys.executable, "-m", "hmdbattn"]
    whole = subprocess.run(
        [*hmdbattn, *_train_cli(tiny_dataset, tmp_path, "whole")], capture_output=True, check=False
    )
    assert whole.returncode == 0, whole.stderr[-2000:]
    steps = load_checkpoint(tmp_path / "whole" / "last.pt")["state"]["step"] // 2  # per epoch
    assert steps >= 2
    # Killed halfway through epoch 2: epoch 1 is checkpointed, epoch 2 half done and lost.
    kill_at = steps + steps // 2
    killed_dir = tmp_path / "killed"
    cli = _train_cli(tiny_dataset, tmp_path, "killed")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, str(kill_at), *cli], capture_output=True, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(metrics(killed_dir)) == 1
    assert load_checkpoint(killed_dir / "last.pt")["state"]["step"] == steps
    resumed = subprocess.run(
        [*hmdbattn, "train", "--resume", str(killed_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(killed_dir) == metrics(tmp_path / "whole")
    a = load_checkpoint(killed_dir / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path) -> None:
    run(tiny_dataset, tmp_path, "nan", **{"train.epochs": 1})
    before = (tmp_path / "nan" / "last.pt").read_bytes()
    config = load_config(tmp_path / "nan" / "config.toml", {"train.epochs": 3, "train.lr": 1e30})
    with quiet(), pytest.raises(UserError, match=r"non-finite.*last good checkpoint"):
        train(config, tmp_path / "nan", CPU, resume=True)
    assert (tmp_path / "nan" / "last.pt").read_bytes() == before


def test_early_stopping_and_step_limit(tiny_dataset, tmp_path) -> None:
    # A vanishing learning rate leaves only BatchNorm's running statistics to move the
    # validation accuracy: it soon stops improving, and patience 1 ends the run at the first
    # epoch that does not beat the best before it.
    state = run(
        tiny_dataset,
        tmp_path,
        "patience",
        **{"train.epochs": 5, "train.patience": 1, "train.lr": 1e-20},
    )
    accs = [row["val_video_acc"] for row in state.history]
    first_miss = next(e for e in range(1, len(accs)) if accs[e] <= max(accs[:e]))
    assert state.epoch == first_miss + 1 < 5
    assert state.stop_reason.startswith("early stop")
    state = run(tiny_dataset, tmp_path, "steps", **{"train.epochs": 5, "train.max_steps": 3})
    assert state.step == 3 and state.epoch == 1 and "step limit" in state.stop_reason


def test_frozen_cnn_does_not_move(tiny_dataset, tmp_path) -> None:
    run(tiny_dataset, tmp_path, "frozen", **{"train.epochs": 1, "train.freeze_cnn_epochs": 1})
    trained = load_checkpoint(tmp_path / "frozen" / "last.pt")["model"]
    torch.manual_seed(0)
    from hmdbattn import build_model

    fresh = build_model(load_config(None, tiny_overrides(tiny_dataset, tmp_path)), 4).state_dict()
    cnn = [k for k in trained if k.startswith("backbone.")]
    head = [k for k in trained if k.startswith("head.") and "weight" in k]
    assert cnn and all(torch.equal(trained[k], fresh[k]) for k in cnn)
    assert any(not torch.equal(trained[k], fresh[k]) for k in head)


def test_schedules() -> None:
    step = TrainConfig(scheduler="step", step_size=10, gamma=0.2, epochs=30)
    assert [lr_factor(e * 5, 5, step) for e in (0, 9, 10, 20)] == [
        1.0,
        1.0,
        0.2,
        pytest.approx(0.04),
    ]
    cosine = TrainConfig(scheduler="cosine", epochs=10, warmup_epochs=2)
    assert lr_factor(0, 10, cosine) == pytest.approx(0.05)  # warm-up: 1 / 20 steps
    assert lr_factor(20, 10, cosine) == pytest.approx(1.0)  # warm-up done
    assert lr_factor(60, 10, cosine) == pytest.approx(0.5)  # halfway through the decay
    assert lr_factor(100, 10, cosine) == pytest.approx(0.0)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixing_keeps_shapes_and_soft_targets_sum_to_one(mixup, cutmix) -> None:
    """Each clip's target weights are the shares of the clips mixed into it, and only the
    generator decides the mix (not torch's global RNG, which dropout also draws from)."""
    c = TrainConfig(mixup_alpha=mixup, cutmix_alpha=cutmix)
    # Clip i is 1 in channel i and 0 elsewhere: channel j of a mixed clip, averaged over its
    # pixels, is the share of clip j in it (mixup's lambda, or cutmix's pasted box area).
    x = torch.eye(6)[:, :, None, None, None].expand(6, 6, 4, 16, 16).contiguous()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    mixed_shares = 0
    for seed in range(8):
        torch.manual_seed(seed)  # the global RNG differs between the two calls...
        mixed, targets = mix_batch(x, y, 3, c, torch.Generator().manual_seed(seed))
        torch.manual_seed(seed + 100)  # ...and must not matter
        again = mix_batch(x, y, 3, c, torch.Generator().manual_seed(seed))
        assert torch.equal(mixed, again[0]) and torch.equal(targets, again[1])
        assert mixed.shape == x.shape and targets.shape == (6, 3)
        shares = mixed.mean(dim=(2, 3, 4))  # (6 mixed clips, 6 source clips)
        expected = shares @ torch.nn.functional.one_hot(y, 3).float()
        torch.testing.assert_close(targets, expected)
        assert torch.allclose(targets.sum(1), torch.ones(6))
        mixed_shares += int(((shares > 0.01) & (shares < 0.99)).any())
    assert mixed_shares >= 6  # most batches really mix (a partner may be the clip itself)


def test_tensorboard_gets_every_epoch_metric(tiny_dataset, tmp_path) -> None:
    pytest.importorskip("tensorboard")  # optional; the dev extra installs it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tiny_dataset, tmp_path, "tb", **{"train.epochs": 2})
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "val_loss", "val_video_acc", "lr"} <= tags
    # One writer per epoch: two event files written in the same second may be read in either
    # order, and TensorBoard plots by step, so the steps are compared as a set.
    assert sorted(e.step for e in events.Scalars("val_video_acc")) == [1, 2]


def _step_parts(model: torch.nn.Module, c: TrainConfig, **extra: object) -> StepParts:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    parts = StepParts(model, model.parameters, optimizer, scaler, c, contextlib.nullcontext, 3)
    return dataclasses.replace(parts, **extra)


def test_train_step_is_the_hand_written_classification_step() -> None:
    """Label smoothing and clipping as written out by hand: the same weights after one step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    twin = copy.deepcopy(model)
    c = TrainConfig(label_smoothing=0.1, grad_clip=0.01)
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 1])
    loss, output = train_step(_step_parts(model, c), x, y)
    expected = torch.nn.functional.cross_entropy(
        twin(x), torch.nn.functional.one_hot(y, 3).float(), label_smoothing=0.1
    )
    expected.backward()
    torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.01)
    torch.optim.SGD(twin.parameters(), lr=0.1).step()
    assert torch.equal(loss, expected.detach()) and output.shape == (4, 3)
    assert torch.equal(model.weight, twin.weight) and torch.equal(model.bias, twin.bias)


def test_train_step_takes_another_objective() -> None:
    """A loss function other than cross-entropy (e.g. pretraining): no mixing, its own targets."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    twin = copy.deepcopy(model)
    c = TrainConfig(mixup_alpha=0.8, label_smoothing=0.1)  # classification-only: not applied
    x, target = torch.randn(4, 5), torch.randn(4, 3)
    seen = []

    def objective(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(y)
        return torch.nn.functional.mse_loss(output, y)

    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    parts = _step_parts(model, c, loss=objective)
    loss, _ = train_step(parts, x, target, generator)
    assert seen[0] is target and torch.equal(generator.get_state(), state)
    assert torch.equal(loss, torch.nn.functional.mse_loss(twin(x), target).detach())
    assert not torch.equal(model.weight, twin.weight)  # the optimiser stepped


def test_run_dir_contract(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "r")
    config = load_config(None, {"train.epochs": 3})
    with pytest.raises(UserError, match="nothing to resume"):
        run_dir.resume(config, CPU)
    run_dir.start(config, overwrite=False)
    assert load_config(run_dir.config).train.epochs == 3
    run_dir.write_metrics([{"epoch": 1}, {"epoch": 2}])
    assert [json.loads(line) for line in run_dir.metrics.read_text().splitlines()] == [
        {"epoch": 1},
        {"epoch": 2},
    ]
    state = {"epoch": 1, "step": 2, "history": [{"epoch": 1}], "best_epoch": 0}
    ckpt = {"format": "hmdbattn-checkpoint", "version": 1, "state": state}
    ckpt["config"] = config.model_dump(mode="json")
    run_dir.save_checkpoint(ckpt, best=False)
    assert run_dir.last.is_file() and not run_dir.best.exists()
    assert run_dir.load_last()["state"] == state
    with pytest.raises(UserError, match="already holds a run"):
        run_dir.start(config, overwrite=False)
    assert run_dir.resume(config, CPU)["state"]["epoch"] == 1  # resumable now
    run_dir.start(config, overwrite=True)  # the old run moves aside until a new checkpoint
    aside = tmp_path / "r.old-1"
    assert sorted(p.name for p in aside.iterdir()) == ["config.toml", "last.pt", "metrics.jsonl"]
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["config.toml"]
    run_dir.save_checkpoint(ckpt, best=False)
    assert list(tmp_path.iterdir()) == [run_dir.path]  # atomic writes leave no temporary files
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["config.toml", "last.pt"]


def test_run_dirs_are_named_after_the_config(tmp_path: Path) -> None:
    config = load_config(None, {"train.out_dir": str(tmp_path)})
    assert run_dirs(config, Path("configs/hmdb51.toml"), None) == [(config, tmp_path / "hmdb51")]
    runs = run_dirs(config, None, [1, 3])
    assert [d for _, d in runs] == [tmp_path / "run-split1", tmp_path / "run-split3"]
    assert [c.data.split for c, _ in runs] == [1, 3]
    named = load_config(None, {"train.out_dir": str(tmp_path), "train.name": "x"})
    assert run_dirs(named, Path("a.toml"), None)[0][1] == tmp_path / "x"


def test_amp_auto_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [resolve_amp(cpu, a) for a in ("auto", "bf16", "fp16", "off")] == ["off"] * 4
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_amp(cuda, "auto") == "bf16" and resolve_amp(cuda, "fp16") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_amp(cuda, "auto") == "fp16" and resolve_amp(cuda, "off") == "off"
    config = load_config(None, {"train.amp": "auto"})
    assert fp16(config, cuda) and not fp16(config, cpu)
    assert memory_format(config, cuda) == torch.channels_last_3d
    assert memory_format(config, cpu) == torch.contiguous_format


def test_optimizer_of_a_head_alone_is_one_group() -> None:
    head = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(head, TrainConfig(weight_decay=0.1))
    assert [g["name"] for g in optimizer.param_groups] == ["head", "head"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 4


def test_train_per_class_trains_on_the_recorded_choice(tiny_dataset, tmp_path) -> None:
    state = run(tiny_dataset, tmp_path, "few", **{"train.epochs": 1, "data.train_per_class": 2})
    listed = (tmp_path / "few" / "train_videos.txt").read_text().splitlines()
    classes = sorted(p.name for p in (tiny_dataset / "videos").iterdir())
    assert sorted(path.split("/")[0] for path in listed) == sorted(classes * 2)
    assert state.step == 2  # 4 classes x 2 videos in batches of 4: only the chosen ones
