"""data.format beyond HMDB51: UCF101's split files, your own folders, MMAction2-style lists.

Parsing is checked on hand-made files of each real format; the slow tests train, evaluate and
predict a synthetic folders dataset and a synthetic list dataset through the CLI.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from climain import cli
from conftest import set_args, tiny_overrides
from rar4 import write_rar4

from hmdbattn import load_config
from hmdbattn.cli import download as cli_download
from hmdbattn.data import ucf101
from hmdbattn.data.folders import SPLIT_FILE
from hmdbattn.data.formats import index_dataset
from hmdbattn.data.verify import verify_ucf101
from hmdbattn.errors import ConfigError, UserError

# --------------------------------------------------------------------------- UCF101

CLASSES = ["ApplyEyeMakeup", "Archery", "YoYo"]


def ucf_video(label: str, group: int, clip: int = 1) -> str:
    """A path as UCF101's lists write it: ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi``."""
    return f"{label}/v_{label}_g{group:02d}_c{clip:02d}.avi"


def write_ucf101(root: Path, missing: str | None = None) -> dict[int, set[str]]:
    """A small UCF101 in the official formats (CRLF, 1-based classInd, unlabelled test lists).

    Each class has groups 1-6; split k's test videos are groups 2k-1 and 2k (like UCF101's
    7-group blocks). Returns split -> its test videos. `missing` is listed but not written.
    """
    splits = root / "splits"
    splits.mkdir(parents=True)
    (splits / "classInd.txt").write_text(
        "".join(f"{i} {c}\r\n" for i, c in enumerate(CLASSES, 1)), newline=""
    )
    tests: dict[int, set[str]] = {}
    for split in (1, 2, 3):
        train, test = [], []
        for number, label in enumerate(CLASSES, 1):
            for group in range(1, 7):
                rel = ucf_video(label, group)
                if group in (2 * split - 1, 2 * split):
                    test.append(rel)
                else:
                    train.append(f"{rel} {number}")
        tests[split] = set(test)
        (splits / f"trainlist0{split}.txt").write_text("\r\n".join(train) + "\r\n", newline="")
        (splits / f"testlist0{split}.txt").write_text("\r\n".join(test) + "\r\n", newline="")
    for label in CLASSES:
        for group in range(1, 7):
            rel = ucf_video(label, group)
            if rel != missing:
                (root / "videos" / label).mkdir(parents=True, exist_ok=True)
                (root / "videos" / rel).write_bytes(b"avi")
    return tests


def test_ucf101_split_membership_and_class_index(tmp_path: Path) -> None:
    tests = write_ucf101(tmp_path)
    for split in (1, 2, 3):
        index = ucf101.scan_ucf101(tmp_path, split)
        assert index.classes == CLASSES  # classInd.txt's order: label i is line "i+1 ..."
        assert {v.path for v in index.subset(split, "test")} == tests[split]
        train = index.subset(split, "train")
        assert len(train) == 12 and not {v.path for v in train} & tests[split]
        assert {v.label for v in train} == set(CLASSES)
        assert all(v.path.startswith(f"{v.label}/v_{v.label}_g") for v in train)
    # Every split's lists are read: a video knows its id in each one.
    video = next(v for v in index.videos if v.path == ucf_video("Archery", 3))
    assert video.split_ids == {1: 1, 2: 2, 3: 1}


def test_ucf101_listed_video_not_on_disk_is_missing(tmp_path: Path) -> None:
    write_ucf101(tmp_path, missing=ucf_video("YoYo", 1))
    index = ucf101.scan_ucf101(tmp_path, 1)
    assert [v.path for v in index.missing] == [ucf_video("YoYo", 1)]


def test_ucf101_train_label_that_disagrees_with_its_folder_names_file_and_line(
    tmp_path: Path,
) -> None:
    write_ucf101(tmp_path)
    path = tmp_path / "splits" / "trainlist01.txt"
    lines = path.read_text().splitlines()
    lines[2] = f"{ucf_video('ApplyEyeMakeup', 5)} 2"  # folder ApplyEyeMakeup is index 1
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"trainlist01\.txt:3: label 2 \(Archery\) disagrees"):
        ucf101.scan_ucf101(tmp_path, 1)


