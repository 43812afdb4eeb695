"""`hmdbattn export`."""

from __future__ import annotations

from pathlib import Path

import typer

from hmdbattn.cli import app
from hmdbattn.cli.common import JsonOption
from hmdbattn.report import console, print_json


@app.command("export")
def export(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", help="A checkpoint of `hmdbattn train` (best.pt / last.pt)."
    ),
    # Plain text and int, checked by the export itself: a bad value is one line and exit 1,
    # like every other bad input of this command.
    fmt: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Where to write the model (default: beside the checkpoint, best.onnx or "
        "best.torchscript.pt); its JSON goes to the same name plus .json.",
        show_default=False,
    ),
    frames: int | None = typer.Option(
        None,
        "--frames",
        help="Frames per clip (default: the checkpoint's num_frames).",
        show_default=False,
    ),
    json_out: bool = JsonOption,
) -> None:
    """Export a trained model for deployment: ONNX (for ONNX Runtime) or TorchScript.

    The model takes float32 clips (B, 3, T, H, W) with any batch size B and returns logits.
    Beside it a JSON holds what inference needs: class names, frames per clip, clip duration,
    resize, crop, mean / std. `hmdbattn predict --model FILE` runs it, with the same windows
    and output as --checkpoint (for ONNX, without torch). Needs the onnx extra for ONNX:
    pip install -e '.[onnx]'.
    """
    from hmdbattn.deploy.export import check_request

    check_request(fmt, frames)  # before importing torch: a typo is answered at once
    from hmdbattn.deploy.export import export_checkpoint

    done = export_checkpoint(checkpoint, fmt, out, frames)
    info = done.info
    if json_out:
        print_json(
            {
                "model": str(done.model),
                "meta": str(done.meta),
                "max_abs_diff": done.max_abs_diff,
                "seconds": done.seconds,
                **info.model_dump(exclude={"model_file"}),
            }
        )
        return
    for line in (
        f"exported {checkpoint} -> {done.model} ({info.model_format}, {info.exporter}"
        + (f", opset {info.opset})" if info.opset else ")"),
        f"description: {done.meta}",
        f"input: clips ({info.layout}) = {info.input_shape()}, float32; "
        f"{len(info.classes)} classes out",
        f"checked against PyTorch: max |logit difference| {done.max_abs_diff:.1e} "
        f"({done.seconds:.1f} s)",
        f"predict with: hmdbattn predict VIDEO --model {done.model}",
    ):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
