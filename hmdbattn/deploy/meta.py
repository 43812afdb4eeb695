"""The JSON that describes an exported model (``<model>.json``), and the checks on reading it.

An export is two files: the model (``best.onnx``, or ``best.torchscript.pt``) and beside it the
same name plus ``.json``. The JSON says everything inference needs, so neither the checkpoint
nor a config file is needed to predict: the classes (in the order of the model's outputs), the
clip geometry (``num_frames`` frames from ``clip_duration`` seconds, frames resized to
``resize`` then ``eval_crops`` crops of ``crop_size``), the normalisation (``mean`` / ``std`` of
pixels in [0, 1]) and the input layout, float32 ``(B, C, T, H, W)`` with a dynamic batch.

It also holds the SHA-256 of the model file it was written with: a JSON left from another
export (the model replaced, the JSON not, or files copied apart) is refused instead of
describing the wrong model. This module needs neither torch nor onnx.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hmdbattn.config import DataConfig
from hmdbattn.errors import UserError

EXPORT_FORMAT: Final = "hmdbattn-export"  # the marker: a JSON without it is not ours
EXPORT_VERSION = 1
FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAME, OUTPUT_NAME = "clips", "logits"
LAYOUT = "B, C, T, H, W"  # float32, normalised; C is R, G, B
EXPORT_HINT = "make one with `hmdbattn export --checkpoint best.pt`"


class TensorInfo(BaseModel):
    """Name, shape (``"batch"`` for the dynamic dimension) and type of a model input/output."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int | str]
    dtype: str = "float32"


class ExportInfo(BaseModel):
    """What ``<model>.json`` holds (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: Literal["hmdbattn-export"] = "hmdbattn-export"
    version: int = EXPORT_VERSION
    model_format: Literal["onnx", "torchscript"]
    model_file: str
    model_sha256: str
    classes: list[str] = Field(min_length=1)
    num_frames: int = Field(ge=1)
    clip_duration: float = Field(gt=0)
    clips_per_video: int = Field(ge=0)
    resize: tuple[int, int]
    crop_size: int = Field(ge=1)
    eval_crops: Literal[1, 3]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    batch_size: int = Field(ge=1)
    layout: str = LAYOUT
    input: TensorInfo
    output: TensorInfo
    head: str
    opset: int | None
    exporter: str
    torch_version: str
    hmdbattn_version: str
    checkpoint: str

    def data_config(self) -> DataConfig:
        """The data section predict's windows and clips read (the rest keeps its defaults)."""
        return DataConfig(
            num_frames=self.num_frames,
            clip_duration=self.clip_duration,
            clips_per_video=self.clips_per_video,
            resize=self.resize,
            crop_size=self.crop_size,
            eval_crops=self.eval_crops,
            mean=self.mean,
            std=self.std,
        )

    def input_shape(self) -> list[int | str]:
        """``["batch", 3, T, crop, crop]``: what the model takes."""
        return ["batch", 3, self.num_frames, self.crop_size, self.crop_size]


def meta_path(model: Path) -> Path:
    """Where the JSON of the exported model `model` is: its name plus ``.json``."""
    return model.with_name(model.name + ".json")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_meta(model: Path) -> ExportInfo:
    """The description of the exported `model`, checked against it; else a one-line UserError.

    Refused: a missing model or JSON, a JSON that is not ours (no marker) or of another
    version, one with missing or bad values, and one written for another model file.
    """
    if not model.is_file():
        raise UserError(f"{model}: file not found")
    path = meta_path(model)
    if not path.is_file():
        raise UserError(
            f"{model}: not an hmdbattn export: {path.name} is not beside it (`hmdbattn export` "
            f"writes both); {EXPORT_HINT}"
        )
    info = _parse(path, _read_json(path))
    if file_sha256(model) != info.model_sha256:
        raise UserError(
            f"{model}: does not match {path.name} (that JSON was written for another model "
            f"file); {EXPORT_HINT}"
        )
    return info


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise UserError(f"{path}: cannot read the export description ({reason})") from None


def _parse(path: Path, data: object) -> ExportInfo:
    """`data` as an ExportInfo, refusing what is not ours, another version, or damaged."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path}: not an hmdbattn export description (no format {EXPORT_FORMAT!r})")
    if data.get("version") != EXPORT_VERSION:
        raise UserError(
            f"{path}: export version {data.get('version')!r} is not supported (this hmdbattn "
            f"reads version {EXPORT_VERSION}); {EXPORT_HINT}"
        )
    try:
        info = ExportInfo.model_validate(data)
        info.data_config()  # crop larger than the resize, and the like
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        raise UserError(f"{path}: damaged export description ({where}: {first['msg']})") from None
    return info
