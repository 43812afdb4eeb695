"""`hmdbattn export` and `hmdbattn predict --model`: parity with PyTorch, and refused inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from climain import cli
from conftest import tiny_overrides
from torch import nn
from videofiles import write_avi

from hmdbattn import load_config
from hmdbattn.config import DataConfig
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.data.video import open_video
from hmdbattn.deploy.export import export_checkpoint
from hmdbattn.deploy.meta import file_sha256, meta_path
from hmdbattn.deploy.runtime import preprocess
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.train import train
from hmdbattn.predict import TorchScorer, plan_windows

CPU = torch.device("cpu")
HEADS = ("perceiver", "pool")
FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4  # the issue's: max |logit difference| between an export and PyTorch


# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny trained model per head, its exports, a real video


@pytest.fixture(scope="module")
def checkpoints(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """best.pt of a tiny Perceiver model and of a tiny pool-head model (one epoch each)."""
    out = tmp_path_factory.mktemp("export_runs")
    found = {}
    for head in HEADS:
        extra = {"train.name": head, "train.epochs": 1, "model.head": head}
        overrides = tiny_overrides(tiny_dataset, out, **extra)
        train(load_config(None, overrides), out / head, Runtime(CPU), False)
        found[head] = out / head / "best.pt"
    return found


@pytest.fixture(scope="module")
def exports(checkpoints: dict[str, Path]) -> dict[tuple[str, str], Path]:
    """Every head in every format, exported beside its checkpoint (the default --out)."""
    return {
        (head, fmt): export_checkpoint(checkpoints[head], fmt).model
        for head in HEADS
        for fmt in FORMATS
    }


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2 s MPEG-4 AVI at 15 fps (a moving square)."""
    return write_avi(tmp_path_factory.mktemp("export_video") / "clip.avi", num_frames=30, fps=15)


