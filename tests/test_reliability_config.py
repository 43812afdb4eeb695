"""Issue 12, config and predict: a user's mistake is one line naming it, never a traceback.

Items: 10 (run names, the TOML writer), 21 (environment variables, inf / nan), 22 (errors in a
checkpoint's config name the checkpoint), 23 (predict's --window / --stride).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import tomllib
import torch
from climain import cli
from conftest import TINY
from videofiles import write_avi

from hmdbattn import config as config_module
from hmdbattn import load_config
from hmdbattn.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from hmdbattn.cli import predict as cli_predict
from hmdbattn.config import Config, dump_toml, section_fields
from hmdbattn.errors import ConfigError
from hmdbattn.models.classifier import build_model
from hmdbattn.predict import MAX_WINDOWS, WindowError, plan_windows

FPS = 15


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(code: int, err: str, expected_code: int) -> str:
    """The error's text, after checking the exit code and that no traceback was printed."""
    assert code == expected_code, err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------------------------------
# 10: train.name and the TOML writer


@pytest.mark.parametrize(
    "name", ["a\nb", "run\r", "tab\there", "nul\x00", "a/b", "..", ".hidden", "two words", "-rf"]
)
def test_run_name_with_separators_or_control_characters_is_refused(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"train.name": name})
    message = str(info.value)
    assert f"train.name: {name!r} is not a usable run name" in message
    assert "use letters, digits and . _ - + = , @" in message


@pytest.mark.parametrize("name", ["run-1", "blocks=4,lr=1e-3", "résumé_2", "a.b+c@d", "x" * 128])
def test_plain_run_names_are_accepted(name: str) -> None:
    assert load_config(None, {"train.name": name}).train.name == name


def test_bad_run_name_on_the_command_line_is_one_error_exit_2(capsys, tmp_path: Path) -> None:
    code, out, err = cli(capsys, "train", "--dry-run", "--set", 'train.name="a\\nb"')
    err = one_line_error(code, err, 2)
    assert "train.name: 'a\\nb' is not a usable run name" in err
    assert out == ""


AWKWARD = [
    'say "hi"',
    "C:\\data\\new\\table",  # backslashes that look like escapes
    "line one\nline two\r\n",
    "\x00\x01\x08\x0b\x0c\x1b\x1f\x7f\t",  # control characters, DEL, tab
    "héllo ☃ 𝄞 \u2028 \u0085 日本",  # unicode, line separators TOML treats as plain text
    "'''\"\"\"",  # TOML's multi-line delimiters
    "\\u0041 \\n",  # a literal backslash-u and backslash-n, not escapes
    "",
]


@pytest.mark.parametrize("text", AWKWARD, ids=range(len(AWKWARD)))
def test_toml_writer_round_trips_awkward_strings(tmp_path: Path, text: str) -> None:
    config = load_config(
        None,
        {
            "data.root": f"data/{text}",
            "model.weights": text or "w.pth",
            "download.videos_urls": [text, f"https://example.com/{text}"],
        },
    )
    path = write(tmp_path, config.to_toml())
    assert load_config(path) == config
    # Every line of the file is one key: a value never spills onto the next line.
    lines = path.read_text(encoding="utf-8").split("\n")
    assert all(" = " in line or line.startswith("[") or not line for line in lines)
    data = {"s": {"v": text}, f"section {text}": {f"key {text}": [text]}}
    assert tomllib.loads(dump_toml(data)) == data  # keys and section names too


def test_a_value_toml_cannot_hold_is_an_error_naming_its_key() -> None:
    undecodable = "data/\udcff"  # what Python makes of a file name that is not UTF-8
    config = load_config(None, {"data.root": undecodable})
    with pytest.raises(ConfigError, match=r"data\.root = .* cannot be written as TOML"):
        config.to_toml()


# ---------------------------------------------------------------------------------------------
# 21: the environment, inf and nan


