"""Self-supervised pretraining: masks, objectives, the run directory, resume and transfer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, set_args, tiny_overrides

from hmdbattn import load_config
from hmdbattn.checkpoint import load_checkpoint
from hmdbattn.data.datasets import FrameReader
from hmdbattn.data.hmdb51 import scan_dataset
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.pretrain import pretrain
from hmdbattn.engine.train import train
from hmdbattn.errors import UserError
from hmdbattn.models.classifier import build_model
from hmdbattn.models.masking import masked_count, over_time, split_indices, tube_mask
from hmdbattn.models.pretrain import build_pretrainer, mask_grid
from hmdbattn.report import quiet

CPU = Runtime(torch.device("cpu"))
TIMING = ("seconds", "clips_per_s")
MODES = [
    {"pretrain.mode": "video", "pretrain.target": "pixels"},
    {"pretrain.mode": "video", "pretrain.target": "ema"},
    {"pretrain.mode": "tokens"},
]


def pretrain_config(root: Path, out: Path, name: str, **extra: object):
    keys = {"train.name": name, "train.lr": 3e-3, "pretrain.patch_size": 4, **extra}
    return load_config(None, tiny_overrides(root, out, **keys))


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_tube_masks_hide_the_ratio_and_are_constant_over_time() -> None:
    mask = tube_mask(5, (6, 8), 0.75, torch.Generator().manual_seed(0))
    assert mask.shape == (5, 6, 8)
    assert mask.flatten(1).sum(1).tolist() == [36] * 5  # 75% of 48 cells, in every clip
    assert len({tuple(m.flatten().tolist()) for m in mask}) == 5  # each clip its own cells
    flat = over_time(mask, 4).view(5, 4, 6, 8)  # (B, T, h, w)
    assert all(torch.equal(flat[:, t], mask) for t in range(4))  # the same cells every frame
    again = tube_mask(5, (6, 8), 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)  # from the generator alone: a resumed run masks alike
    assert masked_count(4, 0.99) == 3 and masked_count(4, 0.01) == 1
    hidden, visible = split_indices(over_time(mask, 4))
    assert hidden.shape == (5, 144) and visible.shape == (5, 48)
    assert torch.equal(
        torch.cat([hidden, visible], 1).sort(1).values, torch.arange(192).expand(5, -1)
    )
    assert bool(over_time(mask, 4).gather(1, hidden).all())


def test_pixel_masking_hides_exactly_the_masked_cells() -> None:
    config = load_config(None, {**TINY, "pretrain.patch_size": 4})
    pre = build_pretrainer(build_model(config, 4), config)
    seen: list[torch.Tensor] = []
    pre.model.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(2, 3, 4, 16, 16) + 5.0  # nothing is 0 before masking
    mask = tube_mask(2, mask_grid(config, pre.model), 0.5, torch.Generator().manual_seed(1))
    pre(x, mask)
    hidden = seen[0] == 0  # (B, 3, T, H, W)
    cells = hidden.all(1).view(2, 4, 4, 4, 4, 4).all(-1).all(-2)  # (B, T, h, w): whole cells
    assert all(torch.equal(cells[:, t], mask) for t in range(4))
    assert int(hidden.sum()) == int(mask.sum()) * 3 * 4 * 16  # nothing else was touched


@pytest.mark.parametrize("keys", MODES, ids=lambda k: "-".join(map(str, k.values())))
def test_every_objective_learns_on_a_fixed_batch(keys) -> None:
    torch.manual_seed(0)
    config = load_config(None, {**TINY, "pretrain.patch_size": 4, **keys})
    pre = build_pretrainer(build_model(config, 4), config)
    params = [p for p in pre.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    x = torch.randn(4, 3, 4, 16, 16)
    mask = tube_mask(4, mask_grid(config, pre.model), 0.75, torch.Generator().manual_seed(0))
    losses = []
    for _ in range(25):
        loss = pre(x, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pre.after_step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_tokens_mode_keeps_the_cnn_frozen() -> None:
    config = load_config(None, {**TINY, "pretrain.mode": "tokens"})
    pre = build_pretrainer(build_model(config, 4), config)
    before = {k: v.clone() for k, v in pre.model.backbone.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in pre.parameters() if p.requires_grad], lr=1e-2)
    pre.train()
    x = torch.randn(4, 3, 4, 16, 16)
    mask = tube_mask(4, mask_grid(config, pre.model), 0.5, torch.Generator().manual_seed(0))
    pre(x, mask).backward()
    optimizer.step()
    after = pre.model.backbone.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after)  # BatchNorm statistics too


def test_pretraining_needs_cross_attention() -> None:
    config = load_config(None, {**TINY, "model.head": "pool"})
    with pytest.raises(UserError, match=r"model\.head"):
        build_pretrainer(build_model(config, 4), config)


def test_run_directory_loss_falls_and_test_videos_are_never_read(
    tiny_dataset, tmp_path, monkeypatch
) -> None:
    read: list[str] = []
    original = FrameReader.read
    monkeypatch.setattr(
        FrameReader,
        "read",
        lambda self, v, i, out=None: read.append(v.path) or original(self, v, i, out),
    )
    config = pretrain_config(tiny_dataset, tmp_path, "p", **{"train.epochs": 4})
    with quiet():
        result = pretrain(config, tmp_path / "p", CPU)
    run = tmp_path / "p"
    assert result["last_loss"] < result["first_loss"]
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    index = scan_dataset(tiny_dataset)
    test = {v.path for v in index.subset(1, "test")}
    allowed = {v.path for s in ("train", "unused") for v in index.subset(1, s)}
    used = set((run / "videos.txt").read_text().splitlines())
    assert used == allowed and not used & test
    assert set(read) <= allowed and not set(read) & test
    assert len(list((run / "pictures").glob("epoch-*.png"))) == 4
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["kind"] == "pretrain" and ckpt["classes"] is None
    assert not any(k.startswith("head.classifier.") for k in ckpt["model"])
    assert load_config(run / "config.toml").pretrain.mode == "video"


def test_fine_tuning_starts_from_the_pretrained_weights(tiny_dataset, tmp_path) -> None:
    with quiet():
        pretrain(
            pretrain_config(tiny_dataset, tmp_path, "p", **{"train.epochs": 1}), tmp_path / "p", CPU
        )
        pretrained = load_checkpoint(tmp_path / "p" / "last.pt")["model"]
        keys = {"train.name": "ft", "train.epochs": 1, "train.lr": 1e-12}
        keys["model.init"] = str(tmp_path / "p" / "last.pt")
        config = load_config(None, tiny_overrides(tiny_dataset, tmp_path, **keys))
        train(config, tmp_path / "ft", CPU)
    tuned = load_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    for key, value in pretrained.items():  # lr ~ 0: only BatchNorm statistics may move
        if "running" not in key and "num_batches" not in key:
            assert torch.allclose(tuned[key], value, atol=1e-6), key


def _pretrain_cli(root: Path, out: Path, name: str) -> list[str]:
    keys = {"train.name": name, "train.epochs": 3, "train.lr": 3e-3, "pretrain.patch_size": 4}
    keys |= {"model.attn_dropout": 0.1, "model.ff_dropout": 0.1, "pretrain.pictures": 0}
    return [
        sys.executable,
        "-m",
        "hmdbattn",
        "pretrain",
        *set_args(tiny_overrides(root, out, **keys)),
    ]


def test_killed_and_resumed_matches_uninterrupted(tiny_dataset, tmp_path) -> None:
    subprocess.run(_pretrain_cli(tiny_dataset, tmp_path, "whole"), check=True, capture_output=True)
    proc = subprocess.Popen(
        _pretrain_cli(tiny_dataset, tmp_path, "killed"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed = tmp_path / "killed"
    deadline = time.time() + 120
    while not (killed / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(metrics(killed)) < 3, "the kill came too late to interrupt the run"
    resumed = subprocess.run(
        [sys.executable, "-m", "hmdbattn", "pretrain", "--resume", str(killed), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)[str(killed)]["epochs"] == 3
    assert metrics(killed) == metrics(tmp_path / "whole")
    a = load_checkpoint(killed / "last.pt")
    b = load_checkpoint(tmp_path / "whole" / "last.pt")
    for part in ("model", "decoder"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_a_train_run_is_not_resumed_as_pretraining(tiny_dataset, tmp_path) -> None:
    keys = {"train.name": "t", "train.epochs": 1}
    with quiet():
        train(
            load_config(None, tiny_overrides(tiny_dataset, tmp_path, **keys)), tmp_path / "t", CPU
        )
    before = (tmp_path / "t" / "config.toml").read_bytes()
    with pytest.raises(UserError, match="not a pretraining checkpoint"), quiet():
        pretrain(pretrain_config(tiny_dataset, tmp_path, "t"), tmp_path / "t", CPU, resume=True)
    assert (tmp_path / "t" / "config.toml").read_bytes() == before
