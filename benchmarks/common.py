"""What the benchmarks share: the heads, clip sizes, timing, memory, the dataset and the loader.

Timing is *interleaved*: every round runs one step of every variant, in a rotated order, so a
machine that other jobs slow down slows every variant alike, and ratios stay meaningful where
absolute times do not. A figure is the median over rounds; a ratio between two variants is the
median of their per-round ratios (each pair measured moments apart), in CPU time on the CPU
(see `Timings`).

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA. On the CPU it is the process's peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) during one step, minus the
resident set before it, with glibc told to serve every allocation of 64 KiB or more by mmap so
that freed tensors leave the resident set at once (otherwise the heap keeps them and a step
reusing them shows no growth). Both figures add the parameters and optimiser state, which
exist before the step: ``peak = params + optimiser state + peak growth during a step``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loader import all_videos, make_videos  # benchmarks/loader.py (scripts run from here)
from torch import nn

from hmdbattn.config import Config, load_config, parse_overrides
from hmdbattn.data.cache import MANIFEST_NAME, CachedVideo, cache_file, decode_jpegs
from hmdbattn.data.datasets import ClipVideo, EvalClips, TrainClips, make_loader
from hmdbattn.data.preprocess import preprocess
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.engine.optim import build_optimizer
from hmdbattn.engine.precision import autocast
from hmdbattn.engine.train import StepParts, train_step
from hmdbattn.errors import UserError
from hmdbattn.models.classifier import build_model, clip_profile
from hmdbattn.report import quiet

REPO = Path(__file__).resolve().parents[1]
HMDB51_TOML = REPO / "configs" / "hmdb51.toml"
NUM_CLASSES = 51
# The heads compared, as overrides of configs/hmdb51.toml (8 blocks + 1 cross + 1 self).
HEADS: dict[str, dict[str, Any]] = {
    "pool": {"model.head": "pool"},  # the research's baseline: average pooling + linear
    "hmdb51": {},  # configs/hmdb51.toml as it is
    "largest": {"model.self_layers": 6},  # the research's largest: 1 cross + 6 self
}
HMDB51_TRAIN_CLIPS = 3570  # split 1's training videos: one epoch of the real loop
MIB = 2**20


# --------------------------------------------------------------------------- sizes and models


@dataclass(frozen=True)
class Size:
    """The clip geometry and batch of a measurement."""

    blocks: int
    frames: int
    crop: int
    batch: int

    @property
    def resize(self) -> tuple[int, int]:
        """Frame size before cropping, in the research's proportions (128x171 for crop 112)."""
        return round(self.crop * 128 / 112), round(self.crop * 171 / 112)

    @property
    def research(self) -> bool:
        """Whether this is the research's geometry: 8 blocks, 16x112x112."""
        return (self.blocks, self.frames, self.crop) == (8, 16, 112)

    def text(self) -> str:
        return f"{self.blocks} blocks, {self.frames}x{self.crop}x{self.crop}, batch {self.batch}"


def add_size_options(p: argparse.ArgumentParser, cpu_size: str, batch: str, warmup: str) -> None:
    """The options `bench_size` reads, and --device, --heads, --set, --threads; `cpu_size`,
    `batch` and `warmup` are the script's own help texts."""
    p.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda if there is one)")
    p.add_argument("--cpu-size", action=argparse.BooleanOptionalAction, help=cpu_size)
    p.add_argument("--blocks", type=int, help="CNN blocks (default 8)")
    p.add_argument("--frames", type=int, help="frames per clip (default 16; CPU size 8)")
    p.add_argument("--crop", type=int, help="crop size (default 112; CPU size 56)")
    p.add_argument("--batch", type=int, help=batch)
    p.add_argument("--steps", type=int, help="timed rounds (default 20 on CUDA, else 3)")
    p.add_argument("--warmup", type=int, help=warmup)
    p.add_argument("--heads", default="pool,hmdb51,largest", help="of: " + ",".join(HEADS))
    p.add_argument("--set", action="append", default=[], help="config override, KEY=VALUE")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")


