"""Deployment on the CPU: PyTorch against ONNX Runtime, per clip and from a cold start.

For each head (default: the pool baseline and configs/hmdb51.toml's Perceiver head) a model of
the research's size (R(2+1)D-18, 8 blocks, 16x112x112 clips, 51 classes; random weights, which
cost the same as trained ones) is saved as a checkpoint of ours and exported with
``hmdbattn export`` (`deploy.export.export_checkpoint`). Then:

- latency: milliseconds per clip of a forward at batch 1 and 4 (the same clip repeated), the
  PyTorch model against the ONNX Runtime session, both on ``--threads`` threads, in
  interleaved rounds after one warm-up (`common.interleaved`); wall and CPU time are shown,
  the ratio is the median of the rounds' CPU-time ratios, as in the other benchmarks;
- cold start: ``python -m hmdbattn predict clip.avi --json`` from process start to the first
  byte of its result (benchmarks/predict.py's timer), with ``--checkpoint best.pt`` against
  ``--model best.onnx``, on a 5-second 320x240 30 fps AVI, in interleaved rounds after one
  untimed run of each.

The last line, ``ratios: ...``, gives PyTorch / ONNX Runtime for each (above 1 = ONNX Runtime
is faster). ``--tiny`` runs everything at the test suite's size (1 block, 4x16x16, a narrow
head): seconds, for a smoke test; its figures mean nothing.

    python benchmarks/export.py [--heads pool,hmdb51] [--repeats 3] [--threads N] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from common import HEADS, Size, head_config, interleaved, parse_list
from predict import TINY_HEAD as PREDICT_TINY_HEAD  # benchmarks/predict.py
from predict import make_clip, time_to_first_output

from hmdbattn.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, atomic_save
from hmdbattn.config import Config
from hmdbattn.deploy.export import export_checkpoint
from hmdbattn.models.classifier import build_model

RESEARCH = Size(blocks=8, frames=16, crop=112, batch=1)
TINY = Size(blocks=1, frames=4, crop=16, batch=1)
# The test suite's narrow head (tests/conftest.py TINY), for --tiny.
TINY_HEAD = {**PREDICT_TINY_HEAD, "data.clip_duration": 1.0}
NUM_CLASSES = 51
BATCHES = (1, 4)


def save_checkpoint(config: Config, path: Path) -> Path:
    """A checkpoint of ours (what `hmdbattn train` writes, less the optimiser) of a new model."""
    model = build_model(config, NUM_CLASSES).eval()
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "classes": [f"class_{i:02d}" for i in range(NUM_CLASSES)],
        "config": config.model_dump(mode="json"),
    }
    atomic_save(ckpt, path)
    return path


def latency_steps(checkpoint: Path, onnx_path: Path, threads: int) -> dict[str, object]:
    """Steps of one forward each: ``torch b1``, ``onnx b1``, ``torch b4``, ``onnx b4``."""
    from hmdbattn.predict import TorchScorer

    scorer = TorchScorer.from_checkpoint(checkpoint, torch.device("cpu"))
    d = scorer.data
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle threads sleep instead of spinning: spinning ONNX Runtime threads would take the CPU
    # from the PyTorch step timed next to them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(
        str(onnx_path), options, providers=["CPUExecutionProvider"]
    )
    clip = np.random.default_rng(0).standard_normal(
        (1, 3, d.num_frames, d.crop_size, d.crop_size), np.float32
    )
    steps: dict[str, object] = {}
    for batch in BATCHES:
        x = np.repeat(clip, batch, axis=0)  # the same clip, `batch` times
        tensor = torch.from_numpy(x)

        def forward(t: torch.Tensor = tensor) -> None:
            with torch.inference_mode():
                scorer.model(t)

        steps[f"torch b{batch}"] = forward
        steps[f"onnx b{batch}"] = lambda x=x: session.run(None, {"clips": x})
    return steps


def latency(checkpoint: Path, onnx_path: Path, rounds: int, threads: int) -> dict[str, float]:
    """Print ms per clip of each runtime and batch; the PyTorch / ONNX Runtime ratios."""
    steps = latency_steps(checkpoint, onnx_path, threads)
    times = interleaved(steps, rounds, 1, torch.device("cpu"))  # type: ignore[arg-type]
    ratios = {}
    for batch in BATCHES:
        for runtime in ("torch", "onnx"):
            name = f"{runtime} b{batch}"
            wall, cpu = (1000 * times.seconds(name, clock) / batch for clock in ("wall", "cpu"))
            label = "PyTorch" if runtime == "torch" else "ONNX Runtime"
            print(f"  {label:<13} batch {batch}: {wall:8.1f} ms/clip wall, {cpu:8.1f} ms CPU")
        ratios[f"b{batch}"] = times.ratio(f"torch b{batch}", f"onnx b{batch}")
    return ratios


def cold_start(video: Path, checkpoint: Path, onnx_path: Path, rounds: int) -> float:
    """Print predict's cold start with each; the median of the rounds' checkpoint / ONNX."""
    base = [sys.executable, "-m", "hmdbattn", "predict", str(video), "--json"]
    commands = {
        "checkpoint": [*base, "--checkpoint", str(checkpoint)],
        "onnx": [*base, "--model", str(onnx_path)],
    }
    for command in commands.values():  # untimed: fills the page cache with the libraries
        time_to_first_output(command)
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for r in range(rounds):  # interleaved, the order alternating
        for name in list(commands)[:: 1 if r % 2 == 0 else -1]:
            seconds[name].append(time_to_first_output(commands[name])[0])
    for name, label in (("checkpoint", "--checkpoint best.pt"), ("onnx", "--model best.onnx")):
        print(f"  predict {label:<22} {statistics.median(seconds[name]):6.2f} s")
    pairs = zip(seconds["checkpoint"], seconds["onnx"], strict=True)
    return statistics.median(a / b for a, b in pairs)


def bench_head(head: str, size: Size, folder: Path, video: Path, args: argparse.Namespace):
    """Export one head and print its figures; its ratios by name."""
    sets = {"data.clip_duration": 2.0, **(TINY_HEAD if args.tiny else {})}
    config = head_config(head, size, sets)
    checkpoint = save_checkpoint(config, folder / head / "best.pt")
    done = export_checkpoint(checkpoint, "onnx")
    megabytes = done.model.stat().st_size / 2**20
    print(
        f"\n== {head}: {size.blocks} blocks, {size.frames}x{size.crop}x{size.crop}, "
        f"{NUM_CLASSES} classes; ONNX {megabytes:.1f} MiB, exported in {done.seconds:.1f} s "
        f"(max |logit difference| {done.max_abs_diff:.1e})"
    )
    ratios = {}
    for name, value in latency(checkpoint, done.model, args.repeats, args.threads).items():
        ratios[f"{head} latency torch/onnx {name}"] = value
    start = cold_start(video, checkpoint, done.model, args.repeats)
    ratios[f"{head} cold start checkpoint/onnx"] = start
    return ratios


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run every head, print the figures and the ratio line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default="pool,hmdb51", help="of: " + ",".join(HEADS))
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per figure")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    parser.add_argument("--tiny", action="store_true", help="the test suite's size (a smoke test)")
    args = parser.parse_args(argv)
    args.repeats = max(1, args.repeats)
    torch.set_num_threads(args.threads)
    heads = parse_list(args.heads, HEADS, "--heads")
    size = TINY if args.tiny else RESEARCH
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"export: CPU, {args.threads} thread(s) of {os.cpu_count()} cores, load average {load}; "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
        f"median of {args.repeats} interleaved rounds"
    )
    ratios: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hmdbattn-export-") as tmp:
        folder = Path(tmp)
        video = make_clip(folder / "clip.avi")
        print("cold start clip: 5 s 320x240 30 fps AVI")
        for head in heads:
            ratios.update(bench_head(head, size, folder, video, args))
    print(f"\n(all figures in {time.perf_counter() - started:.0f} s)")
    print("ratios: " + ", ".join(f"{name} {value:.2f}x" for name, value in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
