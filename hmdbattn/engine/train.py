"""The training loop: epochs of clips, validation by video, checkpoints, resume and DDP.

A run directory holds ``config.toml`` (the resolved config), ``metrics.jsonl`` (one line per
epoch), ``last.pt`` and ``best.pt`` (best validation video accuracy). Checkpoints are written at
the end of each epoch, atomically; a killed run resumes from the last one and, since every random
draw of an epoch comes from ``(seed, epoch)`` or from RNG states saved with it, ends as if it had
never stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress, TaskID
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from hmdbattn.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, damaged, load_weights
from hmdbattn.config import Config, TrainConfig
from hmdbattn.data.datasets import ClipData, TrainClips, build_datasets, make_loader
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.engine.distributed import Runtime, checksum, gather, on_main, sync_buffers
from hmdbattn.engine.evaluate import score_clips
from hmdbattn.engine.optim import Schedule, build_optimizer, cnn_frozen, mix_batch
from hmdbattn.engine.precision import autocast, channels_last, fp16, memory_format
from hmdbattn.engine.rundir import RunDir, stop_reason
from hmdbattn.errors import UserError
from hmdbattn.models.classifier import VideoClassifier, build_model
from hmdbattn.models.init import load_init
from hmdbattn.report import err_console, print_excluded, progress

CHECK_EVERY = 20  # steps between non-finite loss checks (each check syncs the device)

# (model output, targets) -> scalar loss: a training objective other than classification, e.g.
# a self-supervised one. A model that computes its own loss returns it: `lambda loss, _: loss`.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RunState:
    """What a checkpoint restores besides the weights."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_accuracy: float = -1.0
    stop_reason: str = ""


@dataclass
class Trainer:
    """The objects of one run, built from its config."""

    config: Config
    runtime: Runtime
    run: RunDir
    data: ClipData
    model: VideoClassifier
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    state: RunState
    loss: LossFn | None = None  # None: classification (cross-entropy); else the objective

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def on_features(self) -> bool:
        """Whether the run trains the head alone on stored CNN features."""
        return self.config.data.source == "features"

    @property
    def trainable(self) -> nn.Module:
        """What the optimiser trains and a step runs: the head on features, else the model."""
        return self.model.head if self.on_features else self.model


def build_trainer(
    config: Config, run: RunDir, runtime: Runtime, last: dict[str, Any] | None = None
) -> Trainer:
    """Data, model, optimiser and state of a run (restored from `last`, ``last.pt``, if given)."""
    torch.manual_seed(config.train.seed)
    data = build_datasets(config)
    num_classes = len(data.classes)
    if config.model.num_classes not in (None, num_classes):
        raise UserError(
            f"model.num_classes = {config.model.num_classes} but {config.data.root} has "
            f"{num_classes} classes: remove model.num_classes or fix it"
        )
    if last is not None:
        check_classes(last, data.classes, run.last, config)
    model = build_model(config, num_classes)
    if config.model.init is not None and last is None:  # a resumed run has its own weights
        init = load_init(model, config.model.init, config.model.init_parts, data.classes)
        if runtime.is_main:
            err_console.print(init.line(), highlight=False)
    model = model.to(runtime.device)
    if channels_last(config, runtime.device):
        model = model.to(memory_format=torch.channels_last_3d)
    on_features = config.data.source == "features"
    optimizer = build_optimizer(model.head if on_features else model, config.train)
    steps = math.ceil(len(data.train) / (config.data.batch_size * runtime.world_size))
    trainer = Trainer(
        config,
        runtime,
        run,
        data,
        model,
        optimizer,
        Schedule(optimizer, config.train, steps),
        torch.amp.GradScaler("cuda", enabled=fp16(config, runtime.device)),
        RunState(),
    )
    if last is not None:
        restore(trainer, last)
    if on_features:  # once the CNN holds its weights: a resumed run's come from last.pt
        check_features_cnn(config, model, runtime)
    return trainer


def check_features_cnn(config: Config, model: VideoClassifier, runtime: Runtime) -> None:
    """A run on features: its CNN must be theirs; CNN-training keys are noted as unused."""
    from hmdbattn.data.features import backbone_hash, check_weights, load_feature_manifest

    folder = config.data.features_path
    manifest = load_feature_manifest(folder)
    check_weights(manifest, config, backbone_hash(model.backbone), folder)
    model.backbone.eval()  # frozen: never run, its BatchNorm statistics stay the features'
    c = config.train
    unused = [f"train.freeze_cnn_epochs = {c.freeze_cnn_epochs}"] * (c.freeze_cnn_epochs > 0)
    unused += [f"train.cnn_lr = {c.cnn_lr}"] * (c.cnn_lr is not None)
    if unused and runtime.is_main:
        err_console.print(
            f'note: {" and ".join(unused)} ignored: with data.source = "features" the CNN '
            "is frozen and only the head trains",
            highlight=False,
        )


