"""Cold start of ``hmdbattn predict``: process start to first result, against its floor.

Times, each in a fresh process of this interpreter, on a 5-second 320x240 30 fps MPEG-4 AVI
(a synthetic HMDB51-like clip):

- predict: ``python -m hmdbattn predict clip.avi --checkpoint CKPT --json``, from process
  start to the first byte of its result on stdout;
- floor: importing torch and torchvision, building the same model from the checkpoint's
  config, loading its weights and running one forward on the same input (every window and
  crop of the clip at once), from process start to the logits;
- phases: where predict's time goes (imports, model load, decode, forward), timed inside one
  more fresh process doing predict's steps one by one.

Without ``--checkpoint`` it makes one: a small model (research clip geometry: 16 frames from
2 s, resize 128x171, crop 112; 1 CNN block, a small Perceiver head) trained for one epoch on a
tiny synthetic dataset in a temporary folder. After one untimed warm-up, predict and the floor
run in ``--repeats`` interleaved rounds; each figure is a median over rounds, and the last line,
``ratio: <x>``, the median of the rounds' predict / floor. ``--tiny`` makes the checkpoint at
the test suite's tiny size (4 frames of 16x16, a narrow head): seconds, for a smoke test; its
figures mean nothing.

    python benchmarks/predict.py [--checkpoint FILE] [--repeats 3] [--imports] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# A small model at the research's clip geometry (data defaults), quick to train on a CPU.
SMALL_MODEL = {
    "model.cnn_blocks": 1,
    "model.num_latents": 64,
    "model.latent_dim": 256,
    "model.latent_heads": 4,
    "train.epochs": 1,
    "train.scheduler": "none",
    "train.tensorboard": False,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "eval.batch_size": 8,
}
# The test suite's narrow attention head (tests/conftest.py TINY).
TINY_HEAD = {
    "model.num_latents": 8,
    "model.latent_dim": 32,
    "model.latent_heads": 2,
    "model.latent_dim_head": 16,
    "model.cross_dim_head": 16,
    "model.num_freq_bands": 2,
}
# The test suite's tiny model and clips (tests/conftest.py): every step runs, in seconds.
TINY_MODEL = {
    **SMALL_MODEL,
    **TINY_HEAD,
    "data.resize": [24, 32],
    "data.crop_size": 16,
    "data.num_frames": 4,
    "data.clip_duration": 1.0,
}

# The floor: nothing but torch, torchvision, the model's code and one forward.
FLOOR = """
import json, time
t0 = time.perf_counter()
import torch, torchvision
t1 = time.perf_counter()
from hmdbattn.config import load_config
from hmdbattn.models.classifier import build_model
t2 = time.perf_counter()
ckpt = torch.load(CKPT, map_location="cpu", weights_only=True)
config = load_config(None, None, base=ckpt["config"])
mc = config.model.model_copy(update={"pretrained": False, "weights": None})
model = build_model(mc, len(ckpt["classes"]))
model.load_state_dict(ckpt["model"])
model.eval()
d = config.data
t3 = time.perf_counter()
with torch.inference_mode():
    x = torch.randn(CLIPS * d.eval_crops, 3, d.num_frames, d.crop_size, d.crop_size)
    model(x).softmax(-1)
t4 = time.perf_counter()
print(json.dumps({"import torch+torchvision": t1 - t0, "import model code": t2 - t1,
                  "build + load weights": t3 - t2, "forward": t4 - t3}))
"""

# Predict's steps, one by one (what `hmdbattn predict` does for one file).
PHASES = """
import json, time
t0 = time.perf_counter()
import torch, torchvision
t1 = time.perf_counter()
import hmdbattn.cli, hmdbattn.cli.predict, hmdbattn.predict
from hmdbattn.cli import _register
_register()
t2 = time.perf_counter()
from hmdbattn.data.video import open_video
from hmdbattn.predict import Predictor, plan_windows
predictor = Predictor.from_checkpoint(CKPT)
t3 = time.perf_counter()
d = predictor.data
video = open_video(VIDEO, d)
clips = [c for w in plan_windows(video.video_frames, video.fps, d) for c in w.clips]
frames = list(video.clips(clips, d.num_frames))
t4 = time.perf_counter()
predictor.score(frames)
t5 = time.perf_counter()
print(json.dumps({"import torch+torchvision": t1 - t0, "import hmdbattn (cli, predict)": t2 - t1,
                  "load checkpoint + model": t3 - t2, "decode + clips": t4 - t3,
                  "forward": t5 - t4}))