def test_ucf101_counts_are_the_real_ones_and_verification_uses_injected_counts(
    tmp_path: Path,
) -> None:
    real = ucf101.UCF101_EXPECTED
    assert (real.classes, real.videos) == (101, 13320)
    assert (real.train[0], real.test[0]) == (9537, 3783)
    assert all(tr + te == 13320 for tr, te in zip(real.train, real.test, strict=True))
    write_ucf101(tmp_path)
    small = ucf101.Counts(classes=3, videos=18, train=(12, 12, 12), test=(6, 6, 6))
    assert verify_ucf101(tmp_path, small).ok
    assert not verify_ucf101(tmp_path).ok  # against the real counts
    (tmp_path / "videos" / ucf_video("YoYo", 6)).unlink()
    result = verify_ucf101(tmp_path, small)
    assert not result.ok and result.missing == [ucf_video("YoYo", 6)]
    differs = [row[0] for row in result.rows() if row[3] == "DIFFERS"]
    assert differs == ["videos (.avi files)", "split entries on disk"]


def test_ucf101_preset_is_the_research_model_on_ucf101(capsys: pytest.CaptureFixture[str]) -> None:
    configs = Path(__file__).resolve().parents[1] / "configs"
    preset, hmdb51 = load_config(configs / "ucf101.toml"), load_config(configs / "hmdb51.toml")
    data = preset.data
    assert (data.format, str(data.root), data.split) == ("ucf101", "data/ucf101", 1)
    # Every other value is hmdb51.toml's, the research's: only the dataset differs.
    moved = {"format": hmdb51.data.format, "root": hmdb51.data.root}
    assert preset.data.model_copy(update=moved) == hmdb51.data
    assert (preset.model, preset.train) == (hmdb51.model, hmdb51.train)
    code, out, err = cli(capsys, "config", "--config", configs / "ucf101.toml", "--json")
    assert code == 0, err
    shown = json.loads(out)["data"]["format"]
    assert shown["value"] == "ucf101" and shown["source"].endswith("configs/ucf101.toml")


# --------------------------------------------------------------------------- bad input


def _sets(root: Path, tmp_path: Path, **extra: object) -> list[str]:
    return set_args(tiny_overrides(root, tmp_path / "runs", **extra))


def _list_root(tmp_path: Path, train: str, test: str = "b/y.avi 1\n") -> Path:
    root = tmp_path / "lists"
    for rel in ("a/x.avi", "b/y.avi"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"avi")
    (root / "train.txt").write_text(train)
    (root / "test.txt").write_text(test)
    return root


LIST_KEYS = {"data.format": "list", "data.train_list": "train.txt", "data.test_list": "test.txt"}


OUTSIDE = "is not a path inside data.root"
NAMES = {"data.class_names": ["run", "walk"]}


@pytest.mark.parametrize(
    ("train", "extra", "message"),
    [
        ("a/x.avi jump\n", NAMES, "train.txt:1: unknown label 'jump'"),
        ("a/x.avi 0\n\na/z.avi 5\n", NAMES, "train.txt:3: label index 5 is out of range"),
        ("../x.avi 0\n", {}, f"train.txt:1: '../x.avi' {OUTSIDE} (it climbs out with ..)"),
        ("/etc/x.avi 0\n", {}, f"train.txt:1: '/etc/x.avi' {OUTSIDE} (it is an absolute path)"),
        ("a/x.avi\n", {}, "train.txt:1: expected '<path> <label>'"),
    ],
)
def test_bad_list_lines_are_one_line_naming_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, train: str, extra: dict, message: str
) -> None:
    root = _list_root(tmp_path, train)
    code, _, err = cli(capsys, "preprocess", *_sets(root, tmp_path, **LIST_KEYS, **extra))
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err


def test_missing_list_file_names_it_and_its_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = _list_root(tmp_path, "a/x.avi 0\n")
    sets = _sets(root, tmp_path, **{**LIST_KEYS, "data.test_list": "nope.txt"})
    code, _, err = cli(capsys, "preprocess", *sets)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"{root / 'nope.txt'}: list file not found (data.test_list)" in err


