"""Heads on cached CNN features: extract-features, data.source = "features", and their contract.

One set of features of the tiny dataset is extracted once for the module (2 clips per video);
the tests train on it, evaluate its checkpoints on frames, refuse mismatched settings and kill
an extraction half-way to see a rerun finish it as if it had never stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from climain import cli
from conftest import set_args, tiny_overrides

from hmdbattn import load_config
from hmdbattn.checkpoint import load_checkpoint
from hmdbattn.data.datasets import build_eval_dataset
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.evaluate import score_clips
from hmdbattn.engine.extract import extract_features
from hmdbattn.models.classifier import model_from_checkpoint
from hmdbattn.report import quiet

CPU = Runtime(torch.device("cpu"))
CLIPS = {"data.feature_clips": 2}


def overrides(root: Path, tmp: Path, features: Path, **extra: object) -> dict[str, object]:
    return tiny_overrides(root, tmp, **{**CLIPS, "data.features_dir": str(features), **extra})


@pytest.fixture(scope="module")
def features(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset's features, extracted by an uninterrupted run."""
    folder = tmp_path_factory.mktemp("features") / "features"
    config = load_config(None, overrides(tiny_dataset, folder.parent, folder))
    with quiet():
        extract_features(config, device=torch.device("cpu"))
    return folder


def npy_files(folder: Path) -> dict[str, np.ndarray]:
    return {
        str(p.relative_to(folder)): np.load(p, allow_pickle=False)
        for p in sorted(folder.rglob("*.npy"))
    }


@pytest.mark.slow
def test_features_checkpoint_scores_alike_on_frames(capsys, tiny_dataset, features, tmp_path):
    # Trained on features (the CNN-only keys ignored with a note), then scored on the frames
    # the features were made from: the same accuracy, logits within fp16 rounding.
    sets = overrides(tiny_dataset, tmp_path, features, **{"data.source": "features"})
    sets |= {"train.name": "heads", "train.cnn_lr": 1e-2, "train.freeze_cnn_epochs": 1}
    code, _, err = cli(capsys, "train", *set_args(sets))
    assert code == 0, err
    note = "train.freeze_cnn_epochs = 1 and train.cnn_lr = 0.01 ignored: with data.source = "
    note += '"features" the CNN is frozen'
    assert note in " ".join(err.split())
    best = tmp_path / "heads" / "best.pt"
    ckpt = load_checkpoint(best)
    assert any(k.startswith("backbone.") for k in ckpt["model"])  # the whole model is kept
    recorded = ckpt["state"]["history"][ckpt["state"]["best_epoch"] - 1]

    code, out, err = cli(capsys, "eval", "--checkpoint", best, "--set=data.source=cache", "--json")
    assert code == 0, err
    on_frames = json.loads(out)["results"][0]
    assert on_frames["video_vote_top1"] == recorded["val_video_acc"]
    assert on_frames["clip_top1"] == recorded["val_clip_acc"]

    logits = {}
    for source in ("features", "cache"):
        config = load_config(None, {**sets, "data.source": source})
        model = model_from_checkpoint(ckpt, config, best)
        with quiet():
            dataset = build_eval_dataset(config).dataset
            logits[source] = score_clips(model, dataset, config, CPU).logits
    assert logits["features"].argmax(1).tolist() == logits["cache"].argmax(1).tolist()
    torch.testing.assert_close(logits["features"], logits["cache"], rtol=0, atol=2e-2)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model.cnn_blocks": 2}, "made with model.cnn_blocks = 1 (this config: 2)"),
        ({"data.num_frames": 8}, "made with data.num_frames = 4 (this config: 8)"),
        ({"data.crop_size": 12}, "made with data.crop_size = 16 (this config: 12)"),
        # Another CNN: a random one from another seed (the same for other weights or model.init)
        ({"train.seed": 5}, "another CNN's weights (train.seed = 0 (this config: 5))"),
    ],
)
def test_mismatched_features_are_refused_naming_the_key(
    capsys, tiny_dataset, features, tmp_path, change, named
):
    sets = overrides(tiny_dataset, tmp_path, features, **{"data.source": "features", **change})
    code, _, err = cli(capsys, "train", *set_args(sets))
    assert code == 1
    line = " ".join(err.split())
    assert named in line and "rerun `hmdbattn extract-features`" in line, err
    assert "Traceback" not in err


