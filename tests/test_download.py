"""Downloads from a loopback HTTP server (Range, dropped connections, mirrors, MD5), `--from`,
the Kinetics weights' offline error, and `hmdbattn download` end to end."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rar4 import mini_hmdb51
from typer.testing import CliRunner

import hmdbattn.cli.download as cli_download
from hmdbattn.cli import app
from hmdbattn.config import DownloadConfig
from hmdbattn.data.download import (
    FetchResult,
    copy_from_dir,
    download_file,
    fetch_archives,
    fetch_kinetics_weights,
    md5sum,
)
from hmdbattn.data.verify import Expected
from hmdbattn.errors import UserError
from hmdbattn.report import quiet

DATA = bytes(range(256)) * 4096  # 1 MiB: several read chunks
DATA_MD5 = hashlib.md5(DATA).hexdigest()


def fetch(urls: list[str], dest: Path, md5: str = DATA_MD5, timeout: float = 2.0) -> FetchResult:
    """download_file with few retries, a tiny back-off and no progress bar: fast tests."""
    with quiet():
        return download_file(urls, dest, md5, retries=2, timeout=timeout, backoff=0.01)


@dataclass
class Served:
    """What the test server serves and how it misbehaves; `requests` logs (path, Range)."""

    files: dict[str, bytes] = field(default_factory=dict)
    ranges: bool = True
    drop_once: set[str] = field(default_factory=set)  # send half the body, then hang up
    stall_once: set[str] = field(default_factory=set)  # send half the body, then go quiet
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    no_range: set[str] = field(default_factory=set)  # these paths ignore Range (always 200)
    no_length: set[str] = field(default_factory=set)  # no Content-Length: the body ends at close
    # Per path, how many body bytes each successive request gets before the server hangs up.
    cut: dict[str, list[int]] = field(default_factory=dict)


class Handler(BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:
        served = self.served
        served.requests.append((self.path, self.headers.get("Range")))
        data = served.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = self._range_start(len(data))
        if start is None:
            return
        body = data[start:]
        if self.path not in served.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if served.cut.get(self.path):
            self._send(body[: served.cut[self.path].pop(0)])
            return
        if self.path in served.drop_once | served.stall_once:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if self.path in served.stall_once:
                served.stall_once.discard(self.path)
                time.sleep(1.5)
            served.drop_once.discard(self.path)
            return
        self._send(body)

    def _send(self, body: bytes) -> None:
        """Write `body`; a client that hung up (a refused oversized body) is no error here."""
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            pass

    def _range_start(self, size: int) -> int | None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match is None or not self.served.ranges or self.path in self.served.no_range:
            self.send_response(200)
            return 0
        start = int(match[1])
        if start >= size:
            self.send_error(416)
            return None
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        return start

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    """A threading HTTP server on 127.0.0.1 (port 0); yields its base URL and its state."""
    with serve() as running:
        yield running


@contextmanager
def serve() -> Iterator[tuple[str, Served]]:
    """The test server while the block runs: its base URL and its state (serving /a.bin)."""
    served = Served(files={"/a.bin": DATA})
    handler = type("H", (Handler,), {"served": served})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    """A loopback URL nobody listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hmdb51_org.rar"


def test_download_verifies_and_renames(tmp_path: Path, server: tuple[str, Served]) -> None:
    base, served = server
    dest = tmp_path / "dl" / "a.bin"
    result = fetch([f"{base}/a.bin"], dest)
    assert dest.read_bytes() == DATA and not dest.with_name("a.bin.part").exists()
    assert (result.action, result.source, result.md5) == ("downloaded", f"{base}/a.bin", DATA_MD5)
    again = fetch([f"{base}/a.bin"], dest)
    assert again.action == "present" and len(served.requests) == 1


def test_dropped_connection_resumes_with_range(tmp_path: Path, server: tuple[str, Served]) -> None:
    base, served = server
    served.drop_once.add("/a.bin")
    dest = tmp_path / "a.bin"
    fetch([f"{base}/a.bin"], dest)
    assert md5sum(dest) == DATA_MD5
    assert served.requests == [("/a.bin", None), ("/a.bin", f"bytes={len(DATA) // 2}-")]