def test_list_format_without_list_files_is_a_config_error_naming_the_keys() -> None:
    with pytest.raises(
        ConfigError, match=r'format "list" needs data.train_list and data.test_list'
    ):
        load_config(None, {"data.format": "list"})
    with pytest.raises(ConfigError, match=r'format "folders" has one split; set data.split = 1'):
        load_config(None, {"data.format": "folders", "data.split": 2})


def test_list_labels_by_index_and_by_name(tmp_path: Path) -> None:
    root = _list_root(tmp_path, "a/x.avi 0\n", "b/y.avi 1\n")
    data = load_config(None, {"data.root": str(root), **LIST_KEYS}).data
    index = index_dataset(data)
    assert index.classes == ["class_0", "class_1"]  # index labels, no names given
    assert index.videos_dir == root
    (root / "test.txt").write_text("b/y.avi walk\n")
    named = data.model_copy(update={"class_names": ["run", "walk"]})
    assert [(v.path, v.label, v.split_ids) for v in index_dataset(named).videos] == [
        ("a/x.avi", "run", {1: 1}),
        ("b/y.avi", "walk", {1: 2}),
    ]


def test_folders_root_without_class_folders_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "loose.mp4").write_bytes(b"mp4")  # a video, but not in a class folder
    code, _, err = cli(capsys, "preprocess", *_sets(root, tmp_path, **{"data.format": "folders"}))
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert '0 class folder(s) holding videos; data.format "folders" expects' in err


def test_ucf101_root_without_class_index_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write_ucf101(tmp_path / "ucf")
    (tmp_path / "ucf" / "splits" / "classInd.txt").unlink()
    sets = _sets(tmp_path / "ucf", tmp_path, **{"data.format": "ucf101"})
    code, _, err = cli(capsys, "preprocess", *sets)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert 'no UCF101 dataset here (data.format "ucf101" expects splits/classInd.txt' in err


# --------------------------------------------------------------------------- folders split


def _folders(root: Path, per_class: dict[str, int]) -> Path:
    for label, count in per_class.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            (root / label / f"clip{i}.MP4").write_bytes(b"mp4")
    return root


def _folders_config(root: Path, **extra: object):  # type: ignore[no-untyped-def]
    return load_config(None, {"data.root": str(root), "data.format": "folders", **extra}).data


def test_folders_split_is_written_once_stratified_and_reused(tmp_path: Path) -> None:
    root = _folders(tmp_path / "mine", {"jump": 10, "run": 4, "wave": 2})
    (root / "cache").mkdir()  # the default frame cache's folder is not a class
    data = _folders_config(root, **{"data.test_fraction": 0.2})
    index = index_dataset(data)
    assert index.classes == ["jump", "run", "wave"]
    tests = {v.path for v in index.subset(1, "test")}
    per_class = {c: sum(p.startswith(c + "/") for p in tests) for c in index.classes}
    # 20% per class, rounded, but never no test video (wave: 0.4) nor no training video.
    assert per_class == {"jump": 2, "run": 1, "wave": 1}
    assert len(index.subset(1, "train")) == 16 - 4
    split_file = root / SPLIT_FILE
    written = split_file.read_bytes()
    assert json.loads(written)["split_seed"] == 0
    again = index_dataset(data)
    assert split_file.read_bytes() == written  # the file is not rewritten
    assert {v.path for v in again.subset(1, "test")} == tests
    # The file is what decides: a video moved by hand stays where the file puts it.
    record = json.loads(written)
    moved = sorted(tests)[0]
    record["videos"][moved] = "train"
    split_file.write_text(json.dumps(record))
    assert {v.path for v in index_dataset(data).subset(1, "test")} == tests - {moved}
    split_file.write_bytes(written)
    # Another seed gives another split, but only once the old file is gone.
    with pytest.raises(UserError, match=r"made with data.split_seed = 0, the config says 5"):
        index_dataset(_folders_config(root, **{"data.split_seed": 5, "data.test_fraction": 0.2}))
    split_file.unlink()
    other = index_dataset(
        _folders_config(root, **{"data.split_seed": 5, "data.test_fraction": 0.2})
    )
    assert {v.path for v in other.subset(1, "test")} != tests


