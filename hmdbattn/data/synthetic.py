"""A synthetic HMDB51: real MPEG-4 AVIs and split files in HMDB51's exact layout.

Every clip shows one or two random shapes (square, disc, triangle, ring, diamond, cross; random
colours, optionally two-tone) on a random background (gradient, stripes, waves or checker) with
per-frame noise. Only the motion carries the label, and most classes come in *time pairs*: the
reverse class's clips are the forward class's clips played backwards, so a model that ignores
frame order cannot tell the two apart.

Classes, in the order ``classes=N`` takes them (``classes=[names]`` picks any of them instead):
the first 12 are 6 complete time pairs, easiest first. In a quick check a 4-layer 3D CNN on 8
frames of 32 x 32 (80-100 clips per class, CPU, 15 epochs) told the first 10 apart at about
90-100% per class, but rotate_cw from rotate_ccw only at chance even when trained on them alone:
the sense of rotation is the hardest cue here.

=============  ===========  ==================================================
class          reverse of   what happens
=============  ===========  ==================================================
move_left      move_right   the object crosses most of the frame leftwards
move_right     (forward)    ... rightwards
grow           (forward)    the object grows from small to large
shrink         grow         ... shrinks from large to small
approach       (forward)    two objects move towards each other until they nearly touch
separate       approach     ... start touching and move apart
fade_in        (forward)    the object fades in from the background
fade_out       fade_in      ... fades out
move_up        move_down    the object crosses most of the frame upwards
move_down      (forward)    ... downwards
rotate_cw      (forward)    a long two-tone object turns clockwise (0.4-0.8 turns)
rotate_ccw     rotate_cw    ... anticlockwise
blink          -            the object flashes on and off
bounce         -            the object bounces on a floor (elastic, so time-symmetric)
zigzag         -            the object crosses the frame (either way) going up and down
static         -            the object only drifts a little
=============  ===========  ==================================================

Every clip also drifts and spins a little at random, so position or angle alone give nothing
away. A clip is a pure function of ``(seed, class, index)``: reruns are byte-identical and an
interrupted run resumes where it stopped. ``<root>/synthetic.json`` records the settings that
shape the clips (and the class names, when chosen by name), so a rerun with other settings
cannot silently mix two datasets.
"""

from __future__ import annotations

import json
import multiprocessing
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import NormalDist

import numpy as np

from hmdbattn.data.decode import encode_video
from hmdbattn.data.hmdb51 import SPLITS, class_order, split_file_name, splits_dir, videos_dir
from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_write_text
from hmdbattn.report import progress

# (forward, reverse): the reverse class is rendered as the forward class, then played backwards.
TIME_PAIRS: tuple[tuple[str, str], ...] = (
    ("move_right", "move_left"),
    ("grow", "shrink"),
    ("approach", "separate"),
    ("fade_in", "fade_out"),
    ("move_down", "move_up"),
    ("rotate_cw", "rotate_ccw"),
)
SINGLES: tuple[str, ...] = ("blink", "bounce", "zigzag", "static")
# Pairs first, so that any even `classes` up to 12 is made of complete pairs; the default 8 are
# four different kinds of change (position, size, distance, opacity).
CLASSES: tuple[str, ...] = (
    "move_left", "move_right", "grow", "shrink", "approach", "separate", "fade_in", "fade_out",
    "move_up", "move_down", "rotate_cw", "rotate_ccw", *SINGLES,
)  # fmt: skip
MAX_CLASSES = len(CLASSES)
DEFAULT_CLASSES = 8
MIN_VIDEOS_PER_CLASS = 3  # 1 test + 2 train at the least
SHAPES: tuple[str, ...] = ("square", "disc", "triangle", "ring", "diamond", "cross")
MANIFEST = "synthetic.json"
LAYOUTS = ("hmdb51", "ucf101", "folders", "list")  # the data.format each layout is read as
# The standard normal's quantiles at the centres of 256 equal bins: byte -> Gaussian noise.
_GAUSS = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], dtype=np.float32)
FORMAT_VERSION = 2  # bump whenever a clip's pixels or name change for the same settings

