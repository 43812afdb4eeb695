"""Typed configuration: sections, their sources and how errors are reported.

Sources, highest priority first:

1. overrides (``--set section.key=value`` on the command line, or a dict in Python),
2. environment variables ``HMDBATTN_SECTION__KEY``,
3. the TOML file given with ``--config``,
4. the defaults below.

Every error of every source is collected and reported together, each under its dotted key.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from hmdbattn.data import hmdb51
from hmdbattn.errors import ConfigError
from hmdbattn.report import err_console

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "HMDBATTN_"
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
# train.name is a folder name: letters and digits (any script), then also . _ - + = , @;
# no separators, spaces or control characters, and not so long that file systems refuse it.
RUN_NAME = re.compile(r"[^\W_][\w.+=,@-]{0,127}")
RUN_NAME_RULE = (
    "use letters, digits and . _ - + = , @ (starting with a letter or digit), "
    "at most 128 characters"
)


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment too.

    Every float of every section is finite: ``inf`` and ``nan`` (which TOML, JSON and the
    environment all accept) are refused, as no rate, duration, ratio or weight means them.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(Section):
    """Where the dataset lives and how clips are cut from it."""

    root: Path = Field(
        Path("data/synthetic"),
        description="dataset root; what it holds depends on data.format (hmdb51 and ucf101: "
        "videos/<class>/*.avi and splits/*.txt; folders: <class>/<video>; list: the listed "
        "videos)",
    )
    format: Literal["hmdb51", "ucf101", "folders", "list"] = Field(
        "hmdb51",
        description="dataset layout: hmdb51 or ucf101 (the official split files), folders "
        "(root/<class>/<video>, split once by data.test_fraction and data.split_seed) or list "
        "(MMAction2-style '<path> <label>' files data.train_list and data.test_list)",
    )
    test_fraction: float = Field(
        0.3,
        gt=0,
        lt=1,
        description='format "folders": share of each class\'s videos put in the test set when '
        "the split file (<root>/hmdbattn_split.json) is first written",
    )
    split_seed: int = Field(
        0, description='format "folders": seed of the first-use train/test split'
    )
    train_list: Path | None = Field(
        None,
        description='format "list": the training list file, lines "<path> <label>" (path '
        "relative to data.root; label a 0-based index or a class name); a relative "
        "train_list is taken under data.root",
    )
    test_list: Path | None = Field(
        None,
        description='format "list": the test list file, like data.train_list',
    )
    class_names: list[str] | Path | None = Field(
        None,
        description='format "list": class names in label-index order, as a list or a file '
        "with one name a line (relative: under data.root); unset = the names the lists use, "
        "sorted, or class_<i> for index labels",
    )
    cache_dir: Path | None = Field(
        None, description="folder of the preprocessed JPEG cache; unset = <root>/cache"
    )
    source: Literal["cache", "video", "features"] = Field(
        "cache",
        description="what training reads: cache (JPEG frames written by `hmdbattn preprocess`), "
        "video (decode the videos on the fly) or features (the frozen CNN's feature maps "
        "written by `hmdbattn extract-features`: the head trains alone, and epoch e takes the "
        "stored clip e mod data.feature_clips of each video; mixup / cutmix then mix feature "
        "maps, not pixels); eval reads the same source, --set data.source=cache scores frames",
    )
    features_dir: Path | None = Field(
        None,
        description="folder of the CNN feature cache (`hmdbattn extract-features`); unset = "
        "<cache_dir>-features. fp16 maps of (C, T', H', W') a clip: 8 blocks at 16x112x112 "
        "are 512x2x7x7 = 98 KiB a clip, 4 blocks 128x8x28x28 = 1.53 MiB",
    )
    feature_clips: int = Field(
        10,
        ge=1,
        le=1000,
        description="training clips stored per video by extract-features (random windows, "
        "crops and flips, seeded by train.seed); epoch e trains on clip e mod feature_clips. "
        "HMDB51 split 1 (3,570 training videos) at 10 clips: 3.4 GiB at 8 blocks, 55 GiB at 4",
    )
    split: int = Field(
        1,
        ge=1,
        le=3,
        description="official split of hmdb51 and ucf101 (1, 2 or 3); folders and list have "
        "split 1 only",
    )
    resize: tuple[int, int] = Field(
        (128, 171), description="(height, width) in pixels that frames are resized to"
    )
    jpeg_quality: int = Field(90, ge=50, le=100, description="JPEG quality of the cache (50-100)")
    num_frames: int = Field(16, ge=1, le=256, description="frames per clip, sampled uniformly")
    clip_duration: float = Field(2.0, gt=0, description="seconds of video a clip covers")
    crop_size: int = Field(
        112,
        ge=8,
        description="side in pixels of the square crop fed to the model (random in training, "
        "centre in evaluation); at most the smaller side of resize",
    )
    clips_per_video: int = Field(
        0, ge=0, description="evaluation windows per video; 0 = every non-overlapping window"
    )
    eval_crops: Literal[1, 3] = Field(
        1, description="crops per evaluation window: 1 (centre) or 3 (along the longer side)"
    )
    hflip: bool = Field(True, description="random horizontal flips in training")
    mean: tuple[float, float, float] = Field(
        KINETICS_MEAN, description="per-channel (R, G, B) mean subtracted, pixels in [0, 1]"
    )
    std: tuple[float, float, float] = Field(
        KINETICS_STD, description="per-channel (R, G, B) standard deviation pixels are divided by"
    )
    batch_size: int = Field(8, ge=1, description="training clips per batch (per GPU under DDP)")
    num_workers: int = Field(2, ge=0, description="data loader processes; 0 = in the main process")
    train_per_class: int = Field(
        0,
        ge=0,
        description="train on this many videos per class (a seeded choice among the split's "
        "training videos, recorded in the run); 0 = all, the low-label regime otherwise",
    )
    subset_seed: int = Field(0, description="seed of the train_per_class choice")

    @model_validator(mode="after")
    def _crop_fits(self) -> DataConfig:
        if self.crop_size > min(self.resize):
            raise ValueError(f"crop_size {self.crop_size} is larger than resize {self.resize}")
        return self

    @model_validator(mode="after")
    def _format_keys(self) -> DataConfig:
        # Named in the message: the error is reported under "data", not under one key.
        if self.format == "list":
            unset = [k for k in ("train_list", "test_list") if getattr(self, k) is None]
            if unset:
                raise ValueError(
                    f'format "list" needs data.{" and data.".join(unset)}: set '
                    f"{' and '.join(f'data.{k} = FILE' for k in unset)}"
                )
        if self.format in ("folders", "list") and self.split != 1:
            raise ValueError(
                f'data.split = {self.split}: format "{self.format}" has one split; set '
                "data.split = 1"
            )
        return self

    @property
    def cache_path(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.root / "cache"

    @property
    def features_path(self) -> Path:
        """The feature cache's folder: data.features_dir, else beside the frame cache."""
        if self.features_dir is not None:
            return self.features_dir
        return self.cache_path.with_name(self.cache_path.name + "-features")

    @property
    def videos_dir(self) -> Path:
        """The folder the dataset's video paths are relative to: ``<root>/videos`` for
        hmdb51 and ucf101, the root itself for folders and list."""
        return hmdb51.videos_dir(self.root) if self.format in ("hmdb51", "ucf101") else self.root