def test_folders_cache_inside_a_class_folder_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = _folders(tmp_path / "mine", {"jump": 3, "run": 3})
    extra = {"data.format": "folders", "data.cache_dir": str(root / "jump" / "cache")}
    code, _, err = cli(capsys, "preprocess", *_sets(root, tmp_path, **extra))
    assert code == 1 and "the cache needs a folder of its own" in err, err
    assert f"inside the dataset's {root.resolve() / 'jump'}" in err


def test_folders_new_video_after_the_split_is_refused(tmp_path: Path) -> None:
    root = _folders(tmp_path / "mine", {"jump": 3, "run": 3})
    index_dataset(_folders_config(root))
    (root / "run" / "late.avi").write_bytes(b"avi")
    with pytest.raises(UserError, match=r"1 video\(s\) under .* are not in .*e.g. run/late.avi"):
        index_dataset(_folders_config(root))


# --------------------------------------------------------------------------- one file each

SHARED = (
    "would share the cache file {}: rename one of them (the cache and the features name a video "
    "by its folder and stem, not its extension)"
)


def _refused_by_every_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root: Path, keys: dict, message: str
) -> None:
    """Preprocess, train (from the cache and from the videos) and extract-features all give the
    one line and exit 1, and nothing is written to the cache."""
    cache, runs = tmp_path / f"{root.name}-cache", tmp_path / f"{root.name}-runs"
    sets = _sets(
        root, tmp_path, **keys, **{"data.cache_dir": str(cache), "train.out_dir": str(runs)}
    )
    for command, extra in [
        ("preprocess", []),
        ("train", ["--set", "train.name=cache"]),
        ("train", ["--set", "data.source=video", "--set", "train.name=video"]),
        ("extract-features", ["--set", "data.source=video"]),
    ]:
        code, _, err = cli(capsys, command, *sets, *extra)
        assert code == 1 and len(err.strip().splitlines()) == 1, (command, err)
        assert message in err and "Traceback" not in err, (command, err)
    assert not cache.exists()


def test_folders_videos_differing_only_by_extension_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = _folders(tmp_path / "mine", {"jump": 2, "run": 2})
    (root / "jump" / "clip0.avi").write_bytes(b"avi")  # and jump/clip0.MP4: one cache file
    message = f"{root}/jump/clip0.MP4 and {root}/jump/clip0.avi " + SHARED.format("jump/clip0.jpgs")
    _refused_by_every_command(capsys, tmp_path, root, {"data.format": "folders"}, message)
    assert not (root / SPLIT_FILE).exists()  # renaming one must not make it a "new" video
    (root / "jump" / "clip0.avi").rename(root / "jump" / "clip9.avi")
    assert len(index_dataset(_folders_config(root)).videos) == 5


def test_list_paths_differing_only_by_extension_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = _list_root(tmp_path, "a/x.avi 0\nb/y.avi 1\n", "a/x.mp4 0\n")  # train and test
    (root / "a" / "x.mp4").write_bytes(b"mp4")
    message = f"{root}/a/x.avi and {root}/a/x.mp4 " + SHARED.format("a/x.jpgs")
    _refused_by_every_command(capsys, tmp_path, root, LIST_KEYS, message)
    (root / "test.txt").write_text("c/x.mp4 1\n")  # another folder: another cache file
    data = load_config(None, {"data.root": str(root), **LIST_KEYS}).data
    assert [v.path for v in index_dataset(data).missing] == ["c/x.mp4"]


def test_cache_name_is_the_name_of_the_cache_and_features_files() -> None:
    from hmdbattn.data.cache import cache_file, cached_videos_dir
    from hmdbattn.data.features import feature_file
    from hmdbattn.data.formats import cache_name

    for rel in ["jump/x.avi", "jump/x.tar.avi", "jump/x.", "jump/x", "jump/.x", "a/b/x.MP4"]:
        cached = cache_file(Path("c"), rel).relative_to(cached_videos_dir(Path("c")))
        assert cached.with_suffix("").as_posix() == cache_name(rel), rel
        features = feature_file(Path("f"), "train", rel).relative_to(Path("f", "train"))
        assert features.with_suffix("").as_posix() == cache_name(rel), rel


