"""Mixed precision, memory layout and compilation, as the trainer sets them up.

On the CPU: ``train.amp`` never changes the arithmetic (the CPU always runs fp32, by design:
see `engine.precision`), bf16 autocast (the benchmarks' CPU bf16 variant) runs the model in
bf16 with an fp32 loss and fp32 weights, ``train.channels_last`` lays out the weights and the
training inputs channels-last 3D, and ``train.compile`` trains through `torch.compile`
(with the eager backend here: inductor's C++ build takes minutes on a small CPU).

On CUDA only (skipped without a device): fp16 autocast with its gradient scaler, bf16
autocast, channels-last by default, and `torch.compile` with its default backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from torch import nn

from hmdbattn import load_config
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.rundir import RunDir
from hmdbattn.engine.train import Trainer, build_trainer, run_epochs, step_parts, train_step
from hmdbattn.report import quiet

CPU = Runtime(torch.device("cpu"))
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def trainer_with(root: Path, out: Path, runtime: Runtime = CPU, **keys: object) -> Trainer:
    """The trainer a run with these config keys starts with."""
    config = load_config(None, tiny_overrides(root, out, **keys))
    return build_trainer(config, RunDir(out / "run"), runtime)


def batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """4 normalised clips (B, 3, T, h, w) at the tiny size and their labels."""
    x = torch.randn(4, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    return x.to(device), torch.arange(4, device=device)


@dataclasses.dataclass
class Seen:
    """What the model met in one forward: its input and the dtypes inside it."""

    input_layout: bool  # channels-last 3D
    features: torch.dtype  # the CNN's output
    logits: torch.dtype


def watch(trainer: Trainer) -> list[Seen]:
    """Record a `Seen` for every training-mode forward of `trainer`'s model."""
    seen: list[Seen] = []
    model = trainer.model
    inputs: list[torch.Tensor] = []
    features: list[torch.dtype] = []

    def on_input(module: nn.Module, args: tuple[torch.Tensor]) -> None:
        inputs.append(args[0])

    def on_features(module: nn.Module, args: object, out: torch.Tensor) -> None:
        features.append(out.dtype)

    def on_logits(module: nn.Module, args: object, out: torch.Tensor) -> None:
        if module.training:
            x = inputs[-1]
            layout = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
            seen.append(Seen(layout, features[-1], out.dtype))

    model.register_forward_pre_hook(on_input)
    model.backbone.register_forward_hook(on_features)
    model.register_forward_hook(on_logits)
    return seen


