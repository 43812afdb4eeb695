"""Typed configuration: sections, their sources and how errors are reported.

Sources, highest priority first:

1. overrides (``--set section.key=value`` on the command line, or a dict in Python),
2. environment variables ``HMDBATTN_SECTION__KEY``,
3. the TOML file given with ``--config``,
4. the defaults below.

Every error of every source is collected and reported together, each under its dotted key.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from hmdbattn.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "HMDBATTN_"
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Where the dataset lives and how clips are cut from it."""

    root: Path = Field(Path("data/synthetic"), description="dataset root: videos/ and splits/")
    cache_dir: Path | None = Field(None, description="preprocessed cache; default <root>/cache")
    source: Literal["cache", "video"] = "cache"
    split: int = Field(1, ge=1, le=3, description="HMDB51 split (1, 2 or 3)")
    resize: tuple[int, int] = Field((128, 171), description="(height, width) frames are resized to")
    jpeg_quality: int = Field(90, ge=50, le=100, description="JPEG quality of the cache")
    num_frames: int = Field(16, ge=1, le=256)
    clip_duration: float = Field(2.0, gt=0, description="seconds a clip covers")
    crop_size: int = Field(112, ge=8)
    clips_per_video: int = Field(
        0, ge=0, description="evaluation windows per video; 0 = every non-overlapping window"
    )
    eval_crops: Literal[1, 3] = 1
    hflip: bool = Field(True, description="random horizontal flips in training")
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    batch_size: int = Field(8, ge=1)
    num_workers: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _crop_fits(self) -> DataConfig:
        if self.crop_size > min(self.resize):
            raise ValueError(f"crop_size {self.crop_size} is larger than resize {self.resize}")
        return self

    @property
    def cache_path(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.root / "cache"


class ModelConfig(Section):
    """The CNN trunk and the head on top of it (reference.md section 1)."""

    cnn_blocks: int = Field(8, ge=1, le=8, description="R(2+1)D-18 residual blocks kept")
    pretrained: bool = Field(False, description="torchvision's Kinetics-400 weights")
    weights: Path | None = Field(None, description="local state dict of r2plus1d_18")
    head: Literal["perceiver", "pool"] = "perceiver"
    pool: Literal["avg", "max", "avgmax"] = Field(
        "avg",
        description="the pool head's pooling: max finds small objects on busy backgrounds, "
        "avgmax concatenates both",
    )
    num_classes: int | None = Field(None, ge=2, description="default: the dataset's classes")
    cross_layers: int = Field(1, ge=0, le=16)
    self_layers: int = Field(1, ge=0, le=32)
    share_cross_weights: bool = False
    num_latents: int = Field(256, ge=1)
    latent_dim: int = Field(512, ge=8)
    cross_heads: int = Field(1, ge=1)
    cross_dim_head: int = Field(64, ge=1)
    latent_heads: int = Field(8, ge=1)
    latent_dim_head: int = Field(64, ge=1)
    num_freq_bands: int = Field(6, ge=0)
    max_freq: float = Field(10.0, gt=0)
    ff_mult: int = Field(4, ge=1)
    attn_dropout: float = Field(0.0, ge=0, lt=1)
    ff_dropout: float = Field(0.0, ge=0, lt=1)
    head_dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier")

    @model_validator(mode="after")
    def _head_layout(self) -> ModelConfig:
        if self.head == "perceiver" and self.cross_layers == 0 and self.self_layers == 0:
            raise ValueError("a perceiver head needs cross_layers or self_layers above 0")
        if self.pretrained and self.weights is not None:
            raise ValueError("set either pretrained = true or weights = FILE, not both")
        return self


class TrainConfig(Section):
    """Optimisation, schedule and run bookkeeping."""

    out_dir: Path = Path("runs")
    name: str | None = Field(None, description="run directory name; default derived from config")
    epochs: int = Field(30, ge=1)
    max_steps: int = Field(0, ge=0, description="stop after this many steps; 0 = no limit")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    cnn_lr: float | None = Field(None, gt=0, description="learning rate of the CNN; default lr")
    weight_decay: float = Field(1e-5, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["step", "cosine", "none"] = "step"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.2, gt=0, le=1)
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 = off")
    freeze_cnn_epochs: int = Field(0, ge=0)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool | None = Field(None, description="channels-last 3D; default on CUDA")
    compile: bool = False
    seed: int = 0
    patience: int = Field(0, ge=0, description="early stopping epochs; 0 = off")
    tensorboard: bool = Field(True, description="log to <run>/tensorboard if it is installed")


class EvalConfig(Section):
    """Which videos `hmdbattn eval` scores."""

    subset: Literal["test", "train", "unused"] = "test"
    batch_size: int = Field(16, ge=1)


class DownloadConfig(Section):
    """Where HMDB51 comes from (lists are mirrors, tried in order)."""

    videos_urls: list[str] = [
        "https://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar"
    ]
    splits_urls: list[str] = [
        "https://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar"
    ]
    videos_md5: str = Field("517d6f1f19f215c45cdd4d25356be1fb", pattern=r"^[0-9a-f]{32}$")
    splits_md5: str = Field("15e67781e70dcfbdce2d7dbb9b3344b5", pattern=r"^[0-9a-f]{32}$")
    retries: int = Field(5, ge=0)
    timeout: float = Field(30.0, gt=0, description="seconds without data before a retry")


class Config(BaseSettings):
    """The whole configuration of a run."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    download: DownloadConfig = DownloadConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file layer is passed in as `_file` (see load_config), below the environment.
        file_data = init_settings.init_kwargs.pop("_file", {})  # type: ignore[attr-defined]
        return init_settings, env_settings, InitSettingsSource(settings_cls, file_data)

    def to_toml(self) -> str:
        """The resolved configuration as TOML (what a run directory records)."""
        return dump_toml(self.model_dump(mode="json"))


# --------------------------------------------------------------------------- loading


def parse_value(text: str) -> Any:
    """Read a ``--set`` value as TOML (``[1, 2]``, ``true``, ``1e-3``), else as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """Turn ``{"model.cnn_blocks": 4}`` or ``["model.cnn_blocks=4"]`` into a nested dict."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set {item!r}: expected section.key=value")
            items.append((key.strip(), parse_value(value.strip())))
    nested: dict[str, Any] = {}
    for key, value in items:
        parts = key.split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {key}: expected section.key, e.g. model.cnn_blocks")
        nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file; a missing, unreadable or malformed file is a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    base: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Resolve a configuration from defaults, a TOML file, the environment and overrides.

    ``overrides`` is a dict of dotted keys (``{"model.cnn_blocks": 4}``) or a list of
    ``"section.key=value"`` strings. ``base`` (for example the config saved in a checkpoint)
    sits below the file. Raises ConfigError listing every problem found.
    """
    file_data = {section: dict(values) for section, values in (base or {}).items()}
    if path is not None:
        for section, values in read_toml(Path(path)).items():
            if isinstance(values, dict) and isinstance(file_data.get(section), dict):
                file_data[section].update(values)
            else:
                file_data[section] = values
    set_data = parse_overrides(overrides)
    try:
        return Config(**set_data, _file=file_data)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, set_data, file_data)) from None