def check_classes(ckpt: dict[str, Any], classes: list[str], path: Path, config: Config) -> None:
    """A UserError unless the checkpoint `path` was trained on `classes` (those of data.root)."""
    with damaged(path):
        trained = list(ckpt["classes"])
    if trained != classes:
        raise UserError(
            f"{config.data.root} has classes {classes[:3]}... but {path} was trained on "
            f"{trained[:3]}...: point data.root at the dataset it was trained on"
        )


def restore(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """Continue where `ckpt` stopped: weights, optimiser, scaler, counters and RNG states."""
    path = trainer.run.last
    with damaged(path):
        load_weights(trainer.model, ckpt["model"], path)
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        trainer.scaler.load_state_dict(ckpt["scaler"])
        s = ckpt["state"]
        trainer.state = RunState(
            s["epoch"],
            s["step"],
            s["history"],
            s["best_epoch"],
            s["best_accuracy"],
            s["stop_reason"],
        )
        set_rng_states(ckpt["rng"])


def checkpoint(trainer: Trainer) -> dict[str, Any]:
    """Everything `eval`, `predict` and a resumed run need; only tensors and plain values."""
    s = trainer.state
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "state": {
            "epoch": s.epoch,
            "step": s.step,
            "history": s.history,
            "best_epoch": s.best_epoch,
            "best_accuracy": s.best_accuracy,
            "stop_reason": s.stop_reason,
        },
        "rng": rng_states(),
        "classes": trainer.data.classes,
        "config": trainer.config.model_dump(mode="json"),
    }


def rng_states() -> dict[str, Any]:
    """The global RNG states a checkpoint keeps (torch's, and CUDA's where there is CUDA)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what `rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available() and states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def wrap_ddp(model: nn.Module, rt: Runtime) -> nn.Module:
    """`model` under DistributedDataParallel when the run has several processes."""
    if not rt.distributed:
        return model
    return DistributedDataParallel(
        model, device_ids=[rt.device] if rt.device.type == "cuda" else None
    )


def epoch_loader(
    dataset: TrainClips, cfg: Config, rt: Runtime
) -> tuple[DistributedSampler, DataLoader]:
    """A sampler sharding `dataset` over the ranks (reshuffled by `set_epoch`) and its loader."""
    sampler: DistributedSampler = DistributedSampler(
        dataset, rt.world_size, rt.rank, shuffle=True, seed=cfg.train.seed
    )
    return sampler, make_loader(dataset, cfg, train=True, sampler=sampler)


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """The crop / flip / mixing generator of one epoch on one rank."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1009 + rank)


@dataclass
class StepParts:
    """What a training step runs with; built once per run (or per benchmark variant)."""

    forward: Callable[[torch.Tensor], torch.Tensor]  # the model, or its DDP / compiled wrapper
    parameters: Iterable[nn.Parameter] | Callable[[], Iterable[nn.Parameter]]  # to clip
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train: TrainConfig  # grad_clip; for classification label_smoothing, mixup and cutmix
    autocast: Callable[[], contextlib.AbstractContextManager]
    num_classes: int = 0  # classification: the number of classes (soft one-hot targets)
    loss: LossFn | None = None  # None: cross-entropy on the labels; else this objective


