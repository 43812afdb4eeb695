"""Training clips per second: the frame cache against decoding the videos on the fly.

Makes HMDB51-like videos (320x240, 30 fps, 3 to 5 s of textured background and moving shapes,
MPEG-4 AVI, with hmdbattn's synthetic generator), caches them with ``preprocess``, then times
the training loader (``TrainClips`` in a ``DataLoader``, uint8 batches as training receives them)
at the research's settings (16 frames from 2 s, resize 128x171, crop 112) in one process and
with 2 loader workers.

    python benchmarks/loader.py [--videos 24] [--seconds 2] [--root DIR]

Each row: clips per second (wall clock, the first batch left out) and CPU milliseconds per clip
(this process and its loader workers together: the cost per core when every core loads). The
crop / flip / normalise transform is timed on its own: training runs it on the model's device
(the GPU, in real training), after the loader, and it costs the same whatever the source. The
last lines are the cache's speedup over decoding in one process: with the transform on this
CPU, then ``cpu speedup: <x>`` by loader CPU time, then ``speedup: <x>`` by loader clips/s.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hmdbattn.config import Config
from hmdbattn.data.datasets import ClipVideo, TrainClips, make_loader, resolve_videos
from hmdbattn.data.hmdb51 import SUBSET_IDS, scan_dataset
from hmdbattn.data.preprocess import preprocess
from hmdbattn.data.synthetic import generate
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.errors import UserError
from hmdbattn.report import quiet

BATCH = 8


def make_videos(root: Path, videos: int) -> None:
    """`videos` synthetic clips of 4 s +-25% in 4 classes (kept if already there)."""
    classes = 4 if videos >= 16 else 2
    per_class = max(4, -(-videos // classes))  # 4 per class keeps every split subset non-empty
    with quiet():
        generate(root, classes=classes, videos_per_class=per_class, seconds=4.0)


def config_for(root: Path, source: str, workers: int) -> Config:
    """The research's clip settings; `source` "cache" or "video"."""
    data = {"root": root, "source": source, "num_workers": workers, "batch_size": BATCH}
    return Config(data=data)


def all_videos(config: Config) -> list[ClipVideo]:
    """Every usable video of the dataset, whatever its split subset."""
    index = scan_dataset(config.data.root)
    videos: list[ClipVideo] = []
    for subset in SUBSET_IDS:
        try:
            videos += resolve_videos(config, index, subset)[0]
        except UserError:  # an empty subset
            continue
    return videos


@dataclass
class Row:
    """One configuration's figures."""

    clips_per_s: float  # wall clock, after the first batch
    cpu_ms_per_clip: float  # CPU time of this process and its workers, per clip


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have exited."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(config: Config, seconds: float) -> Row:
    """Load whole epochs of uint8 clip batches for about `seconds`."""
    cpu = cpu_seconds()
    dataset = TrainClips(config, all_videos(config), [])
    loader = make_loader(dataset, config, train=True)
    clips, timed, epoch, started = 0, 0, 0, None
    # Whole epochs only: persistent workers prefetch nothing beyond the last one.
    while started is None or time.perf_counter() - started < seconds:
        dataset.set_epoch(epoch)
        for frames, _, _ in loader:  # (B, 16, 128, 171, 3) uint8
            clips += frames.shape[0]
            if started is None:  # the first batch pays for worker start-up: not timed
                started = time.perf_counter()
            else:
                timed += frames.shape[0]
        epoch += 1
    wall = time.perf_counter() - started
    del loader  # workers exit and are joined, so their CPU time is counted
    gc.collect()
    return Row(timed / wall, 1000 * (cpu_seconds() - cpu) / clips)


def transform_ms(config: Config, seconds: float) -> float:
    """Milliseconds per clip of the training crop / flip / normalise on this CPU."""
    data = config.data
    transform = VideoTransform("train", data.crop_size, data.mean, data.std)
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (BATCH, data.num_frames, *data.resize, 3), dtype=torch.uint8)
    transform(frames, generator)  # warm-up
    batches, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        transform(frames, generator)  # (B, 3, 16, 112, 112) float32
        batches += 1
    return 1000 * (time.perf_counter() - started) / (batches * BATCH)


def run(root: Path, videos: int, seconds: float) -> tuple[float, float]:
    """Print the table; return the single-process speedups (clips/s, CPU) of the cache."""
    make_videos(root, videos)
    # In this process: spawning preprocess workers (each importing torch) costs more than
    # caching a few dozen short videos.
    with quiet():
        summary = preprocess(config_for(root, "cache", 0), workers=0)
    frames = sum(v.frames for v in all_videos(config_for(root, "cache", 0)))
    print(
        f"{summary.ok} videos ({frames} frames), batch {BATCH}, 16 frames / 2 s, "
        f"128x171 -> 112, {os.cpu_count()} CPU cores, {seconds:g} s per row"
    )
    if summary.cached:
        print(f"preprocess: {summary.cached * frames / summary.ok / summary.seconds:.0f} frames/s")
    print(f"{'source':<8}{'workers':>8}{'clips/s':>10}{'CPU ms/clip':>13}")
    rows: dict[tuple[str, int], Row] = {}
    for source in ("cache", "video"):
        for workers in (0, 2):
            row = rows[source, workers] = measure(config_for(root, source, workers), seconds)
            print(f"{source:<8}{workers:>8}{row.clips_per_s:>10.1f}{row.cpu_ms_per_clip:>13.2f}")
    cache, video = rows["cache", 0], rows["video", 0]
    transform = transform_ms(config_for(root, "cache", 0), seconds)
    print(f"crop / flip / normalise on this CPU: {transform:.2f} ms/clip (both sources)")
    with_transform = (1000 / video.clips_per_s + transform) / (1000 / cache.clips_per_s + transform)
    print(f"speedup with the transform on this CPU: {with_transform:.1f}")
    return cache.clips_per_s / video.clips_per_s, video.cpu_ms_per_clip / cache.cpu_ms_per_clip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24, help="videos to generate (>= 8)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per table row")
    parser.add_argument("--root", type=Path, help="dataset folder to (re)use; default a temp dir")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the figures are per core; loader workers use one thread too
    if args.root is not None:
        speedup, cpu_speedup = run(args.root, max(8, args.videos), args.seconds)
    else:
        with tempfile.TemporaryDirectory(prefix="hmdbattn-loader-") as tmp:
            speedup, cpu_speedup = run(Path(tmp), max(8, args.videos), args.seconds)
    # Wall-clock figures shrink towards 1 on a busy machine; CPU time per clip does not.
    print(f"cpu speedup: {cpu_speedup:.1f}")
    print(f"speedup: {speedup:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