def _run_export(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """The logits of the exported model `path` for the clips `x`, through its own runtime."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"clips": x})[0]
    with torch.inference_mode():
        return torch.jit.load(str(path)).eval()(torch.from_numpy(x)).numpy()


def _video_clips(video: Path, data: DataConfig) -> np.ndarray:
    """The model input for the clips of a real video, as predict cuts and transforms them."""
    opened = open_video(video, data)
    spans = [c for w in plan_windows(opened.video_frames, opened.fps, data) for c in w.clips]
    frames = np.stack([f for f in opened.clips(spans, data.num_frames) if f is not None])
    return VideoTransform.from_config(data, "eval")(torch.from_numpy(frames)).numpy()


# ---------------------------------------------------------------------------------------------
# Parity


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("head", HEADS)
def test_export_logits_equal_pytorch_at_batch_1_and_4(
    checkpoints: dict, exports: dict, video: Path, head: str, fmt: str
) -> None:
    scorer = TorchScorer.from_checkpoint(checkpoints[head], CPU)
    d = scorer.data
    rng = np.random.default_rng(0)
    real = _video_clips(video, d)  # (2, 3, T, crop, crop): the video's two windows
    inputs = [
        rng.standard_normal((batch, 3, d.num_frames, d.crop_size, d.crop_size), np.float32)
        for batch in (1, 4)
    ] + [real[:1], np.concatenate([real, real])]  # a real clip alone, and a batch of 4
    for x in inputs:
        with torch.inference_mode():
            expected = scorer.model(torch.from_numpy(x)).numpy()
        got = _run_export(exports[head, fmt], fmt, x)
        assert got.shape == expected.shape == (len(x), len(scorer.classes))
        assert np.abs(got - expected).max() < TOLERANCE


@pytest.mark.parametrize(
    ("size", "crops"), [((24, 32), 1), ((24, 32), 3), ((40, 24), 3), ((24, 24), 1)]
)
def test_numpy_preprocessing_equals_the_evaluation_transform(size: tuple, crops: int) -> None:
    data = DataConfig(resize=(24, 32), crop_size=16, eval_crops=crops, num_frames=4)
    clips = np.random.default_rng(1).integers(0, 256, (3, 4, *size, 3), dtype=np.uint8)
    expected = VideoTransform.from_config(data, "eval")(torch.from_numpy(clips)).numpy()
    got = preprocess(clips, data)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-6


def _predict_json(capsys, *args: object) -> dict:
    code, out, err = cli(capsys, "predict", *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_with_an_export_equals_predict_with_the_checkpoint(
    capsys, checkpoints: dict, exports: dict, video: Path, fmt: str
) -> None:
    for windows in ([], ["--window", "1", "--stride", "0.5"]):
        args = [video, "--top-k", "3", *windows]
        expected = _predict_json(capsys, *args, "--checkpoint", checkpoints["perceiver"])
        got = _predict_json(capsys, *args, "--model", exports["perceiver", fmt])
        assert got["model"] == str(exports["perceiver", fmt])
        [want], [have] = expected["results"], got["results"]
        _assert_close(have, want)


def _assert_close(have: object, want: object, key: str = "") -> None:
    """The same JSON, probabilities and confidences within TOLERANCE, everything else equal."""
    if isinstance(want, dict):
        assert isinstance(have, dict) and set(have) == set(want), key
        for k in want:
            _assert_close(have[k], want[k], k)
    elif isinstance(want, list):
        assert isinstance(have, list) and len(have) == len(want), key
        for h, w in zip(have, want, strict=True):
            _assert_close(h, w, key)
    elif key in ("probability", "confidence"):
        assert abs(have - want) < TOLERANCE, (key, have, want)  # type: ignore[operator]
    else:
        assert have == want, (key, have, want)


@pytest.mark.slow
def test_onnx_predict_does_not_import_torch(exports: dict, video: Path) -> None:
    script = (
        "import sys\nfrom hmdbattn.cli import main\n"
        f"sys.argv = ['hmdbattn', 'predict', {str(video)!r}, '--model', "
        f"{str(exports['pool', 'onnx'])!r}, '--json']\n"
        "try:\n    main()\nfinally:\n"
        "    print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision')), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HMDBATTN_")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["top_k"]
    assert done.stderr.strip().splitlines()[-1] == "loaded: []"


@pytest.mark.slow
def test_export_json_describes_the_model(capsys, checkpoints: dict, tmp_path: Path) -> None:
    out = tmp_path / "deploy" / "model.onnx"
    code, stdout, err = cli(
        capsys, "export", "--checkpoint", checkpoints["pool"], "--out", out, "--frames", "2",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    printed = json.loads(stdout)
    meta = json.loads(meta_path(out).read_text())
    classes = torch.load(checkpoints["pool"], weights_only=True)["classes"]
    assert meta["format"] == "hmdbattn-export" and meta["model_format"] == "onnx"
    assert meta["classes"] == printed["classes"] == classes
    assert meta["num_frames"] == 2 and meta["crop_size"] == 16 and meta["resize"] == [24, 32]
    assert meta["clip_duration"] == 1.0 and meta["eval_crops"] == 1 and meta["opset"] == 18
    assert meta["layout"] == "B, C, T, H, W"
    assert meta["input"]["shape"] == ["batch", 3, 2, 16, 16]
    assert meta["torch_version"] == torch.__version__ and meta["model_sha256"] == file_sha256(out)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 2, 16, 16]
    assert printed["max_abs_diff"] < TOLERANCE


# ---------------------------------------------------------------------------------------------
# Refused inputs: one line, exit 1, no traceback


def _refused(capsys, *args: object) -> str:
    """Run the CLI; assert it failed with exit 1 and one line on stderr; that line."""
    code, out, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1, (code, out, err)
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.slow
def test_bad_export_requests_are_one_line(capsys, checkpoints: dict, tmp_path: Path) -> None:
    state_dict = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 2).state_dict(), state_dict)
    ckpt = checkpoints["pool"]
    cases = [
        (("--checkpoint", tmp_path / "missing.pt"), "missing.pt: file not found"),
        (("--checkpoint", state_dict), "not an hmdbattn checkpoint"),
        (("--checkpoint", ckpt, "--frames", "0"), "--frames 0: a clip needs at least 1 frame"),
        (("--checkpoint", ckpt, "--format", "tflite"), "--format 'tflite' is not known"),
        (("--checkpoint", ckpt, "--format", "torchscript", "--out", ckpt), "checkpoint itself"),
    ]
    before = file_sha256(ckpt)
    for args, message in cases:
        assert message in _refused(capsys, "export", *args)
    assert not list(tmp_path.glob("*.onnx*")) and file_sha256(ckpt) == before


def _copy_export(source: Path, target: Path, blob: bytes | None = None, **changes) -> Path:
    """`blob` (default: the model of `source`) at `target`, with the JSON of `source` changed.

    The JSON's SHA-256 is that of the new file, so only `changes` make it not match.
    """
    target.write_bytes(source.read_bytes() if blob is None else blob)
    meta = json.loads(meta_path(source).read_text())
    meta.update(model_sha256=file_sha256(target), **changes)
    meta_path(target).write_text(json.dumps(meta))
    return target


@pytest.mark.slow
def test_files_that_are_not_our_export_are_one_line(
    capsys, exports: dict, video: Path, tmp_path: Path
) -> None:
    onnx_model, ts_model = exports["pool", "onnx"], exports["pool", "torchscript"]
    classes = json.loads(meta_path(onnx_model).read_text())["classes"]
    random_onnx = tmp_path / "random.onnx"
    random_onnx.write_bytes(np.random.default_rng(0).bytes(3000))
    state_dict = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 2).state_dict(), state_dict)
    not_json = _copy_export(onnx_model, tmp_path / "not_json.onnx")
    meta_path(not_json).write_text("{ not json")
    stale = _copy_export(onnx_model, tmp_path / "stale.onnx")
    # The model replaced by another export of the same shapes and classes, its JSON not.
    stale.write_bytes(exports["perceiver", "onnx"].read_bytes())
    cases = {
        tmp_path / "missing.onnx": "missing.onnx: file not found",
        random_onnx: "random.onnx.json is not beside it",
        state_dict: "weights.pt.json is not beside it",
        not_json: "not valid JSON",
        stale: "does not match stale.onnx.json",
        _copy_export(onnx_model, tmp_path / "a.onnx", format="other"): "not an hmdbattn export",
        _copy_export(onnx_model, tmp_path / "b.onnx", version=9): "export version 9 is not",
        _copy_export(onnx_model, tmp_path / "c.onnx", classes=None): (
            "damaged export description (classes"
        ),
        _copy_export(onnx_model, tmp_path / "d.onnx", classes=classes[:-1]): (
            f"outputs {len(classes)} classes but its JSON lists {len(classes) - 1}"
        ),
        _copy_export(onnx_model, tmp_path / "e.onnx", num_frames=8): "takes clips of shape",
        _copy_export(onnx_model, tmp_path / "f.onnx", random_onnx.read_bytes()): (
            "not a readable ONNX model"
        ),
        _copy_export(ts_model, tmp_path / "g.pt", state_dict.read_bytes()): (
            "not a TorchScript model"
        ),
        _copy_export(ts_model, tmp_path / "h.pt", classes=classes[:-1]): "outputs 4 classes",
    }
    for model, message in cases.items():
        line = _refused(capsys, "predict", video, "--model", model)
        assert message in line and str(model.name) in line, (model, line)


@pytest.mark.slow
def test_predict_model_options_are_one_line(
    capsys, checkpoints: dict, exports: dict, video: Path, tmp_path: Path
) -> None:
    onnx_model = exports["pool", "onnx"]
    assert "neither was given" in _refused(capsys, "predict", video)
    both = ("--model", onnx_model, "--checkpoint", checkpoints["pool"])
    assert "not both" in _refused(capsys, "predict", video, *both)
    explain = ("--model", onnx_model, "--explain", tmp_path / "x.png")
    assert "--explain needs --checkpoint" in _refused(capsys, "predict", video, *explain)


@pytest.mark.slow
def test_missing_onnx_extra_gives_the_install_hint(
    monkeypatch, capsys, checkpoints: dict, exports: dict, video: Path
) -> None:
    hint = "pip install -e '.[onnx]'"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime: ImportError
    line = _refused(capsys, "predict", video, "--model", exports["pool", "onnx"])
    assert line.endswith(hint) and "ONNX" in line
    monkeypatch.setitem(sys.modules, "onnx", None)
    line = _refused(capsys, "export", "--checkpoint", checkpoints["pool"])
    assert line.endswith(hint) and "export" in line