def test_stalled_server_times_out_and_resumes(tmp_path: Path, server: tuple[str, Served]) -> None:
    base, served = server
    served.stall_once.add("/a.bin")
    dest = tmp_path / "a.bin"
    fetch([f"{base}/a.bin"], dest, timeout=0.3)
    assert md5sum(dest) == DATA_MD5
    assert served.requests[1] == ("/a.bin", f"bytes={len(DATA) // 2}-")


def test_existing_part_is_resumed(tmp_path: Path, server: tuple[str, Served]) -> None:
    base, served = server
    dest = tmp_path / "a.bin"
    dest.with_name("a.bin.part").write_bytes(DATA[:1000])
    fetch([f"{base}/a.bin"], dest)
    assert dest.read_bytes() == DATA
    assert served.requests == [("/a.bin", "bytes=1000-")]


def test_server_without_range_starts_over(tmp_path: Path, server: tuple[str, Served]) -> None:
    base, served = server
    served.ranges = False
    dest = tmp_path / "a.bin"
    dest.with_name("a.bin.part").write_bytes(b"junk" * 100)
    fetch([f"{base}/a.bin"], dest)
    assert dest.read_bytes() == DATA


def test_oversized_part_starts_over(tmp_path: Path, server: tuple[str, Served]) -> None:
    base, served = server
    dest = tmp_path / "a.bin"
    dest.with_name("a.bin.part").write_bytes(DATA + b"extra")  # server answers 416
    fetch([f"{base}/a.bin"], dest)
    assert dest.read_bytes() == DATA
    assert served.requests[-1] == ("/a.bin", None)


def test_mirror_fallback(tmp_path: Path, server: tuple[str, Served]) -> None:
    base, served = server
    urls = [f"{base}/gone.bin", f"{base}/a.bin"]
    result = fetch(urls, tmp_path / "a.bin")
    assert result.source == f"{base}/a.bin"
    # A 404 is not retried: that mirror will not grow the file.
    assert [path for path, _ in served.requests] == ["/gone.bin", "/a.bin"]


def test_md5_mismatch_names_file_and_both_sums(tmp_path: Path, server: tuple[str, Served]) -> None:
    base, _ = server
    wrong = "0" * 32
    dest = tmp_path / "hmdb51_org.rar"
    with pytest.raises(UserError) as info:
        fetch([f"{base}/a.bin"], dest, wrong)
    message = str(info.value)
    assert "hmdb51_org.rar" in message and wrong in message and DATA_MD5 in message
    assert "checksum mismatch" in message
    assert not dest.exists() and not dest.with_name("hmdb51_org.rar.part").exists()


def test_existing_file_with_wrong_md5_is_not_overwritten(tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"mine")
    with pytest.raises(UserError, match=r"checksum mismatch.*delete the file"):
        fetch(["http://127.0.0.1:9/a.bin"], dest)
    assert dest.read_bytes() == b"mine"


def test_unreachable_mirrors_give_one_clear_error(tmp_path: Path) -> None:
    urls = [closed_port_url(), closed_port_url()]
    cfg = DownloadConfig(videos_urls=urls, splits_urls=urls[:1], retries=1, timeout=1.0)
    splits = tmp_path / "src" / "test_train_splits.rar"
    splits.parent.mkdir()
    splits.write_bytes(DATA)
    cfg.splits_md5 = DATA_MD5
    # The splits archive is already in place, so only the videos archive is fetched.
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / "test_train_splits.rar").write_bytes(DATA)
    start = time.monotonic()
    with quiet(), pytest.raises(UserError) as info:
        fetch_archives(cfg, tmp_path / "archives", backoff=0.01)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "\n" not in message
    assert all(url in message for url in urls)
    assert "--from DIR" in message and "download.videos_urls" in message


def test_copy_from_dir(tmp_path: Path) -> None:
    src = tmp_path / "mine"
    src.mkdir()
    (src / "a.rar").write_bytes(DATA)
    result = copy_from_dir(src, "a.rar", DATA_MD5, tmp_path / "archives")
    assert result.action in ("linked", "copied")
    assert (tmp_path / "archives" / "a.rar").read_bytes() == DATA
    again = copy_from_dir(src, "a.rar", DATA_MD5, tmp_path / "archives")
    assert again.action == "present"
    with pytest.raises(UserError, match=rf"a\.rar: checksum mismatch: expected MD5 {'1' * 32}"):
        copy_from_dir(src, "a.rar", "1" * 32, tmp_path / "other")
    with pytest.raises(UserError, match=r"b\.rar not found"):
        copy_from_dir(src, "b.rar", DATA_MD5, tmp_path / "archives")
    with pytest.raises(UserError, match="not a folder"):
        copy_from_dir(tmp_path / "nowhere", "a.rar", DATA_MD5, tmp_path / "archives")