# Source titles with HMDB51's awkward characters; the first one alone has all of them.
_TITLES: tuple[str, ...] = (
    "Bob's_(home)_&_co-op!", "Hamlet_(1996)_Scenes", "Rock-n-Roll!_Live", "Ma&Pa's_Kitchen",
    "Take_(2)_-_Outdoors", "Yes!_Again", "O'Brien's_Garage", "The_Great-Escape_(remix)",
    "Tom_&_Jerry's_Yard", "Wow!!_(slow-mo)", "Day-1_(morning)", "Sam_&_Max!",
)  # fmt: skip
# HMDB51's name tags: visibility, camera motion, people, viewpoint, quality.
_TAGS: tuple[tuple[str, ...], ...] = (
    ("f", "h", "u", "l"), ("cm", "nm"), ("np1", "np2", "np3"), ("fr", "ba", "le", "ri"),
    ("bad", "med", "goo"),
)  # fmt: skip


@dataclass
class SyntheticSummary:
    """What `generate` produced: the dataset root, its classes (sorted) and its video count."""

    root: Path
    classes: list[str]
    videos: int
    written: int = 0  # videos encoded by this call; the rest already existed


@dataclass(frozen=True)
class Sprite:
    """How one object looks: shape, colour, and the second colour of its +u half if two-tone."""

    shape: str
    colour: np.ndarray  # (3,) float32 RGB
    colour2: np.ndarray  # (3,) float32 RGB


@dataclass(frozen=True)
class Look:
    """Everything about a clip's appearance that stays put while it plays."""

    background: np.ndarray  # (H, W, 3) float32 RGB
    noise: float  # standard deviation of the per-frame noise, in 0-255 units
    sprites: tuple[Sprite, Sprite]  # single-object classes use the first


@dataclass(frozen=True)
class Track:
    """One object's state in every frame: centre and radius in pixels, angle, opacity."""

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    angle: np.ndarray  # radians; increasing turns clockwise on screen (y points down)
    alpha: np.ndarray  # 0 invisible .. 1 opaque
    two_tone: bool  # the +u half in the sprite's second colour
    aspect: float = 1.0  # width across the angle / length along it: < 1 is elongated


def generate(
    root: Path,
    *,
    classes: int | Sequence[str] = DEFAULT_CLASSES,
    videos_per_class: int = 100,
    seconds: float = 2.0,
    size: tuple[int, int] = (320, 240),
    fps: int = 30,
    seed: int = 0,
    workers: int = 0,
    layout: str = "hmdb51",
) -> SyntheticSummary:
    """Write a synthetic HMDB51 under `root` (``videos/<class>/*.avi``, ``splits/*.txt``).

    `layout` (one of LAYOUTS) writes the same clips as another ``data.format`` reads them:
    ucf101 (UCF101's file names, classInd.txt and split lists), folders (``<class>/<video>``)
    or list (``videos/<class>/*.avi`` with ``train.txt``, ``test.txt`` and ``classes.txt``).

    `classes` is a number N (the first N of `CLASSES`) or a list of class names, e.g. a set
    disjoint from another dataset's. `size` is (width, height). Clip lengths vary by +-25%
    around `seconds` but never fall under one second (or under `seconds`, if that is shorter).
    Videos that already exist are kept, so rerunning after an interruption only writes what is
    missing. `workers` > 1 renders in that many processes; the files are the same either way,
    since a clip depends on nothing else.
    """
    check_settings(classes, videos_per_class, seconds, size, fps, seed)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    labels = list(CLASSES[:classes]) if isinstance(classes, int) else list(classes)
    settings: dict[str, object] = {"seconds": seconds, "size": list(size), "fps": fps, "seed": seed}
    if layout != "hmdb51":  # recorded, so a rerun into this root cannot switch layouts
        settings["layout"] = layout
    if not isinstance(classes, int):
        # Chosen by name: a rerun must choose the same ones (a first-N set may grow instead).
        settings["class_names"] = class_order(labels)
    _claim_root(root, settings)
    names = {
        lab: [_file_name(layout, lab, seed, i) for i in range(videos_per_class)] for lab in labels
    }
    videos = root if layout == "folders" else videos_dir(root)
    todo = [
        _Job(videos / label / name, label, seed, index, seconds, size, fps)
        for label in labels
        for index, name in enumerate(names[label])
        if not (videos / label / name).is_file()
    ]
    total = len(labels) * videos_per_class
    with _progress_bar(total, done=total - len(todo)) as advance:
        for _ in _run_jobs(todo, workers):
            advance()
    # Split files last: an interrupted run never leaves one naming a video not yet written.
    _write_layout(root, layout, names, seed)
    return SyntheticSummary(root, class_order(labels), total, len(todo))


