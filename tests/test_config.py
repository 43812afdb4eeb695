"""Configuration: sources and their precedence, value parsing, errors, shipped configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hmdbattn import load_config
from hmdbattn.config import Config, check_key, flatten, parse_value, resolved_keys, section_fields
from hmdbattn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_documented(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, Config)
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# {path.name}"), "a config opens with a comment naming itself"
    assert "hmdbattn " in path.read_text(), "a config says how to run it"


def test_shipped_configs_exist() -> None:
    assert {p.name for p in SHIPPED} >= {"hmdb51.toml", "baseline.toml", "synthetic.toml"}


def test_hmdb51_config_holds_the_research_values() -> None:
    c = load_config(ROOT / "configs" / "hmdb51.toml")
    assert (c.model.cnn_blocks, c.model.cross_layers, c.model.self_layers) == (8, 1, 1)
    assert (c.model.num_latents, c.model.latent_dim, c.model.cross_heads) == (256, 512, 1)
    assert (c.model.latent_heads, c.model.latent_dim_head, c.model.cross_dim_head) == (8, 64, 64)
    assert (c.model.num_freq_bands, c.model.max_freq) == (6, 10.0)
    assert (c.data.num_frames, c.data.clip_duration, c.data.crop_size) == (16, 2.0, 112)
    assert c.data.resize == (128, 171) and c.data.mean == (0.45, 0.45, 0.45)
    assert (c.train.optimizer, c.train.lr, c.train.weight_decay) == ("adam", 1e-3, 1e-5)
    assert (c.train.step_size, c.train.gamma, c.data.batch_size) == (10, 0.2, 8)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("[1, 2]", [1, 2]),
        ("true", True),
        ("1e-3", 1e-3),
        ("7", 7),
        ("pool", "pool"),
        ('"quoted"', "quoted"),
        ("data/my dir", "data/my dir"),
    ],
)
def test_set_values_are_read_as_toml(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_precedence_set_over_env_over_file_over_default(tmp_path, monkeypatch) -> None:
    path = write(tmp_path, "[model]\ncnn_blocks = 3\nself_layers = 2\nlatent_dim = 64\n")
    monkeypatch.setenv("HMDBATTN_MODEL__CNN_BLOCKS", "5")
    monkeypatch.setenv("HMDBATTN_MODEL__SELF_LAYERS", "4")
    c = load_config(path, ["model.cnn_blocks=7"])
    assert c.model.cnn_blocks == 7  # --set beats the environment
    assert c.model.self_layers == 4  # the environment beats the file
    assert c.model.latent_dim == 64  # the file beats the default
    assert c.model.num_latents == 256  # the default


def test_overrides_as_dict_and_strings_agree() -> None:
    a = load_config(None, {"model.head": "pool", "data.resize": [64, 80], "data.crop_size": 56})
    b = load_config(None, ["model.head=pool", "data.resize=[64, 80]", "data.crop_size=56"])
    assert a == b and a.data.resize == (64, 80)


def test_all_errors_are_reported_together_by_dotted_key(tmp_path, monkeypatch) -> None:
    path = write(tmp_path, '[model]\ncnn_blocks = 9\nbogus = 1\n[data]\nsplit = "x"\n[nope]\n')
    monkeypatch.setenv("HMDBATTN_TRAIN__LR", "-1")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["model.head=transformer"])
    message = str(info.value)
    for expected in (
        "model.cnn_blocks: Input should be less than or equal to 8",
        "model.bogus: unknown key",
        "data.split: Input should be a valid integer",
        "nope: unknown section",
        "model.head: Input should be 'perceiver' or 'pool'",
        "train.lr: Input should be greater than 0",
        "environment HMDBATTN_TRAIN__LR",
        str(path),
        "--set",
    ):
        assert expected in message
    assert message.startswith("6 config error(s)")


def test_missing_file_is_an_error_not_defaults(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_malformed_toml_names_the_file(tmp_path) -> None:
    path = write(tmp_path, "[model\ncnn_blocks = 3\n")
    with pytest.raises(ConfigError, match=r"c\.toml: not valid TOML"):
        load_config(path)


@pytest.mark.parametrize("item", ["cnn_blocks=3", "model=3", "a.b.c=1", "model.cnn_blocks"])
def test_malformed_set_is_an_error(item: str) -> None:
    with pytest.raises(ConfigError):
        load_config(None, [item])


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match="crop_size 200 is larger"):
        load_config(None, {"data.crop_size": 200})
    with pytest.raises(ConfigError, match="needs cross_layers or self_layers"):
        load_config(None, {"model.cross_layers": 0, "model.self_layers": 0})


def test_resolved_config_round_trips_through_toml(tmp_path) -> None:
    c = load_config(ROOT / "configs" / "synthetic.toml", {"model.weights": "w.pth"})
    path = write(tmp_path, c.to_toml())
    assert load_config(path) == c


def test_cli_config_error_exits_2_with_no_traceback(tmp_path) -> None:
    path = write(tmp_path, "[model]\ncnn_blocks = 0\n")
    run = subprocess.run(
        [sys.executable, "-m", "hmdbattn", "train", "--config", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "model.cnn_blocks" in run.stderr and "Traceback" not in run.stderr


def test_every_field_has_a_description() -> None:
    missing = [
        f"{section}.{name}"
        for section, fields in section_fields().items()
        for name, info in fields.items()
        if not (info.description or "").strip()
    ]
    assert missing == [], f"fields without description=: {missing}"
    assert sum(len(fields) for fields in section_fields().values()) >= 69


def test_unknown_keys_get_a_hint_from_every_source(tmp_path, monkeypatch) -> None:
    path = write(tmp_path, "[train]\nepoch = 3\n")
    monkeypatch.setenv("HMDBATTN_DATA__BATCHSIZE", "4")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["model.cnn_block=3"])
    message = str(info.value)
    assert "model.cnn_block: unknown key; did you mean model.cnn_blocks? [--set]" in message
    assert f"train.epoch: unknown key; did you mean train.epochs? [{path}]" in message
    assert "data.batchsize: unknown key; did you mean data.batch_size? [environment" in message
    assert (
        check_key("model.cnn_block")
        == "unknown key 'model.cnn_block'; did you mean model.cnn_blocks?"
    )
    assert check_key("model.cnn_blocks") is None
    assert "with a section of data, model, train, eval, download" in (check_key("nope.x") or "")


def test_override_layers_stack_and_errors_name_their_layer(monkeypatch) -> None:
    layers = {
        "variant set": {"model.cnn_blocks": 4, "model.self_layers": 2},
        "--set": ["model.cnn_blocks=5"],
    }
    config = load_config(None, layers=layers)
    assert (config.model.cnn_blocks, config.model.self_layers) == (5, 2)  # later layers win
    monkeypatch.setenv("HMDBATTN_MODEL__SELF_LAYERS", "3")  # the environment is below them all
    assert load_config(None, layers=layers).model.self_layers == 2
    bad = {
        "variant set": {"model.cnn_blocks": 9},
        "seeds": {"train.seed": "x"},
    }
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.self_layers=0"], layers=bad)
    message = str(info.value)
    assert (
        "model.cnn_blocks: Input should be less than or equal to 8 (got 9) [variant set]" in message
    )
    assert "train.seed: Input should be a valid integer" in message and "[seeds]" in message
    # A check over the whole section names every layer that set one of its keys.
    with pytest.raises(ConfigError) as info:
        load_config(
            None, ["model.self_layers=0"], layers={"variant set": {"model.cross_layers": 0}}
        )
    assert "needs cross_layers or self_layers above 0 [--set / variant set]" in str(info.value)


def test_resolved_keys_say_where_each_value_came_from(tmp_path, monkeypatch) -> None:
    path = write(tmp_path, "[model]\nlatent_dim = 64\n")
    monkeypatch.setenv("HMDBATTN_MODEL__LATENT_DIM_HEAD", "32")  # not latent_dim's variable
    keys = {k.key: k for k in resolved_keys(path, ["train.lr=0.01"])}
    assert set(keys) == set(flatten({s: dict.fromkeys(f) for s, f in section_fields().items()}))
    assert (keys["model.latent_dim"].value, keys["model.latent_dim"].source) == (64, f"file {path}")
    assert keys["model.latent_dim_head"].source == "environment HMDBATTN_MODEL__LATENT_DIM_HEAD"
    assert (keys["train.lr"].value, keys["train.lr"].source) == (0.01, "--set")
    assert (keys["data.resize"].value, keys["data.resize"].source) == ([128, 171], "default")
    assert keys["train.lr"].description