class ModelConfig(Section):
    """The CNN trunk and the head on top of it (reference.md section 1)."""

    cnn_blocks: int = Field(
        8, ge=1, le=8, description="R(2+1)D-18 residual blocks kept (1-8; 8 = the whole trunk)"
    )
    pretrained: bool = Field(
        False, description="start from torchvision's Kinetics-400 weights (downloads them)"
    )
    weights: Path | None = Field(
        None, description="local state dict of r2plus1d_18 to start from; unset = none"
    )
    head: Literal["perceiver", "pool"] = Field(
        "perceiver",
        description="perceiver (cross- and self-attention) or pool (pooling + linear, the "
        "research's baseline)",
    )
    pool: Literal["avg", "max", "avgmax"] = Field(
        "avg",
        description="the pool head's pooling: max finds small objects on busy backgrounds, "
        "avgmax concatenates both",
    )
    num_classes: int | None = Field(
        None, ge=2, description="classes of the classifier; unset = the dataset's classes"
    )
    cross_layers: int = Field(
        1,
        ge=0,
        le=16,
        description="cross-attention layers from the latents to the CNN tokens, each followed "
        "by self_layers blocks; 0 = self-attention straight on the tokens",
    )
    self_layers: int = Field(
        1, ge=0, le=32, description="self-attention blocks after each cross-attention layer"
    )
    share_cross_weights: bool = Field(
        False,
        description="the Perceiver's weight sharing: every repeat after the second reuses the "
        "second's weights",
    )
    token_norm: Literal["layer", "batch"] = Field(
        "layer",
        description="normalisation of the CNN tokens before cross-attention: layer (the "
        "Perceiver's, per token) or batch (per channel over the batch's tokens, which keeps "
        "how strongly a token fires)",
    )
    cross_logit_scale: float = Field(
        1.0,
        gt=0,
        le=100,
        description="starting factor on the cross-attention's logits, then learned; above 1 "
        "the latents start attending sharply (like max pooling) instead of nearly uniformly "
        "(like average pooling); 1 = the plain attention, nothing learned",
    )
    num_latents: int = Field(256, ge=1, description="latent vectors the cross-attention fills")
    latent_dim: int = Field(512, ge=8, description="width of each latent vector (channels)")
    cross_heads: int = Field(1, ge=1, description="attention heads of a cross-attention layer")
    cross_dim_head: int = Field(64, ge=1, description="channels per cross-attention head")
    latent_heads: int = Field(8, ge=1, description="attention heads of a self-attention block")
    latent_dim_head: int = Field(64, ge=1, description="channels per self-attention head")
    num_freq_bands: int = Field(
        6,
        ge=0,
        description="Fourier frequency bands of the position encoding per axis (T, H, W); "
        "each axis adds 2 x bands + 1 channels",
    )
    max_freq: float = Field(
        10.0, gt=0, description="highest frequency of the position encoding (bands go up to half)"
    )
    ff_mult: int = Field(
        4, ge=1, description="width of the GEGLU feed-forward, as a multiple of latent_dim"
    )
    attn_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on the attention weights (0 = off)"
    )
    ff_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout inside the feed-forward blocks (0 = off)"
    )
    head_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout before the classifier (0 = off)"
    )
    init: Path | None = Field(
        None,
        description="start from this hmdbattn checkpoint (of train or pretrain): its backbone "
        "and head weights load where it has them, the classifier is re-made when the classes "
        "differ; unset = no checkpoint",
    )
    init_parts: list[Literal["backbone", "head", "classifier"]] | None = Field(
        None,
        description='which parts model.init loads, e.g. ["backbone"]; unset = every part '
        "the checkpoint has (a part it lacks or that does not fit is an error)",
    )

    @model_validator(mode="after")
    def _head_layout(self) -> ModelConfig:
        if self.head == "perceiver" and self.cross_layers == 0 and self.self_layers == 0:
            raise ValueError("a perceiver head needs cross_layers or self_layers above 0")
        if self.pretrained and self.weights is not None:
            raise ValueError("set either pretrained = true or weights = FILE, not both")
        if self.init_parts is not None and self.init is None:
            raise ValueError("init_parts is set but init is not: set model.init = CHECKPOINT")
        if self.init_parts is not None and len(set(self.init_parts)) != len(self.init_parts):
            raise ValueError(f"init_parts {self.init_parts} names a part twice")
        return self


