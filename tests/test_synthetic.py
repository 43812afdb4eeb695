"""The synthetic HMDB51 generator: layout, split files, real AVIs, determinism, time pairs."""

from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from hmdbattn.data.hmdb51 import SPLITS, parse_split_file, scan_dataset, split_file_name
from hmdbattn.data.synthetic import (
    CLASSES,
    MANIFEST,
    MAX_CLASSES,
    SINGLES,
    TIME_PAIRS,
    Look,
    Sprite,
    SyntheticSummary,
    check_settings,
    frame_count,
    generate,
    render_clip,
    render_video,
    split_ids,
    video_name,
)
from hmdbattn.errors import UserError
from hmdbattn.report import quiet

QUIRKS = "()&'!-"


def tiny(root: Path, seed: int, loud: bool = False, **overrides: Any) -> SyntheticSummary:
    """A dataset small enough to generate many times: 2 classes x 3 videos of 48x32.

    Quiet unless `loud` (then the progress bar runs too).
    """
    args: dict[str, Any] = {"classes": 2, "videos_per_class": 3, "seconds": 0.5}
    args.update({"size": (48, 32), "fps": 10, **overrides})
    with contextlib.nullcontext() if loud else quiet():
        return generate(root, seed=seed, **args)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSummary:
    """4 classes x 6 videos, 1 s of 96x72 at 15 fps, seed 3."""
    root = tmp_path_factory.mktemp("synthetic")
    with quiet():
        return generate(
            root, classes=4, videos_per_class=6, seconds=1.0, size=(96, 72), fps=15, seed=3
        )


def tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


# ---------------------------------------------------------------------------------------------
# Layout and split files


def test_layout_parses_with_scan_dataset(dataset: SyntheticSummary) -> None:
    index = scan_dataset(dataset.root)
    assert index.classes == dataset.classes == sorted(CLASSES[:4])
    assert dataset.videos == dataset.written == len(index.videos) == 24
    assert index.missing == []
    videos = dataset.root / "videos"
    on_disk = sorted(str(p.relative_to(videos)) for p in videos.rglob("*"))
    assert on_disk == sorted([*dataset.classes, *(v.path for v in index.videos)])  # no leftovers
    for split in SPLITS:
        for label in index.classes:
            ids = [v.split_ids[split] for v in index.videos if v.label == label]
            # 6 videos: 1 unused, then 2 test and 3 train (about 70/30).
            assert (ids.count(0), ids.count(1), ids.count(2)) == (1, 3, 2)


def test_splits_differ_between_splits(dataset: SyntheticSummary) -> None:
    index = scan_dataset(dataset.root)
    assignments = {tuple(v.split_ids[s] for v in index.videos) for s in SPLITS}
    assert len(assignments) == 3


def test_split_lines_are_name_and_id(dataset: SyntheticSummary) -> None:
    for label in dataset.classes:
        for split in SPLITS:
            path = dataset.root / "splits" / split_file_name(label, split)
            lines = path.read_text(encoding="utf-8").splitlines()
            assert len(lines) == 6
            assert all(len(line.split()) == 2 for line in lines)
            assert parse_split_file(path)[0][0].endswith(".avi")


def test_split_ids_keep_test_and_train_videos() -> None:
    for n in range(3, 60):
        ids = list(split_ids(n, np.random.default_rng(n)))
        assert ids.count(2) >= 1 and ids.count(1) >= 2
        used = ids.count(1) + ids.count(2)
        assert used >= min(n, 4)
        if n >= 20:
            assert 0.2 <= ids.count(2) / used <= 0.4
            assert 0.15 <= ids.count(0) / n <= 0.3


def test_split_ids_match_hmdb51_at_full_size() -> None:
    ids = list(split_ids(133, np.random.default_rng(0)))
    assert (ids.count(0), ids.count(1), ids.count(2)) == (33, 70, 30)