def train_step(
    parts: StepParts, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on the batch `x`, `y`; returns the (detached) loss and model output.

    Classification (``parts.loss`` is None): mixup / cutmix of `x` from `generator`, then
    cross-entropy in fp32 on the soft targets with label smoothing. With ``parts.loss`` the
    batch goes in unmixed and the loss is ``parts.loss(output, y)`` (e.g. a self-supervised
    objective, `y` its targets). Then: autocast forward, scaled backward, gradient clipping at
    ``train.grad_clip`` (unscaled first), optimiser and scaler steps.
    """
    c = parts.train
    if parts.loss is None:
        x, targets = mix_batch(x, y, parts.num_classes, c, generator)
    with parts.autocast():
        output = parts.forward(x)
    if parts.loss is None:
        loss = nn.functional.cross_entropy(
            output.float(), targets, label_smoothing=c.label_smoothing
        )
    else:
        loss = parts.loss(output, y)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    if c.grad_clip > 0:
        parts.scaler.unscale_(parts.optimizer)
        params = parts.parameters() if callable(parts.parameters) else parts.parameters
        nn.utils.clip_grad_norm_(params, c.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    return loss.detach(), output.detach()


def step_parts(trainer: Trainer, forward: Callable[[torch.Tensor], torch.Tensor]) -> StepParts:
    """The training step of `trainer`'s run, through `forward` (the model or its DDP wrapper)."""
    cfg, device = trainer.config, trainer.runtime.device
    return StepParts(
        forward,
        trainer.trainable.parameters,
        trainer.optimizer,
        trainer.scaler,
        cfg.train,
        lambda: autocast(device, cfg.train.amp),
        len(trainer.data.classes),
        trainer.loss,
    )


def train_epoch(
    trainer: Trainer, loader: DataLoader, ddp: nn.Module, bar: Progress, task: TaskID
) -> dict[str, float]:
    """One pass over the training clips; returns mean loss, clip accuracy and clips seen.

    Clip accuracy counts only for classification (it stays 0 with ``trainer.loss``).
    """
    cfg, rt, state = trainer.config, trainer.runtime, trainer.state
    generator = epoch_generator(cfg.train.seed, state.epoch, rt.rank)
    parts = step_parts(trainer, ddp)
    prepare = batch_input(trainer)
    ddp.train()
    if cnn_frozen(state.epoch, cfg.train):
        trainer.model.backbone.eval()  # frozen CNN: keep its BatchNorm statistics too
    totals = torch.zeros(3, device=rt.device)  # loss sum, correct clips, clips
    for number, (batch, labels, _) in enumerate(loader):
        trainer.schedule.apply(state.step)
        x = prepare(batch.to(rt.device, non_blocking=True), generator)
        y = labels.to(rt.device, non_blocking=True)
        loss, logits = train_step(parts, x, y, generator)
        state.step += 1
        correct = (logits.argmax(1) == y).sum() if trainer.loss is None else y.new_tensor(0)
        totals += torch.stack([loss * len(y), correct, y.new_tensor(len(y))])
        if number % CHECK_EVERY == 0 or number == len(loader) - 1:
            check_finite(totals[0], trainer)
            bar.update(task, completed=number + 1, description=_step_text(trainer, totals))
        if cfg.train.max_steps and state.step >= cfg.train.max_steps:
            break
    loss_sum, correct, count = (sum(t) for t in zip(*gather(totals.tolist(), rt), strict=True))
    return {"train_loss": loss_sum / count, "train_clip_acc": correct / count, "clips": count}


def batch_input(trainer: Trainer) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """What turns a loader batch into the step's input `x`, given the epoch's generator.

    Frames (B, T, H, W, 3) uint8: the training transform (crop, flip, normalise) in the
    model's memory layout, giving (B, C, T, h, w). Stored features (B, C, T', H', W') float16:
    float32, for the head (their crops and flips were drawn when they were extracted).
    """
    cfg, device = trainer.config, trainer.runtime.device
    if trainer.on_features:
        return lambda features, _: features.float()
    transform = VideoTransform.from_config(cfg.data, "train")
    memory = memory_format(cfg, device)

    def frames_input(frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return transform(frames, generator).contiguous(memory_format=memory)

    return frames_input


def _step_text(trainer: Trainer, totals: torch.Tensor) -> str:
    s = trainer.state
    loss, acc = (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()
    text = f"epoch {s.epoch + 1}/{trainer.config.train.epochs}  loss {loss:.3f}"
    return text + (f"  acc {acc:.3f}" if trainer.loss is None else "")


def check_finite(loss_sum: torch.Tensor, trainer: Trainer) -> None:
    """Stop the run (on every rank) when the loss is NaN or infinite."""
    bad = not bool(torch.isfinite(loss_sum))
    if any(gather(bad, trainer.runtime)):
        last = trainer.run.last
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint yet"
        raise UserError(
            f"the training loss became non-finite in epoch {trainer.state.epoch + 1} "
            f"(step {trainer.state.step}); {kept}. Lower train.lr or set train.grad_clip"
        )


def validate(trainer: Trainer) -> dict[str, float]:
    """Validation loss and clip / video accuracies on the evaluation subset."""
    sync_buffers(trainer.model, trainer.runtime)
    scores = score_clips(trainer.model, trainer.data.eval, trainer.config, trainer.runtime)
    metrics = scores.metrics(trainer.data.classes)
    return {
        "val_loss": scores.loss,
        "val_clip_acc": metrics.clip_top1,
        "val_video_acc": metrics.video_vote_top1,
        "val_video_acc_softmax": metrics.video_top1,
        "val_videos": metrics.num_videos,  # fewer when a test video was found unreadable
    }


def end_epoch(trainer: Trainer, row: dict[str, Any]) -> None:
    """Record an epoch: history, best, early stopping, checkpoints and logs.

    Rank 0 writes; if it cannot, every rank stops at once (see `on_main`).
    """
    s, c = trainer.state, trainer.config.train
    s.history.append(row)
    s.epoch += 1
    improved = row["val_video_acc"] > s.best_accuracy
    if improved:
        s.best_epoch, s.best_accuracy = s.epoch, row["val_video_acc"]
    s.stop_reason = stop_reason(c, s.epoch, s.step, s.best_epoch)

    def record() -> None:
        trainer.run.save_checkpoint(checkpoint(trainer), best=improved)
        trainer.run.write_metrics(s.history)
        log_tensorboard(trainer, row)

    on_main(record, trainer.runtime, f"save epoch {s.epoch}")


def log_tensorboard(trainer: Trainer, row: dict[str, Any]) -> None:
    """Add the epoch's metrics to ``<run>/tensorboard`` when the tensorboard package is there."""
    if not trainer.config.train.tensorboard:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: `pip install hmdbattn[tensorboard]`
        return
    # One short-lived writer per epoch: nothing stays open if the run is killed, and a resumed
    # run appends to the same folder.
    folder = trainer.run_dir / "tensorboard"
    with trainer.run.writing(folder), SummaryWriter(str(folder)) as writer:
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, row["epoch"])


def run_epochs(trainer: Trainer) -> RunState:
    """Train from the state's epoch to the last one (or an earlier stop)."""
    cfg, rt, state = trainer.config, trainer.runtime, trainer.state
    ddp = wrap_ddp(trainer.trainable, rt)
    if cfg.train.compile:
        ddp = torch.compile(ddp)  # type: ignore[assignment]
    sampler, loader = epoch_loader(trainer.data.train, cfg, rt)
    with progress("steps", disable=not rt.is_main) as bar:
        task = bar.add_task("", total=len(loader))
        while state.epoch < cfg.train.epochs and not state.stop_reason:
            sampler.set_epoch(state.epoch)
            trainer.data.train.set_epoch(state.epoch)
            bar.reset(task, total=len(loader))
            start = time.perf_counter()
            row: dict[str, Any] = {
                "epoch": state.epoch + 1,
                "lr": trainer.schedule.apply(state.step),
            }
            row |= train_epoch(trainer, loader, ddp, bar, task)
            row["clips_per_s"] = row.pop("clips") / (time.perf_counter() - start)
            row |= validate(trainer)
            row["seconds"] = time.perf_counter() - start
            end_epoch(trainer, row)
            if rt.is_main:
                err_console.print(_epoch_line(row), highlight=False)
    if not state.stop_reason:
        state.stop_reason = "finished"
    return state


def _epoch_line(row: dict[str, Any]) -> str:
    return (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}"
        f"  clip acc {row['val_clip_acc']:.4f}  video acc {row['val_video_acc']:.4f}"
        f"  lr {row['lr']:.2e}  {row['clips_per_s']:.1f} clips/s  {row['seconds']:.1f}s"
    )


def train(
    config: Config,
    run_dir: Path,
    runtime: Runtime,
    resume: bool = False,
    overwrite: bool = False,
) -> RunState:
    """Train (or resume) the run in `run_dir`; returns its final state (history, best epoch).

    A new run refuses a folder holding another (unless `overwrite`); a resume restores
    ``last.pt`` before it writes anything (see `RunDir`).
    """
    run = RunDir(run_dir)
    last = run.resume(config, runtime) if resume else None
    if last is None:
        run.start_on_main(config, runtime, overwrite)
    with run.starting(runtime):  # a new run refused here leaves no folder behind
        trainer = build_trainer(config, run, runtime, last)

        def begin() -> None:
            if last is not None:
                run.after_restore(config, last)
            print_excluded(trainer.data.excluded)
            record_train_choice(trainer)

        on_main(begin, runtime, f"write the files of {run_dir}")
    state = run_epochs(trainer)
    sums = gather(checksum(trainer.model), runtime)
    if len(set(sums)) > 1:
        raise RuntimeError(f"the ranks hold different weights after training: {sums}")
    if runtime.is_main:
        result = summary(state) | {"ranks": runtime.world_size, "rank_checksums": sums}
        run.write_result(result)
    return state


def record_train_choice(trainer: Trainer) -> None:
    """With ``data.train_per_class``, list the chosen training videos in the run directory."""
    data = trainer.config.data
    if not data.train_per_class:
        return
    videos = sorted(v.path for v in trainer.data.train.videos)
    path = trainer.run.write_text("train_videos.txt", "".join(f"{v}\n" for v in videos))
    err_console.print(
        f"training on {len(videos)} videos: data.train_per_class = {data.train_per_class} "
        f"(data.subset_seed = {data.subset_seed}), listed in {path}",
        highlight=False,
    )


def summary(state: RunState) -> dict[str, Any]:
    """The run's outcome: epochs, best epoch and its metrics, why it stopped."""
    best = state.history[state.best_epoch - 1] if state.best_epoch > 0 else {}
    return {
        "epochs": state.epoch,
        "steps": state.step,
        "best_epoch": state.best_epoch,
        "best": best,
        "last": state.history[-1] if state.history else {},
        "stop_reason": state.stop_reason,
    }