@dataclass(frozen=True)
class _Job:
    """One video to render and write (picklable, for worker processes)."""

    path: Path
    label: str
    seed: int
    index: int
    seconds: float
    size: tuple[int, int]
    fps: int


def _write_job(job: _Job) -> None:
    frames = render_video(
        job.label, job.seed, job.index, seconds=job.seconds, size=job.size, fps=job.fps
    )
    write_avi(job.path, frames, job.fps)


def _run_jobs(jobs: list[_Job], workers: int) -> Iterator[None]:
    """Write every job, yielding once per finished video."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _write_job(job)
            yield
        return
    # "spawn", like preprocess: forking a parent that holds torch's thread pools is unsafe.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        futures = [pool.submit(_write_job, job) for job in jobs]
        try:
            for future in as_completed(futures):
                future.result()
                yield
        finally:
            for future in futures:
                future.cancel()


def check_settings(
    classes: int | Sequence[str],
    videos_per_class: int,
    seconds: float,
    size: tuple[int, int],
    fps: int,
    seed: int,
) -> None:
    """Raise ValueError, naming the argument and its value, for settings `generate` refuses."""
    if isinstance(classes, int):
        if not 2 <= classes <= MAX_CLASSES:
            raise ValueError(f"classes must be between 2 and {MAX_CLASSES}, got {classes}")
    else:
        _check_names(classes)
    if videos_per_class < MIN_VIDEOS_PER_CLASS:
        raise ValueError(
            f"videos_per_class must be at least {MIN_VIDEOS_PER_CLASS} (1 test and 2 train "
            f"videos per split), got {videos_per_class}"
        )
    if not 0 < seconds <= 600:
        raise ValueError(f"seconds must be in (0, 600], got {seconds}")
    if len(size) != 2 or any(s < 16 or s % 2 for s in size):
        # yuv420p halves both dimensions, so odd sizes cannot be encoded as given.
        raise ValueError(f"size must be (width, height), both even and at least 16, got {size}")
    if not 1 <= fps <= 120:
        raise ValueError(f"fps must be between 1 and 120, got {fps}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


def _check_names(names: Sequence[str]) -> None:
    """At least two of the generator's class names, none twice."""
    if isinstance(names, str):
        raise ValueError(f"class names must be a list of names, got the string {names!r}")
    unknown = [name for name in names if name not in CLASSES]
    if unknown:
        raise ValueError(f"unknown class name(s) {', '.join(unknown)}; known: {', '.join(CLASSES)}")
    twice = sorted({name for name in names if list(names).count(name) > 1})
    if twice:
        raise ValueError(f"class name(s) given twice: {', '.join(twice)}")
    if len(names) < 2:
        raise ValueError(f"at least 2 class names are needed, got {len(names)}")


def _claim_root(root: Path, settings: dict[str, object]) -> None:
    """Record the settings in the manifest, refusing a root made with different ones.

    A root is a synthetic dataset when it holds ``synthetic.json``; any other root must be
    empty (or new), so that a real dataset never gets synthetic videos and split files mixed in.
    """
    wanted = {"format_version": FORMAT_VERSION, **settings}
    path = root / MANIFEST
    if path.is_file():
        found = _read_manifest(path)
        if found != wanted:
            raise UserError(
                f"{root} holds a synthetic dataset made with {found}, not {wanted}; "
                "choose another root or delete this one"
            )
        return
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: not a folder; choose another --root (or data.root)")
    if root.is_dir() and any(root.iterdir()):
        raise UserError(
            f"{root} is not empty and holds no {MANIFEST}, so it is not a synthetic dataset "
            "(a real HMDB51?): choose a new or empty folder with --root (or data.root)"
        )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(wanted, indent=2) + "\n")