def test_other_weights_are_refused(capsys, tiny_dataset, features, tmp_path):
    # A state dict of r2plus1d_18 given as model.weights: another CNN than the features'.
    from torchvision.models.video import r2plus1d_18

    torch.manual_seed(1)
    weights = tmp_path / "r2plus1d.pth"
    torch.save(r2plus1d_18().state_dict(), weights)
    sets = overrides(tiny_dataset, tmp_path, features, **{"data.source": "features"})
    code, _, err = cli(capsys, "train", *set_args({**sets, "model.weights": str(weights)}))
    assert code == 1
    assert f"another CNN's weights (model.weights = None (this config: '{weights}'))" in err


def test_extracting_other_settings_into_the_folder_is_refused(capsys, tiny_dataset, features):
    before = npy_files(features)
    sets = overrides(tiny_dataset, features.parent, features, **{"model.cnn_blocks": 2})
    code, _, err = cli(capsys, "extract-features", *set_args(sets))
    assert code == 1
    assert "holds features made with model.cnn_blocks = 1 (this config: 2)" in " ".join(err.split())
    after = npy_files(features)
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)


# Runs `hmdbattn ARGS...` and SIGKILLs it half-way through writing the argv[1]-th video's file.
KILL_AT_FILE = """
import os, signal, sys
import hmdbattn.engine.extract as extract
from hmdbattn.fileio import atomic_writer
real, count, at = extract.write_rows, [0], int(sys.argv[1])
def dying(path, rows):
    count[0] += 1
    if count[0] == at:
        with atomic_writer(path) as f:
            f.write(b"\\x93NUMPY half a file")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return real(path, rows)
extract.write_rows = dying
from hmdbattn.cli import main
sys.argv = ["hmdbattn", *sys.argv[2:]]
main()
"""


@pytest.mark.slow
def test_killed_extraction_resumes_to_the_same_files(capsys, tiny_dataset, features, tmp_path):
    folder = tmp_path / "features"
    sets = set_args(overrides(tiny_dataset, tmp_path, folder))
    args = ["extract-features", "--device", "cpu", *sets]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_FILE, "7", *args], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()
    assert len(list(folder.rglob("*.npy"))) == 6 and list(folder.rglob(".*.tmp"))

    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["skipped"], summary["extracted"]) == (6, 24 - 6)
    assert not list(folder.rglob(".*.tmp"))
    resumed, reference = npy_files(folder), npy_files(features)
    assert resumed.keys() == reference.keys() and len(reference) == 24
    assert all(np.array_equal(resumed[k], reference[k]) for k in reference)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] is True


@pytest.mark.slow
def test_a_features_run_from_model_init_resumes(capsys, tiny_dataset, tmp_path):
    # A resumed run's CNN comes from last.pt, not model.init: it is still the features' CNN,
    # so the run goes on; going on from the frames instead is refused, naming data.source.
    source = tiny_overrides(tiny_dataset, tmp_path, **{"train.name": "source", "train.epochs": 1})
    code, _, err = cli(capsys, "train", *set_args(source))
    assert code == 0, err
    init = {"model.init": str(tmp_path / "source" / "best.pt"), "model.init_parts": ["backbone"]}
    heads = {**init, "data.source": "features", "train.name": "heads", "train.epochs": 1}
    sets = set_args(overrides(tiny_dataset, tmp_path, tmp_path / "features", **heads))
    assert cli(capsys, "extract-features", *sets)[0] == 0
    code, _, err = cli(capsys, "train", *sets)
    assert code == 0, err

    run = str(tmp_path / "heads")
    more = ("--set", "train.epochs=2")
    code, _, err = cli(capsys, "train", "--resume", run, *more, "--set", "data.source=cache")
    assert code == 1
    assert "trained with data.source = 'features' (now 'cache')" in " ".join(err.split())
    code, _, err = cli(capsys, "train", "--resume", run, *more)
    assert code == 0, err
    assert len((tmp_path / "heads" / "metrics.jsonl").read_text().splitlines()) == 2