def step(
    trainer: Trainer, autocast: Callable[[], contextlib.AbstractContextManager] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step of `trainer` (its own autocast unless `autocast`): loss, logits."""
    parts = step_parts(trainer, trainer.model)
    if autocast is not None:
        parts = dataclasses.replace(parts, autocast=autocast)
    trainer.model.train()
    x, y = batch(trainer.runtime.device)
    return train_step(parts, x, y)


def moved(trainer: Trainer, before: list[torch.Tensor]) -> bool:
    """Whether any parameter of `trainer`'s model differs from `before`."""
    params = trainer.model.parameters()
    return any(not torch.equal(p, p0) for p, p0 in zip(params, before, strict=True))


def conv_weights(trainer: Trainer) -> list[torch.Tensor]:
    return [m.weight for m in trainer.model.modules() if isinstance(m, nn.Conv3d)]


@pytest.mark.parametrize("amp", ["auto", "bf16", "fp16", "off"])
def test_cpu_runs_fp32_whatever_train_amp(tiny_dataset, tmp_path, amp: str) -> None:
    trainer = trainer_with(tiny_dataset, tmp_path, **{"train.amp": amp})
    assert not trainer.scaler.is_enabled()
    seen = watch(trainer)
    loss, _ = step(trainer)
    assert seen == [Seen(False, torch.float32, torch.float32)]
    assert loss.dtype == torch.float32


def test_bf16_autocast_on_cpu_computes_in_bf16_and_keeps_fp32_weights(
    tiny_dataset, tmp_path
) -> None:
    """The benchmarks' CPU bf16 variant: the trainer's step under ``torch.autocast("cpu")``."""
    fp32 = trainer_with(tiny_dataset, tmp_path / "fp32")
    bf16 = trainer_with(tiny_dataset, tmp_path / "bf16")  # the same seed: the same weights
    before = [p.detach().clone() for p in bf16.model.parameters()]
    seen = watch(bf16)
    loss, logits = step(bf16, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert seen == [Seen(False, torch.bfloat16, torch.bfloat16)]
    assert loss.dtype == torch.float32
    # The loss is taken in fp32 from the bf16 logits (a bf16 log-softmax would round it).
    assert logits.dtype == torch.bfloat16
    exact = nn.functional.cross_entropy(logits.float(), batch(torch.device("cpu"))[1])
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)
    assert loss.item() == pytest.approx(step(fp32)[0].item(), rel=0.05)  # bf16 keeps ~3 digits
    for p in bf16.model.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
    assert moved(bf16, before)


def one_step_run(trainer: Trainer) -> list[torch.Tensor]:
    """Run `trainer` through `run_epochs` for its one step (``train.max_steps = 1``): the
    step's change of each parameter."""
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with quiet():
        run_epochs(trainer)
    return [p.detach() - p0 for p, p0 in zip(trainer.model.parameters(), before, strict=True)]


def assert_same_step(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """Two runs took the same step, up to float rounding.

    Compared per tensor by norm: the CPU's channels-last convolutions sum in another order,
    and BatchNorm's backward over a batch of 4 amplifies that to ~0.3% of the step.
    """
    for x, y in zip(a, b, strict=True):
        assert (x - y).norm() <= 0.02 * y.norm() + 1e-8


# One step of SGD: its update is linear in the gradient, so runs that differ only by float
# rounding end close (Adam's g / |g| can flip the step of a near-zero gradient).
ONE_STEP = {
    "train.epochs": 1,
    "train.max_steps": 1,
    "train.tensorboard": False,
    "train.optimizer": "sgd",
    "train.lr": 0.01,
}


def test_channels_last_on_cpu_lays_out_weights_and_training_inputs(tiny_dataset, tmp_path) -> None:
    last = trainer_with(tiny_dataset, tmp_path / "cl", **ONE_STEP, **{"train.channels_last": True})
    plain = trainer_with(tiny_dataset, tmp_path / "plain", **ONE_STEP)  # CPU default: off
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in conv_weights(last))
    assert all(w.is_contiguous() for w in conv_weights(plain))
    seen_last, seen_plain = watch(last), watch(plain)
    step_last, step_plain = one_step_run(last), one_step_run(plain)
    assert [s.input_layout for s in seen_last] == [True]  # the batch of the one step
    assert [s.input_layout for s in seen_plain] == [False]
    # The layout changes where numbers sit in memory, not the arithmetic: the same step.
    assert last.state.history[0]["train_loss"] == pytest.approx(
        plain.state.history[0]["train_loss"], rel=1e-5
    )
    assert_same_step(step_last, step_plain)


def spy_compile(monkeypatch: pytest.MonkeyPatch, backend: str | None) -> list[nn.Module]:
    """Record what `torch.compile` compiles; compile it for real, with `backend` if given."""
    compiled: list[nn.Module] = []
    real = torch.compile

    def spy(module: nn.Module, **kwargs: object) -> Callable:
        compiled.append(module)
        return real(module, **({"backend": backend} if backend else kwargs))

    monkeypatch.setattr(torch, "compile", spy)
    return compiled


def test_compile_key_trains_through_torch_compile(tiny_dataset, tmp_path, monkeypatch) -> None:
    compiled = spy_compile(monkeypatch, backend="eager")
    plain = trainer_with(tiny_dataset, tmp_path / "plain", **ONE_STEP)
    step_plain = one_step_run(plain)
    assert compiled == []  # off by default
    torch._dynamo.reset()
    trainer = trainer_with(tiny_dataset, tmp_path / "c", **ONE_STEP, **{"train.compile": True})
    step = one_step_run(trainer)
    assert compiled == [trainer.model]  # one process: the model itself, no DDP wrapper
    assert trainer.state.step == 1
    assert_same_step(step, step_plain)


# --------------------------------------------------------------------------- CUDA only


def cuda_trainer(root: Path, out: Path, **keys: object) -> Trainer:
    return trainer_with(root, out, Runtime(torch.device("cuda")), **keys)


@cuda_only
def test_fp16_scales_the_loss_and_clips_the_unscaled_gradient(tiny_dataset, tmp_path) -> None:
    clip = 1e-3  # far below the gradient's norm: clipping is active
    trainer = cuda_trainer(tiny_dataset, tmp_path, **{"train.amp": "fp16", "train.grad_clip": clip})
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 2.0**16
    before = [p.detach().clone() for p in trainer.model.parameters()]
    seen = watch(trainer)
    for _ in range(8):  # a step whose scaled gradients overflow is skipped, the scale halved
        scale = trainer.scaler.get_scale()
        loss, _ = step(trainer)
        if trainer.scaler.get_scale() == scale:
            break
    assert seen[0].features == torch.float16 and seen[0].logits == torch.float16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # Clipped after unscaling: the gradients the optimiser used have norm `clip`, not
    # clip / scale (clipping the scaled gradients would leave that).
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))
    assert norm.item() == pytest.approx(clip, rel=1e-2)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert moved(trainer, before)


@cuda_only
@pytest.mark.parametrize("amp", ["bf16", "auto"])
def test_bf16_on_cuda_without_a_scaler(tiny_dataset, tmp_path, amp: str) -> None:
    if amp == "auto" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16: auto means fp16 here")
    trainer = cuda_trainer(tiny_dataset, tmp_path, **{"train.amp": amp})
    assert not trainer.scaler.is_enabled()
    seen = watch(trainer)
    assert step(trainer)[0].dtype == torch.float32
    assert seen[0].features == torch.bfloat16 and seen[0].logits == torch.bfloat16


@cuda_only
def test_channels_last_is_the_cuda_default(tiny_dataset, tmp_path) -> None:
    trainer = cuda_trainer(tiny_dataset, tmp_path, **ONE_STEP)
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in conv_weights(trainer))
    seen = watch(trainer)
    one_step_run(trainer)
    assert [s.input_layout for s in seen] == [True]


@cuda_only
def test_compile_with_its_default_backend_on_cuda(tiny_dataset, tmp_path, monkeypatch) -> None:
    compiled = spy_compile(monkeypatch, backend=None)
    trainer = cuda_trainer(tiny_dataset, tmp_path, **ONE_STEP, **{"train.compile": True})
    one_step_run(trainer)
    assert compiled == [trainer.model] and trainer.state.step == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