"""


def make_checkpoint(folder: Path, model: dict[str, object] = SMALL_MODEL) -> Path:
    """Train `model` (overrides) for one epoch on a tiny synthetic dataset under `folder`."""
    import torch

    from hmdbattn import load_config
    from hmdbattn.data.preprocess import preprocess
    from hmdbattn.data.synthetic import generate
    from hmdbattn.engine.distributed import Runtime
    from hmdbattn.engine.train import train
    from hmdbattn.report import quiet

    root = folder / "synthetic"
    overrides = {**model, "data.root": str(root), "train.out_dir": str(folder / "runs")}
    config = load_config(None, {**overrides, "train.name": "small"})
    with quiet():
        generate(root, classes=2, videos_per_class=3, seconds=1.0)
        preprocess(config, workers=0)
        train(config, folder / "runs" / "small", Runtime(torch.device("cpu")))
    return folder / "runs" / "small" / "best.pt"


def make_clip(path: Path) -> Path:
    """A 5 s, 320x240, 30 fps MPEG-4 AVI of a synthetic action."""
    from hmdbattn.data.synthetic import render_clip, write_avi

    frames = render_clip("move_right", np.random.default_rng(0), 150, (320, 240))
    write_avi(path, frames, 30)
    return path


def predict_command(video: Path, checkpoint: Path) -> list[str]:
    """The command a user types, for this interpreter."""
    command = [sys.executable, "-m", "hmdbattn", "predict", str(video)]
    return [*command, "--checkpoint", str(checkpoint), "--json"]


def time_to_first_output(command: list[str]) -> tuple[float, str]:
    """Seconds from starting `command` to the first byte on its stdout, and all of stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HMDBATTN_")}
    with tempfile.TemporaryFile() as err:  # a file: a full stderr pipe could block the child
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env)
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        elapsed = time.perf_counter() - start
        out = first + proc.stdout.read()
        proc.wait()
        if proc.returncode != 0 or not first:
            err.seek(0)
            message = err.read().decode(errors="replace")
            raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{message}")
    return elapsed, out.decode()


def run_script(script: str, **values: object) -> tuple[float, dict]:
    """Run `script` (its NAMEs replaced by repr(value)) in a fresh process: (wall s, its JSON)."""
    for name, value in values.items():
        script = script.replace(name, repr(value))
    wall, out = time_to_first_output([sys.executable, "-c", script])
    return wall, json.loads(out.strip().splitlines()[-1])


def import_report(command: list[str], shown: int = 12) -> list[tuple[str, float]]:
    """Seconds `command` spends importing each top-level package (``-X importtime``).

    Each module's own time is added to its package (``torch.nn`` to ``torch``), so the rows
    sum to the whole import time and a package pulled in deep down still shows.
    """
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True
    )
    totals: dict[str, float] = {}
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[0].split(":")[-1].strip().isdigit():
            continue
        package = parts[2].strip().split(".")[0]
        totals[package] = totals.get(package, 0.0) + int(parts[0].split(":")[-1]) / 1e6
    return sorted(totals.items(), key=lambda row: -row[1])[:shown]


def median_run(runs: list[tuple[float, dict]]) -> tuple[float, dict]:
    """The run of median wall time."""
    return sorted(runs, key=lambda run: run[0])[len(runs) // 2]


def run(checkpoint: Path, folder: Path, repeats: int, imports: bool) -> float:
    """Print the figures; return the median over rounds of predict's cold start / the floor."""
    video = make_clip(folder / "clip.avi")
    command = predict_command(video, checkpoint)
    # Not timed: fills the page cache with torch's libraries, and tells the window count.
    _, out = time_to_first_output(command)
    clips = json.loads(out)["results"][0]["num_clips"]
    predicted: list[float] = []
    floors: list[tuple[float, dict]] = []
    # Interleaved rounds: other work on the machine slows both figures of a round alike.
    for _ in range(repeats):
        predicted.append(time_to_first_output(command)[0])
        # The floor runs every clip (and crop) of the video in one forward, as predict does.
        floors.append(run_script(FLOOR, CKPT=str(checkpoint), CLIPS=clips))
    _, phases = run_script(PHASES, CKPT=str(checkpoint), VIDEO=str(video))
    floor_s, floor = median_run(floors)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"clip: 5 s 320x240 30 fps AVI, {clips} window(s)")
    print(f"machine: {os.cpu_count()} CPU cores, load average {load}; median of {repeats} rounds")
    print(f"command: {' '.join(command[:3])} predict clip.avi --checkpoint CKPT --json")
    print(
        f"predict cold start (process start to first result): {statistics.median(predicted):.2f} s"
    )
    print(f"floor (torch + torchvision + one forward of the model): {floor_s:.2f} s")
    for title, parts in (("floor", floor), ("predict, step by step (one run)", phases)):
        print(f"  {title}:")
        for name, seconds in parts.items():
            print(f"    {name:<32}{seconds:8.2f} s")
    if imports:
        print("  import time of predict by package (one run):")
        for name, seconds in import_report(command):
            print(f"    {name:<32}{seconds:8.2f} s")
    return statistics.median(p / f for p, (f, _) in zip(predicted, floors, strict=True))


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, make or take the checkpoint, print the figures and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: train a small model first")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure")
    parser.add_argument("--imports", action="store_true", help="list predict's slow imports")
    parser.add_argument("--tiny", action="store_true", help="make a tiny model (a smoke test)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hmdbattn-predict-") as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            started = time.perf_counter()
            checkpoint = make_checkpoint(folder, TINY_MODEL if args.tiny else SMALL_MODEL)
            size = "tiny" if args.tiny else "small"
            print(f"trained a {size} model in {time.perf_counter() - started:.0f} s")
        ratio = run(checkpoint, folder, max(1, args.repeats), args.imports)
    print(f"ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