def bench_size(args: Any, device: torch.device, cuda_batch: int) -> tuple[Size, int, int]:
    """The size, timed rounds and warm-up steps from a script's options, else by device.

    The presets: on the CPU (or with ``--cpu-size``) 8 blocks, 8x56x56, batch 2, 3 rounds
    after 1 warm-up step; on CUDA 8 blocks, 16x112x112, batch `cuda_batch`, 20 rounds after 3.
    """
    cuda = device.type == "cuda"
    small = args.cpu_size if args.cpu_size is not None else not cuda
    preset = Size(8, 8, 56, 2) if small else Size(8, 16, 112, cuda_batch if cuda else 2)
    size = Size(
        args.blocks or preset.blocks,
        args.frames or preset.frames,
        args.crop or preset.crop,
        args.batch or preset.batch,
    )
    rounds = args.steps if args.steps is not None else (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    return size, rounds, warmup


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``["model.latent_dim=32"]`` -> ``{"model.latent_dim": 32}``, by the package's parser."""
    try:
        nested = parse_overrides(list(items))
    except UserError as exc:
        raise SystemExit(str(exc)) from None
    return {f"{section}.{key}": v for section, keys in nested.items() for key, v in keys.items()}


def head_config(head: str, size: Size, sets: Mapping[str, Any] | None = None) -> Config:
    """configs/hmdb51.toml with `head`'s overrides, `size`, random weights and `sets` on top."""
    overrides = {
        **HEADS[head],
        "model.pretrained": False,  # no download; the weights' values do not change the cost
        "model.cnn_blocks": size.blocks,
        "data.num_frames": size.frames,
        "data.crop_size": size.crop,
        "data.resize": list(size.resize),
        "data.batch_size": size.batch,
        **(sets or {}),
    }
    return load_config(HMDB51_TOML, overrides)


_PROFILES: dict[str, tuple[float, tuple[int, ...]]] = {}


def _profile(config: Config) -> tuple[float, tuple[int, ...]]:
    """GMACs per clip and the feature map's (T', H', W'), counted once per model and clip."""
    key = config.model.model_dump_json() + config.data.model_dump_json()
    if key not in _PROFILES:  # building even a meta-device model takes a good part of a second
        _, gmacs, grid = clip_profile(config, NUM_CLASSES)
        _PROFILES[key] = gmacs, tuple(grid)
    return _PROFILES[key]


def gmacs_per_clip(config: Config) -> float:
    """Forward multiply-accumulates of one clip, in billions (counted on the meta device)."""
    return _profile(config)[0]


def feature_grid(config: Config) -> tuple[int, ...]:
    """The (T', H', W') of the CNN's feature map for the config's clips."""
    return _profile(config)[1]


def parse_list(text: str, allowed: Iterable[str], what: str) -> list[str]:
    """A comma-separated list, each item checked against `allowed`."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise SystemExit(f"{what}: {','.join(bad) or 'nothing'} not in {', '.join(allowed)}")
    return items


# --------------------------------------------------------------------------- devices


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast of `precision` ("fp32" or "bf16").

    On CUDA this is the trainer's own autocast; the trainer runs the CPU in fp32 only, so the
    CPU's bf16 is plain ``torch.autocast("cpu", dtype=torch.bfloat16)``.
    """
    if device.type == "cuda":
        return autocast(device, "off" if precision == "fp32" else precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def step_parts(
    module: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    config: Config,
    precision: str,
) -> StepParts:
    """The trainer's step (`train_step`) for `module` at `precision`, through `forward`.

    fp32 and bf16 need no loss scaling: the gradient scaler is disabled (a no-op), as the
    trainer's is unless it runs fp16.
    """
    device = next(module.parameters()).device
    return StepParts(
        forward,
        module.parameters,
        optimizer,
        torch.amp.GradScaler("cuda", enabled=False),
        config.train,
        lambda: amp(device, precision),
        NUM_CLASSES,
    )


def device_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    # The load average tells how much other jobs share the cores (and so how noisy times are).
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"cpu, {torch.get_num_threads()} threads{load} (torch {torch.__version__})"


def shared_cpu_note(device: torch.device) -> str | None:
    """A warning when other jobs keep the CPU's cores busy (load average above the cores).

    Then every parallel region of a multi-threaded step can stall: libgomp's waiting threads
    spin while their partner is descheduled. Measured here: the hmdb51 head alone took about
    0.3 s a step with one thread, and 1.5-2 s with two (0.32 s with OMP_WAIT_POLICY=PASSIVE).
    Short ops (the attention head's) suffer far more than long ones (the CNN's convolutions).
    """
    if device.type != "cpu" or torch.get_num_threads() < 2 or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= cores or os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return None
    return (
        f"note: load average {load:.1f} on {cores} cores: other jobs share the CPU, which "
        "stalls multi-threaded short ops (the head's) far more than long ones; for steady "
        "ratios rerun with --threads 1 or OMP_WAIT_POLICY=PASSIVE"
    )


# Dense bf16 tensor-core peaks (FLOP/s), by a part of the device name; the first match wins.
BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
)


def bf16_peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, when known (CUDA only)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for part, peak in BF16_PEAKS if part in name), None)


