"""`preprocess` and `hmdbattn preprocess` on a small dataset with every kind of bad file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from videofiles import write_avi

import hmdbattn.cli.preprocess  # noqa: F401  (registers the command)
from hmdbattn.cli import app
from hmdbattn.config import Config, load_config
from hmdbattn.data import preprocess as pre
from hmdbattn.data.cache import JOURNAL_NAME, CachedVideo, cache_file, load_manifest
from hmdbattn.data.decode import decode_video
from hmdbattn.errors import UserError
from hmdbattn.report import quiet

GOOD = {
    "clap/good_a.avi": 30,
    "clap/Hamlet_(1996)_&_it's_ok!.avi": 24,
    "wave/good_b.avi": 20,
    "wave/good_c.avi": 36,
}
FAILED = {
    "clap/empty.avi": "empty file",
    "wave/random.avi": "not a video or damaged container",
    "wave/text.avi": "not a video or damaged container",
    "clap/header_cut.avi": "not a video or damaged container",
}
TRUNCATED = "wave/truncated.avi"
MISSING = ["clap/ghost.avi", "wave/gone.avi"]


def _write_splits(root: Path, names: list[str]) -> None:
    splits = root / "splits"
    splits.mkdir(parents=True)
    for label in ("clap", "wave"):
        mine = [n.split("/", 1)[1] for n in names if n.startswith(label + "/")]
        for k in (1, 2, 3):
            lines = [f"{name} {(i + k) % 3}" for i, name in enumerate(mine)]
            (splits / f"{label}_test_split{k}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hmdb")
    videos = root / "videos"
    for seed, (name, frames) in enumerate(GOOD.items()):
        write_avi(videos / name, num_frames=frames, seed=seed)
    (videos / "clap" / "empty.avi").write_bytes(b"")
    (videos / "wave" / "random.avi").write_bytes(np.random.default_rng(1).bytes(4000))
    (videos / "wave" / "text.avi").write_text("hello\n" * 200)
    data = write_avi(root / "scratch.avi", num_frames=40).read_bytes()
    movi = data.index(b"movi")
    (videos / "clap" / "header_cut.avi").write_bytes(data[: movi // 2])
    (videos / TRUNCATED).write_bytes(data[: movi + (len(data) - movi) * 3 // 4])
    _write_splits(root, [*GOOD, *FAILED, TRUNCATED, *MISSING])
    return root


def _config(root: Path, cache: Path, **extra: object) -> Config:
    overrides = {
        "data.root": str(root),
        "data.cache_dir": str(cache),
        "data.resize": [24, 32],
        "data.crop_size": 16,
        "data.num_workers": 0,
        **extra,
    }
    return load_config(overrides=overrides)


def quiet_preprocess(config: Config, min_frames: int = 1) -> pre.PreprocessSummary:
    """`preprocess` in this process without a progress bar."""
    with quiet():
        return pre.preprocess(config, workers=0, min_frames=min_frames)


def _assert_reasons(got: dict[str, str]) -> None:
    assert sorted(got) == sorted(FAILED)
    for name, reason in got.items():
        assert reason.startswith(FAILED[name]), (name, reason)


def _cache_bytes(cache: Path) -> dict[str, bytes]:
    """Every file under the cache's videos/ folder, by relative path."""
    files = [p for p in (cache / "videos").rglob("*") if p.is_file()]
    return {str(p.relative_to(cache)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted in-process run."""
    cache = tmp_path_factory.mktemp("reference")
    quiet_preprocess(_config(dataset, cache))
    return cache


def test_every_problem_is_named_and_good_videos_cached(dataset: Path, tmp_path: Path) -> None:
    summary = quiet_preprocess(_config(dataset, tmp_path))
    assert (summary.total, summary.ok, summary.skipped) == (11, 5, 0)
    assert (summary.failed, summary.missing) == (4, 2)
    _assert_reasons({p.path: p.reason for p in summary.failed_files})
    assert [p.path for p in summary.missing_files] == MISSING
    assert [p.path for p in summary.warnings] == [TRUNCATED]
    assert summary.warnings[0].reason.startswith("truncated: decoded")
    manifest = load_manifest(tmp_path)
    assert manifest.resize == (24, 32) and manifest.classes == ["clap", "wave"]
    by_path = manifest.by_path()
    for name, frames in GOOD.items():
        entry = by_path[name]
        assert (entry.status, entry.error, entry.frames) == ("ok", None, frames)
        assert entry.duration == pytest.approx(frames / 30)
        video = CachedVideo(cache_file(tmp_path, name))
        assert (video.num_frames, video.height, video.width) == (frames, 24, 32)
        assert entry.bytes == cache_file(tmp_path, name).stat().st_size
        decoded = decode_video(dataset / "videos" / name, size=(24, 32)).frames
        assert np.abs(video.read([0, frames - 1]).numpy().astype(int) - decoded[[0, -1]]).mean() < 8
    assert by_path["clap/ghost.avi"].split_ids == {1: 2, 2: 0, 3: 1}
    assert summary.bytes == sum(e.bytes for e in manifest.ok())
    for name in FAILED:
        assert not cache_file(tmp_path, name).exists()


def test_rerun_of_a_finished_cache_skips_everything(reference: Path, dataset: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in (reference / "videos").rglob("*.jpgs")}
    started = time.perf_counter()
    summary = quiet_preprocess(_config(dataset, reference))
    assert time.perf_counter() - started < 3
    assert summary.skipped == summary.ok == 5
    assert summary.cached == 0
    assert before == {p: p.stat().st_mtime_ns for p in (reference / "videos").rglob("*.jpgs")}


def test_resume_after_a_kill_equals_an_uninterrupted_run(
    reference: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(dataset, tmp_path)
    calls = []
    cache_one = pre.cache_one

    def dies_on_the_sixth(task: pre._Task) -> object:
        calls.append(task.rel_path)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return cache_one(task)

    with monkeypatch.context() as patch:
        patch.setattr(pre, "cache_one", dies_on_the_sixth)
        with pytest.raises(KeyboardInterrupt):
            quiet_preprocess(config)
    # What a kill -9 adds: a video cached after the last manifest write (its entry in the
    # journal only), one cached by a worker whose result never reached the parent (journalled
    # by the worker), and a half-written temporary file.
    manifest = load_manifest(tmp_path)
    recorded = [v for v in manifest.videos if v.status == "ok"]
    manifest.videos.remove(recorded[-1])
    manifest.save(tmp_path)
    pre.append_journal(tmp_path / JOURNAL_NAME, recorded[-1])
    _, tasks, _ = pre._plan(manifest, pre.index_dataset(config.data), config, 1)
    pre.cache_one(tasks[-1])
    leftover = cache_file(tmp_path, tasks[0].rel_path).with_name(".x.jpgs.123.tmp")
    leftover.write_bytes(b"HMDBJPG1")

    redone: list[str] = []
    monkeypatch.setattr(
        pre, "cache_one", lambda task: redone.append(task.rel_path) or cache_one(task)
    )
    summary = quiet_preprocess(config)
    assert recorded[-1].path not in redone and tasks[-1].rel_path not in redone
    assert summary.skipped == len(recorded) + 1  # tasks[-1], the truncated video, is "ok"
    assert load_manifest(tmp_path).videos == load_manifest(reference).videos
    assert _cache_bytes(tmp_path) == _cache_bytes(reference)


def test_too_short_videos_fail(dataset: Path, tmp_path: Path) -> None:
    summary = quiet_preprocess(_config(dataset, tmp_path), min_frames=25)
    reasons = {p.path: p.reason for p in summary.failed_files}
    assert reasons["wave/good_b.avi"] == "too short: 20 frame(s), at least 25"
    assert "clap/good_a.avi" not in reasons


def test_refuses_a_cache_made_with_other_settings(reference: Path, dataset: Path) -> None:
    with pytest.raises(UserError, match=r"data\.resize = \[24, 32\].*data\.cache_dir"):
        pre.preprocess(_config(dataset, reference, **{"data.resize": [32, 40]}))
    with pytest.raises(UserError, match=r"data\.jpeg_quality = 90"):
        pre.preprocess(_config(dataset, reference, **{"data.jpeg_quality": 80}))


def _cli(dataset: Path, cache: Path, *extra: str) -> list[str]:
    sets = [f"data.root={dataset}", f"data.cache_dir={cache}", "data.resize=[24, 32]"]
    args = ["preprocess", "--set", "data.crop_size=16"]
    for item in sets:
        args += ["--set", item]
    return [*args, *extra]


def test_cli_json_with_worker_processes(reference: Path, dataset: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, _cli(dataset, tmp_path, "--workers", "2", "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["ok"], summary["failed"], summary["missing"]) == (11, 5, 4, 2)
    _assert_reasons({f["path"]: f["reason"] for f in summary["failed_files"]})
    assert [f["path"] for f in summary["missing_files"]] == MISSING
    assert summary["bytes"] > 0 and summary["seconds"] >= 0
    # Worker processes make the same cache as decoding in this process.
    assert load_manifest(tmp_path).videos == load_manifest(reference).videos
    assert _cache_bytes(tmp_path) == _cache_bytes(reference)


def test_cli_tables_and_exit_codes(dataset: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, _cli(dataset, tmp_path / "a", "--workers", "0"))
    assert result.exit_code == 0, result.output
    for text in ("empty.avi", "empty file", "ghost.avi", "truncated.avi", "already cached"):
        assert text in result.stdout
    bad = tmp_path / "bad"
    (bad / "videos" / "clap").mkdir(parents=True)
    (bad / "videos" / "clap" / "x.avi").write_bytes(b"")
    _write_splits(bad, ["clap/x.avi"])
    result = CliRunner().invoke(app, _cli(bad, tmp_path / "b", "--workers", "0", "--json"))
    assert result.exit_code == 1
    assert isinstance(result.exception, UserError)
    assert "nothing could be cached" in str(result.exception)
    assert json.loads(result.stdout)["failed"] == 1


def test_unwritable_cache_dir_is_a_user_error(dataset: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write the cache in"):
        quiet_preprocess(_config(dataset, blocker / "cache"))