def test_file_names_have_hmdb51_quirks(dataset: SyntheticSummary) -> None:
    names = [p.name for p in (dataset.root / "videos").rglob("*.avi")]
    assert all(c in "".join(names) for c in QUIRKS)
    assert not any(any(ch.isspace() for ch in name) for name in names)
    assert any(all(c in name for c in QUIRKS) for name in names)


# ---------------------------------------------------------------------------------------------
# Videos


def test_videos_are_mpeg4_avi_of_requested_size_fps_and_length(dataset: SyntheticSummary) -> None:
    for path in sorted((dataset.root / "videos").rglob("*.avi"))[::5]:
        with av.open(str(path)) as container:
            assert "avi" in container.format.name
            stream = container.streams.video[0]
            assert stream.codec_context.name == "mpeg4"
            assert stream.codec_context.pix_fmt == "yuv420p"
            assert (stream.width, stream.height) == (96, 72)
            assert stream.average_rate == 15
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        # 1 s +-25%, never under 1 s: 15..19 frames at 15 fps.
        assert 15 <= len(frames) <= 19
        assert frames[0].shape == (72, 96, 3)


def test_decoded_video_matches_rendered_frames(dataset: SyntheticSummary) -> None:
    label = dataset.classes[0]
    for index in range(2):
        path = dataset.root / "videos" / label / video_name(label, 3, index)
        with av.open(str(path)) as container:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        rendered = render_video(label, 3, index, seconds=1.0, size=(96, 72), fps=15)
        assert decoded.shape == rendered.shape
        # Lossy codec at a low bit rate, and per-pixel noise does not survive it: a loose bound.
        assert np.abs(decoded.astype(int) - rendered.astype(int)).mean() < 12


def test_frame_count_jitters_and_keeps_one_second() -> None:
    rng = np.random.default_rng(0)
    counts = [frame_count(rng, 2.0, 30) for _ in range(500)]
    assert min(counts) >= 45 and max(counts) <= 75 and len(set(counts)) > 10
    assert min(frame_count(rng, 1.0, 30) for _ in range(200)) == 30
    assert frame_count(rng, 0.2, 30) in range(4, 9)  # shorter than 1 s only when asked