def _env_name(key: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in key)


def _origin(key: tuple[str, ...], path: str | Path | None, set_data: dict, file_data: dict) -> str:
    """Which source set the value at `key`, for the error message."""

    def has(data: dict) -> bool:
        node: Any = data
        for part in key:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    if has(set_data):
        return "--set"
    if key and any(name.upper().startswith(_env_name(key)) for name in os.environ):
        return f"environment {_env_name(key)}"
    if path is not None and has(file_data):
        return str(path)
    return "defaults" if path is None else f"{path} (default value)"


def _describe(
    exc: ValidationError, path: str | Path | None, set_data: dict, file_data: dict
) -> str:
    lines = [f"{exc.error_count()} config error(s):"]
    for err in exc.errors():
        key = tuple(str(p) for p in err["loc"] if not isinstance(p, int))
        dotted = ".".join(key) or "(top level)"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        shown = err["type"] not in ("extra_forbidden", "value_error")
        value = f" (got {err['input']!r})" if shown else ""
        if len(key) == 1 and err["type"] == "extra_forbidden":
            message = "unknown section"
        lines.append(f"  {dotted}: {message}{value} [{_origin(key, path, set_data, file_data)}]")
    return "\n".join(lines)


# --------------------------------------------------------------------------- writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Write a two-level dict as TOML; None values are left out (they mean 'default')."""
    out: list[str] = []
    for section, values in data.items():
        out.append(f"[{section}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        out.append("")
    return "\n".join(out)
