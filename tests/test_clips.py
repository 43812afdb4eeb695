"""Clip sampling in time: training windows and evaluation windows."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hmdbattn.data.clips import Span, cover, eval_windows, num_eval_windows, train_clip_indices


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def steps(indices: list[int]) -> list[int]:
    return [b - a for a, b in itertools.pairwise(indices)]


def test_train_indices_in_range_and_uniform():
    g = gen()
    for _ in range(200):
        idx = train_clip_indices(150, 30.0, 2.0, 16, g)  # 5 s video, 2 s window = 60 frames
        assert len(idx) == 16
        assert all(0 <= i < 150 for i in idx)
        assert idx == sorted(idx)
        # 60 frames / 16 = 3.75 frames apart: every step is 3 or 4
        assert set(steps(idx)) <= {3, 4}
        assert 56 <= idx[-1] - idx[0] <= 57


def test_train_window_is_random_and_covers_the_video():
    g = gen(1)
    firsts = [train_clip_indices(150, 30.0, 2.0, 16, g)[0] for _ in range(500)]
    assert min(firsts) <= 5 and max(firsts) >= 85  # starts spread over [0, 90]
    assert len(set(firsts)) > 50


def test_train_same_seed_same_clip():
    a = [train_clip_indices(300, 30.0, 2.0, 16, gen(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert train_clip_indices(300, 30.0, 2.0, 16, gen(8)) != a[0]


def test_short_video_is_one_window_with_repeats():
    # 1 s video, 2 s window: the whole video, 16 indices over 30 frames
    idx = train_clip_indices(30, 30.0, 2.0, 16, gen())
    assert idx[0] <= 1 and idx[-1] >= 28
    assert set(steps(idx)) <= {1, 2}
    # 8 frames for 16 samples: every frame twice
    idx = train_clip_indices(8, 30.0, 2.0, 16, gen())
    assert idx == [i // 2 for i in range(16)]
    assert eval_windows(8, 30.0, 2.0, 16, 0) == [idx]
    assert eval_windows(8, 30.0, 2.0, 16, 5) == [idx]  # one window, whatever is asked
    assert train_clip_indices(1, 30.0, 2.0, 4, gen()) == [0, 0, 0, 0]


@pytest.mark.parametrize("frames", [61, 90, 150, 151, 299, 300])
def test_eval_every_window_covers_start_and_end(frames):
    windows = eval_windows(frames, 30.0, 2.0, 16, 0)
    assert len(windows) == math.ceil(frames / 60)
    assert windows[0][0] <= 2  # first window starts at frame 0
    assert windows[-1][-1] >= frames - 3  # last window ends at the last frame
    for w in windows:
        assert len(w) == 16 and all(0 <= i < frames for i in w)
        assert set(steps(w)) <= {3, 4}
    starts = [w[0] for w in windows]
    assert starts == sorted(starts)
    if len(starts) > 2:  # uniformly spaced
        assert max(steps(starts)) - min(steps(starts)) <= 1


def test_eval_fixed_count_and_centre_window():
    windows = eval_windows(300, 30.0, 2.0, 16, 10)
    assert len(windows) == 10
    assert windows[0][0] <= 2 and windows[-1][-1] >= 297
    (centre,) = eval_windows(300, 30.0, 2.0, 16, 1)
    assert abs((centre[0] + centre[-1]) / 2 - 150) <= 1.5


def test_cover_places_clips_inside_any_span():
    # The formula eval_windows uses over the whole video, over a span that starts later.
    spans = cover(Span(10.0, 100.0), 30.0)  # ceil(100 / 30) = 4 clips
    assert [s.start for s in spans] == pytest.approx([10, 10 + 70 / 3, 10 + 140 / 3, 80])
    assert all(s.length == 30.0 for s in spans) and spans[-1].end == 110.0
    assert cover(Span(10.0, 100.0), 30.0, 1) == [Span(45.0, 30.0)]  # the centre clip
    assert cover(Span(10.0, 20.0), 30.0, 3) == [Span(10.0, 20.0)]  # short: the whole span
    assert cover(Span(0.0, 90.0), 30.0) == [Span(0.0, 30.0), Span(30.0, 30.0), Span(60.0, 30.0)]


def test_num_eval_windows_exact_multiple():
    assert num_eval_windows(120, 30.0, 2.0) == 2
    assert num_eval_windows(121, 30.0, 2.0) == 3
    assert num_eval_windows(int(29.97 * 4), 29.97, 2.0) == 2


def test_bad_arguments():
    with pytest.raises(ValueError):
        train_clip_indices(0, 30.0, 2.0, 16, gen())
    with pytest.raises(ValueError):
        eval_windows(100, 30.0, 2.0, 16, -1)
    with pytest.raises(ValueError):
        eval_windows(100, 0.0, 2.0, 16, 0)