# ---------------------------------------------------------------------------------------------
# Determinism and resuming


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = tiny(tmp_path / "a", 7, loud=True)
    tiny(tmp_path / "b", 7, workers=2)  # worker processes write the very same files
    tiny(tmp_path / "c", 8)
    a, b, c = (tree_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert first.written == 6
    videos_a = sorted(v for k, v in a.items() if k.endswith(".avi"))
    videos_c = sorted(v for k, v in c.items() if k.endswith(".avi"))
    assert not set(videos_a) & set(videos_c)


def test_rerun_skips_existing_and_regenerates_missing(tmp_path: Path) -> None:
    tiny(tmp_path, 1)
    before = tree_bytes(tmp_path)
    videos = sorted(tmp_path.rglob("*.avi"))
    kept, lost = videos[0], videos[1]
    kept_mtime = kept.stat().st_mtime_ns
    lost.unlink()
    leftover = lost.parent / f".{lost.name}.k1ll3d.tmp"  # a temp file of a killed run
    leftover.write_bytes(b"interrupted")
    (tmp_path / "splits" / split_file_name("move_left", 2)).unlink()
    summary = tiny(tmp_path, 1)
    assert summary.written == 1
    assert kept.stat().st_mtime_ns == kept_mtime
    leftover.unlink()  # harmless litter: never taken for the video it was becoming
    assert tree_bytes(tmp_path) == before


def test_rerun_with_other_settings_is_refused(tmp_path: Path) -> None:
    tiny(tmp_path, 1)
    assert (tmp_path / MANIFEST).is_file()
    with pytest.raises(UserError, match="another root"):
        tiny(tmp_path, 2)
    # More classes or videos with the same settings only add to the dataset.
    summary = tiny(tmp_path, 1, classes=3, videos_per_class=4)
    assert summary.written == 12 - 6
    assert len(scan_dataset(tmp_path).videos) == 12


def test_classes_by_name_are_recorded_and_kept(tmp_path: Path) -> None:
    summary = tiny(tmp_path, 1, classes=["move_up", "blink", "move_down"])
    assert summary.classes == ["blink", "move_down", "move_up"]
    assert summary.videos == summary.written == 9
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == summary.classes
    assert scan_dataset(tmp_path).classes == summary.classes
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["class_names"] == summary.classes
    # The same names in another order are the same dataset; more videos only add to it.
    again = tiny(tmp_path, 1, classes=["move_down", "move_up", "blink"], videos_per_class=4)
    assert again.written == 3
    for other in (["move_up", "blink"], ["move_up", "blink", "zigzag"], 3):
        with pytest.raises(UserError, match="another root"):
            tiny(tmp_path, 1, classes=other)
    assert json.loads((tmp_path / MANIFEST).read_text()) == manifest


def test_named_classes_render_as_in_a_first_n_dataset(tmp_path: Path) -> None:
    """A clip depends on (seed, class, index) only, not on which other classes were chosen."""
    tiny(tmp_path / "first", 5, classes=2)
    tiny(tmp_path / "named", 5, classes=["move_right", "static"])
    first, named = tree_bytes(tmp_path / "first"), tree_bytes(tmp_path / "named")
    shared = [k for k in named if k.startswith("videos/move_right/")]
    assert shared and all(named[k] == first[k] for k in shared)


def test_a_first_n_root_refuses_names(tmp_path: Path) -> None:
    tiny(tmp_path, 1)
    with pytest.raises(UserError, match="another root"):
        tiny(tmp_path, 1, classes=["move_left", "move_right"])


# ---------------------------------------------------------------------------------------------
# Classes and motion


def test_class_list_starts_with_complete_time_pairs() -> None:
    assert len(CLASSES) == len(set(CLASSES)) == MAX_CLASSES == 2 * len(TIME_PAIRS) + len(SINGLES)
    for n in (2, 4, 6, 8, 10, 12):
        chosen = set(CLASSES[:n])
        assert all((a in chosen) == (b in chosen) for a, b in TIME_PAIRS)
        assert sum(a in chosen for a, _ in TIME_PAIRS) == n // 2


@pytest.mark.parametrize(("forward", "reverse"), TIME_PAIRS)
def test_reverse_class_is_forward_played_backwards(forward: str, reverse: str) -> None:
    for seed in range(3):
        ahead = render_clip(forward, np.random.default_rng(seed), 12, (64, 48))
        back = render_clip(reverse, np.random.default_rng(seed), 12, (64, 48))
        assert ahead.shape == (12, 48, 64, 3) and ahead.dtype == np.uint8
        np.testing.assert_array_equal(back, ahead[::-1])
        assert not np.array_equal(ahead[0], ahead[-1])  # something does happen


def test_render_clip_is_pure_and_rejects_unknown_classes() -> None:
    a = render_clip("zigzag", np.random.default_rng(5), 10, (64, 48))
    b = render_clip("zigzag", np.random.default_rng(5), 10, (64, 48))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown class"):
        render_clip("jump", np.random.default_rng(0), 10, (64, 48))


RED = np.array([220, 20, 20], dtype=np.float32)
BLUE = np.array([20, 20, 220], dtype=np.float32)
GREEN = np.array([20, 220, 20], dtype=np.float32)
GREY = 100


def clean(label: str, seed: int, frames: int = 24, size: tuple[int, int] = (160, 120)):
    """A clip on a flat grey background without noise, red/blue disc and green square."""
    width, height = size
    look = Look(
        np.full((height, width, 3), GREY, dtype=np.float32),
        0.0,
        (Sprite("disc", RED, BLUE), Sprite("square", GREEN, BLUE)),
    )
    return render_clip(label, np.random.default_rng(seed), frames, size, look=look)


def foreground(frame: np.ndarray) -> np.ndarray:
    return np.abs(frame.astype(int) - GREY).max(axis=-1) > 20


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize(
    ("label", "axis", "sign"),
    [("move_right", 0, 1), ("move_left", 0, -1), ("move_down", 1, 1), ("move_up", 1, -1)],
)
def test_moves_cross_most_of_the_frame(label: str, axis: int, sign: int) -> None:
    for seed in range(4):
        clip = clean(label, seed)
        start, end = centroid(foreground(clip[0])), centroid(foreground(clip[-1]))
        travel = (end - start)[axis] * sign
        assert travel > 0.4 * (160, 120)[axis]
        # Also monotone, so 8 frames anywhere in the clip show the direction.
        steps = np.diff([centroid(foreground(f))[axis] for f in clip]) * sign
        assert (steps > -0.5).all()


def test_grow_and_shrink_change_size() -> None:
    for seed in range(4):
        areas = [foreground(f).sum() for f in clean("grow", seed)]
        assert areas[-1] > 4 * areas[0]
        areas = [foreground(f).sum() for f in clean("shrink", seed)]
        assert areas[0] > 4 * areas[-1]


def test_fade_in_and_fade_out_change_contrast() -> None:
    for seed in range(4):
        contrast = [np.abs(f.astype(int) - GREY).sum() for f in clean("fade_in", seed)]
        assert contrast[0] < 0.25 * contrast[-1]
        contrast = [np.abs(f.astype(int) - GREY).sum() for f in clean("fade_out", seed)]
        assert contrast[-1] < 0.25 * contrast[0]


@pytest.mark.parametrize(("label", "sign"), [("rotate_cw", 1), ("rotate_ccw", -1)])
def test_rotation_direction_on_screen(label: str, sign: int) -> None:
    """Clockwise as seen: with y down, the blue half's angle about the centre increases."""
    for seed in range(4):
        angles = []
        for frame in clean(label, seed):
            blue = (frame[..., 2] > 150) & (frame[..., 0] < 80)
            dx, dy = centroid(blue) - centroid(foreground(frame))
            angles.append(np.arctan2(dy, dx))
        steps = np.angle(np.exp(1j * np.diff(angles)))  # wrapped to (-pi, pi]
        assert (steps * sign > 0).all()
        assert (steps * sign).sum() > 0.35 * 2 * np.pi


def test_approach_and_separate_change_the_gap() -> None:
    def spread(frame: np.ndarray) -> float:
        ys, xs = np.nonzero(foreground(frame))
        return float(np.hypot(xs.std(), ys.std()))

    for seed in range(4):
        clip = clean("approach", seed)
        assert spread(clip[0]) > 1.8 * spread(clip[-1])
        clip = clean("separate", seed)
        assert spread(clip[-1]) > 1.8 * spread(clip[0])


@pytest.mark.parametrize("label", SINGLES)
def test_single_classes_render_something(label: str) -> None:
    clip = clean(label, 0)
    assert any(foreground(f).any() for f in clip)


def heights(clip: np.ndarray) -> np.ndarray:
    """The foreground centroid's y (pixels, down) in each frame."""
    return np.array([centroid(foreground(f))[1] for f in clip])


def flights(y: np.ndarray) -> list[np.ndarray]:
    """The frame indices of each flight between two bounces.

    A bounce is a lowest point on screen (a local maximum of y, near the floor); its frame is
    left out, as it may show the object just before or just after the bounce.
    """
    low = y.min() + 0.6 * np.ptp(y)
    hits = [t for t in range(1, len(y) - 1) if y[t - 1] <= y[t] >= y[t + 1] and y[t] > low]
    ends = [-1, *hits, len(y)]
    return [np.arange(a + 1, b) for a, b in itertools.pairwise(ends) if b - a > 6]


def test_bounce_is_elastic_and_time_symmetric() -> None:
    """Flights under one constant gravity, every bounce as high as the last: played backwards,
    the clip is another bounce clip (a parabola reversed is the same parabola)."""
    for seed in range(4):
        y = heights(clean("bounce", seed, frames=90))
        arcs = flights(y)
        assert len(arcs) >= 3 and np.ptp(y) > 0.15 * 120  # a few real bounces
        gravity = []
        for t in arcs:
            fit = np.polyfit(t, y[t], 2)
            assert np.abs(np.polyval(fit, t) - y[t]).max() < 0.5  # a parabola...
            gravity.append(fit[0])
        assert min(gravity) > 0 and np.ptp(gravity) < 0.1 * np.mean(gravity)  # ...the same one
        # The top of each flight: a turn from rising to falling. Elastic bounces: all level.
        tops = [y[t] for t in range(1, len(y) - 1) if y[t - 1] > y[t] <= y[t + 1]]
        assert len(tops) >= 2 and np.ptp(tops) < 1.0


def test_zigzag_crosses_either_way_going_up_and_down() -> None:
    directions = set()
    for seed in range(8):
        points = np.array([centroid(foreground(f)) for f in clean("zigzag", seed)])
        x, y = points[:, 0], points[:, 1]
        steps = np.diff(x)
        assert (np.sign(steps) == np.sign(steps[0])).all()  # straight across, one way
        assert abs(x[-1] - x[0]) > 0.4 * 160
        directions.add(int(np.sign(steps[0])))
        turns = np.diff(np.sign(np.diff(y))) != 0
        assert turns.any() and np.ptp(y) > 0.15 * 120  # up and down on the way
    assert directions == {-1, 1}


def test_static_stays_nearly_still() -> None:
    for seed in range(8):
        clip = clean("static", seed)
        points = np.array([centroid(foreground(f)) for f in clip])
        assert (np.ptp(points, axis=0) < 0.1 * 120).all()  # a drift of a few pixels at most
        areas = np.array([foreground(f).sum() for f in clip])
        assert areas.min() > 0.97 * areas.max()  # neither growing, fading nor blinking


def test_blink_switches_on_and_off() -> None:
    for seed in range(4):
        clip = clean("blink", seed, frames=40)
        areas = np.array([foreground(f).sum() for f in clip])
        on = areas > 0
        assert (areas[on] > 0.97 * areas.max()).all()  # fully on or fully off, nothing between
        switches = np.diff(on.astype(int))
        assert (switches == 1).any() and (switches == -1).any()  # on -> off and off -> on
        points = np.array([centroid(foreground(f)) for f, lit in zip(clip, on, strict=True) if lit])
        assert (np.ptp(points, axis=0) < 0.1 * 120).all()  # in one place


# ---------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    "bad",
    [
        {"classes": 1},
        {"classes": MAX_CLASSES + 1},
        {"videos_per_class": 2},
        {"seconds": 0},
        {"size": (95, 72)},
        {"size": (8, 8)},
        {"fps": 0},
        {"seed": -1},
        {"classes": ["move_up", "no_such_class"]},
        {"classes": ["move_up", "move_up"]},
        {"classes": ["move_up"]},
        {"classes": "move_up,move_down"},
    ],
)
def test_invalid_arguments_raise_value_error(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        tiny(tmp_path, **{"seed": 0, **bad})
    assert not any(tmp_path.iterdir())  # nothing written


def test_unknown_or_repeated_names_are_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"unknown class name\(s\) nope, jump; known: move_left, "):
        check_settings(["move_up", "nope", "jump"], 3, 1.0, (48, 32), 10, 0)
    with pytest.raises(ValueError, match=r"given twice: blink$"):
        check_settings(["blink", "static", "blink"], 3, 1.0, (48, 32), 10, 0)
