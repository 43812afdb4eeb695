"""Training clips per second: the frame cache against the best on-the-fly decoders.

Makes HMDB51-like videos (320x240, 30 fps, 3 to 5 s of textured background and moving shapes,
MPEG-4 AVI, with hmdbattn's synthetic generator), caches them with ``preprocess`` (timed, with
its default of one worker per core, next to decoding alone), then reads the same clips from
every source: the training clips of whole epochs (TrainClips' seeded windows and frame indices
at the research's settings: 16 frames from 2 s, resized to 128x171), in this process, with one
thread for torch and for every decoder:

- ``cache``: the frame cache (hmdbattn's reader: read the JPEGs, decode them into the clip)
- ``video``: hmdbattn's on-the-fly path (``data.source = "video"``)
- ``pyav``: a plain PyAV seek + decode converting only the sampled frames, written here: the
  floor of decoding on the fly with PyAV
- ``torchcodec``: torchcodec's frame-index decoding (``get_frames_at``, resized by its decoder),
  when it loads with the installed torch; it is not a dependency of hmdbattn

then the training loader itself (``TrainClips`` in a ``DataLoader``, uint8 batches) with 2
workers for ``cache`` and ``video``.

    python benchmarks/loader.py [--videos 24] [--seconds 2] [--root DIR] [--workers N]

Each row: clips per second (wall clock) and CPU milliseconds per clip (this process and its
loader workers together: the cost per core when every core loads). Then: hmdbattn's video path
against the PyAV floor (target within 1.15x), where the cache's time goes, the crop / flip /
normalise transform (it runs on the model's device after the loader, the same for every source),
and last ``speedup: <x>``: the cache over the best on-the-fly row, in CPU time per clip (target
10x, stretch 15x).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from hmdbattn.config import Config
from hmdbattn.data.cache import decode_jpegs
from hmdbattn.data.datasets import ClipVideo, FrameReader, TrainClips, make_loader, resolve_videos
from hmdbattn.data.decode import decode_video
from hmdbattn.data.hmdb51 import SUBSET_IDS, scan_dataset
from hmdbattn.data.preprocess import default_workers, preprocess
from hmdbattn.data.synthetic import generate
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.errors import UserError
from hmdbattn.report import quiet

BATCH = 8
LOADER_WORKERS = 2
VIDEO_TARGET = 1.15  # hmdbattn's video path at most this much slower than the PyAV floor
CACHE_TARGET, CACHE_STRETCH = 10.0, 15.0

Clip = tuple[ClipVideo, list[int]]  # a video and the frame indices of one clip
Reader = Callable[[ClipVideo, list[int]], object]  # returns (16, 128, 171, 3) uint8 frames


def make_videos(root: Path, videos: int) -> None:
    """`videos` synthetic clips of 4 s +-25% in 4 classes (kept if already there)."""
    classes = 4 if videos >= 16 else 2
    per_class = max(4, -(-videos // classes))  # 4 per class keeps every split subset non-empty
    with quiet():
        generate(root, classes=classes, videos_per_class=per_class, seconds=4.0)


def config_for(root: Path, source: str, workers: int, cache_dir: Path | None = None) -> Config:
    """The research's clip settings; `source` "cache" or "video"."""
    data = {"root": root, "source": source, "num_workers": workers, "batch_size": BATCH}
    if cache_dir is not None:
        data["cache_dir"] = cache_dir
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

    clips_per_s: float  # wall clock, after the first clip (or batch)
    cpu_ms_per_clip: float  # CPU time of this process and its workers, per clip


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its children that have exited."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# --------------------------------------------------------------------------- the readers