class TrainConfig(Section):
    """Optimisation, schedule and run bookkeeping."""

    out_dir: Path = Field(Path("runs"), description="folder that run directories are made in")
    name: str | None = Field(
        None, description="run directory name; unset = the config file's name (or run)"
    )
    epochs: int = Field(30, ge=1, description="training epochs (passes over the training set)")
    max_steps: int = Field(0, ge=0, description="stop after this many steps; 0 = no limit")
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        "adam", description="adam, adamw or sgd (with Nesterov momentum)"
    )
    lr: float = Field(1e-3, gt=0, description="learning rate of the head (and of the CNN)")
    cnn_lr: float | None = Field(None, gt=0, description="learning rate of the CNN; unset = lr")
    weight_decay: float = Field(1e-5, ge=0, description="weight decay (0 = off)")
    momentum: float = Field(
        0.9, ge=0, lt=1, description="momentum of sgd (the other optimisers ignore it)"
    )
    scheduler: Literal["step", "cosine", "none"] = Field(
        "step",
        description="learning-rate schedule: step (x gamma every step_size epochs), cosine "
        "(down to 0 over the epochs) or none",
    )
    step_size: int = Field(10, ge=1, description="epochs between the step schedule's decays")
    gamma: float = Field(
        0.2, gt=0, le=1, description="factor the step schedule multiplies the rate by"
    )
    warmup_epochs: float = Field(
        0.0, ge=0, description="epochs of linear warm-up before the schedule (may be a fraction)"
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="label smoothing of the cross-entropy loss (0 = off)"
    )
    mixup_alpha: float = Field(0.0, ge=0, description="mixup's Beta(alpha, alpha); 0 = off")
    cutmix_alpha: float = Field(
        0.0, ge=0, description="cutmix's Beta(alpha, alpha); 0 = off; with mixup, half the batches"
    )
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 = off")
    freeze_cnn_epochs: int = Field(
        0, ge=0, description="epochs the CNN is frozen at the start (0 = train it from the start)"
    )
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto",
        description="mixed precision on CUDA: auto (bf16 where supported, else fp16), off, bf16 "
        "or fp16; the CPU always runs fp32",
    )
    channels_last: bool | None = Field(
        None, description="channels-last 3D memory layout; unset = on with CUDA, off on the CPU"
    )
    compile: bool = Field(False, description="torch.compile the model (slow start, faster steps)")
    seed: int = Field(0, description="seed of weights, clip sampling, order and augmentation")
    patience: int = Field(0, ge=0, description="early stopping epochs; 0 = off")
    tensorboard: bool = Field(True, description="log to <run>/tensorboard if it is installed")

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, name: str | None) -> str | None:
        # The name becomes a folder (and is written to config.toml): one plain path component.
        if name and not RUN_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a usable run name: {RUN_NAME_RULE}")
        return name


