"""`hmdbattn eval`: files it writes, excluded videos, splits, time reversal, bad checkpoints."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, set_args, tiny_overrides

from hmdbattn import build_model, load_config
from hmdbattn.data.datasets import build_eval_dataset
from hmdbattn.data.preprocess import preprocess
from hmdbattn.data.synthetic import Look, Sprite, render_clip
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.evaluate import evaluate_checkpoint, score_batch, score_clips
from hmdbattn.engine.train import train
from hmdbattn.report import quiet

CPU = Runtime(torch.device("cpu"))


def hmdbattn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hmdbattn", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def runs(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny runs, on splits 1 and 2, trained through `train --splits`."""
    out = tmp_path_factory.mktemp("eval-runs")
    overrides = tiny_overrides(tiny_dataset, out, **{"train.name": "tiny"})
    args = ["train", "--splits", "1,2", "--json", *set_args(overrides)]
    result = hmdbattn(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(json.loads(result.stdout)) == {str(out / "tiny-split1"), str(out / "tiny-split2")}
    return out


def test_eval_writes_json_and_confusion_matrix(runs: Path) -> None:
    checkpoint = runs / "tiny-split1" / "best.pt"
    result = hmdbattn("eval", "--checkpoint", str(checkpoint), "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)["results"][0]
    on_disk = json.loads((checkpoint.parent / "eval.json").read_text())
    assert printed == on_disk
    assert printed["split"] == 1 and printed["subset"] == "test" and printed["excluded"] == []
    for key in (
        "clip_top1",
        "clip_top5",
        "video_vote_top1",
        "video_top1",
        "video_top5",
        "mean_class_accuracy",
        "per_class",
        "confusion",
    ):
        assert key in printed
    confusion = printed["confusion"]  # rows true, columns predicted
    assert len(confusion) == 4 and sum(map(sum, confusion)) == printed["num_videos"]
    assert_accuracies_are_the_confusion_matrix(printed)
    csv_lines = (checkpoint.parent / "confusion.csv").read_text().splitlines()
    assert [line.split(",")[1:] for line in csv_lines[1:]] == [list(map(str, r)) for r in confusion]
    assert (checkpoint.parent / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def assert_accuracies_are_the_confusion_matrix(report: dict) -> None:
    """Video top-1 is the matrix's trace over its sum; each class's accuracy is its row."""
    confusion = report["confusion"]
    trace = sum(confusion[k][k] for k in range(len(confusion)))
    assert report["video_top1"] == pytest.approx(trace / sum(map(sum, confusion)))
    present = []
    for k, (row, entry) in enumerate(zip(confusion, report["per_class"], strict=True)):
        assert (entry["videos"], entry["correct"]) == (sum(row), row[k]), entry["name"]
        if sum(row):
            assert entry["accuracy"] == pytest.approx(row[k] / sum(row)), entry["name"]
            present.append(row[k] / sum(row))
        else:
            assert entry["accuracy"] is None
    assert report["mean_class_accuracy"] == pytest.approx(sum(present) / len(present))


def test_three_split_protocol_reports_mean_and_std(runs: Path) -> None:
    paths = [str(runs / f"tiny-split{k}" / "best.pt") for k in (1, 2)]
    result = hmdbattn("eval", "--checkpoint", paths[0], "--checkpoint", paths[1], "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    splits = [r["split"] for r in report["results"]]
    assert splits == [1, 2]
    accs = [r["video_top1"] for r in report["results"]]
    mean_std = report["mean_std"]["video_top1"]
    assert mean_std["mean"] == pytest.approx(sum(accs) / 2)
    assert mean_std["std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
    table = hmdbattn("eval", "--checkpoint", paths[0], "--checkpoint", paths[1])
    assert "mean ± std" in table.stdout


def test_eval_counts_and_lists_videos_that_failed(runs: Path, tiny_dataset: Path, tmp_path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset / "videos", root / "videos")
    shutil.copytree(tiny_dataset / "splits", root / "splits")
    test_entry = next(
        line.split()[0]
        for line in (root / "splits").glob("*_test_split1.txt").__next__().read_text().splitlines()
        if line.split()[1] == "2"
    )
    broken = next((root / "videos").rglob(test_entry))
    broken.write_bytes(b"not a video")
    config = load_config(runs / "tiny-split1" / "config.toml", {"data.root": str(root)})
    with quiet():
        clean = evaluate_checkpoint(runs / "tiny-split1" / "best.pt", runtime=CPU)
        preprocess(config, workers=0)
        result = evaluate_checkpoint(
            runs / "tiny-split1" / "best.pt", None, [f"data.root={root}"], CPU
        )
    assert [path for path, _ in result.excluded] == [f"{broken.parent.name}/{broken.name}"]
    assert result.metrics.num_videos == clean.metrics.num_videos - 1
    cli = hmdbattn(
        "eval", "--checkpoint", str(runs / "tiny-split1" / "best.pt"), "--set", f"data.root={root}"
    )
    assert "1 video(s) could not be evaluated" in cli.stderr and broken.name in cli.stderr


class Recorder(torch.nn.Module):
    """A stand-in model that keeps every batch it is given and scores nothing."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes, self.seen = num_classes, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(len(x), self.num_classes)


def test_time_reversed_clips_change_the_scores(runs: Path, tiny_dataset: Path) -> None:
    config = load_config(None, tiny_overrides(tiny_dataset, runs))
    data = build_eval_dataset(config)
    seen = {}
    for reverse in (False, True):
        model = Recorder(len(data.classes))
        with quiet():
            score_clips(model, data.dataset, config, CPU, time_reversed=reverse)
        seen[reverse] = torch.cat(model.seen)  # (clips, C, T, H, W)
    # The model sees the same clips with their frames in reverse order, and nothing else changed.
    assert seen[True].shape == seen[False].shape and seen[True].shape[2] == 4
    assert torch.equal(seen[True], seen[False].flip(2))
    assert not torch.equal(seen[True], seen[False])
    checkpoint = runs / "tiny-split1" / "best.pt"
    with quiet():
        forward = evaluate_checkpoint(checkpoint, runtime=CPU)
        backward = evaluate_checkpoint(checkpoint, runtime=CPU, time_reversed=True)
    assert forward.loss != backward.loss
    assert (checkpoint.parent / "eval-reversed.json").exists()


PAIRS = ["move_left", "move_right", "grow", "shrink"]  # class 2k + 1 is class 2k backwards


def paired_clips(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` uint8 clips (B, 4, 16, 16, 3) of PAIRS on a flat background, and their labels."""
    rng = np.random.default_rng(seed)
    red, blue = np.array([220, 20, 20], np.float32), np.array([20, 20, 220], np.float32)
    labels = rng.integers(0, len(PAIRS), count)
    clips = []
    for label in labels:
        look = Look(np.full((16, 16, 3), 100, np.float32), 0.0, (Sprite("disc", red, blue),) * 2)
        clips.append(render_clip(PAIRS[label], rng, 4, (16, 16), look=look))
    return torch.from_numpy(np.stack(clips)), torch.from_numpy(labels)


def test_time_paired_classes_swap_on_a_trained_tiny_model() -> None:
    """A tiny model that tells each class from its time-reversed partner: scored on reversed
    clips, it predicts the partner (a mirror would swap move_left / move_right, not grow)."""
    torch.manual_seed(0)
    config = load_config(None, {**TINY, "data.resize": [16, 16]})
    model = build_model(config, len(PAIRS))
    transform = VideoTransform.from_config(config.data, "eval")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    clips, labels = paired_clips(0, 256)
    for step in range(40):
        batch = torch.arange(16 * step, 16 * step + 16) % len(clips)
        loss = torch.nn.functional.cross_entropy(model(transform(clips[batch])), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test, truth = paired_clips(1, 64)
    scores = {
        reverse: score_batch(model, transform, test, contextlib.nullcontext, time_reversed=reverse)
        for reverse in (False, True)
    }
    assert (scores[False].argmax(1) == truth).float().mean() > 0.9  # it learned the classes
    assert (scores[True].argmax(1) == truth ^ 1).float().mean() > 0.9  # reversed: the partner


def test_subset_and_split_options(runs: Path) -> None:
    checkpoint = str(runs / "tiny-split1" / "best.pt")
    result = hmdbattn(
        "eval", "--checkpoint", checkpoint, "--subset", "train", "--split", "2", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["results"][0]
    assert (report["split"], report["subset"]) == (2, "train")


@pytest.mark.parametrize("kind", ["missing", "state_dict", "pickled_code", "not_torch"])
def test_foreign_checkpoints_are_refused_in_one_line(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    if kind == "state_dict":
        torch.save({"weight": torch.zeros(2)}, path)
    elif kind == "pickled_code":
        torch.save({"format": "hmdbattn-checkpoint", "payload": Path("/etc")}, path)
    elif kind == "not_torch":
        path.write_text("hello")
    result = hmdbattn("eval", "--checkpoint", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_train_from_python_returns_history(tiny_dataset: Path, tmp_path: Path) -> None:
    config = load_config(None, tiny_overrides(tiny_dataset, tmp_path, **{"train.epochs": 1}))
    with quiet():
        state = train(config, tmp_path / "py", CPU)
    assert len(state.history) == 1 and state.best_epoch == 1
