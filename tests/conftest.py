"""Shared test fixtures."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # test helpers: videofiles, rar4


@pytest.fixture(autouse=True)
def _no_hmdbattn_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the environment variables they set themselves."""
    import os

    for name in list(os.environ):
        if name.startswith("HMDBATTN_"):
            monkeypatch.delenv(name)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


# A tiny model and clip geometry that train in seconds on a CPU.
TINY = {
    "data.resize": [24, 32],
    "data.crop_size": 16,
    "data.num_frames": 4,
    "data.clip_duration": 1.0,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "model.cnn_blocks": 1,
    "model.num_latents": 8,
    "model.latent_dim": 32,
    "model.latent_heads": 2,
    "model.latent_dim_head": 16,
    "model.cross_dim_head": 16,
    "model.num_freq_bands": 2,
    "train.epochs": 2,
    "train.scheduler": "none",
    "eval.batch_size": 8,
}


def tiny_overrides(root: Path, out_dir: Path, **extra: object) -> dict[str, object]:
    """TINY for the dataset at `root`, runs under `out_dir`, plus `extra` dotted keys."""
    return {**TINY, "data.root": str(root), "train.out_dir": str(out_dir), **extra}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A preprocessed synthetic HMDB51 of 4 classes x 8 one-second videos at 64x48."""
    from hmdbattn import load_config
    from hmdbattn.data.preprocess import preprocess
    from hmdbattn.data.synthetic import generate
    from hmdbattn.report import quiet

    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    with quiet():
        generate(root, classes=4, videos_per_class=8, seconds=1.0, size=(64, 48), fps=15)
        preprocess(load_config(None, tiny_overrides(root, root)), workers=0)
    return root


def set_args(overrides: dict[str, object]) -> list[str]:
    """``--set key=value`` arguments for the CLI, values written as TOML-readable text."""
    args: list[str] = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value)
        args += ["--set", f"{key}={text}"]
    return args


def default_ctrl_c() -> None:
    """Popen's preexec_fn: the child acts on SIGINT even when the suite was started with it
    ignored (e.g. `cmd &` from a script), which it would otherwise inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