def _read_manifest(path: Path) -> object:
    """The settings recorded in ``synthetic.json``; a UserError naming it when unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: cannot read the synthetic dataset's settings ({type(exc).__name__}: "
            f"{exc}); choose another --root (or data.root)"
        ) from None


@contextmanager
def _progress_bar(total: int, done: int) -> Iterator[Callable[[], None]]:
    with progress("videos") as bar:
        task = bar.add_task("synthetic videos", total=total, completed=done)
        yield lambda: bar.advance(task)


# ---------------------------------------------------------------------------------------------
# Names, seeds and splits


# Independent random streams per (seed, class, index): the clip's pixels, its file name, and (with
# the split number as index) the split files. Separate streams keep one from shifting another.
_PIXELS, _NAME, _SPLIT = 0, 1, 2


def _rng(seed: int, label: str, stream: int, index: int) -> np.random.Generator:
    # crc32, not hash(): str hashes are salted per process, which would break reproducibility.
    return np.random.default_rng([seed, zlib.crc32(label.encode()), stream, index])


def video_name(label: str, seed: int, index: int) -> str:
    """The file name of video `index` of `label`, HMDB51-style, e.g. ``Sam_&_Max!_grow_u_...``."""
    rng = _rng(seed, label, _NAME, index)
    tags = "_".join(str(rng.choice(options)) for options in _TAGS)
    title = _TITLES[index % len(_TITLES)]
    return f"{title}_{label}_{tags}_{index // len(_TITLES)}.avi"


def split_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    """HMDB51-like ids for `n` videos: about 1/4 unused (0), then 70% train (1) / 30% test (2).

    Small classes keep at least 4 videos in use, of which at least 1 is test and 2 are train.
    """
    unused = min(n // 4, max(0, n - 4))
    used = n - unused
    test = min(max(1, int(0.3 * used + 0.5)), used - 2)
    ids = np.array([2] * test + [1] * (used - test) + [0] * unused)
    return ids[rng.permutation(n)]


def _write_splits(folder: Path, label: str, names: list[str], seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(names)), key=lambda i: names[i])
    for split in SPLITS:
        ids = split_ids(len(names), _rng(seed, label, _SPLIT, split))
        # The real files end each line with a space too; whitespace parsing copes with it.
        text = "".join(f"{names[i]} {ids[i]} \n" for i in order)
        atomic_write_text(folder / split_file_name(label, split), text)


def _file_name(layout: str, label: str, seed: int, index: int) -> str:
    """HMDB51-style names, or UCF101's ``v_<Class>_g<group>_c<clip>.avi`` (a group a video)."""
    if layout == "ucf101":
        return f"v_{label}_g{index + 1:02d}_c01.avi"
    return video_name(label, seed, index)


def _write_layout(root: Path, layout: str, names: dict[str, list[str]], seed: int) -> None:
    """The split (or list) files of `layout`; "folders" has none (its split is made on use)."""
    if layout == "hmdb51":
        for label, files in names.items():
            _write_splits(splits_dir(root), label, files, seed)
    elif layout == "ucf101":
        _write_ucf101_lists(splits_dir(root), names)
    elif layout == "list":
        _write_list_files(root, names, seed)


def _write_ucf101_lists(folder: Path, names: dict[str, list[str]]) -> None:
    """classInd.txt (1-based) and the train/test lists of splits 1-3, in UCF101's formats.

    Video i of a class is a test video of split k when i % 3 == k - 1: every split has a
    third of each class as test videos, and every class at least one (3 videos or more).
    """
    folder.mkdir(parents=True, exist_ok=True)
    classes = class_order(list(names))
    lines = "".join(f"{i + 1} {label}\r\n" for i, label in enumerate(classes))
    atomic_write_text(folder / "classInd.txt", lines)  # the real files end lines with CRLF
    for split in SPLITS:
        train, test = [], []
        for number, label in enumerate(classes, start=1):
            for i, name in enumerate(sorted(names[label])):
                if i % 3 == split - 1:
                    test.append(f"{label}/{name}\r\n")
                else:
                    train.append(f"{label}/{name} {number}\r\n")
        atomic_write_text(folder / f"trainlist0{split}.txt", "".join(train))
        atomic_write_text(folder / f"testlist0{split}.txt", "".join(test))


def _write_list_files(root: Path, names: dict[str, list[str]], seed: int) -> None:
    """``train.txt`` (0-based index labels), ``test.txt`` (name labels) and ``classes.txt``.

    HMDB51's split 1 decides which videos go where (its unused videos are in neither list);
    the two label styles are both MMAction2's, so one dataset exercises both.
    """
    classes = class_order(list(names))
    train, test = [], []
    for number, label in enumerate(classes):
        files = names[label]
        ids = split_ids(len(files), _rng(seed, label, _SPLIT, 1))
        for name, sid in sorted(zip(files, ids, strict=True)):
            if sid == 1:
                train.append(f"videos/{label}/{name} {number}\n")
            elif sid == 2:
                test.append(f"videos/{label}/{name} {label}\n")
    atomic_write_text(root / "classes.txt", "".join(f"{c}\n" for c in classes))
    atomic_write_text(root / "train.txt", "".join(train))
    atomic_write_text(root / "test.txt", "".join(test))


