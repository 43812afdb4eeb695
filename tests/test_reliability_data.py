"""Issue 12, items 11-16: the frame cache and the dataset are never silently lost or broken.

Each test runs the CLI as a user would and checks the exit code, that the one message names the
file / key / value, that no traceback is printed, and that files that existed before are
byte-identical afterwards (or complete and valid). Kills and Ctrl-C are real signals sent to a
real `hmdbattn preprocess` with two worker processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from climain import cli
from conftest import ROOT, default_ctrl_c, set_args, tiny_overrides
from videofiles import write_avi

from hmdbattn.config import load_config
from hmdbattn.data.cache import JOURNAL_NAME, CachedVideo, DamagedCacheFile, load_manifest
from hmdbattn.data.clips import eval_windows
from hmdbattn.data.datasets import build_datasets
from hmdbattn.data.preprocess import preprocess
from hmdbattn.report import quiet

CLASSES = ("clap", "wave")
PER_CLASS = 24  # enough that a run with two workers is still going when it is stopped
PROGRESS_BAR = re.compile(r"\d+/\d+ +\d+%")  # the count and percentage of a progress bar


def _write_splits(root: Path, lines: dict[str, list[str]]) -> None:
    splits = root / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    for label, names in lines.items():
        for k in (1, 2, 3):
            text = "".join(f"{name} {(i + k) % 3}\n" for i, name in enumerate(names))
            (splits / f"{label}_test_split{k}.txt").write_text(text)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of small real AVIs, each 2 s at 96x128 (decoding takes a moment)."""
    root = tmp_path_factory.mktemp("data") / "hmdb"
    names: dict[str, list[str]] = {}
    for c, label in enumerate(CLASSES):
        names[label] = [f"{label}_{i:02d}.avi" for i in range(PER_CLASS)]
        for i, name in enumerate(names[label]):
            write_avi(root / "videos" / label / name, 60, 96, 128, seed=100 * c + i)
    _write_splits(root, names)
    return root