# --------------------------------------------------------------------------- timing


@dataclass
class Timings:
    """Seconds per step of each named step, by round: wall clock and this process's CPU time.

    Ratios use `clock`: on the CPU, the process's CPU time (all its threads): on a machine
    shared with other jobs the wall time of a step swings with their load, while CPU time counts
    the work done, and on a dedicated machine the two give the same ratios. On CUDA, wall time
    (the host mostly waits for the device there).
    """

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    clock: str  # "cpu" or "wall"

    def __contains__(self, name: object) -> bool:
        return name in self.wall

    def seconds(self, name: str, clock: str = "wall") -> float:
        """The median seconds of a step."""
        return statistics.median(getattr(self, clock)[name])

    def per_round(self, num: str, den: str, clock: str | None = None) -> list[float]:
        """``num``'s time over ``den``'s, round by round."""
        times = getattr(self, clock or self.clock)
        return [a / b for a, b in zip(times[num], times[den], strict=True)]

    def ratio(self, num: str, den: str, clock: str | None = None) -> float:
        """The median of the per-round ratios (each pair measured moments apart)."""
        return statistics.median(self.per_round(num, den, clock))


def interleaved(
    steps: Mapping[str, Callable[[], object]], rounds: int, warmup: int, device: torch.device
) -> Timings:
    """Time each step `rounds` times, every round visiting every step.

    Each step first runs `warmup` times untimed (allocator, cuDNN algorithm search, compile).
    The order rotates by one each round, so no step always follows the same one.
    """
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    sync(device)
    names = list(steps)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[name]()
            sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return Timings(wall, cpu, "cpu" if device.type == "cpu" else "wall")


def fmt(value: float | None, spec: str = ".2f") -> str:
    """`value` formatted, or "n/a" when it is missing (None or NaN)."""
    if value is None or math.isnan(value):
        return "n/a"
    return format(value, spec)


def percent(share: float | None) -> str:
    """A share as a percentage with one decimal, or "n/a"."""
    return fmt(None if share is None else 100 * share, ".1f")


# --------------------------------------------------------------------------- memory


def _proc_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