class EvalConfig(Section):
    """Which videos `hmdbattn eval` scores."""

    subset: Literal["test", "train", "unused"] = Field(
        "test", description="videos of the split that `hmdbattn eval` scores: test, train or unused"
    )
    batch_size: int = Field(
        16, ge=1, description="clips per batch when scoring (validation, eval and predict)"
    )


class DownloadConfig(Section):
    """Where HMDB51 and UCF101 come from (mirror lists, tried in order)."""

    videos_urls: list[str] = Field(
        ["https://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar"],
        description="mirrors of hmdb51_org.rar, tried in order",
    )
    splits_urls: list[str] = Field(
        ["https://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar"],
        description="mirrors of test_train_splits.rar, tried in order",
    )
    videos_md5: str = Field(
        "517d6f1f19f215c45cdd4d25356be1fb",
        pattern=r"^[0-9a-f]{32}$",
        description="MD5 the videos archive must have (32 hex digits)",
    )
    splits_md5: str = Field(
        "15e67781e70dcfbdce2d7dbb9b3344b5",
        pattern=r"^[0-9a-f]{32}$",
        description="MD5 the splits archive must have (32 hex digits)",
    )
    ucf101_videos_urls: list[str] = Field(
        ["https://www.crcv.ucf.edu/data/UCF101/UCF101.rar"],
        description="mirrors of UCF101.rar (`download --dataset ucf101`), tried in order",
    )
    ucf101_splits_urls: list[str] = Field(
        ["https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip"],
        description="mirrors of UCF101TrainTestSplits-RecognitionTask.zip, tried in order",
    )
    ucf101_videos_md5: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{32}$",
        description="MD5 UCF101.rar must have; unset = none is published: the first complete "
        "download's MD5 is recorded beside it (archives/UCF101.rar.md5) and checked from then on",
    )
    ucf101_splits_md5: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{32}$",
        description="MD5 the UCF101 splits zip must have; unset = recorded on first download, "
        "like ucf101_videos_md5",
    )
    retries: int = Field(5, ge=0, description="retries per mirror, with exponential back-off")
    timeout: float = Field(30.0, gt=0, description="seconds without data before a retry")


