"""Issue 12, download and extraction: faults and mistakes end in one line, nothing is lost.

Disk full is real (a small tmpfs) when the tests run as root, else an injected ENOSPC at the
point where the code writes; a read-only folder is a read-only mount as root, else chmod.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from climain import cli
from rar4 import directory, file, mini_hmdb51, rar4_bytes, write_rar4
from test_download import DATA, DATA_MD5, Served, serve

from hmdbattn.data import download
from hmdbattn.data.download import download_file, md5sum
from hmdbattn.data.verify import Expected
from hmdbattn.errors import UserError
from hmdbattn.report import quiet

MiB = 1 << 20


def fetch(urls: list[str], dest: Path, max_size: int | None = None) -> download.FetchResult:
    """download_file with few retries, a tiny back-off and no progress bar."""
    with quiet():
        return download_file(
            urls, dest, DATA_MD5, retries=2, timeout=2.0, backoff=0.01, max_size=max_size
        )


def one_line_error(code: int, err: str, *needles: str) -> None:
    """A user fault's answer: exit 1, one `error:` line naming `needles`, no traceback."""
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    """tests/test_download.py's loopback HTTP server: its base URL and its state."""
    with serve() as running:
        yield running


# --------------------------------------------------------------------------- disks


def _mount(args: list[str]) -> bool:
    return subprocess.run(args, capture_output=True).returncode == 0


@dataclass
class SmallDisk:
    """A folder with `size` bytes of room: a tmpfs (root) or an injected ENOSPC past `size`."""

    path: Path
    real: bool
    monkeypatch: pytest.MonkeyPatch
    size: int

    def grow(self, size: int) -> None:
        """Make room, as a user who freed space would."""
        self.size = size
        if self.real:
            assert _mount(["mount", "-o", f"remount,size={size}", str(self.path)])