def test_malformed_environment_variables_are_config_errors_naming_them(
    capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HMDBATTN_DATA__RESIZE", "[1,")
    monkeypatch.setenv("HMDBATTN_TRAIN", "notjson")
    code, out, err = cli(capsys, "config", "--set", "model.cnn_blocks=9")
    err = one_line_error(code, err, 2)
    assert out == ""
    assert "3 config error(s)" in err  # reported together with the other errors
    assert "data.resize: not valid JSON" in err and "expected JSON such as [128, 171]" in err
    assert "(got '[1,') [environment HMDBATTN_DATA__RESIZE]" in err
    assert "train: not valid JSON" in err and "(got 'notjson') [environment HMDBATTN_TRAIN]" in err
    assert "model.cnn_blocks: Input should be less than or equal to 8 (got 9) [--set]" in err


def test_malformed_environment_on_resume_leaves_the_run_untouched(
    capsys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(load_config(None, TINY).to_toml(), encoding="utf-8")
    (run / "last.pt").write_bytes(b"checkpoint bytes")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    monkeypatch.setenv("HMDBATTN_DATA__RESIZE", "[1,")
    code, _, err = cli(capsys, "train", "--resume", run)
    err = one_line_error(code, err, 2)
    assert "(got '[1,') [environment HMDBATTN_DATA__RESIZE]" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_malformed_environment_fails_plain_config_construction_as_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HMDBATTN_DATA__MEAN", "(0.4, 0.4, 0.4)")
    with pytest.raises(ConfigError, match=r"data\.mean: not valid JSON .*HMDBATTN_DATA__MEAN"):
        Config()


def test_well_formed_environment_variables_are_read_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HMDBATTN_DATA__RESIZE", "[64, 80]")
    monkeypatch.setenv("HMDBATTN_TRAIN", '{"epochs": 3}')
    monkeypatch.setenv("HMDBATTN_TRAIN__LR", "0.01")
    config = load_config(None, {"data.crop_size": 56})
    assert (config.data.resize, config.train.epochs, config.train.lr) == ((64, 80), 3, 0.01)


def test_a_malformed_variable_does_not_hide_the_other_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HMDBATTN_DATA__RESIZE", "[1,")
    monkeypatch.setenv("HMDBATTN_TRAIN__EPOCHS", "0")  # readable, but out of range
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert message.startswith("2 config error(s)")
    assert "[environment HMDBATTN_DATA__RESIZE]" in message
    assert "train.epochs: Input should be greater than or equal to 1 (got '0')" in message


def test_unknown_environment_section_is_one_warning_with_a_hint(
    capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "_warned", set())
    monkeypatch.setenv("HMDBATTN_TRAINN__EPOCHS", "3")
    code, out, err = cli(capsys, "config", "--json")
    assert code == 0 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "warning: environment variable HMDBATTN_TRAINN__EPOCHS is ignored: there is no config "
        "section 'trainn'; did you mean HMDBATTN_TRAIN__EPOCHS?"
    ]
    assert '"epochs"' in out and load_config().train.epochs == 30  # nothing was set
    monkeypatch.setenv("HMDBATTN_ZZZ", "1")
    load_config()
    assert "the sections are data, model, train" in capsys.readouterr().err


def _float_keys() -> list[str]:
    """Every config key holding floats (alone, in a tuple, or optional)."""
    return [
        f"{section}.{name}"
        for section, fields in section_fields().items()
        for name, info in fields.items()
        if "float" in str(info.annotation)
    ]


def _with(key: str, bad: float) -> object:
    default = load_config().model_dump()[key.split(".")[0]][key.split(".")[1]]
    return [bad, *default[1:]] if isinstance(default, tuple) else bad


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_every_float_key_refuses_inf_and_nan(bad: float) -> None:
    keys = _float_keys()
    assert {"train.lr", "data.clip_duration", "download.timeout", "data.mean"} <= set(keys)
    assert len(keys) >= 20
    for key in keys:
        with pytest.raises(ConfigError) as info:
            load_config(None, {key: _with(key, bad)})
        assert f"{key}: Input should be a finite number" in str(info.value), key


def test_inf_and_nan_are_refused_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[train]\nlr = inf\n[data]\nclip_duration = nan\n")
    monkeypatch.setenv("HMDBATTN_DOWNLOAD__TIMEOUT", "inf")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"train.lr: Input should be a finite number (got inf) [{path}]" in message
    assert "data.clip_duration: Input should be a finite number" in message
    assert "download.timeout: Input should be a finite number (got 'inf')" in message
    assert "[environment HMDBATTN_DOWNLOAD__TIMEOUT]" in message


# ---------------------------------------------------------------------------------------------
# 22: the config stored in a checkpoint


def _checkpoint(path: Path, config: dict) -> Path:
    """A checkpoint in our format holding `config` and an untrained tiny model's weights."""
    good = load_config(None, TINY)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": build_model(good, 2).state_dict(),
        "classes": ["a", "b"],
        "config": config,
    }
    torch.save(ckpt, path)
    return path


def _stale_config() -> dict:
    """A tiny run's config as an older version might have saved it: a renamed key, a bad value."""
    config = load_config(None, TINY).model_dump(mode="json")
    config["model"]["cnn_block"] = 1
    config["data"]["split"] = 7
    return config


def test_checkpoint_config_errors_name_the_checkpoint(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "best.pt", _stale_config())
    stored = torch.load(ckpt, weights_only=True)["config"]
    other = write(tmp_path, "[train]\nepochs = 2\n", "other.toml")
    for path in (None, other):  # with a config file on top, the errors still name the checkpoint
        with pytest.raises(ConfigError) as info:
            load_config(path, None, base=stored, base_name=str(ckpt))
        message = str(info.value)
        assert f"model.cnn_block: unknown key; did you mean model.cnn_blocks? [{ckpt}]" in message
        assert f"data.split: Input should be less than or equal to 3 (got 7) [{ckpt}]" in message
        assert "[defaults]" not in message and f"[{other}]" not in message


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_predict_and_eval_label_checkpoint_config_errors_with_its_path(
    capsys, tmp_path: Path, command: str
) -> None:
    ckpt = _checkpoint(tmp_path / "best.pt", _stale_config())
    video = write_avi(tmp_path / "v.avi", num_frames=30, fps=FPS)
    args = [video, "--checkpoint", ckpt] if command == "predict" else ["--checkpoint", ckpt]
    code, out, err = cli(capsys, command, *args)
    err = one_line_error(code, err, 2)
    assert f"data.split: Input should be less than or equal to 3 (got 7) [{ckpt}]" in err
    assert "[defaults]" not in err and out == ""


def test_a_checkpoint_config_that_is_not_sections_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"best\.pt: the stored config is not a table"):
        load_config(None, None, base={"model": 3}, base_name=str(tmp_path / "best.pt"))  # type: ignore[dict-item]


# ---------------------------------------------------------------------------------------------
# 23: predict's --window and --stride


def test_stride_below_one_frame_is_refused_with_the_smallest_allowed() -> None:
    data = load_config(None, TINY).data
    with pytest.raises(WindowError) as info:
        plan_windows(30, FPS, data, window=0.5, stride=1e-6)
    assert str(info.value) == (
        "--stride 1e-06 s is shorter than one frame of this video (15 fps): "
        "use --stride 0.06667 or more"
    )
    assert len(plan_windows(30, FPS, data, window=0.5, stride=0.06667)) == 24  # the value given
    with pytest.raises(
        WindowError, match=r"--window 0\.01 s is shorter than one frame .* 0\.04 or"
    ):
        plan_windows(50, 25.0, data, window=0.01)
    assert len(plan_windows(50, 25.0, data, window=0.04)) == 50  # exactly one frame: allowed


def test_window_count_is_capped_before_windows_are_made() -> None:
    data = load_config(None, TINY).data
    hours = 3 * 3600 * FPS  # a three-hour video
    with pytest.raises(WindowError) as info:
        plan_windows(hours, FPS, data, window=2.0, stride=0.1)
    message = str(info.value)
    assert f"makes 107,981 windows over this 10800.0 s video, more than {MAX_WINDOWS:,}" in message
    smallest = float(message.rsplit("--stride ", 1)[1].split()[0])
    assert len(plan_windows(hours, FPS, data, window=2.0, stride=smallest)) <= MAX_WINDOWS
    assert len(plan_windows(60 * FPS, FPS, data, window=2.0, stride=1 / FPS)) == 871  # 1 min
    assert cli_predict.MAX_WINDOWS == MAX_WINDOWS  # the cap --help states


def test_predict_with_a_stride_below_one_frame_is_one_line_and_quick(
    capsys, tmp_path: Path
) -> None:
    ckpt = _checkpoint(tmp_path / "best.pt", load_config(None, TINY).model_dump(mode="json"))
    video = write_avi(tmp_path / "v.avi", num_frames=30, fps=FPS)
    code, out, err = cli(
        capsys, "predict", video, "--checkpoint", ckpt, "--window", "0.5", "--stride", "1e-6"
    )
    err = one_line_error(code, err, 1)
    assert err.strip().splitlines() == [
        f"error: {video}: --stride 1e-06 s is shorter than one frame of this video (15 fps): "
        "use --stride 0.06667 or more"
    ]
    assert out.strip() == ""