class PretrainConfig(Section):
    """Self-supervised pretraining (`hmdbattn pretrain`); no labels."""

    mode: Literal["video", "tokens"] = Field(
        "video",
        description='"video": mask space-time tubes of the clip and train CNN + attention head '
        'from scratch to reconstruct them; "tokens": keep the (pretrained) CNN frozen, mask its '
        "tokens and train the attention head to predict the masked tokens' features",
    )
    target: Literal["pixels", "ema"] = Field(
        "pixels",
        description='what "video" mode reconstructs: "pixels" (each masked patch, normalised '
        'per patch as VideoMAE does) or "ema" (features of a slowly updated copy of the CNN)',
    )
    mask_ratio: float = Field(
        0.75, gt=0, lt=1, description="share of the spatial cells masked (the same in every frame)"
    )
    patch_size: int = Field(
        4,
        ge=1,
        description='"video" mode: side in pixels of a masked cell (a multiple of the CNN\'s '
        "spatial stride: 2 for 1-2 blocks, 4, 8, 16 for 7-8 blocks)",
    )
    norm_pixels: bool = Field(
        True,
        description="pixel targets normalised per patch (VideoMAE); false = the pixels as they "
        "are, which keeps a patch's brightness (whether an object is there) in the target",
    )
    patch_frames: int = Field(
        2, ge=1, description='"video" mode with pixel targets: frames per reconstructed patch'
    )
    decoder_dim: int = Field(128, ge=8, description="width of the light decoder")
    decoder_heads: int = Field(4, ge=1, description="attention heads of the decoder")
    ema_momentum: float = Field(
        0.996, ge=0, lt=1, description="EMA target: weight kept from the old copy at each step"
    )
    subsets: list[Literal["train", "unused", "test"]] = Field(
        ["train", "unused"],
        description="which videos of data.split are used (labels never are); the test videos "
        "are left out unless listed here",
    )
    pictures: int = Field(
        4, ge=0, description="clips drawn (masked input and reconstruction) after each epoch"
    )

    @model_validator(mode="after")
    def _subsets(self) -> PretrainConfig:
        if not self.subsets or len(set(self.subsets)) != len(self.subsets):
            raise ValueError(f"subsets {self.subsets} must list train / unused / test once each")
        return self


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
    pretrain: PretrainConfig = PretrainConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file layer is passed in as `_file` (see load_config), below the environment;
        # `_env_problems` collects the environment variables that cannot be read.
        init_kwargs = init_settings.init_kwargs  # type: ignore[attr-defined]
        file_data = init_kwargs.pop("_file", {})
        environment = CheckedEnvSource(settings_cls, init_kwargs.pop("_env_problems", None))
        return init_settings, environment, InitSettingsSource(settings_cls, file_data)

    def to_toml(self) -> str:
        """The resolved configuration as TOML (what a run directory records)."""
        return dump_toml(self.model_dump(mode="json"))


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class EnvProblem:
    """An ``HMDBATTN_*`` variable that cannot be read: its key, name, value and why."""

    key: str  # "data.resize", or "train" for a whole-section variable
    variable: str  # as the environment spells it
    value: str
    reason: str

    def line(self) -> str:
        """The problem as a line of the config error list."""
        return f"  {self.key}: {self.reason} (got {self.value!r}) [environment {self.variable}]"


_warned: set[str] = set()  # unknown variables already warned about in this process


class CheckedEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, one variable at a time.

    A variable it cannot parse (JSON of a list, tuple or whole section) would abort the whole
    config with a SettingsError naming neither the variable nor its value: here it is set aside
    as an `EnvProblem`, appended to `problems` (the caller reports them with the other config
    errors), or raised as a ConfigError at once when no list is given. A variable naming no
    section is ignored with a warning on stderr (once per process).
    """

    def __init__(self, settings_cls: type[BaseSettings], problems: list[EnvProblem] | None):
        super().__init__(settings_cls)
        found: list[EnvProblem] = []
        readable = dict(self.env_vars)
        for name, value in self.env_vars.items():
            if name.upper().startswith(ENV_PREFIX) and value is not None:
                problem = self._check(name, value)
                if problem is not None:
                    found.append(problem)
                    del readable[name]
        self.env_vars = readable
        if problems is None and found:
            raise ConfigError(
                "\n".join([f"{len(found)} config error(s):"] + [p.line() for p in found])
            )
        if problems is not None:
            problems.extend(found)

    def _check(self, name: str, value: str) -> EnvProblem | None:
        """Why variable `name` cannot be read (None if it can); warn when it names no section."""
        section, _, rest = name[len(ENV_PREFIX) :].partition(self.env_nested_delimiter or "__")
        section = section.lower()
        info = self.settings_cls.model_fields.get(section)
        if info is None:
            _warn_unknown(_spelled(name), section)
            return None
        everything = self.env_vars
        self.env_vars = {name: value}  # parse this variable alone, as pydantic-settings does
        try:
            found, _, is_complex = self._get_resolved_field_value(info, section)
            self.prepare_field_value(section, info, found, is_complex)
        except ValueError as exc:
            key = section + ("." + rest.lower() if rest else "")
            return EnvProblem(key, _spelled(name), value, _json_reason(key, exc))
        finally:
            self.env_vars = everything
        return None


def _spelled(name: str) -> str:
    """An environment variable's name as the environment spells it (sources lower-case it)."""
    return next((n for n in os.environ if n.lower() == name.lower()), name.upper())


