"""``hmdbattn export``: a checkpoint's model as ONNX or TorchScript, with its JSON beside it.

The model is the one ``hmdbattn predict --checkpoint`` runs (loaded through `checkpoint.py` by
`predict.TorchScorer.from_checkpoint`), in eval mode, taking float32 clips ``(B, 3, T, crop,
crop)`` with a dynamic batch ``B`` and returning logits ``(B, K)``. Before anything is written
the export is run on a batch of another size than the one it was traced with and compared with
the PyTorch model, so a file that exists is one that works. Both files are written atomically
(`fileio`): the model first, then the JSON that names its SHA-256 (`meta`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hmdbattn import __version__
from hmdbattn.config import DataConfig
from hmdbattn.deploy.meta import (
    FORMATS,
    INPUT_NAME,
    OUTPUT_NAME,
    SUFFIXES,
    ExportInfo,
    TensorInfo,
    meta_path,
)
from hmdbattn.deploy.runtime import missing_extra
from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_write_bytes, atomic_write_text, os_errors
from hmdbattn.models.perceiver import PerceiverHead
from hmdbattn.predict import TorchScorer

# Opset 18 runs on every onnxruntime since 1.14. scaled_dot_product_attention becomes
# MatMul / Softmax there; ONNX's own Attention operator needs opset 23 and newer runtimes.
OPSET = 18
TRACE_BATCH = 2  # the example batch; the check runs another size, so B is proven dynamic
CHECK_BATCH = 3
TOLERANCE = 1e-4  # max |logit difference| from PyTorch an export may have


@dataclass
class Exported:
    """What `export_checkpoint` wrote, and how close the export is to the PyTorch model."""

    model: Path
    meta: Path
    info: ExportInfo
    max_abs_diff: float
    seconds: float


def check_request(fmt: str, frames: int | None) -> None:
    """Raise UserError for an unknown format or a frame count below 1 (before any loading)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not known: use one of {', '.join(FORMATS)}")
    if frames is not None and frames < 1:
        raise UserError(f"--frames {frames}: a clip needs at least 1 frame")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401  (torch's ONNX exporter is built on it)
        except ImportError:
            raise missing_extra("hmdbattn export --format onnx") from None


def export_checkpoint(
    checkpoint: Path, fmt: str, out: Path | None = None, frames: int | None = None
) -> Exported:
    """Export the model of `checkpoint` as `fmt` to `out` (default: beside the checkpoint).

    `frames` sets the frames per clip of the export (default: the checkpoint's); the clip
    still covers the checkpoint's ``clip_duration``. Bad requests are UserErrors.
    """
    check_request(fmt, frames)
    started = time.perf_counter()
    scorer = TorchScorer.from_checkpoint(checkpoint, torch.device("cpu"))
    data = scorer.data.model_copy(update={"num_frames": frames or scorer.data.num_frames})
    out = out if out is not None else checkpoint.with_name(checkpoint.stem + SUFFIXES[fmt])
    if out.resolve() == checkpoint.resolve():
        raise UserError(f"--out {out} is the checkpoint itself: name another file")
    shape = (3, data.num_frames, data.crop_size, data.crop_size)
    model = scorer.model
    with _export_errors(checkpoint, data.num_frames):
        blob = _onnx_bytes(model, shape) if fmt == "onnx" else _torchscript_bytes(model, shape)
        diff = _max_abs_diff(model, blob, fmt, shape)
    if diff > TOLERANCE:
        raise UserError(
            f"{checkpoint}: the {fmt} export differs from the PyTorch model by {diff:.2g} "
            f"(more than {TOLERANCE:g}); nothing was written"
        )
    info = _describe(checkpoint, scorer, data, fmt, out, blob)
    meta = meta_path(out)
    with os_errors(out, "write"):
        atomic_write_bytes(out, blob, sync=True)
        atomic_write_text(meta, info.model_dump_json(indent=2) + "\n", sync=True)
    return Exported(out, meta, info, diff, time.perf_counter() - started)


def _describe(
    checkpoint: Path, scorer: TorchScorer, data: DataConfig, fmt: str, out: Path, blob: bytes
) -> ExportInfo:
    """The JSON of the export `blob` of `scorer`'s model, for clips of `data`, written to `out`."""
    shape = ["batch", 3, data.num_frames, data.crop_size, data.crop_size]
    model = scorer.model
    return ExportInfo(
        model_format=fmt,  # checked against FORMATS by check_request
        model_file=out.name,
        model_sha256=hashlib.sha256(blob).hexdigest(),
        classes=scorer.classes,
        num_frames=data.num_frames,
        clip_duration=data.clip_duration,
        clips_per_video=data.clips_per_video,
        resize=data.resize,
        crop_size=data.crop_size,
        eval_crops=data.eval_crops,
        mean=data.mean,
        std=data.std,
        batch_size=scorer.batch_size,
        input=TensorInfo(name=INPUT_NAME, shape=shape),
        output=TensorInfo(name=OUTPUT_NAME, shape=["batch", len(scorer.classes)]),
        head="perceiver" if isinstance(getattr(model, "head", None), PerceiverHead) else "pool",
        opset=OPSET if fmt == "onnx" else None,
        exporter="torch.onnx.export(dynamo=True)" if fmt == "onnx" else "torch.jit.trace",
        torch_version=torch.__version__,
        hmdbattn_version=__version__,
        checkpoint=str(checkpoint),
    )


@contextlib.contextmanager
def _export_errors(checkpoint: Path, frames: int) -> Iterator[None]:
    """An exporter's failure (e.g. too few frames for the CNN) as one line naming the model."""
    try:
        with warnings.catch_warnings():
            # torch.jit and the exporters warn about their own deprecations, not ours to fix.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            yield
    except UserError:
        raise
    except Exception as exc:  # the exporters raise many types; the first line says which
        text = str(exc).strip()
        reason = text.splitlines()[0][:200] if text else type(exc).__name__
        raise UserError(
            f"{checkpoint}: its model cannot be exported with {frames} frame(s) per clip "
            f"({type(exc).__name__}: {reason})"
        ) from None


def _onnx_bytes(model: nn.Module, shape: tuple[int, ...]) -> bytes:
    """The model as a checked ONNX file (opset `OPSET`, dynamic batch).

    The exporter is torch.export-based ``dynamo=True``: it exports both heads, the Perceiver's
    scaled_dot_product_attention included (so does the legacy TorchScript-based exporter,
    tried too: both agree with PyTorch to 1e-6), and the legacy one is deprecated with a
    warning that it will be removed. It also folds the constant Fourier position encoding
    into one initializer, which leaves a smaller graph.
    """
    import onnx

    example = torch.zeros(TRACE_BATCH, *shape)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=OPSET,
        dynamo=True,
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    assert program is not None  # with no file to write to, the exporter returns its program
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def _torchscript_bytes(model: nn.Module, shape: tuple[int, ...]) -> bytes:
    """The model as a TorchScript archive (dynamic batch).

    torch.jit.trace, not torch.jit.script: scripting fails on the backbone's plain Python
    properties, while the eval-mode forward has no data-dependent branch, so the trace is the
    whole model; shapes are read with size() in the trace, so the batch stays dynamic.
    """
    traced = torch.jit.trace(model, torch.zeros(TRACE_BATCH, *shape))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _max_abs_diff(model: nn.Module, blob: bytes, fmt: str, shape: tuple[int, ...]) -> float:
    """Max |logit difference| between the export and `model` on a random batch."""
    x = torch.randn(CHECK_BATCH, *shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x).numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
        got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    else:
        loaded = torch.jit.load(io.BytesIO(blob), map_location="cpu")
        with torch.inference_mode():
            got = loaded(x).numpy()
    return float(np.abs(got - expected).max())