def _hmdb51(root: Path, lines: str) -> Path:
    """An HMDB51 layout of classes jump (split file `lines`) and run (two videos)."""
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "jump_test_split1.txt").write_text(lines)
    (root / "splits" / "run_test_split1.txt").write_text("r1.avi 1\nr2.avi 2\n")
    for rel in ["jump/x.avi", "jump/x.mp4", "jump/y.avi", "run/r1.avi", "run/r2.avi"]:
        (root / "videos" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "videos" / rel).write_bytes(b"avi")
    return root


def test_hmdb51_split_entries_sharing_a_cache_file_or_listed_twice_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from hmdbattn.data.verify import verify_dataset

    root = _hmdb51(tmp_path / "h1", "x.avi 1\ny.avi 2\nx.mp4 1\n")
    videos = root / "videos"
    message = f"{videos}/jump/x.avi and {videos}/jump/x.mp4 " + SHARED.format("jump/x.jpgs")
    _refused_by_every_command(capsys, tmp_path, root, {}, message)
    with pytest.raises(UserError, match=r"would share the cache file jump/x\.jpgs"):
        verify_dataset(root)
    # The same name twice: the later line would silently decide the id (here: test, not train).
    root = _hmdb51(tmp_path / "h2", "x.avi 1\ny.avi 2\n\nx.avi 2\n")
    split = root / "splits" / "jump_test_split1.txt"
    message = f"{split}:4: x.avi is listed already on line 1; a list names each video once"
    _refused_by_every_command(capsys, tmp_path, root, {}, message)
    with pytest.raises(UserError, match=r"x\.avi is listed already on line 1"):
        verify_dataset(root)


def test_ucf101_list_entry_twice_or_sharing_a_cache_file_is_refused(tmp_path: Path) -> None:
    write_ucf101(tmp_path)
    train, test = tmp_path / "splits" / "trainlist01.txt", tmp_path / "splits" / "testlist01.txt"
    listed = train.read_text()
    train.write_text(listed + f"{ucf_video('ApplyEyeMakeup', 3)} 1\r\n")  # line 1 again
    for check in (lambda: ucf101.scan_ucf101(tmp_path, 1), lambda: verify_ucf101(tmp_path)):
        with pytest.raises(UserError, match=r"trainlist01\.txt:13: .*_g03_c01\.avi is listed "):
            check()
    train.write_text(listed)
    other = ucf_video("YoYo", 1).replace(".avi", ".mp4")  # YoYo g01 is a test video of split 1
    test.write_text(test.read_text() + other + "\r\n")
    (tmp_path / "videos" / other).write_bytes(b"mp4")
    for check in (
        lambda: index_dataset(
            load_config(None, {"data.root": str(tmp_path), "data.format": "ucf101"}).data
        ),
        lambda: verify_ucf101(tmp_path),
    ):
        with pytest.raises(UserError, match=r"share the cache file YoYo/v_YoYo_g01_c01\.jpgs"):
            check()


# --------------------------------------------------------------------------- download


def _ucf101_archives(src: Path) -> ucf101.Counts:
    """UCF101.rar and its splits zip in the official layouts (UCF-101/, ucfTrainTestlist/)."""
    staged = src / "staged"
    write_ucf101(staged)
    src.mkdir(exist_ok=True)
    members = [
        (f"UCF-101/{p.relative_to(staged / 'videos').as_posix()}", p.read_bytes())
        for p in sorted((staged / "videos").rglob("*.avi"))
    ]
    write_rar4(src / "UCF101.rar", members)
    with zipfile.ZipFile(src / "UCF101TrainTestSplits-RecognitionTask.zip", "w") as zf:
        for path in sorted((staged / "splits").iterdir()):
            zf.writestr(f"ucfTrainTestlist/{path.name}", path.read_bytes())
    return ucf101.Counts(classes=3, videos=18, train=(12, 12, 12), test=(6, 6, 6))