def test_copy_when_hard_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr("hmdbattn.data.download.os.link", no_link)
    (tmp_path / "a.rar").write_bytes(DATA)
    result = copy_from_dir(tmp_path, "a.rar", DATA_MD5, tmp_path / "archives")
    assert result.action == "copied"
    assert (tmp_path / "archives" / "a.rar").read_bytes() == DATA


# --------------------------------------------------------------------------- weights


def test_kinetics_weights_offline_says_where_to_put_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error

    import torch.hub
    from torchvision.models.video import R2Plus1D_18_Weights

    def offline(self: object, **kwargs: object) -> dict:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(R2Plus1D_18_Weights, "get_state_dict", offline)
    with quiet(), pytest.raises(UserError) as info:
        fetch_kinetics_weights()
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "r2plus1d_18-91a641e6.pth") in message
    assert "name resolution" in message and "by hand" in message

    monkeypatch.setattr(R2Plus1D_18_Weights, "get_state_dict", lambda self, **kw: {})
    with quiet():
        path = fetch_kinetics_weights()
    assert path == tmp_path / "hub" / "checkpoints" / "r2plus1d_18-91a641e6.pth"


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def mini_src(tmp_path: Path) -> tuple[Path, Expected, list[str]]:
    """Small HMDB51-shaped archives, their expected counts and the --set options for their MD5s."""
    src = tmp_path / "src"
    expected = Expected(**mini_hmdb51(src))
    sets = [
        "--set",
        f'download.videos_md5="{md5sum(src / "hmdb51_org.rar")}"',
        "--set",
        f'download.splits_md5="{md5sum(src / "test_train_splits.rar")}"',
    ]
    return src, expected, sets


def test_cli_from_dir_incomplete_dataset_exits_1_with_table(
    tmp_path: Path, mini_src: tuple[Path, Expected, list[str]]
) -> None:
    src, _, sets = mini_src
    root = tmp_path / "root"
    result = CliRunner().invoke(app, ["download", "--from", str(src), "--root", str(root), *sets])
    assert result.exit_code == 1
    assert isinstance(result.exception, UserError)
    assert "does not match the expected HMDB51 counts" in str(result.exception)
    assert "Verification" in result.stdout and "DIFFERS" in result.stdout
    assert len(list((root / "videos").rglob("*.avi"))) == 10


