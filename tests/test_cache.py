"""The .jpgs frame cache files and the manifest."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from PIL import Image

from hmdbattn import load_config
from hmdbattn.data import cache as cache_module
from hmdbattn.data import preprocess as preprocess_module
from hmdbattn.data.cache import (
    CachedVideo,
    DamagedCacheFile,
    Manifest,
    ManifestEntry,
    cache_file,
    load_manifest,
    write_video_cache,
)
from hmdbattn.data.datasets import ClipData, build_datasets
from hmdbattn.data.preprocess import preprocess
from hmdbattn.errors import UserError
from hmdbattn.report import quiet


@pytest.fixture
def frames() -> np.ndarray:
    """Frames like a decoded video's: a gradient, a moving square and a little noise."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 160, 64)[None, None, :, None]
    noise = rng.integers(0, 8, size=(40, 48, 64, 3))
    out = (ramp + noise).astype(np.uint8)
    for t in range(40):
        out[t, 16:28, t : t + 12] = (250, 200, 30)
    return out


@pytest.fixture
def cached(tmp_path: Path, frames: np.ndarray) -> Path:
    path = tmp_path / "videos" / "clap" / "a.jpgs"
    write_video_cache(path, frames, 29.97, quality=90)
    return path


def test_cache_file_layout(tmp_path: Path) -> None:
    assert cache_file(tmp_path, "clap/A_(1996)_&_b!.avi") == (
        tmp_path / "videos" / "clap" / "A_(1996)_&_b!.jpgs"
    )
    for bad in ("../x.avi", "/abs/x.avi"):
        with pytest.raises(ValueError):
            cache_file(tmp_path, bad)


def test_round_trip(cached: Path, frames: np.ndarray) -> None:
    video = CachedVideo(cached)
    assert (video.num_frames, video.height, video.width) == (40, 48, 64)
    assert video.fps == pytest.approx(29.97)
    assert video.duration == pytest.approx(40 / 29.97)
    indices = [5, 0, 39, 5, 6, 7]
    out = video.read(indices)
    assert out.shape == (6, 48, 64, 3)
    assert out.dtype == torch.uint8
    assert out.is_contiguous()
    diff = np.abs(out.numpy().astype(int) - frames[indices]).mean()
    assert diff < 8, diff
    torch.testing.assert_close(out[0], out[3])  # repeated index, same frame
    assert video.read([]).shape == (0, 48, 64, 3)
    with pytest.raises(IndexError):
        video.read([40])


def test_frames_are_libjpeg_turbos_exact_decode_written_into_the_given_buffer(
    cached: Path,
) -> None:
    video = CachedVideo(cached)
    indices = [3, 9, 3, 10]
    blobs = video.read_jpegs([3, 9, 10])
    # Pillow decodes with libjpeg-turbo's accurate IDCT and fancy upsampling, as the cache
    # reader must: the reader's frames are those pixels, bit for bit.
    expected = [np.asarray(Image.open(io.BytesIO(bytes(b))).convert("RGB")) for b in blobs]
    out = torch.full((4, 48, 64, 3), 7, dtype=torch.uint8)
    assert video.read(indices, out=out) is out
    np.testing.assert_array_equal(out.numpy(), np.stack([expected[k] for k in (0, 1, 0, 2)]))


def test_a_corrupt_jpeg_is_damage_that_says_to_delete_the_file(
    cached: Path, tmp_path: Path
) -> None:
    video = CachedVideo(cached)
    bad = tmp_path / "bad.jpgs"
    data = bytearray(cached.read_bytes())
    start = int(video.offsets[2])
    data[start : start + 4] = b"\x00\x00\x00\x00"  # frame 2 no longer starts with SOI
    bad.write_bytes(bytes(data))
    damaged = CachedVideo(bad)  # header and size are whole
    damaged.read([0, 1, 3])
    with pytest.raises(
        DamagedCacheFile,
        match=r"bad\.jpgs: corrupt JPEG data in frame 2 .*"
        r"delete it, then rerun `hmdbattn preprocess`",
    ):
        damaged.read([1, 2])


def test_size_and_offsets(cached: Path) -> None:
    video = CachedVideo(cached)
    assert int(video.offsets[-1]) == cached.stat().st_size
    assert (np.diff(video.offsets) > 0).all()


def test_written_bytes_are_the_file_size(tmp_path: Path, frames: np.ndarray) -> None:
    path = tmp_path / "x.jpgs"
    assert write_video_cache(path, frames, 30.0, 75) == path.stat().st_size
    with pytest.raises(ValueError):
        write_video_cache(path, frames[:0], 30.0, 75)


def test_bad_magic_and_truncation_name_the_file(cached: Path, tmp_path: Path) -> None:
    data = cached.read_bytes()
    bad = tmp_path / "bad.jpgs"
    bad.write_bytes(b"XXXXXXXX" + data[8:])
    with pytest.raises(UserError, match=r"bad\.jpgs: not a frame cache file"):
        CachedVideo(bad)
    for cut in (10, 60, len(data) - 100):
        short = tmp_path / f"short{cut}.jpgs"
        short.write_bytes(data[:cut])
        with pytest.raises(UserError, match=rf"short{cut}\.jpgs: truncated"):
            CachedVideo(short)