def pyav_reader(videos_dir: Path, size: tuple[int, int]) -> Reader:
    """The floor of on-the-fly PyAV: seek to the keyframe before the clip, decode forward,
    convert (resize + RGB, one swscale call) only the sampled frames, stop after the last."""

    def read(video: ClipVideo, indices: list[int]) -> np.ndarray:
        with av.open(str(videos_dir / video.path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            base, origin = float(stream.time_base or 1), stream.start_time or 0
            wanted, last = set(indices), max(indices)
            target = origin + int(min(indices) / video.fps / base)
            container.seek(target, stream=stream, backward=True)
            arrays: dict[int, np.ndarray] = {}
            for frame in container.decode(stream):
                index = round((frame.pts - origin) * base * video.fps)
                if index in wanted:
                    arrays[index] = frame.to_ndarray(
                        width=size[1], height=size[0], format="rgb24", threads=1
                    )
                if index >= last:
                    break
        return np.stack([arrays[i] for i in indices])

    return read


def torchcodec_reader(videos_dir: Path, size: tuple[int, int], probe: Clip) -> Reader | str:
    """torchcodec's frame-index decoding, or why it cannot run here (it is imported lazily)."""
    try:
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        def read(video: ClipVideo, indices: list[int]) -> torch.Tensor:
            decoder = VideoDecoder(
                videos_dir / video.path,
                dimension_order="NHWC",
                num_ffmpeg_threads=1,
                seek_mode="approximate",  # "exact" scans the whole file first
                transforms=[Resize(size)],
            )
            return decoder.get_frames_at(indices).data

        read(*probe)
    except Exception as exc:  # any failure to import, load or decode: said, and skipped
        return _failure(exc)
    return read


def _failure(exc: Exception) -> str:
    """One line for why torchcodec failed: its first line, and the libraries it missed."""
    text = str(exc)
    first = (text.strip().splitlines() or [type(exc).__name__])[0].removesuffix(" Likely causes:")
    missing = re.findall(r"(lib[\w.+-]+\.so[.\d]*): cannot open shared object file", text)
    if missing:
        first = (
            first.rstrip(".")
            + f" (not found: {', '.join(dict.fromkeys(missing))}: no FFmpeg it can use)"
        )
    return first


def clip_sequence(dataset: TrainClips) -> Iterator[Clip]:
    """The training clips of epoch 0, 1, ... in item order: the same for every source."""
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        for index, video in enumerate(dataset.videos):
            yield video, dataset.clip_indices(index)
        epoch += 1


def time_reader(read: Reader, clips: list[Clip], seconds: float) -> Row:
    """Read `clips` in this process, over and over, for about `seconds` (all of them once, at
    least). The clips are drawn beforehand: drawing costs every source the same."""
    read(*clips[0])  # opens what stays open (imports, cache readers): not timed
    done, cpu, started = 0, cpu_seconds(), time.perf_counter()
    while time.perf_counter() - started < seconds or done < len(clips):
        read(*clips[done % len(clips)])
        done += 1
    wall = time.perf_counter() - started
    return Row(done / wall, 1000 * (cpu_seconds() - cpu) / done)


def measure_loader(config: Config, seconds: float) -> Row:
    """Load whole epochs of uint8 clip batches for about `seconds` with the training loader."""
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


# --------------------------------------------------------------------------- where time goes


def cache_parts(reader: FrameReader, dataset: TrainClips, repeats: int = 10) -> dict[str, float]:
    """CPU ms per clip of the cache's steps on one epoch's clips: read, JPEG decode.

    The decode writes straight into the clip's buffer (no stacking copy). Each step runs
    `repeats` times over the epoch: CPU time is counted in kernel ticks.
    """
    clips = [(v, sorted(set(i))) for v, i in zip(dataset.videos, _epoch(dataset), strict=True)]
    files = [reader._cached(video.path) for video, _ in clips]  # opened, as in training
    blobs = [f.read_jpegs(unique) for f, (_, unique) in zip(files, clips, strict=True)]
    data = dataset.config.data
    out = np.empty((data.num_frames, *data.resize, 3), dtype=np.uint8)
    steps: dict[str, Callable[[int], object]] = {
        "read": lambda k: files[k].read_jpegs(clips[k][1]),
        "JPEG decode": lambda k: decode_jpegs(blobs[k], out[: len(blobs[k])]),
    }
    parts: dict[str, float] = {}
    for name, step in steps.items():
        started = cpu_seconds()
        for _ in range(repeats):
            for k in range(len(clips)):
                step(k)
        parts[name] = 1000 * (cpu_seconds() - started) / (repeats * len(clips))
    return parts


def _epoch(dataset: TrainClips) -> list[list[int]]:
    dataset.set_epoch(0)
    return [dataset.clip_indices(i) for i in range(len(dataset))]


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


def time_preprocess(config: Config, workers: int | None) -> tuple[str, int]:
    """Preprocess into a fresh cache; the figures line and the number of frames cached."""
    if workers is None:  # preprocess's own default for this many videos
        workers = default_workers(len(scan_dataset(config.data.root).videos))
    cpu, started = cpu_seconds(), time.perf_counter()
    with quiet():
        summary = preprocess(config, workers=workers)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    frames = sum(v.frames for v in all_videos(config))
    processes = f"with {workers} workers" if workers else "in this process"
    start_up = ", worker start-up included" if workers else ""
    line = (
        f"preprocess: {frames / wall:.0f} frames/s {processes} ({1000 * cpu / frames:.2f} CPU "
        f"ms/frame{start_up}; {summary.ok} videos, {frames} frames)"
    )
    return line, frames


def decode_floor(config: Config, frames: int) -> str:
    """Decoding every video whole at the cache's size, one thread, nothing written."""
    videos_dir, size = config.data.videos_dir, config.data.resize
    cpu, started = cpu_seconds(), time.perf_counter()
    for video in all_videos(config):
        decode_video(videos_dir / video.path, size=size, threads=1)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    cores = max(1, default_workers())
    return (
        f"decode alone: {frames / wall:.0f} frames/s on one core ({1000 * cpu / frames:.2f} CPU "
        f"ms/frame), so at most {cores * frames / wall:.0f} frames/s on {cores} core(s)"
    )


# --------------------------------------------------------------------------- the table


def print_row(name: str, workers: int | str, row: Row | str) -> None:
    if isinstance(row, str):  # the reason a source cannot run
        print(f"{name:<11}{workers!s:>8}{'--':>10}{'--':>13}  unavailable: {row}")
    else:
        print(f"{name:<11}{workers!s:>8}{row.clips_per_s:>10.1f}{row.cpu_ms_per_clip:>13.2f}")


def reader_rows(config: Config, dataset: TrainClips, seconds: float) -> dict[str, Row | str]:
    """The four sources on the same clips, in this process."""
    videos_dir, size = config.data.videos_dir, config.data.resize
    video_data = config_for(config.data.root, "video", 0).data
    readers: dict[str, Reader | str] = {
        "cache": FrameReader(config.data).read,
        "video": FrameReader(video_data).read,
        "pyav": pyav_reader(videos_dir, size),
    }
    # Enough epochs that the cache, the fastest, repeats few clips within `seconds`.
    clips = list(itertools.islice(clip_sequence(dataset), max(len(dataset), int(1000 * seconds))))
    readers["torchcodec"] = torchcodec_reader(videos_dir, size, clips[0])
    rows: dict[str, Row | str] = {}
    for name, read in readers.items():
        rows[name] = read if isinstance(read, str) else time_reader(read, clips, seconds)
        print_row(name, 0, rows[name])
    return rows


def run(root: Path, videos: int, seconds: float, workers: int | None) -> float:
    """Print the figures; return the cache's speedup over the best on-the-fly source."""
    make_videos(root, videos)
    with tempfile.TemporaryDirectory(prefix="hmdbattn-loader-cache-") as cache_dir:
        config = config_for(root, "cache", 0, Path(cache_dir))
        preprocessed, frames = time_preprocess(config, workers)
        print(
            f"{len(all_videos(config))} videos ({frames} frames), batch {BATCH}, 16 frames / 2 s, "
            f"128x171 -> 112, {os.cpu_count()} CPU cores, {seconds:g} s per row"
        )
        print(preprocessed)
        print(decode_floor(config, frames))
        dataset = TrainClips(config, all_videos(config), [])
        print("one process, one thread, the same clips:")
        print(f"{'source':<11}{'workers':>8}{'clips/s':>10}{'CPU ms/clip':>13}")
        rows = reader_rows(config, dataset, seconds)
        print(f"training loader, {LOADER_WORKERS} workers, batch {BATCH} (CPU: starting them too):")
        for source in ("cache", "video"):
            loader_config = config_for(root, source, LOADER_WORKERS, Path(cache_dir))
            print_row(source, LOADER_WORKERS, measure_loader(loader_config, seconds))
        parts = cache_parts(FrameReader(config.data), dataset)
        transform = transform_ms(config, seconds)
    return summarise(rows, parts, transform)


def summarise(rows: dict[str, Row | str], parts: dict[str, float], transform: float) -> float:
    """The closing lines: targets, where the cache's time goes, the transform; the speedup."""
    cache = rows["cache"]
    assert isinstance(cache, Row)
    measured = {k: r for k, r in rows.items() if isinstance(r, Row) and k != "cache"}
    best = min(measured, key=lambda k: measured[k].cpu_ms_per_clip)
    floor, video = measured["pyav"], measured["video"]
    ratio = video.cpu_ms_per_clip / floor.cpu_ms_per_clip
    met = "met" if ratio <= VIDEO_TARGET else "MISSED"
    print(f"video / pyav floor: {ratio:.2f}x CPU time per clip (target <= {VIDEO_TARGET}: {met})")
    rest = cache.cpu_ms_per_clip - sum(parts.values())
    steps = ", ".join(f"{name} {ms:.2f}" for name, ms in parts.items())
    print(f"cache CPU ms per clip: {steps}, the rest {max(0.0, rest):.2f}")
    print(f"crop / flip / normalise on this CPU: {transform:.2f} ms/clip (every source)")
    speedup = measured[best].cpu_ms_per_clip / cache.cpu_ms_per_clip
    with_transform = (measured[best].cpu_ms_per_clip + transform) / (
        cache.cpu_ms_per_clip + transform
    )
    print(f"speedup with the transform on this CPU: {with_transform:.1f}")
    goal = "met" if speedup >= CACHE_TARGET else "MISSED"
    stretch = "met" if speedup >= CACHE_STRETCH else "missed"
    print(
        f"cache over the best on-the-fly source ({best}), CPU time per clip: target "
        f"{CACHE_TARGET:g}x {goal}, stretch {CACHE_STRETCH:g}x {stretch}"
    )
    return speedup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24, help="videos to generate (>= 8)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per table row")
    parser.add_argument("--root", type=Path, help="dataset folder to (re)use; default a temp dir")
    parser.add_argument(
        "--workers", type=int, help="preprocess's workers (default: one per usable core)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the figures are per core; loader workers use one thread too
    if args.root is not None:
        speedup = run(args.root, max(8, args.videos), args.seconds, args.workers)
    else:
        with tempfile.TemporaryDirectory(prefix="hmdbattn-loader-") as tmp:
            speedup = run(Path(tmp), max(8, args.videos), args.seconds, args.workers)
    # CPU time per clip, not clips/s: wall-clock figures shrink towards 1 on a busy machine.
    print(f"speedup: {speedup:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
