"""Scoring clips with an exported model: ONNX Runtime (no torch) or TorchScript.

`load_scorer` reads the JSON beside the model (`meta.read_meta`: ours, this version, written
for this very file), opens the model and checks it against the JSON (input shape, class count),
and returns a `predict.Scorer`. The ONNX scorer does the evaluation transform in NumPy
(`preprocess`, the same crops and float32 arithmetic as `data.transforms.VideoTransform`), so
``hmdbattn predict --model x.onnx`` never imports torch. A TorchScript export runs through
`predict.TorchScorer`, as a checkpoint's model does (torch, but none of the training code).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmdbattn.config import DataConfig
from hmdbattn.deploy.meta import EXPORT_HINT, ExportInfo, read_meta
from hmdbattn.errors import UserError

ONNX_HINT = "pip install -e '.[onnx]'"


def missing_extra(what: str) -> UserError:
    """The one line for a missing onnx / onnxruntime / onnxscript: what needs it, and the fix."""
    return UserError(f"{what} needs the onnx extra (onnx, onnxruntime, onnxscript): {ONNX_HINT}")


def preprocess(clips: np.ndarray, data: DataConfig) -> np.ndarray:
    """uint8 ``(B, T, H, W, 3)`` -> float32 ``(B * views, 3, T, crop, crop)``, normalised.

    The evaluation transform of `data.transforms.VideoTransform` in NumPy: the centre crop, or
    three crops along the longer side (a clip's crops adjacent), then ``(x - 255 mean) /
    (255 std)`` in float32, the same operations in the same order.
    """
    height, width, size = clips.shape[2], clips.shape[3], data.crop_size
    top, left = (height - size) // 2, (width - size) // 2
    if data.eval_crops == 1:
        corners = [(top, left)]
    elif width >= height:
        corners = [(top, x) for x in (0, left, width - size)]
    else:
        corners = [(y, left) for y in (0, top, height - size)]
    crops = np.stack([clips[:, :, y : y + size, x : x + size] for y, x in corners], axis=1)
    crops = crops.reshape(-1, *crops.shape[2:])  # (B, views, T, h, w, C) -> (B * views, ...)
    x = crops.transpose(0, 4, 1, 2, 3).astype(np.float32)  # (B', C, T, h, w)
    mean = np.asarray([255.0 * m for m in data.mean], dtype=np.float32)[:, None, None, None]
    std = np.asarray([255.0 * s for s in data.std], dtype=np.float32)[:, None, None, None]
    x -= mean
    x /= std
    return np.ascontiguousarray(x)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the maximum so that no exponential overflows."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class OnnxScorer:
    """An ONNX export as a `predict.Scorer`: NumPy preprocessing and an ONNX Runtime session."""

    def __init__(self, session: Any, info: ExportInfo) -> None:
        self.session = session
        self.classes = list(info.classes)
        self.data = info.data_config()
        self.batch_size = info.batch_size
        self.views = info.eval_crops
        self.input_name = session.get_inputs()[0].name

    def probabilities(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """(B, K) probabilities of B (T, H, W, 3) uint8 clips, mean softmax over crops."""
        x = preprocess(np.stack(clips), self.data)
        logits = self.session.run(None, {self.input_name: x})[0]  # (B * views, K)
        probs = softmax(logits.astype(np.float32))
        return probs.reshape(len(clips), self.views, -1).mean(axis=1)


def load_scorer(path: Path) -> Any:
    """The scorer of the export `path` (``.onnx`` or TorchScript), checked against its JSON."""
    info = read_meta(path)
    if info.model_format == "onnx":
        return _onnx_scorer(path, info)
    return _torchscript_scorer(path, info)


def _onnx_scorer(path: Path, info: ExportInfo) -> OnnxScorer:
    try:
        import onnxruntime
    except ImportError:
        raise missing_extra("predicting with an ONNX model") from None
    # CUDA when this onnxruntime has it (onnxruntime-gpu), else the CPU.
    providers = [
        p
        for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
        if p in onnxruntime.get_available_providers()
    ]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own types for files it cannot load
        reason = " ".join(str(exc).split())[:200]
        raise UserError(f"{path}: not a readable ONNX model ({reason}); {EXPORT_HINT}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    _check_shapes(path, info, list(inputs[0].shape), list(outputs[0].shape))
    return OnnxScorer(session, info)


def _check_shapes(path: Path, info: ExportInfo, given: list, out: list) -> None:
    """Refuse a model whose input or class count is not the one its JSON describes."""
    wanted = info.input_shape()
    if len(given) != len(wanted) or given[1:] != wanted[1:]:
        raise UserError(
            f"{path}: the model takes clips of shape {given} but its JSON describes {wanted}; "
            f"{EXPORT_HINT}"
        )
    if out[-1] != len(info.classes):
        raise UserError(
            f"{path}: the model outputs {out[-1]} classes but its JSON lists "
            f"{len(info.classes)}; {EXPORT_HINT}"
        )


def _torchscript_scorer(path: Path, info: ExportInfo) -> Any:
    """A TorchScript export through `predict.TorchScorer`, checked on one blank clip."""
    import torch

    from hmdbattn.predict import TorchScorer

    try:
        # A TorchScript archive holds TorchScript code and tensors only, never Python objects.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's own deprecation
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises many types for files that are not TorchScript
        reason = " ".join(str(exc).split())[:200]
        raise UserError(f"{path}: not a TorchScript model ({reason}); {EXPORT_HINT}") from None
    scorer = TorchScorer(model, info.classes, info.data_config(), batch_size=info.batch_size)
    blank = torch.zeros(1, 3, info.num_frames, info.crop_size, info.crop_size)
    try:
        with torch.inference_mode():
            classes = model.to(scorer.device)(blank.to(scorer.device)).shape[-1]
    except Exception as exc:  # a TorchScript error carries the model's code: first line only
        text = str(exc).strip()
        reason = text.splitlines()[0][:200] if text else type(exc).__name__
        raise UserError(
            f"{path}: the model does not take the clips its JSON describes ({reason})"
        ) from None
    _check_shapes(path, info, info.input_shape(), [classes])
    return scorer