def test_interrupted_write_leaves_nothing(
    tmp_path: Path, frames: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.os, "replace", killed)
    target = tmp_path / "clap" / "a.jpgs"
    with pytest.raises(KeyboardInterrupt):
        write_video_cache(target, frames, 30.0, 90)
    assert list(target.parent.iterdir()) == []


def test_leftover_temp_files_are_ignored_by_reading_preprocess_and_manifest(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    """What kills between writing and renaming leave, hidden ``.*.tmp`` files beside a cache
    file and beside the manifest, changes nothing: datasets read the same videos from the
    real files, the manifest loads as before, and a rerun of preprocess decodes nothing,
    keeps every cache file and clears the leftover."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    config = load_config(None, tiny_overrides(root, tmp_path))
    cache = config.data.cache_path
    manifest = load_manifest(cache)
    before = _clips(build_datasets(config))
    real = cache_file(cache, manifest.ok()[0].path)
    real_bytes = real.read_bytes()
    leftover = real.parent / f".{real.name}.abc123.tmp"
    leftover.write_bytes(real_bytes[:50])  # a half-written cache file
    (cache / ".manifest.json.xyz789.tmp").write_text('{"format_version": 1, "videos": [')
    assert load_manifest(cache) == manifest
    assert _same(_clips(build_datasets(config)), before)
    with quiet():
        summary = preprocess(config, workers=0)
    assert (summary.cached, summary.skipped) == (0, summary.ok) == (0, len(manifest.ok()))
    assert real.read_bytes() == real_bytes and not leftover.exists()
    assert load_manifest(cache).videos == manifest.videos  # (its root is the copy's now)
    assert _same(_clips(build_datasets(config)), before)


def _clips(data: ClipData) -> tuple[list[str], torch.Tensor]:
    """The videos of both datasets and the frames of their first clips (read from the cache)."""
    paths = [v.path for v in [*data.train.videos, *data.eval.videos]]
    return paths, torch.stack([data.train[0][0], data.eval[0][0]])


def _same(a: tuple[list[str], torch.Tensor], b: tuple[list[str], torch.Tensor]) -> bool:
    return a[0] == b[0] and torch.equal(a[1], b[1])


def _manifest() -> Manifest:
    entries = [
        ManifestEntry("clap/a.avi", "clap", 40, 30.0, 40 / 30, {1: 1, 2: 2, 3: 0}, "ok", None, 9),
        ManifestEntry("clap/b.avi", "clap", 0, 0.0, 0.0, {1: 2}, "failed", "empty file", 0),
    ]
    return Manifest((128, 171), 90, "/data/hmdb51", ["clap"], entries)


def test_manifest_round_trip(tmp_path: Path) -> None:
    manifest = _manifest()
    manifest.save(tmp_path)
    loaded = load_manifest(tmp_path)
    assert loaded == manifest
    assert loaded.cache_dir == tmp_path
    assert [v.path for v in loaded.ok()] == ["clap/a.avi"]
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["resize"] == [128, 171] and raw["format_version"] == 1
    assert raw["videos"][0]["split_ids"] == {"1": 1, "2": 2, "3": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left


def test_manifest_absent_or_damaged(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no cache at .*: run `hmdbattn preprocess --config FILE`"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format_version": 1, "resize": [1', encoding="utf-8")
    with pytest.raises(UserError, match="damaged manifest"):
        load_manifest(tmp_path)


def test_check_compatible_names_the_key(tmp_path: Path) -> None:
    manifest = _manifest()
    manifest.save(tmp_path)
    loaded = load_manifest(tmp_path)
    loaded.check_compatible((128, 171), 90)
    with pytest.raises(UserError, match=r"data\.resize = \[128, 171\].*\[112, 112\].*cache_dir"):
        loaded.check_compatible((112, 112), 90)
    with pytest.raises(UserError, match=r"data\.jpeg_quality = 90, the config has 75"):
        loaded.check_compatible((128, 171), 75)


def test_preprocess_uses_every_usable_core_by_default(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --workers, preprocess starts one decoding process per core it may use, whatever
    data.num_workers (the loader's count) says; in its own process on one core, or for fewer
    videos than pay for starting two workers."""
    monkeypatch.setattr(preprocess_module.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert preprocess_module.default_workers() == 3
    per_worker = preprocess_module.VIDEOS_PER_WORKER
    assert preprocess_module.default_workers(6766) == 3  # HMDB51
    assert preprocess_module.default_workers(2 * per_worker) == 2
    assert preprocess_module.default_workers(2 * per_worker - 1) == 0
    asked: list[int] = []
    run = preprocess_module._run

    def recording(tasks: list, workers: int):  # type: ignore[no-untyped-def]
        asked.append(workers)
        return run(tasks, 0)  # decode here all the same: spawning 3 processes is slow

    monkeypatch.setattr(preprocess_module, "_run", recording)
    monkeypatch.setattr(preprocess_module, "VIDEOS_PER_WORKER", 1)  # the tiny dataset is enough
    overrides = {**tiny_overrides(tiny_dataset, tmp_path), "data.cache_dir": str(tmp_path / "c")}
    config = load_config(None, overrides)
    assert config.data.num_workers == 0
    with quiet():
        assert preprocess(config).ok > 2
    assert asked == [3]
    monkeypatch.setattr(preprocess_module.os, "sched_getaffinity", lambda pid: {0})
    assert preprocess_module.default_workers(6766) == 0