class CpuPeak:
    """Peak resident-set growth of a call (Linux with glibc; else `available` is False)."""

    def __init__(self) -> None:
        self.available = False
        self._libc: Any = None
        if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
            return
        try:
            _proc_kib("VmHWM")
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # 5 = reset the peak resident set (VmHWM), Linux >= 4.0
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            return
        self.available = True

    def enable(self) -> None:
        """mmap every allocation >= 64 KiB, so that frees give memory back to the system.

        For the rest of the process: call it after the timings, since a fresh mmap per large
        tensor (and its page faults) slows steps down.
        """
        if self.available:
            m_mmap_threshold = -3  # glibc's M_MMAP_THRESHOLD; setting it also stops its drift
            self._libc.mallopt(m_mmap_threshold, 64 * 1024)

    def growth(self, fn: Callable[[], object]) -> int | None:
        """Bytes the resident set grew by at its peak while `fn` ran."""
        if not self.available:
            return None
        self._libc.malloc_trim(0)  # hand back what the heap still holds from earlier steps
        before = _proc_kib("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        fn()
        return max(0, _proc_kib("VmHWM") - before) * 1024


def tensor_bytes(tensors: Iterable[Any]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def peak_step_memory(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: Callable[[], object],
    device: torch.device,
    cpu_peak: CpuPeak,
) -> int | None:
    """Parameters + optimiser state + the peak growth of memory during one `step` (bytes)."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)  # the step's gradients count in its growth
    static = tensor_bytes(model.parameters())
    if optimizer is not None:
        static += tensor_bytes(t for state in optimizer.state.values() for t in state.values())
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        return static + torch.cuda.max_memory_allocated(device) - before
    growth = cpu_peak.growth(step)
    return None if growth is None else static + growth


# --------------------------------------------------------------------------- training steps


@dataclass(frozen=True)
class Variant:
    """How a step runs: precision, channels-last 3D, torch.compile."""

    precision: str  # "fp32" or "bf16"
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``"bf16"``, ``"bf16-cl"``, ``"fp32-compile"``, ``"bf16-cl-compile"``..."""
        precision, *flags = text.strip().split("-")
        if precision not in ("fp32", "bf16") or set(flags) - {"cl", "compile"}:
            raise SystemExit(f"variant {text!r}: expected fp32|bf16 then -cl and/or -compile")
        return cls(precision, "cl" in flags, "compile" in flags)

    @property
    def name(self) -> str:
        return "-".join([self.precision] + ["cl"] * self.channels_last + ["compile"] * self.compile)


class Trainee:
    """A model and its optimiser, stepped by the trainer's own `train_step`.

    One step: the training transform on the device (crop, flip, normalise), channels-last when
    asked, then `train_step` (mixing and label smoothing as configured, forward under autocast,
    cross-entropy in fp32, backward, clipping, optimiser step). `model`, `optimizer` and the
    compiled forward can be shared by variants differing in precision only.
    """

    def __init__(
        self, config: Config, device: torch.device, channels_last: bool, compiled: bool
    ) -> None:
        torch.manual_seed(0)
        self.config, self.device = config, device
        self.model = build_model(config, NUM_CLASSES).to(device).train()
        self.memory = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory)
        self.optimizer = build_optimizer(self.model, config.train)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(self.model) if compiled else self.model  # type: ignore[assignment]
        )
        self.parts = {
            p: step_parts(self.model, self.forward, self.optimizer, config, p)
            for p in ("fp32", "bf16")
        }
        self.transform = VideoTransform.from_config(config.data, "train")
        self.generator = torch.Generator().manual_seed(0)  # crops and flips, drawn on the CPU

    def step(self, frames: torch.Tensor, labels: torch.Tensor, precision: str) -> torch.Tensor:
        """One training step on uint8 `frames` (B, T, H, W, 3) already on the device."""
        x = self.transform(frames, self.generator).contiguous(memory_format=self.memory)
        loss, _ = train_step(self.parts[precision], x, labels, self.generator)
        return loss