def test_download_ucf101_records_the_first_md5_then_checks_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_download import serve

    counts = _ucf101_archives(tmp_path / "src")
    monkeypatch.setattr(cli_download, "UCF101_EXPECTED", counts)
    root = tmp_path / "root"
    with serve() as (url, served):
        for name in ("UCF101.rar", "UCF101TrainTestSplits-RecognitionTask.zip"):
            served.files[f"/{name}"] = (tmp_path / "src" / name).read_bytes()
        served.drop_once.add("/UCF101.rar")  # resumed with a Range request
        zipped = f"{url}/UCF101TrainTestSplits-RecognitionTask.zip"
        sets = [
            "--set", f'download.ucf101_videos_urls=["{url}/UCF101.rar"]',
            "--set", f'download.ucf101_splits_urls=["{zipped}"]',
            "--set", "download.retries=2",
        ]  # fmt: skip
        args = ["download", "--dataset", "ucf101", "--root", root, *sets, "--json"]
        code, out, err = cli(capsys, *args)
        assert code == 0, err
        assert "UCF101.rar: no published MD5 is known; recorded" in err
        assert json.loads(out)["verification"]["ok"] is True
        record = root / "archives" / "UCF101.rar.md5"
        assert record.read_text().split()[1] == "UCF101.rar"
        assert (root / "videos" / ucf_video("Archery", 3)).is_file()
        assert (root / "splits" / "classInd.txt").is_file()
        data = load_config(None, {"data.root": str(root), "data.format": "ucf101"}).data
        assert len(index_dataset(data).videos) == 18

        code, out, err = cli(capsys, *args)  # checked against the record now
        assert code == 0 and "no published MD5" not in err
        assert {a["action"] for a in json.loads(out)["archives"]} == {"present"}
    rar = root / "archives" / "UCF101.rar"
    damaged = bytearray(rar.read_bytes())
    damaged[-20] ^= 0xFF
    rar.write_bytes(bytes(damaged))
    code, _, err = cli(capsys, *args)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "checksum mismatch" in err and "UCF101.rar.md5 recorded at the first download" in err


# --------------------------------------------------------------------------- end to end


def _train_eval_predict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root: Path, keys: dict, classes: list
) -> None:
    sets = _sets(root, tmp_path, **keys, **{"train.epochs": 1, "train.name": "run"})
    code, _, err = cli(capsys, "train", *sets)
    assert code == 0, err
    checkpoint = tmp_path / "runs" / "run" / "best.pt"
    code, out, err = cli(capsys, "eval", "--checkpoint", checkpoint, "--json")
    assert code == 0, err
    result = json.loads(out)["results"][0]
    assert [c["name"] for c in result["per_class"]] == classes
    assert sum(c["videos"] for c in result["per_class"]) == result["num_videos"] > 0
    video = next(root.rglob("*.avi"))
    code, out, err = cli(capsys, "predict", video, "--checkpoint", checkpoint, "--json")
    assert code == 0, err
    top = json.loads(out)["results"][0]["top_k"]
    assert {t["label"] for t in top} <= set(classes) and top


def _synthesize(capsys: pytest.CaptureFixture[str], root: Path, layout: str) -> dict:
    args = ["synthesize", "--root", root, "--format", layout, "--classes", "3"]
    args += ["--videos-per-class", "6", "--seconds", "1", "--size", "64x48", "--fps", "10"]
    code, out, err = cli(capsys, *args, "--workers", "0", "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.slow
def test_folders_dataset_trains_evaluates_and_predicts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = tmp_path / "mine"
    summary = _synthesize(capsys, root, "folders")
    assert summary["settings"] == {"data.root": str(root), "data.format": "folders"}
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == summary["synthetic"]["classes"]
    code, _, err = cli(capsys, "preprocess", *_sets(root, tmp_path, **{"data.format": "folders"}))
    assert code == 0, err
    assert (root / SPLIT_FILE).is_file() and (root / "cache" / "manifest.json").is_file()
    keys = {"data.format": "folders"}
    _train_eval_predict(capsys, tmp_path, root, keys, summary["synthetic"]["classes"])


@pytest.mark.slow
def test_list_dataset_trains_evaluates_and_predicts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = tmp_path / "lists"
    summary = _synthesize(capsys, root, "list")
    keys = {k: v for k, v in summary["settings"].items() if k != "data.root"}
    assert keys["data.train_list"] == "train.txt" and keys["data.format"] == "list"
    assert (root / "test.txt").read_text().split("\n")[0].split()[1] == "grow"  # by name
    assert (root / "train.txt").read_text().split("\n")[0].split()[1] == "0"  # by index
    keys["data.source"] = "video"  # straight from the files, no cache
    _train_eval_predict(capsys, tmp_path, root, keys, summary["synthetic"]["classes"])