def _json_reason(key: str, exc: ValueError) -> str:
    """What is wrong with the JSON of `key`'s variable, with an example of what is expected."""
    detail = f"not valid JSON ({exc})"
    section, _, name = key.partition(".")
    fields = section_fields().get(section, {})
    if not name:
        first, info = next(iter(fields.items()))
        example = json.dumps({first: _plain(info.get_default())})
        return f"{detail}: expected a JSON object such as {example}"
    known = fields.get(name)
    default = known.get_default() if known is not None else None
    if default is None:
        return detail
    return f"{detail}: expected JSON such as {json.dumps(_plain(default))}"


def _plain(value: Any) -> Any:
    """A default as JSON sees it (tuples as lists, paths as strings)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def _warn_unknown(variable: str, section: str) -> None:
    """One line on stderr for an ``HMDBATTN_`` variable that names no section."""
    if variable in _warned:
        return
    _warned.add(variable)
    close = difflib.get_close_matches(section, list(Config.model_fields), n=1)
    if close:
        fixed = ENV_PREFIX + close[0].upper() + variable[len(ENV_PREFIX) + len(section) :]
        hint = f"did you mean {fixed}?"
    else:
        hint = "the sections are " + ", ".join(Config.model_fields)
    err_console.print(
        f"warning: environment variable {variable} is ignored: there is no config section "
        f"{section!r}; {hint}",
        style="yellow",
        markup=False,
        highlight=False,
    )


# --------------------------------------------------------------------------- loading

# Overrides as dotted keys ({"model.cnn_blocks": 4}) or --set strings (["model.cnn_blocks=4"]).
Overrides = Mapping[str, Any] | Iterable[str]


def parse_value(text: str) -> Any:
    """Read a ``--set`` value as TOML (``[1, 2]``, ``true``, ``1e-3``), else as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(overrides: Overrides | None) -> dict[str, Any]:
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


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """Read a TOML file; a missing, unreadable or malformed one is a ConfigError naming `what`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(
    path: str | Path | None = None,
    overrides: Overrides | None = None,
    base: Mapping[str, Mapping[str, Any]] | None = None,
    layers: Mapping[str, Overrides] | None = None,
    base_name: str = "saved config",
) -> Config:
    """Resolve a configuration from defaults, a TOML file, the environment and overrides.

    ``overrides`` is a dict of dotted keys (``{"model.cnn_blocks": 4}``) or a list of
    ``"section.key=value"`` strings. ``base`` (for example the config saved in a checkpoint)
    sits below the file; ``base_name`` is what an error in it is labelled with (the
    checkpoint's path). ``layers`` are more named overrides, lowest priority first, all above
    the environment and below ``overrides`` (which is the layer named ``--set``); an error names
    the layer its value came from. Raises ConfigError listing every problem found.
    """
    return _resolve(path, overrides, base, layers, base_name)[0]


def _resolve(
    path: str | Path | None,
    overrides: Overrides | None,
    base: Mapping[str, Mapping[str, Any]] | None = None,
    layers: Mapping[str, Overrides] | None = None,
    base_name: str = "saved config",
) -> tuple[Config, Sources]:
    """The config and what each source holds (to say where a value came from)."""
    base_data = _sections(base or {}, base_name)
    own = read_toml(Path(path)) if path is not None else {}
    file_data = {section: dict(values) for section, values in base_data.items()}
    _merge_into(file_data, own)
    named = [(name, parse_overrides(values)) for name, values in (layers or {}).items()]
    named.append(("--set", parse_overrides(overrides)))
    layered = [(name, data) for name, data in reversed(named) if data]
    sources = Sources(path, own, layered, base_name, base_data)
    set_data: dict[str, Any] = {}
    for _, data in named:
        _merge_into(set_data, data)
    env_problems: list[EnvProblem] = []
    try:
        config = Config(**set_data, _file=file_data, _env_problems=env_problems)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources, env_problems)) from None
    if env_problems:
        raise ConfigError(_describe(None, sources, env_problems))
    return config, sources


def _sections(base: Mapping[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """`base` as section -> keys; anything else (a damaged checkpoint) is a ConfigError."""
    if not isinstance(base, Mapping) or not all(isinstance(v, Mapping) for v in base.values()):
        raise ConfigError(f"{name}: the stored config is not a table of sections")
    return {str(section): dict(values) for section, values in base.items()}


def _merge_into(target: dict[str, Any], data: Mapping[str, Any]) -> None:
    """Update `target`'s sections with `data`'s, key by key (a section is not replaced)."""
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(target.get(section), dict):
            target[section].update(values)
        else:
            target[section] = dict(values) if isinstance(values, dict) else values


def _has(data: Mapping[str, Any], key: tuple[str, ...]) -> bool:
    node: Any = data
    for part in key:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _env_name(key: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in key)


@dataclass(frozen=True)
class Sources:
    """What each source of a resolved config holds, to tell which one set a key."""

    path: str | Path | None
    file_data: dict[str, Any]  # the file's own keys (not the base's)
    layers: list[tuple[str, dict[str, Any]]]  # (name, nested overrides), highest priority first
    base_name: str = "saved config"
    base_data: dict[str, Any] = field(default_factory=dict)  # below the file (a checkpoint's)

    def layers_setting(self, key: tuple[str, ...]) -> list[str]:
        """The override layers holding `key` (or, for a section, any of its keys)."""
        return [name for name, data in self.layers if _has(data, key)]

    def environment(self, key: tuple[str, ...]) -> str | None:
        """The environment variable that sets `key` (its section's, for a section), or None."""
        wanted = _env_name(key)
        for name in os.environ:
            name = name.upper()
            if name == wanted or name.startswith(wanted + "__") or name == _env_name(key[:1]):
                return name
        return None

    def source(self, key: tuple[str, ...]) -> str:
        """Where the value at `key` came from: a layer, the environment, the file or default."""
        names = self.layers_setting(key)
        if names:
            return names[0]
        variable = self.environment(key)
        if variable is not None:
            return f"environment {variable}"
        if self.path is not None and _has(self.file_data, key):
            return f"file {self.path}"
        if _has(self.base_data, key):
            return f"base {self.base_name}"
        return "default"

    def origin(self, key: tuple[str, ...]) -> str:
        """`source` as an error message says it; a section-wide check names every layer."""
        names = self.layers_setting(key)
        if len(key) == 1 and names:
            return " / ".join(names)
        source = self.source(key)
        if source == "default":
            return "defaults" if self.path is None else f"{self.path} (default value)"
        return source.removeprefix("file ").removeprefix("base ")


def _describe(
    exc: ValidationError | None, sources: Sources, env_problems: Iterable[EnvProblem] = ()
) -> str:
    """Every error of a config, one line each under its dotted key and where it came from."""
    errors = exc.errors() if exc is not None else []
    lines = [p.line() for p in env_problems]
    lines.insert(0, f"{len(errors) + len(lines)} config error(s):")
    for err in errors:
        key = tuple(str(p) for p in err["loc"] if not isinstance(p, int))
        dotted = ".".join(key) or "(top level)"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        message = message.removeprefix("Value error, ")  # our own checks' messages say it all
        shown = err["type"] not in ("extra_forbidden", "value_error")
        value = f" (got {err['input']!r})" if shown else ""
        if err["type"] == "extra_forbidden":
            message = "unknown section" if len(key) == 1 else message + did_you_mean(dotted)
        lines.append(f"  {dotted}: {message}{value} [{sources.origin(key)}]")
    return "\n".join(lines)


# --------------------------------------------------------------------------- keys


def section_fields() -> dict[str, dict[str, FieldInfo]]:
    """Config section -> its fields (name -> pydantic FieldInfo, with its description)."""
    fields = {}
    for section, info in Config.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            fields[section] = dict(model.model_fields)
    return fields


def known_keys() -> dict[str, list[str]]:
    """Config section -> its keys."""
    return {section: list(fields) for section, fields in section_fields().items()}


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"cnn_blocks": 8}}`` and ``{"model.cnn_blocks": 8}`` -> dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def did_you_mean(key: str) -> str:
    """``"; did you mean model.cnn_blocks?"`` for a mistyped ``section.key``, else ``""``."""
    section, _, name = key.partition(".")
    close = difflib.get_close_matches(name, known_keys().get(section, []), n=1)
    return f"; did you mean {section}.{close[0]}?" if close else ""


