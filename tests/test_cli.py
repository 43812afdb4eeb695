"""The command line itself: help for every command, --version, one-line usage errors, and
`hmdbattn config`."""

from __future__ import annotations

import json

import pytest
import typer.main
from climain import cli
from conftest import ROOT

from hmdbattn import __version__
from hmdbattn.cli import _register, app
from hmdbattn.config import DownloadConfig, ModelConfig, section_fields

CONFIG = "configs/hmdb51.toml"  # relative to ROOT, as a user types it


def commands() -> dict[str, list[str]]:
    """Command name -> the long names of its options."""
    _register()
    group = typer.main.get_command(app)
    found = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        found[name] = [
            max(param.opts, key=len)
            for param in command.params
            if param.param_type_name == "option"
        ]
    return found


def assert_one_line_error(code: int, err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "╭" not in err
    for part in parts:
        assert part in lines[0]


def test_every_command_is_registered() -> None:
    names = set(commands())
    assert names >= {"ablate", "config", "download", "eval", "predict", "preprocess", "train"}


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_help_exits_0_and_lists_its_options(capsys, monkeypatch, name) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    options = commands()[name] + ["--help"]
    for flag in ("-h", "--help"):
        code, out, err = cli(capsys, name, flag)
        assert code == 0, err
        assert f"hmdbattn {name}" in out
        for option in options:
            assert option in out, (name, option)
        assert max(len(line) for line in out.splitlines()) <= 80


def test_root_help_lists_every_command(capsys) -> None:
    code, out, _ = cli(capsys, "-h")
    assert code == 0
    for name in commands():
        assert name in out


def test_version(capsys) -> None:
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out == f"hmdbattn {__version__}\n"


def test_unknown_command_is_one_line(capsys) -> None:
    code, out, err = cli(capsys, "trian")
    assert_one_line_error(code, err, "No such command 'trian'", "train", "-h")
    assert out == ""


@pytest.mark.parametrize("name", sorted(commands()))
def test_unknown_option_is_one_line(capsys, name) -> None:
    code, _, err = cli(capsys, name, "--no-such-option")
    assert_one_line_error(code, err, "--no-such-option", f"hmdbattn {name} -h")


def test_bad_value_and_missing_option_are_one_line(capsys) -> None:
    code, _, err = cli(capsys, "eval", "--checkpoint", "x.pt", "--split", "7")
    assert_one_line_error(code, err, "--split")
    code, _, err = cli(capsys, "ablate")
    assert_one_line_error(code, err, "--grid")


# --------------------------------------------------------------------------- hmdbattn config


def test_config_shows_value_source_and_description(capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("HMDBATTN_TRAIN__LR", "3e-4")
    code, out, err = cli(capsys, "config", "--config", CONFIG, "--set", "model.cnn_blocks=6")
    assert code == 0, err
    lines = out.splitlines()
    at = lines.index("  model.cnn_blocks = 6  (--set)")
    description = ModelConfig.model_fields["cnn_blocks"].description
    assert description and lines[at + 1].strip() == description
    assert "  train.lr = 0.0003  (environment HMDBATTN_TRAIN__LR)" in lines
    assert f"  model.num_latents = 256  (file {CONFIG})" in lines
    assert "  model.head_dropout = 0.0  (default)" in lines
    assert "  data.cache_dir = (unset)  (default)" in lines
    key_lines = [line for line in lines if line.startswith("  ") and line[2] != " "]
    keys = [line.split(" = ")[0].strip() for line in key_lines]
    expected = [f"{s}.{k}" for s, fields in section_fields().items() for k in fields]
    assert keys == expected  # every key, grouped by section in the config's order
    assert next(line for line in lines if line.startswith("[")).startswith("[data] ")
    # 80 columns: only values that cannot break (the mirrors' URLs) run longer.
    assert all(len(line) <= 80 for line in lines if "https://" not in line)
    url = lines.index("  download.videos_urls = " + json.dumps(DownloadConfig().videos_urls))
    assert lines[url + 1] == "      (default)"  # a long value: its source goes below it


def test_config_json_matches_the_text(capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    code, out, err = cli(
        capsys, "config", "--config", CONFIG, "--set", "model.cnn_blocks=6", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["model"]["cnn_blocks"] == {
        "value": 6,
        "source": "--set",
        "description": ModelConfig.model_fields["cnn_blocks"].description,
    }
    assert data["data"]["resize"]["value"] == [128, 171]
    assert data["data"]["resize"]["source"] == f"file {CONFIG}"
    assert {s: list(v) for s, v in data.items()} == {
        s: list(fields) for s, fields in section_fields().items()
    }


def test_config_errors_are_collected_and_exit_2(capsys, tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[model]\ncnn_blocks = 0\n")
    code, out, err = cli(capsys, "config", "--config", path, "--set", "model.cnn_block=3")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith("error: 2 config error(s):")
    assert f"model.cnn_blocks: Input should be greater than or equal to 1 (got 0) [{path}]" in err
    assert "model.cnn_block: unknown key; did you mean model.cnn_blocks? [--set]" in err