def _used(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _inject_enospc(disk: SmallDisk) -> None:
    """Make the downloader's and the extractor's writes under `disk` fail past its size."""
    from hmdbattn.data import archive

    def guard(path: Path, n: int) -> None:
        if disk.path in path.parents and _used(disk.path) + n > disk.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    part_write = download._PartWriter.write

    def capped_part_write(self: download._PartWriter, block: bytes) -> None:
        guard(Path(self.out.name), len(block))
        part_write(self, block)

    write_blocks = archive._write_blocks

    def capped_write_blocks(blocks: Iterator[bytes], out: archive.IO[bytes]) -> None:
        def checked() -> Iterator[bytes]:
            for block in blocks:
                guard(Path(out.name), len(block))
                yield block

        write_blocks(checked(), out)

    disk.monkeypatch.setattr(download._PartWriter, "write", capped_part_write)
    disk.monkeypatch.setattr(archive, "_write_blocks", capped_write_blocks)


@pytest.fixture
def small_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[int], SmallDisk]]:
    """Factory: a SmallDisk of the given size under tmp_path (unmounted afterwards)."""
    mounted: list[Path] = []

    def make(size: int) -> SmallDisk:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        real = os.geteuid() == 0 and _mount(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        )
        disk = SmallDisk(path, real, monkeypatch, size)
        if real:
            mounted.append(path)
        else:
            _inject_enospc(disk)
        return disk

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Make a folder read-only: a read-only bind mount as root (root ignores modes), else chmod."""
    mounted: list[Path] = []

    def make(folder: Path) -> None:
        if os.geteuid() == 0:
            assert _mount(["mount", "--bind", str(folder), str(folder)])
            mounted.append(folder)
            assert _mount(["mount", "-o", "remount,bind,ro", str(folder)])
        else:
            folder.chmod(0o555)

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
    for p in tmp_path.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)


# --------------------------------------------------------------------------- 17: a size cap


@pytest.mark.parametrize("known", ["recorded", "given"])
def test_runaway_body_is_stopped_at_the_expected_size(
    tmp_path: Path, server: tuple[str, Served], monkeypatch: pytest.MonkeyPatch, known: str
) -> None:
    base, served = server
    served.files["/big.bin"] = DATA * 40  # 40 MiB for a 1 MiB file, and no length said
    served.no_length.add("/big.bin")
    max_size = None
    if known == "recorded":
        monkeypatch.setitem(download.SIZE_LIMITS, DATA_MD5, len(DATA))
    else:
        max_size = len(DATA)
    dest = tmp_path / "a.bin"
    with pytest.raises(UserError) as info:
        fetch([f"{base}/big.bin"], dest, max_size)
    message = str(info.value)
    assert f"{base}/big.bin (sent more than the 1,048,576 bytes expected)" in message
    assert not dest.exists() and not dest.with_name("a.bin.part").exists()
    assert served.requests == [("/big.bin", None)]  # not retried: it would do it again

    # The next mirror starts from a clean .part and the download succeeds.
    result = fetch([f"{base}/big.bin", f"{base}/a.bin"], dest, max_size)
    assert result.source == f"{base}/a.bin" and dest.read_bytes() == DATA


def test_cli_runaway_server_is_one_line_and_leaves_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    server: tuple[str, Served],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, served = server
    served.files["/test_train_splits.rar"] = DATA * 40
    served.no_length.add("/test_train_splits.rar")
    monkeypatch.setitem(download.SIZE_LIMITS, DATA_MD5, len(DATA))  # as recorded for HMDB51's
    url = f"{base}/test_train_splits.rar"
    root = tmp_path / "root"
    sets = [f'download.splits_urls=["{url}"]', f'download.splits_md5="{DATA_MD5}"']
    code, _, err = cli(capsys, "download", "--root", root, *(x for s in sets for x in ("--set", s)))
    one_line_error(code, err, f"{url} (sent more than the 1,048,576 bytes expected)")
    assert list((root / "archives").iterdir()) == []


def test_stated_size_over_the_expected_is_refused_before_the_body(
    tmp_path: Path, server: tuple[str, Served]
) -> None:
    base, served = server
    served.files["/big.bin"] = DATA * 8
    dest = tmp_path / "a.bin"
    part = dest.with_name("a.bin.part")
    part.write_bytes(DATA[:1000])  # resumed: 206, Content-Range total 8 MiB
    with pytest.raises(UserError, match=r"serves 8,388,608 bytes, more than the 1,048,576"):
        fetch([f"{base}/big.bin"], dest, max_size=len(DATA))
    assert part.read_bytes() == DATA[:1000]  # the prefix is kept for another mirror
    part.unlink()
    with pytest.raises(UserError, match=r"serves 8,388,608 bytes"):  # 200, Content-Length
        fetch([f"{base}/big.bin"], dest, max_size=len(DATA))
    assert not part.exists()


# --------------------------------------------------------------------------- 18: keep the prefix


def test_next_mirror_resumes_where_a_failing_mirror_stopped(
    tmp_path: Path, server: tuple[str, Served]
) -> None:
    base, served = server
    half = len(DATA) // 2
    # Mirror 1 sends half, then (ignoring Range) answers each retry and hangs up at once.
    served.files["/dying.bin"] = DATA
    served.no_range.add("/dying.bin")
    served.cut["/dying.bin"] = [half, 0, 0]
    dest = tmp_path / "a.bin"
    result = fetch([f"{base}/dying.bin", f"{base}/a.bin"], dest)
    assert result.source == f"{base}/a.bin" and dest.read_bytes() == DATA
    assert [r for r in served.requests if r[0] == "/a.bin"] == [("/a.bin", f"bytes={half}-")]


def test_next_mirror_completes_a_truncated_mirrors_file(
    tmp_path: Path, server: tuple[str, Served]
) -> None:
    base, served = server
    half = len(DATA) // 2
    served.files["/short.bin"] = DATA[:half]  # served whole, so its (wrong) MD5 is checked
    dest = tmp_path / "a.bin"
    result = fetch([f"{base}/short.bin", f"{base}/a.bin"], dest)
    assert result.source == f"{base}/a.bin" and dest.read_bytes() == DATA
    assert [r for r in served.requests if r[0] == "/a.bin"] == [("/a.bin", f"bytes={half}-")]


def test_a_wrong_prefix_is_rewritten_by_the_next_mirror(
    tmp_path: Path, server: tuple[str, Served]
) -> None:
    base, served = server
    half = len(DATA) // 2
    served.files["/junk.bin"] = b"x" * half
    dest = tmp_path / "a.bin"
    result = fetch([f"{base}/junk.bin", f"{base}/a.bin"], dest)
    assert result.source == f"{base}/a.bin" and dest.read_bytes() == DATA
    # Resumed first; the wrong MD5 then asks that mirror for the whole file.
    assert [r for r in served.requests if r[0] == "/a.bin"] == [
        ("/a.bin", f"bytes={half}-"),
        ("/a.bin", None),
    ]


def test_prefix_survives_a_server_that_ignores_range_and_hangs_up(
    tmp_path: Path, server: tuple[str, Served]
) -> None:
    base, served = server
    served.no_range.add("/a.bin")
    served.cut["/a.bin"] = [1000, 0, 0]  # a 200 from byte 0 that dies before the prefix's end
    dest = tmp_path / "a.bin"
    part = dest.with_name("a.bin.part")
    part.write_bytes(DATA[:5000])
    with pytest.raises(UserError, match=r"could not download a\.bin"):
        fetch([f"{base}/a.bin"], dest)
    assert part.read_bytes() == DATA[:5000]
    fetch([f"{base}/a.bin"], dest)  # the server recovers: the whole body, prefix confirmed
    assert dest.read_bytes() == DATA


# --------------------------------------------------------------------------- 19: --from


@pytest.fixture
def mini_src(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """Small HMDB51-shaped archives and the --set options naming their MD5s.

    `hmdbattn download` verifies the result against these archives' counts.
    """
    import hmdbattn.cli.download as cli_download

    src = tmp_path / "src"
    monkeypatch.setattr(cli_download, "EXPECTED", Expected(**mini_hmdb51(src)))
    sets = [
        "--set",
        f'download.videos_md5="{md5sum(src / "hmdb51_org.rar")}"',
        "--set",
        f'download.splits_md5="{md5sum(src / "test_train_splits.rar")}"',
    ]
    return src, sets


def test_from_dir_refuses_to_replace_a_wrong_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mini_src: tuple[Path, list[str]]
) -> None:
    src, sets = mini_src
    mine = tmp_path / "root" / "archives" / "test_train_splits.rar"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own file")
    code, _, err = cli(capsys, "download", "--from", src, "--root", tmp_path / "root", *sets)
    expected = md5sum(src / "test_train_splits.rar")
    one_line_error(code, err, str(mine), expected, hashlib.md5(b"my own file").hexdigest())
    assert "not replaced" in err
    assert mine.read_bytes() == b"my own file"


# --------------------------------------------------------------------------- 8: OSErrors


def test_destination_that_is_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mini_src: tuple[Path, list[str]]
) -> None:
    src, sets = mini_src
    root = tmp_path / "root"
    folder = root / "archives" / "test_train_splits.rar"
    (folder / "inside").mkdir(parents=True)
    (folder / "inside" / "keep.txt").write_text("mine")
    code, _, err = cli(capsys, "download", "--from", src, "--root", root, *sets)
    one_line_error(code, err, str(folder), "is a folder")
    assert (folder / "inside" / "keep.txt").read_text() == "mine"


def test_download_destination_that_is_a_folder(tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    dest.with_name("a.bin.part").mkdir()
    with pytest.raises(UserError, match=r"a\.bin\.part: is a folder"):
        fetch(["http://127.0.0.1:9/a.bin"], dest)
    dest.mkdir()
    with pytest.raises(UserError, match=r"a\.bin: is a folder"):
        fetch(["http://127.0.0.1:9/a.bin"], dest)


def test_read_only_destination(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mini_src: tuple[Path, list[str]],
    read_only: Callable[[Path], None],
) -> None:
    src, sets = mini_src
    root = tmp_path / "root"
    root.mkdir()
    read_only(root)
    code, _, err = cli(capsys, "download", "--from", src, "--root", root, *sets)
    one_line_error(code, err, f"cannot create the folder {root / 'archives'}")
    assert list(root.iterdir()) == []


def test_disk_full_during_download_keeps_a_resumable_part(
    server: tuple[str, Served], small_disk: Callable[[int], SmallDisk]
) -> None:
    base, served = server
    disk = small_disk(256 * 1024)
    dest = disk.path / "a.bin"
    part = dest.with_name("a.bin.part")
    with pytest.raises(UserError) as info:
        fetch([f"{base}/a.bin"], dest)
    message = str(info.value)
    assert f"cannot write {part}: No space left on device" in message
    assert "the download resumes" in message
    kept = part.read_bytes()
    assert 0 < len(kept) < len(DATA) and DATA.startswith(kept)

    disk.grow(4 * MiB)
    fetch([f"{base}/a.bin"], dest)
    assert dest.read_bytes() == DATA and not part.exists()
    assert served.requests[-1] == ("/a.bin", f"bytes={len(kept)}-")


# --------------------------------------------------------------------------- 20: extraction


def _download(
    capsys: pytest.CaptureFixture[str], mini_src: tuple[Path, list[str]], root: Path
) -> tuple[int, str, str]:
    src, sets = mini_src
    return cli(capsys, "download", "--from", src, "--root", root, *sets)


def _a_video(root: Path) -> Path:
    return root / "videos" / "cartwheel" / "cartwheel_Hamlet_(1996)_&_it's!-3.avi"


def test_same_size_file_with_other_content_is_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mini_src: tuple[Path, list[str]]
) -> None:
    root = tmp_path / "root"
    video = _a_video(root)
    good = b"cartwheel3" * 50
    video.parent.mkdir(parents=True)
    video.write_bytes(b"x" * len(good))  # the right size, not the right content
    code, _, err = _download(capsys, mini_src, root)
    assert code == 0, err
    assert video.read_bytes() == good
    assert not list(root.rglob("*.part"))


def test_damaged_file_after_a_finished_extraction_is_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mini_src: tuple[Path, list[str]]
) -> None:
    root = tmp_path / "root"
    assert _download(capsys, mini_src, root)[0] == 0
    video = _a_video(root)
    good = video.read_bytes()
    others = {p: p.stat().st_ino for p in (root / "videos").rglob("*.avi") if p != video}
    video.write_bytes(good[:100])  # truncated since: the manifest's size no longer holds
    code, _, err = _download(capsys, mini_src, root)
    assert code == 0, err
    assert video.read_bytes() == good
    assert {p: p.stat().st_ino for p in others} == others  # the intact files were kept


def test_two_members_for_one_file_are_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mini_src: tuple[Path, list[str]]
) -> None:
    src, sets = mini_src
    splits = src / "test_train_splits.rar"
    write_rar4(
        splits,
        [
            ("testTrainMulti_7030_splits/kiss_test_split1.txt", b"a.avi 1\n"),
            ("old/kiss_test_split1.txt", b"b.avi 2\n"),
        ],
    )
    sets = [*sets[:2], "--set", f'download.splits_md5="{md5sum(splits)}"']
    root = tmp_path / "root"
    code, _, err = cli(capsys, "download", "--from", src, "--root", root, *sets)
    one_line_error(
        code,
        err,
        "'old/kiss_test_split1.txt'",
        "'testTrainMulti_7030_splits/kiss_test_split1.txt'",
        str(root / "splits" / "kiss_test_split1.txt"),
    )
    assert (root / "splits" / "kiss_test_split1.txt").read_bytes() == b"a.avi 1\n"
    assert not (root / ".extract" / "splits").exists()  # no marker: not "done"


def test_two_class_archives_for_one_file_are_refused(tmp_path: Path) -> None:
    from hmdbattn.data.archive import extract_videos

    kiss = rar4_bytes([directory("kiss"), file("kiss/a.avi", b"first")])
    again = rar4_bytes([directory("kiss"), file("kiss/a.avi", b"second")])
    outer = write_rar4(
        tmp_path / "hmdb51_org.rar", [file("kiss.rar", kiss), file("kiss2.rar", again)]
    )
    with quiet(), pytest.raises(UserError) as info:
        extract_videos(outer, tmp_path / "root")
    message = str(info.value)
    assert f"member 'kiss/a.avi' of kiss2.rar in {outer}" in message
    assert f"as member 'kiss/a.avi' of kiss.rar in {outer} does" in message
    assert (tmp_path / "root" / "videos" / "kiss" / "a.avi").read_bytes() == b"first"


def test_truncated_archive_leaves_no_part_file(tmp_path: Path) -> None:
    from hmdbattn.data.archive import extract_archive

    data = rar4_bytes([("a.txt", b"A" * 5000), ("b.txt", b"B" * 300_000)])
    cut = write_rar4(tmp_path / "cut.rar", [])
    cut.write_bytes(data[: data.index(b"B" * 10) + 100_000])
    with pytest.raises(UserError, match=r"cut\.rar: cannot read archive"):
        extract_archive(cut, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt"]


def test_disk_full_during_extraction_removes_the_part_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], small_disk: Callable[[int], SmallDisk]
) -> None:
    big = bytes(range(256)) * 1200  # 300 KiB
    src = tmp_path / "src"
    inner = rar4_bytes([directory("kiss"), file("kiss/big.avi", big)])
    write_rar4(src / "hmdb51_org.rar", [file("kiss.rar", inner)])
    split = b"big.avi 1\n"
    write_rar4(
        src / "test_train_splits.rar", [(f"kiss_test_split{k}.txt", split) for k in (1, 2, 3)]
    )
    sets = [
        "--set",
        f'download.videos_md5="{md5sum(src / "hmdb51_org.rar")}"',
        "--set",
        f'download.splits_md5="{md5sum(src / "test_train_splits.rar")}"',
    ]
    import hmdbattn.cli.download as cli_download

    disk = small_disk(800 * 1024)  # the archives (copied) and the inner RAR fit, the video not
    root = disk.path / "root"
    args = ["download", "--from", src, "--root", root, *sets]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_download, "EXPECTED", Expected(1, 1, 3, 1, 0, 0))
        code, _, err = cli(capsys, *args)
        video = root / "videos" / "kiss" / "big.avi"
        one_line_error(code, err, f"cannot write {video}.part: No space left on device")
        assert "finished files are kept" in err
        assert not list(root.rglob("*.part")) and not list((root / ".extract").rglob("*.rar"))
        assert sorted(p.name for p in (root / "splits").iterdir()) == [
            f"kiss_test_split{k}.txt" for k in (1, 2, 3)
        ]
        disk.grow(4 * MiB)
        code, _, err = cli(capsys, *args)
        assert code == 0, err
        assert video.read_bytes() == big