def _sets(root: Path, cache: Path, **extra: object) -> dict[str, object]:
    return {
        "data.root": str(root),
        "data.cache_dir": str(cache),
        "data.resize": [72, 96],
        "data.crop_size": 64,
        **extra,
    }


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache an uninterrupted in-process run makes."""
    cache = tmp_path_factory.mktemp("reference") / "cache"
    with quiet():
        preprocess(load_config(None, _sets(dataset, cache)), workers=0)
    return cache


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _frames(cache: Path) -> dict[str, bytes]:
    return {k: v for k, v in _snapshot(cache).items() if k.endswith(".jpgs")}


def _preprocess(capsys: pytest.CaptureFixture[str], root: Path, cache: Path, *extra: str):
    return cli(capsys, "preprocess", *set_args(_sets(root, cache)), "--workers", "0", *extra)


def _one_line(err: str) -> str:
    """The message on stderr, checked to be one line without a traceback (bars aside)."""
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not PROGRESS_BAR.search(line)]
    assert len(lines) == 1, err
    return lines[0]


def _spawn(root: Path, cache: Path) -> subprocess.Popen[str]:
    """A real `hmdbattn preprocess --workers 2`, in a process group of its own (like a shell's)."""
    args = [sys.executable, "-m", "hmdbattn", "preprocess", *set_args(_sets(root, cache))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [*args, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=default_ctrl_c,
    )


def _wait_for_progress(proc: subprocess.Popen[str], cache: Path, videos: int) -> None:
    """Return once the journal records `videos` finished videos; the run must still be going."""
    journal = cache / JOURNAL_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if journal.is_file() and journal.read_text().count("\n") >= videos:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    raise AssertionError("preprocess made no progress")


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --------------------------------------------------------------------------- item 12


def _damage_frame_count(path: Path) -> None:
    """Make the header claim 0xFFFFFFFF frames, as a flipped bit or a bad disk might."""
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_a_huge_frame_count_is_damage_not_a_memory_error(reference: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpgs"
    shutil.copy(next((reference / "videos").rglob("*.jpgs")), bad)
    _damage_frame_count(bad)
    with pytest.raises(DamagedCacheFile, match=r"bad\.jpgs: .*header \(4294967295 frames announ"):
        CachedVideo(bad)


def test_preprocess_rerun_reports_and_recaches_a_damaged_file(
    capsys: pytest.CaptureFixture[str], dataset: Path, reference: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    damaged = cache / "videos" / "wave" / "wave_03.jpgs"
    _damage_frame_count(damaged)
    code, _, err = _preprocess(capsys, dataset, cache)
    assert code == 0
    line = _one_line(err)
    assert "wave/wave_03.avi: damaged cache file, cached again: truncated or damaged" in line
    assert _frames(cache) == _frames(reference)
    assert load_manifest(cache).videos == load_manifest(reference).videos


@pytest.mark.slow
def test_training_leaves_out_a_damaged_cache_file_and_names_it(
    capsys: pytest.CaptureFixture[str], tiny_dataset: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(tiny_dataset / "cache", cache)
    damaged = sorted((cache / "videos").rglob("*.jpgs"))[0]
    _damage_frame_count(damaged)
    sets = tiny_overrides(tiny_dataset, tmp_path / "runs", **{"data.cache_dir": str(cache)})
    extra = {"train.epochs": 1, "train.max_steps": 1}
    code, _, err = cli(capsys, "train", *set_args({**sets, **extra}))
    assert code == 0, err
    assert "Traceback" not in err
    name = f"{damaged.parent.name}/{damaged.stem}.avi"
    assert f"{name}: damaged cache file (truncated or damaged header" in err
    assert "rerun `hmdbattn preprocess`" in err


def _corrupt_a_frame(cache: Path, subset: int, frames: int | None = None) -> str:
    """Break the JPEGs inside a cache file of a video of `subset` (1 train, 2 test), keeping
    its header and size whole, as a bad disk might; returns the file's name.

    Every frame (any clip of the video meets one), or the first `frames` only.
    """
    entry = next(e for e in load_manifest(cache).videos if e.split_ids.get(1) == subset)
    path = cache / "videos" / Path(entry.path).with_suffix(".jpgs")
    video = CachedVideo(path)
    data = bytearray(path.read_bytes())
    for frame in range(frames if frames is not None else video.num_frames):
        start = int(video.offsets[frame])
        data[start : start + 2] = b"\x00\x00"  # no SOI marker
    path.write_bytes(bytes(data))
    return path.name


def _train_with_a_corrupt_video(
    tiny_dataset: Path, tmp_path: Path, subset: int, **extra: object
) -> tuple[str, dict[str, object], str]:
    """Train on a copy of the cache with one video of `subset` corrupt, reading in a loader
    worker; (the file's name, the run's keys, stderr). The run must succeed.

    A real process: the worker's warnings go to the terminal's stderr, not to pytest's capture.
    """
    cache = tmp_path / "cache"
    shutil.copytree(tiny_dataset / "cache", cache)
    name = _corrupt_a_frame(cache, subset=subset)
    sets = tiny_overrides(tiny_dataset, tmp_path / "runs", **{"data.cache_dir": str(cache)})
    keys = {**sets, "data.num_workers": 1, **extra}
    done = subprocess.run(
        [sys.executable, "-m", "hmdbattn", "train", *set_args(keys)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "400"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return name, sets, done.stderr


@pytest.mark.slow
def test_a_training_video_found_corrupt_mid_run_is_named_and_left_out(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    name, _, err = _train_with_a_corrupt_video(tiny_dataset, tmp_path, 1, **{"train.epochs": 1})
    line = next(line for line in err.splitlines() if name in line)
    assert line.startswith("warning: ") and "corrupt JPEG data in frame" in line, line
    assert line.endswith("rebuild it; left out of training"), line


def test_a_video_that_stops_decoding_gives_way_to_the_next_one(
    capsys: pytest.CaptureFixture[str], tiny_dataset: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root, ignore=shutil.ignore_patterns("cache"))
    sets = tiny_overrides(root, tmp_path / "runs", **{"data.source": "video"})
    train = build_datasets(load_config(None, sets)).train
    victim = root / "videos" / train.videos[0].path
    victim.write_bytes(victim.read_bytes()[:200])  # damaged after the dataset was built
    capsys.readouterr()
    frames, label, number = train[0]
    assert (number, label) == (1, train.videos[1].label)
    assert frames.shape == (4, 24, 32, 3)
    err = capsys.readouterr().err
    assert f"{victim}: cannot decode the clip's frames" in err and "left out of training" in err
    train.set_epoch(1)  # a later epoch skips it without trying again
    assert train[0][2] == 1 and capsys.readouterr().err == ""


def test_a_test_video_found_corrupt_is_left_out_of_eval_and_named(
    capsys: pytest.CaptureFixture[str], tiny_dataset: Path, tmp_path: Path
) -> None:
    # Found while scoring, after the start-up check passed: the evaluation goes on without the
    # video, names it on stderr and lists it in eval.json with the other excluded videos. Two
    # windows per video, and only the first frame broken: the video's second window reads,
    # yet it counts nowhere, as if the video had been left out from the start.
    cache = tmp_path / "cache"
    shutil.copytree(tiny_dataset / "cache", cache)
    runs = tmp_path / "runs"
    sets = tiny_overrides(tiny_dataset, runs, **{"data.cache_dir": str(cache)})
    code, _, err = cli(capsys, "train", *set_args({**sets, "train.max_steps": 1}))
    assert code == 0, err
    checkpoint = next(runs.rglob("best.pt"))
    args = ["eval", "--checkpoint", str(checkpoint), "--set", "data.clip_duration=0.5", "--json"]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    whole = json.loads(out)["results"][0]
    name = _corrupt_a_frame(cache, subset=2, frames=1)
    (entry,) = [e for e in load_manifest(cache).videos if e.path.endswith(Path(name).stem + ".avi")]
    assert len(eval_windows(entry.frames, entry.fps, 0.5, 4, clips_per_video=0)) > 1
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert "Traceback" not in err and "worker process" not in err, err
    warning = next(line for line in err.splitlines() if name in line)
    assert warning.startswith("warning: ") and warning.endswith("left out of the evaluation")
    result = json.loads(out)["results"][0]
    assert result["num_videos"] == whole["num_videos"] - 1
    (left_out,) = [e for e in result["excluded"] if e["path"].endswith(Path(name).stem + ".avi")]
    assert "could not be read during the evaluation" in left_out["reason"]
    saved = json.loads((checkpoint.parent / "eval.json").read_text())
    assert left_out in saved["excluded"]
    # The same figures as when the video is left out from the start (its cache file gone).
    next(cache.rglob(name)).unlink()
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    without = json.loads(out)["results"][0]
    for key in ("excluded", "checkpoint"):
        result.pop(key), without.pop(key)
    assert result.pop("loss") == pytest.approx(without.pop("loss"))  # other batches: rounding
    assert result == without


@pytest.mark.parametrize("subset", [1, 2])
def test_extraction_stops_at_a_corrupt_video_instead_of_storing_another_clip(
    capsys: pytest.CaptureFixture[str], tiny_dataset: Path, tmp_path: Path, subset: int
) -> None:
    # Training serves the next video's clip and evaluation zeros for a damaged video: stored
    # as its features, either would be wrong for every later run. Extraction stops, naming it.
    cache = tmp_path / "cache"
    shutil.copytree(tiny_dataset / "cache", cache)
    name = _corrupt_a_frame(cache, subset=subset)
    keys = {"data.cache_dir": str(cache), "data.feature_clips": 1}
    sets = tiny_overrides(tiny_dataset, tmp_path / "runs", **keys)
    code, _, err = cli(capsys, "extract-features", *set_args(sets))
    assert code == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert name in line and "corrupt JPEG data" in line, err
    stem = Path(name).stem
    assert not [p for p in (cache.parent / "cache-features").rglob("*.npy") if p.stem == stem]


@pytest.mark.slow
def test_a_test_video_found_corrupt_mid_training_does_not_stop_the_run(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    name, sets, err = _train_with_a_corrupt_video(tiny_dataset, tmp_path, 2)
    warnings = [line for line in err.splitlines() if name in line]
    assert warnings and all(w.endswith("left out of the evaluation") for w in warnings), warnings
    (run,) = [p.parent for p in (tmp_path / "runs").rglob("metrics.jsonl")]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    test_videos = len(build_datasets(load_config(None, sets)).eval.videos)
    assert [row["val_videos"] for row in rows] == [test_videos - 1] * 2


# --------------------------------------------------------------------------- item 13


def test_a_second_run_is_refused_while_the_first_holds_the_cache(
    capsys: pytest.CaptureFixture[str], dataset: Path, reference: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    in_progress = cache / "videos" / "clap" / ".clap_00.jpgs.x1y2z3.tmp"
    in_progress.write_bytes(b"HMDBJPG1 half written")
    before = _snapshot(cache)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from hmdbattn.data.preprocess import cache_lock\n"
            "with cache_lock(Path(sys.argv[1])):\n"
            "    print('locked', flush=True); time.sleep(300)",
            str(cache),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        code, _, err = _preprocess(capsys, dataset, cache)
        assert code == 1
        line = _one_line(err)
        assert f"cache {cache} is busy: preprocess (pid {holder.pid}) is writing it" in line
        # The other run's files, its temp file included, are untouched.
        assert {k: v for k, v in _snapshot(cache).items() if "lock" not in k} == {
            k: v for k, v in before.items() if "lock" not in k
        }
    finally:
        holder.kill()
        holder.wait()
    # Its holder killed, the lock is free at once; its temp file is now stale and goes.
    code, _, err = _preprocess(capsys, dataset, cache)
    assert code == 0, err
    assert not in_progress.exists()
    assert _frames(cache) == _frames(reference)


def test_kill_9_with_two_workers_then_rerun_makes_the_whole_cache(
    capsys: pytest.CaptureFixture[str], dataset: Path, reference: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    proc = _spawn(dataset, cache)
    _wait_for_progress(proc, cache, videos=3)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # The workers die with their parent: none goes on writing into the cache.
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, workers)), workers
    kept = {p: p.stat().st_ino for p in (cache / "videos").rglob("*.jpgs")}
    # Killed in the middle of the run (the journal records a video just before its file
    # takes its name, so one of the three may still have been on its way).
    assert 2 <= len(kept) < len(CLASSES) * PER_CLASS

    code, out, err = _preprocess(capsys, dataset, cache, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["skipped"] == len(kept)  # nothing complete was decoded again
    assert {p: p.stat().st_ino for p in kept} == kept  # ... nor rewritten
    assert load_manifest(cache).videos == load_manifest(reference).videos
    assert _frames(cache) == _frames(reference)
    for path in (cache / "videos").rglob("*.jpgs"):
        video = CachedVideo(path)
        assert len(video.read(range(len(video)))) == len(video)
    leftovers = [p.name for p in cache.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [] and not (cache / JOURNAL_NAME).exists()


# --------------------------------------------------------------------------- item 11


def test_ctrl_c_says_what_was_kept_and_how_to_resume(
    capsys: pytest.CaptureFixture[str], dataset: Path, reference: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    proc = _spawn(dataset, cache)
    _wait_for_progress(proc, cache, videos=3)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a shell does: the whole group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    line = _one_line(err)
    kept = len(load_manifest(cache).ok())
    assert 3 <= kept < len(CLASSES) * PER_CLASS
    assert f"interrupted: {kept} videos cached in {cache} are kept;" in line
    assert "`hmdbattn preprocess --set" in line and "--workers 2` resumes" in line
    assert not (cache / JOURNAL_NAME).exists()
    code, out, err = _preprocess(capsys, dataset, cache, "--json")
    assert code == 0, err
    assert json.loads(out)["skipped"] == kept
    assert _frames(cache) == _frames(reference)


# --------------------------------------------------------------------------- item 14


def test_cache_dir_equal_to_the_dataset_root_is_refused_without_advising_deletion(
    capsys: pytest.CaptureFixture[str], dataset: Path
) -> None:
    before = _snapshot(dataset)
    for cache in (dataset, dataset / "videos" / "clap"):
        code, _, err = _preprocess(capsys, dataset, cache)
        assert code == 1
        line = _one_line(err)
        assert f"data.cache_dir = {cache} is" in line and "delete" not in line
    assert _snapshot(dataset) == before


def test_a_folder_holding_videos_is_never_advised_for_deletion(
    capsys: pytest.CaptureFixture[str], dataset: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other_dataset"  # another dataset's root, chosen as the cache by mistake
    shutil.copytree(dataset, other)
    before = _snapshot(other)
    code, _, err = _preprocess(capsys, dataset, other)
    assert code == 1
    line = _one_line(err)
    assert str(other) in line and "not a frame cache's" in line and "delete" not in line
    assert _snapshot(other) == before


def test_an_unrelated_manifest_json_is_refused_not_replaced(
    capsys: pytest.CaptureFixture[str], dataset: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "site"
    cache.mkdir()
    (cache / "manifest.json").write_text('{"name": "my web app", "icons": []}\n')
    code, _, err = _preprocess(capsys, dataset, cache)
    assert code == 1
    line = _one_line(err)
    assert f"{cache / 'manifest.json'}: damaged manifest or not a frame cache's" in line
    assert "KeyError: 'format_version'" in line and "delete" not in line
    assert _snapshot(cache) == {"manifest.json": b'{"name": "my web app", "icons": []}\n'}


# --------------------------------------------------------------------------- item 15


@pytest.fixture
def escaping(dataset: Path, tmp_path: Path) -> Path:
    """A copy of the dataset whose split file names a video outside the dataset root."""
    root = tmp_path / "escaping"
    shutil.copytree(dataset, root)
    (tmp_path / "x").mkdir()
    shutil.copy(dataset / "videos" / "clap" / "clap_00.avi", tmp_path / "x" / "vid.avi")
    split = root / "splits" / "clap_test_split1.txt"
    lines = split.read_text().splitlines()
    lines[2] = "../../../x/vid.avi 2"
    split.write_text("\n".join(lines) + "\n")
    return root


def test_a_split_entry_with_a_path_is_refused_by_preprocess(
    capsys: pytest.CaptureFixture[str], escaping: Path, tmp_path: Path
) -> None:
    code, _, err = _preprocess(capsys, escaping, tmp_path / "cache")
    assert code == 1
    line = _one_line(err)
    split = escaping / "splits" / "clap_test_split1.txt"
    assert f"{split}:3: '../../../x/vid.avi' is not a plain file name" in line
    assert not (tmp_path / "cache").exists()


def test_a_split_entry_with_a_path_is_refused_with_source_video(
    capsys: pytest.CaptureFixture[str], escaping: Path, tmp_path: Path
) -> None:
    sets = {**tiny_overrides(escaping, tmp_path / "runs"), "data.source": "video"}
    code, _, err = cli(capsys, "train", *set_args(sets))
    assert code == 1
    line = _one_line(err)
    assert f"{escaping / 'splits' / 'clap_test_split1.txt'}:3: '../../../x/vid.avi'" in line


# --------------------------------------------------------------------------- item 16

SMALL = ["--classes", "2", "--videos-per-class", "3", "--seconds", "0.2", "--size", "32x32"]


def test_download_synthetic_into_a_real_dataset_root_is_refused(
    capsys: pytest.CaptureFixture[str], dataset: Path
) -> None:
    before = _snapshot(dataset)
    code, _, err = cli(capsys, "download", "--synthetic", "--root", dataset, *SMALL)
    assert code == 1
    line = _one_line(err)
    assert f"{dataset} is not empty and holds no synthetic.json" in line
    assert _snapshot(dataset) == before


def test_a_corrupt_synthetic_json_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = tmp_path / "synthetic"
    code, _, err = cli(capsys, "synthesize", "--root", root, "--workers", "0", *SMALL)
    assert code == 0, err
    (root / "synthetic.json").write_text('{"format_version": 2, "seconds"')
    before = _snapshot(root)
    for command in (["synthesize"], ["download", "--synthetic"]):
        code, _, err = cli(capsys, *command, "--root", root, "--workers", "0", *SMALL)
        assert code == 1
        line = _one_line(err)
        assert f"{root / 'synthetic.json'}: cannot read the synthetic dataset's settings" in line
    assert _snapshot(root) == before