def check_key(key: str) -> str | None:
    """Why `key` is not a config key (with the closest match), or None when it is."""
    sections = known_keys()
    section, _, name = key.partition(".")
    if section not in sections or not name:
        names = ", ".join(sections)
        return f"unknown key {key!r}: expected section.key with a section of {names}"
    if name not in sections[section]:
        return f"unknown key {key!r}{did_you_mean(key)}"
    return None


# --------------------------------------------------------------------------- writing


# TOML's short escapes; every other control character is written as \uXXXX.
_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(text: str) -> str:
    """`text` as a TOML basic string that reads back equal: quotes, backslashes, control
    characters (newlines, tabs, DEL...) escaped; other Unicode kept as it is.

    Raises ValueError for a lone surrogate (what Python makes of undecodable bytes in a file
    name): TOML files are UTF-8 and cannot hold one.
    """
    out = []
    for char in text:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04X}")
        elif "\ud800" <= char <= "\udfff":
            raise ValueError(f"it holds {char!r}, which is not UTF-8 text")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    """`key` bare when TOML allows it (every config key), else quoted."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Write a two-level dict as TOML; None values are left out (they mean 'default').

    Whatever it writes reads back equal with ``tomllib``; a value it cannot write (see
    `toml_string`) is a ConfigError naming its key.
    """
    out: list[str] = []
    for section, values in data.items():
        out.append(f"[{_toml_key(section)}]")
        for key, value in values.items():
            if value is None:
                continue
            try:
                out.append(f"{_toml_key(key)} = {_toml_value(value)}")
            except ValueError as exc:
                raise ConfigError(
                    f"{section}.{key} = {value!r} cannot be written as TOML, {exc}: "
                    "use a value (a file or folder name) that is valid UTF-8"
                ) from None
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class ResolvedKey:
    """One key of a resolved config: its value (as JSON), where it came from and what it means."""

    section: str
    name: str
    value: Any
    source: str  # "default", "file <path>", "environment <VARIABLE>" or "--set"
    description: str

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