def write_avi(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode (T, H, W, 3) uint8 RGB as MPEG-4 part 2 AVI, atomically, at about HMDB51's rate."""
    height, width = frames.shape[1:3]
    encode_video(path, frames, fps, "mpeg4", bit_rate=int(0.3 * width * height * fps))


# ---------------------------------------------------------------------------------------------
# Clips


def frame_count(rng: np.random.Generator, seconds: float, fps: int) -> int:
    """A clip length in frames: `seconds` +-25%, at least min(1 s, `seconds`) and 2 frames."""
    jittered = round(seconds * fps * rng.uniform(0.75, 1.25))
    return max(jittered, round(min(1.0, seconds) * fps), 2)


def render_video(
    label: str, seed: int, index: int, *, seconds: float, size: tuple[int, int], fps: int
) -> np.ndarray:
    """The frames of video `index` of `label` as `generate` writes them, (T, H, W, 3) uint8."""
    rng = _rng(seed, label, _PIXELS, index)
    return render_clip(label, rng, frame_count(rng, seconds, fps), size)


def render_clip(
    label: str,
    rng: np.random.Generator,
    num_frames: int,
    size: tuple[int, int],
    look: Look | None = None,
) -> np.ndarray:
    """Render one clip of `label`, (T, H, W, 3) uint8 RGB; pure given the state of `rng`.

    A reverse class draws exactly what its forward class would from the same `rng`, backwards.
    `look` replaces the random appearance (for tests); the motion stays random.
    """
    if label not in _MOTION_OF:
        raise ValueError(f"unknown class {label!r}; known: {', '.join(CLASSES)}")
    forward, backwards = _MOTION_OF[label]
    width, height = size
    if look is None:
        look = sample_look(rng, width, height)
    tracks = _MOTIONS[forward](rng, num_frames, width, height)
    frames = draw(look, tracks, rng)
    return frames[::-1].copy() if backwards else frames


# ---------------------------------------------------------------------------------------------
# Appearance


def sample_look(rng: np.random.Generator, width: int, height: int) -> Look:
    """A random background, noise level and two sprites that stand out from the background."""
    background = _background(rng, width, height)
    mean = background.mean(axis=(0, 1))
    sprites = (_sprite(rng, mean), _sprite(rng, mean))
    return Look(background, float(rng.uniform(0.0, 12.0)), sprites)


def _sprite(rng: np.random.Generator, background_mean: np.ndarray) -> Sprite:
    colour = _distinct_colour(rng, [background_mean], 110.0, brightness_gap=50.0)
    colour2 = _distinct_colour(rng, [background_mean, colour], 80.0)
    return Sprite(str(rng.choice(SHAPES)), colour, colour2)


def _distinct_colour(
    rng: np.random.Generator, others: list[np.ndarray], gap: float, brightness_gap: float = 0.0
) -> np.ndarray:
    """A random colour at least `gap` (RGB distance) from each of `others`.

    `brightness_gap` also asks for a luma difference from the first of `others`: a dark green on
    a light green is far in RGB yet hard to see. Rejection sampling keeps colours varied; the
    fallback, the inverse of the first colour, always contrasts.
    """
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    for _ in range(100):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        far = all(np.linalg.norm(colour - other) >= gap for other in others)
        if far and abs(float(luma @ (colour - others[0]))) >= brightness_gap:
            return colour
    return (255 - others[0]).astype(np.float32)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32: a base colour plus a gradient, stripes, waves or a checker."""
    ys, xs = np.ogrid[0:height, 0:width]
    xs, ys = xs.astype(np.float32) / height, ys.astype(np.float32) / height
    base = rng.uniform(30, 225, 3).astype(np.float32)
    kind = int(rng.integers(4))
    theta = rng.uniform(0, 2 * np.pi)
    along = xs * np.cos(theta) + ys * np.sin(theta)  # position along a random direction
    tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)  # texture colour, so it is not just grey
    if kind == 0:  # gradient to a second colour
        other = rng.uniform(30, 225, 3).astype(np.float32)
        span = float(along.max() - along.min()) or 1.0
        ramp = (along - along.min()) / span
        return base + ramp[..., None] * (other - base)
    if kind == 1:  # stripes
        pattern = np.sin(2 * np.pi * rng.uniform(2, 8) * along + rng.uniform(0, 2 * np.pi))
    elif kind == 2:  # a few soft waves crossing
        pattern = sum(
            np.sin(2 * np.pi * rng.uniform(0.5, 3) * (xs * np.cos(a) + ys * np.sin(a)) + p)
            for a, p in rng.uniform(0, 2 * np.pi, (3, 2))
        ) / np.float32(2.0)
    else:  # checker
        cell = rng.uniform(0.08, 0.25)
        pattern = np.where((np.floor(xs / cell) + np.floor(ys / cell)) % 2 == 0, 1.0, -1.0)
    amplitude = rng.uniform(8, 28)
    texture = (amplitude * pattern).astype(np.float32)
    return np.broadcast_to(base + texture[..., None] * tint, (height, width, 3)).copy()


# ---------------------------------------------------------------------------------------------
# Drawing


def _mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which points of the object's frame (u, v in radii, +u towards its angle) are inside."""
    au, av_ = np.abs(u), np.abs(v)
    if shape == "square":
        return np.maximum(au, av_) <= 0.8
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "diamond":
        return au + av_ <= 1.0
    if shape == "cross":
        return ((au <= 0.33) & (av_ <= 0.95)) | ((av_ <= 0.33) & (au <= 0.95))
    if shape == "triangle":  # equilateral, circumradius 1, a vertex at +u
        inside = u >= -0.5
        for normal in (np.pi / 3, -np.pi / 3):
            inside &= u * np.cos(normal) + v * np.sin(normal) <= 0.5
        return inside
    raise ValueError(f"unknown shape {shape!r}")


def _paint(canvas: np.ndarray, sprite: Sprite, track: Track, t: int) -> None:
    """Blend one object into `canvas` (H, W, 3 float32) at frame `t`, inside its bounding box."""
    x, y, r = float(track.x[t]), float(track.y[t]), float(track.radius[t])
    alpha = float(track.alpha[t])
    if alpha <= 0 or r <= 0:
        return
    height, width = canvas.shape[:2]
    reach = 1.2 * r + 1  # the square's corners stick out to 1.13 radii
    x0, x1 = max(int(x - reach), 0), min(int(x + reach) + 1, width)
    y0, y1 = max(int(y - reach), 0), min(int(y + reach) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - x
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - y
    # Python floats keep the arithmetic in float32 (NumPy scalars would promote to float64).
    cos, sin = float(np.cos(track.angle[t])), float(np.sin(track.angle[t]))
    u, v = (dx * cos + dy * sin) / r, (dy * cos - dx * sin) / r
    inside = _mask(sprite.shape, u, v / track.aspect)[..., None]
    colour = sprite.colour
    if track.two_tone:
        colour = np.where((u > 0)[..., None], sprite.colour2, sprite.colour)
    region = canvas[y0:y1, x0:x1]
    np.copyto(region, region + alpha * (colour - region), where=inside)


def draw(look: Look, tracks: list[Track], rng: np.random.Generator) -> np.ndarray:
    """Render `tracks` over `look`'s background with noise that changes every frame.

    Returns (T, H, W, 3) uint8. Fresh Gaussian noise per frame dominated the run time, so each
    frame adds two randomly shifted windows of two larger noise fields made once per clip: about
    a million different sums, and no cue to the label either way.
    """
    height, width = look.background.shape[:2]
    num_frames = len(tracks[0].x)
    pad = max(8, height // 4)
    fields = [_noise_field(rng, look.noise / np.sqrt(2), height + pad, width + pad) for _ in "ab"]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    canvas = np.empty_like(look.background)
    for t in range(num_frames):
        np.copyto(canvas, look.background)
        for sprite, track in zip(look.sprites[: len(tracks)], tracks, strict=True):
            _paint(canvas, sprite, track, t)
        for field, (dy, dx) in zip(fields, rng.integers(0, pad + 1, (2, 2)), strict=True):
            canvas += field[dy : dy + height, dx : dx + width]
        np.clip(canvas, 0, 255, out=canvas)
        np.rint(canvas, out=canvas)
        frames[t] = canvas
    return frames


def _noise_field(rng: np.random.Generator, sigma: float, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 luminance noise: the same Gaussian value in all three channels."""
    levels = np.frombuffer(rng.bytes(height * width), dtype=np.uint8).reshape(height, width)
    table = np.repeat((np.float32(sigma) * _GAUSS)[:, None], 3, axis=1)
    return np.take(table, levels, axis=0)


# ---------------------------------------------------------------------------------------------
# Motions: each returns the tracks of the forward class over `n` frames of a width x height clip.

Motion = Callable[[np.random.Generator, int, int, int], list[Track]]


def _radius(rng: np.random.Generator, height: int) -> float:
    # 24-40% of the frame height across: 7-12 pixels in the 30-pixel frames of synthetic.toml.
    return float(rng.uniform(0.12, 0.2) * height)


def _drift(rng: np.random.Generator, n: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A small straight drift in a random direction, centred on zero (time-symmetric)."""
    distance, theta = rng.uniform(0, 0.08) * height, rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-0.5, 0.5, n)
    return ramp * distance * np.cos(theta), ramp * distance * np.sin(theta)


def _spin(rng: np.random.Generator, n: int) -> np.ndarray:
    # A little turning either way, so that angle is noise everywhere but in rotate_*.
    return rng.uniform(0, 2 * np.pi) + np.linspace(0, rng.uniform(-0.6, 0.6), n)


def _two_tone(rng: np.random.Generator) -> bool:
    return bool(rng.random() < 0.35)


def _aspect(rng: np.random.Generator) -> float:
    # Some elongated objects everywhere, so that elongation alone does not point to rotate_*.
    return float(rng.uniform(0.45, 0.6)) if rng.random() < 0.35 else 1.0


def _still(rng: np.random.Generator, n: int, width: int, height: int, r: float) -> Track:
    """An object that only drifts and spins a little, somewhere fully inside the frame."""
    dx, dy = _drift(rng, n, height)
    cx = rng.uniform(r + abs(dx[0]), width - r - abs(dx[0]))
    cy = rng.uniform(r + abs(dy[0]), height - r - abs(dy[0]))
    ones = np.ones(n)
    return Track(cx + dx, cy + dy, r * ones, _spin(rng, n), ones, _two_tone(rng), _aspect(rng))


def _cross(rng: np.random.Generator, n: int, length: int, r: float) -> np.ndarray:
    """Positions along an axis of `length` px: 60-95% of the free span, in one direction."""
    span = length - 2 * r
    travelled = rng.uniform(0.6, 0.95)
    start = r + rng.uniform(0, 1 - travelled) * span
    return np.linspace(start, start + travelled * span, n)


def _move_right(rng: np.random.Generator, n: int, width: int, height: int) -> list[Track]:
    track = _still(rng, n, width, height, _radius(rng, height))
    x = _cross(rng, n, width, float(track.radius[0]))
    return [replace(track, x=x)]


def _move_down(rng: np.random.Generator, n: int, width: int, height: int) -> list[Track]:
    track = _still(rng, n, width, height, _radius(rng, height))
    y = _cross(rng, n, height, float(track.radius[0]))
    return [replace(track, y=y)]


def _grow(rng: np.random.Generator, n: int, width: int, height: int) -> list[Track]:
    # From 12-18% to 60-72% of the frame height across: at 30 pixels a smaller change in size
    # was too easily taken for a change in opacity (fade_in / fade_out).
    small, large = rng.uniform(0.06, 0.09) * height, rng.uniform(0.3, 0.36) * height
    track = _still(rng, n, width, height, large)
    radius = np.linspace(small, large, n)
    return [replace(track, radius=radius)]


def _rotate_cw(rng: np.random.Generator, n: int, width: int, height: int) -> list[Track]:
    # Elongated and two-tone always: a disc would not show turning at all, and the two colours
    # tell the ends apart. At most 0.8 turns, so 8 frames spread over the clip are under 45
    # degrees apart: far from the 180 where the sense of rotation becomes ambiguous.
    track = _still(rng, n, width, height, rng.uniform(0.15, 0.21) * height)
    angle = track.angle[0] + np.linspace(0, rng.uniform(0.4, 0.8) * 2 * np.pi, n)
    return [replace(track, angle=angle, two_tone=True, aspect=float(rng.uniform(0.35, 0.55)))]


def _fade_in(rng: np.random.Generator, n: int, width: int, height: int) -> list[Track]:
    track = _still(rng, n, width, height, _radius(rng, height))
    begin, end = rng.uniform(0, 0.2), rng.uniform(0.75, 1.0)
    alpha = np.clip((np.linspace(0, 1, n) - begin) / (end - begin), 0, 1)
    return [replace(track, alpha=alpha)]


def _approach(rng: np.random.Generator, n: int, width: int, height: int) -> list[Track]:
    """Two objects on a line through the middle, from far apart to nearly touching."""
    radii = rng.uniform(0.1, 0.15, 2) * height
    theta = rng.uniform(-0.45, 0.45) + (np.pi / 2 if rng.random() < 0.25 else 0.0)
    cx, cy = width / 2 + rng.uniform(-0.05, 0.05) * width, height / 2
    margin = radii.max() + 2
    # The largest gap between centres that keeps both objects inside the frame.
    reach_x = (width / 2 - abs(cx - width / 2) - margin) / max(abs(np.cos(theta)), 1e-6)
    reach_y = (height / 2 - margin) / max(abs(np.sin(theta)), 1e-6)
    far = 2 * min(reach_x, reach_y) * rng.uniform(0.8, 1.0)
    near = radii.sum() * rng.uniform(1.0, 1.2)
    # Tiny frames leave little room; the gap must still shrink clearly, even if objects clip.
    gap = np.linspace(max(far, 1.5 * near), near, n)
    tracks = []
    for side, r in zip((-1.0, 1.0), radii, strict=True):
        x = cx + side * gap / 2 * np.cos(theta)
        y = cy + side * gap / 2 * np.sin(theta)
        spin, two_tone, aspect = _spin(rng, n), _two_tone(rng), _aspect(rng)
        tracks.append(Track(x, y, np.full(n, r), spin, np.ones(n), two_tone, aspect))
    return tracks


def _blink(rng: np.random.Generator, n: int, width: int, height: int) -> list[Track]:
    track = _still(rng, n, width, height, _radius(rng, height))
    period = rng.uniform(8, 20)
    alpha = ((np.arange(n) + rng.uniform(0, period)) % period < period / 2).astype(float)
    return [replace(track, alpha=alpha)]


def _bounce(rng: np.random.Generator, n: int, width: int, height: int) -> list[Track]:
    """Elastic bounces on a floor (parabolic arcs): the same played either way."""
    r = _radius(rng, height)
    track = _still(rng, n, width, height, r)
    floor = height - r - rng.uniform(0, 0.1) * height
    apex = rng.uniform(0.35, 0.6) * (floor - r)
    phase = np.arange(n) / rng.uniform(12, 30) + rng.uniform(0, 1)
    arc = phase - np.floor(phase)  # 0..1 within each bounce
    y = floor - 4 * apex * arc * (1 - arc)
    return [replace(track, y=y)]


def _zigzag(rng: np.random.Generator, n: int, width: int, height: int) -> list[Track]:
    """Across the frame (either way, at random) while going up and down."""
    r = _radius(rng, height)
    track = _still(rng, n, width, height, r)
    x = _cross(rng, n, width, r)
    if rng.random() < 0.5:
        x = x[::-1]
    amplitude = rng.uniform(0.12, 0.25) * height
    phase = np.arange(n) / rng.uniform(10, 24) + rng.uniform(0, 1)
    wave = 4 * np.abs(phase - np.floor(phase) - 0.5) - 1  # triangle wave in [-1, 1]
    y = np.clip(height / 2 + amplitude * wave, r, height - r)
    return [replace(track, x=x, y=y)]


def _static(rng: np.random.Generator, n: int, width: int, height: int) -> list[Track]:
    return [_still(rng, n, width, height, _radius(rng, height))]


_MOTIONS: dict[str, Motion] = {
    "move_right": _move_right,
    "move_down": _move_down,
    "grow": _grow,
    "rotate_cw": _rotate_cw,
    "fade_in": _fade_in,
    "approach": _approach,
    "blink": _blink,
    "bounce": _bounce,
    "zigzag": _zigzag,
    "static": _static,
}
# label -> (motion, played backwards?)
_MOTION_OF: dict[str, tuple[str, bool]] = {
    **{forward: (forward, False) for forward, _ in TIME_PAIRS},
    **{reverse: (forward, True) for forward, reverse in TIME_PAIRS},
    **{single: (single, False) for single in SINGLES},
}