def test_cli_from_dir_complete(
    tmp_path: Path, mini_src: tuple[Path, Expected, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, expected, sets = mini_src
    monkeypatch.setattr(cli_download, "EXPECTED", expected)
    root = tmp_path / "root"
    args = ["download", "--from", str(src), "--root", str(root), *sets]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Verification" in result.stdout and "DIFFERS" not in result.stdout

    again = CliRunner().invoke(app, [*args, "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["verification"]["ok"] is True
    assert {a["action"] for a in summary["archives"]} == {"present"}
    assert all(e["skipped"] for e in summary["extracted"])

    # A video lost after extraction: the markers say done, verification says no: extract again.
    lost = next((root / "videos").rglob("*.avi"))
    lost.unlink()
    third = CliRunner().invoke(app, [*args, "--json"])
    assert third.exit_code == 0, third.output
    assert lost.is_file()
    assert [e["written"] for e in json.loads(third.stdout)["extracted"]] == [0, 1]


def test_cli_bad_md5_from_dir(tmp_path: Path, mini_src: tuple[Path, Expected, list[str]]) -> None:
    src, _, _ = mini_src
    result = CliRunner().invoke(app, ["download", "--from", str(src), "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "checksum mismatch" in str(result.exception)
    assert "15e67781e70dcfbdce2d7dbb9b3344b5" in str(result.exception)


def test_cli_synthetic_passes_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hmdbattn.data import synthetic

    calls = []

    def fake_generate(root: Path, **kwargs: object) -> synthetic.SyntheticSummary:
        calls.append((root, kwargs))
        return synthetic.SyntheticSummary(root=root, classes=["a", "b"], videos=4)

    monkeypatch.setattr(synthetic, "generate", fake_generate)
    args = ["download", "--synthetic", "--root", str(tmp_path), "--classes", "2", "--size", "64x48"]
    result = CliRunner().invoke(app, [*args, "--workers", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert calls == [
        (
            tmp_path,
            {
                "classes": 2,
                "videos_per_class": 100,
                "seconds": 2.0,
                "size": (64, 48),
                "fps": 30,
                "seed": 0,
                "workers": 3,
                "layout": "hmdb51",
            },
        )
    ]
    assert json.loads(result.stdout)["synthetic"] == {"classes": ["a", "b"], "videos": 4}


def test_cli_bad_size_is_a_user_error(tmp_path: Path) -> None:
    args = ["download", "--synthetic", "--root", str(tmp_path), "--size", "320by240"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert isinstance(result.exception, UserError) and "'320by240'" in str(result.exception)


def _record_generate(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, dict[str, object]]]:
    """Replace the generator by one that records its arguments; the calls list."""
    from hmdbattn.data import synthetic

    calls: list[tuple[Path, dict[str, object]]] = []

    def fake_generate(root: Path, **kwargs: object) -> synthetic.SyntheticSummary:
        calls.append((root, kwargs))
        return synthetic.SyntheticSummary(root=root, classes=["a", "b"], videos=4)

    monkeypatch.setattr(synthetic, "generate", fake_generate)
    return calls


def test_synthesize_is_download_synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_generate(monkeypatch)
    options = ["--root", str(tmp_path), "--class-names", " move_up,blink ,", "--seed", "4"]
    outputs = []
    for command in (["synthesize"], ["download", "--synthetic"]):
        for extra in ([], ["--json"]):
            result = CliRunner().invoke(app, [*command, *options, *extra])
            assert result.exit_code == 0, result.output
            outputs.append(result.stdout)
    assert outputs[:2] == outputs[2:]  # the same text and the same JSON
    assert "synthetic dataset: 2 classes, 4 videos" in outputs[0]
    assert len(calls) == 4 and all(call == calls[0] for call in calls)
    root, kwargs = calls[0]
    assert root == tmp_path
    assert kwargs["classes"] == ["move_up", "blink"] and kwargs["seed"] == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--class-names", "move_up,jump"], "unknown class name(s) jump; known: move_left, "),
        (["--class-names", "blink,static,blink"], "class name(s) given twice: blink"),
        (["--class-names", "blink"], "at least 2 class names"),
        (["--classes", "3", "--class-names", "blink,static"], "--classes and --class-names"),
        (["--classes", "17"], "classes must be between 2 and 16, got 17"),
        (["--size", "95x72"], "both even"),
    ],
)
@pytest.mark.parametrize("command", [["synthesize"], ["download", "--synthetic"]])
def test_synthetic_option_mistakes_are_one_line_user_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    options: list[str],
    message: str,
) -> None:
    calls = _record_generate(monkeypatch)
    result = CliRunner().invoke(app, [*command, "--root", str(tmp_path), *options])
    assert result.exit_code == 1
    assert isinstance(result.exception, UserError)
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert calls == []  # refused before anything was written


def test_synthesize_class_names_end_to_end(tmp_path: Path) -> None:
    """A tiny named-class dataset: recorded in synthetic.json; other names are refused."""
    args = ["synthesize", "--root", str(tmp_path), "--videos-per-class", "3", "--seconds", "0.5"]
    args += ["--size", "48x32", "--fps", "10", "--workers", "0"]
    result = CliRunner().invoke(app, [*args, "--class-names", "zigzag,move_up", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["synthetic"] == {"classes": ["move_up", "zigzag"], "videos": 6}
    manifest = json.loads((tmp_path / "synthetic.json").read_text())
    assert manifest["class_names"] == ["move_up", "zigzag"]
    again = CliRunner().invoke(app, [*args, "--class-names", "zigzag,blink"])
    assert again.exit_code == 1
    assert isinstance(again.exception, UserError) and "another root" in str(again.exception)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["move_up", "zigzag"]