def random_batch(size: Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 clip batch (B, T, H, W, 3) at the resize size and labels, on the device."""
    gen = torch.Generator().manual_seed(1)
    h, w = size.resize
    shape = (size.batch, size.frames, h, w, 3)
    frames = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (size.batch,), generator=gen)
    return frames.to(device), labels.to(device)


# --------------------------------------------------------------------------- dataset and loader


def ensure_dataset(root: Path, videos: int) -> Path:
    """An HMDB51-like dataset with its frame cache at `root` (made unless a cache is there).

    Made like benchmarks/loader.py makes it: 320x240 MPEG-4 AVIs of about 4 s at 30 fps, cached
    at the default resize 128x171, JPEG quality 90.
    """
    config = Config(data={"root": root})
    if not (config.data.cache_path / MANIFEST_NAME).is_file():
        make_videos(root, videos)
        # In this process: spawning workers (each importing torch) costs more than a few dozen
        # short videos.
        with quiet():
            preprocess(config, workers=0)
    return root


def research_data_config(root: Path, workers: int, batch: int, **data: Any) -> Config:
    """The research's clips (16 frames from 2 s, 128x171 -> 112) read from the cache."""
    fields = {"root": root, "source": "cache", "num_workers": workers, "batch_size": batch}
    return Config(data=fields | data)


def train_clips(config: Config, clips: int = 0) -> TrainClips:
    """TrainClips over every cached video, the list repeated up to `clips` items.

    Repeating gives an epoch as long as HMDB51's with a small synthetic set, so a measurement
    does not keep restarting the loader's workers at epoch ends (every item still reads its
    video's cache file, which the page cache holds as it would hold HMDB51's after one epoch).
    """
    videos: list[ClipVideo] = all_videos(config)
    repeat = max(1, math.ceil(clips / len(videos)))
    return TrainClips(config, videos * repeat, [])


@contextlib.contextmanager
def threads(count: int):
    """torch's intra-op threads set to `count` for a while (a loader worker runs with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class LoaderCost:
    """CPU milliseconds per clip in one process with one thread: the whole path and its parts."""

    total: float  # the loader's batches (read + decode into the batch) and the transform
    batch: float  # the dataset's batches alone: read + JPEG decode into the batch's buffer
    decode: float  # the JPEG decode alone (part of `batch`)
    transform: float  # the training (or evaluation) transform on the CPU
    clips: int

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("total", "batch", "decode", "transform")}


def loader_cpu_cost(
    dataset: TrainClips | EvalClips, config: Config, transform: VideoTransform, clips: int
) -> LoaderCost:
    """CPU time per clip of loading `clips` clips and transforming them on the CPU.

    Single process (``num_workers = 0``), one torch thread, as in a loader worker. CPU time
    (``time.process_time``) rather than wall time, so that other jobs on the machine do not
    count. A first pass opens the cache readers and warms the page cache; it is not counted.
    Where CUDA is available make_loader pins batches, so the total includes that copy.
    """
    config = config.model_copy(deep=True)
    config.data.num_workers = 0
    count = min(clips, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(count))
    generator = torch.Generator().manual_seed(0)
    cpu = time.process_time
    with threads(1):
        for _ in range(2):  # the second pass is the one kept
            loader = make_loader(subset, config, train=False)  # in order, so items are known
            start = cpu()
            for frames, _, _ in loader:
                transform(frames, generator)
            total = cpu() - start
        # The parts, on the same items.
        batch = config.data.batch_size
        starts = range(0, count, batch)
        start = cpu()
        batches = [dataset.__getitems__(list(range(i, min(i + batch, count)))) for i in starts]
        read = cpu() - start
        blobs = []
        for i in range(count):
            path, indices = _clip_of(dataset, i)
            video = CachedVideo(cache_file(config.data.cache_path, path))
            blobs.append(video.read_jpegs(sorted(set(indices))))
        out = np.empty((config.data.num_frames, *config.data.resize, 3), dtype=np.uint8)
        start = cpu()
        for clip_blobs in blobs:
            decode_jpegs(clip_blobs, out[: len(clip_blobs)])  # the cache's own decoder
        decode = cpu() - start
        start = cpu()
        for frames, _, _ in batches:
            transform(frames, generator)
        trans = cpu() - start
    ms = 1000.0 / count
    return LoaderCost(total * ms, read * ms, decode * ms, trans * ms, count)


def _clip_of(dataset: TrainClips | EvalClips, index: int) -> tuple[str, list[int]]:
    """The video path and frame indices of item `index`."""
    if isinstance(dataset, TrainClips):
        return dataset.videos[index].path, dataset.clip_indices(index)
    number, indices = dataset.windows[index]
    return dataset.videos[number].path, indices


def loader_rate(
    dataset: TrainClips,
    config: Config,
    transform: VideoTransform,
    device: torch.device,
    seconds: float,
) -> float:
    """Clips per second out of ``make_loader`` with ``data.num_workers`` workers (wall clock).

    Batches go to the device (non-blocking, from pinned memory on CUDA) and through the
    transform there, as in training. Timing starts once every worker has delivered a batch
    (worker start-up is a one-off) and runs for about `seconds` or to the end of the epoch.
    """
    loader = make_loader(dataset, config, train=True)
    generator = torch.Generator().manual_seed(0)
    skip = max(1, config.data.num_workers)
    clips, start = 0, 0.0
    # On the CPU the transform gets one thread, as in a loader worker: the workers take the
    # other cores, and intra-op threads fighting them for cores stall at every barrier.
    main_threads = 1 if device.type == "cpu" else torch.get_num_threads()
    with threads(main_threads):
        for number, (frames, _, _) in enumerate(loader):
            x = transform(frames.to(device, non_blocking=True), generator)
            if number + 1 == skip:
                sync(device)
                start = time.perf_counter()
            elif number + 1 > skip:
                clips += x.shape[0]
                if time.perf_counter() - start >= seconds:
                    break
    sync(device)
    elapsed = time.perf_counter() - start
    del loader  # persistent workers exit with it
    return clips / elapsed if clips else float("nan")