def resolved_keys(
    path: str | Path | None = None, overrides: Overrides | None = None
) -> list[ResolvedKey]:
    """Every key of the config resolved from `path` and `overrides`, section by section.

    Raises ConfigError (every problem together) when the config is invalid.
    """
    config, sources = _resolve(path, overrides)
    values = config.model_dump(mode="json")
    return [
        ResolvedKey(
            section,
            name,
            values[section][name],
            sources.source((section, name)),
            info.description or "",
        )
        for section, fields in section_fields().items()
        for name, info in fields.items()
    ]


def section_description(section: str) -> str:
    """A section's one-line summary (its class's docstring)."""
    model = Config.model_fields[section].annotation
    return (getattr(model, "__doc__", None) or "").strip()


def keys_text(keys: Iterable[ResolvedKey], width: int = 80) -> str:
    """``section.key = value  (source)`` lines, each with its description wrapped below."""
    out: list[str] = []
    section = None
    for item in keys:
        if item.section != section:
            section = item.section
            out += [""] if out else []
            out.append(f"[{section}] {section_description(section)}")
        value = "(unset)" if item.value is None else _toml_value(item.value)
        line = f"  {item.key} = {value}  ({item.source})"
        if len(line) > width:  # a long value or file name: the source on a line of its own
            line = f"  {item.key} = {value}\n      ({item.source})"
        out.append(line)
        out += textwrap.wrap(
            item.description,
            width=max(40, width),
            initial_indent=" " * 6,
            subsequent_indent=" " * 6,
        )
    return "\n".join(out)


def keys_json(keys: Iterable[ResolvedKey]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{section: {key: {"value", "source", "description"}}}`` for ``--json``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for item in keys:
        out.setdefault(item.section, {})[item.name] = {
            "value": item.value,
            "source": item.source,
            "description": item.description,
        }
    return out
