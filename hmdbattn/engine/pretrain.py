"""`hmdbattn pretrain`: self-supervised pretraining of the CNN and the attention head.

No label is read. The clips come from the videos of ``pretrain.subsets`` of ``data.split`` (by
default its train and unused videos, never its test videos), cut and augmented as for training.
The run directory keeps the contract of `train` (``config.toml``, ``metrics.jsonl`` with the
pretraining loss per epoch, ``last.pt``, ``result.json``, atomic writes, exact resume), plus
``videos.txt`` (the videos used) and ``pictures/`` (what was hidden and what was predicted). The
checkpoint's ``model`` holds the CNN and the head without a classifier, which is what
``model.init`` takes; the decoder is kept apart, under ``decoder``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress, TaskID
from torch import nn
from torch.utils.data import DataLoader

from hmdbattn.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, damaged
from hmdbattn.config import Config
from hmdbattn.data.datasets import Excluded, TrainClips, resolve_videos
from hmdbattn.data.formats import index_dataset
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.engine.distributed import Runtime, checksum, gather, on_main
from hmdbattn.engine.optim import Schedule, build_optimizer
from hmdbattn.engine.precision import autocast, fp16, memory_format
from hmdbattn.engine.rundir import RunDir, stop_reason
from hmdbattn.engine.train import (
    CHECK_EVERY,
    StepParts,
    epoch_generator,
    epoch_loader,
    rng_states,
    set_rng_states,
    train_step,
    wrap_ddp,
)
from hmdbattn.errors import UserError
from hmdbattn.models.classifier import build_model
from hmdbattn.models.init import load_init
from hmdbattn.models.masking import tube_mask
from hmdbattn.models.pretrain import Pretrainer, build_pretrainer, mask_grid
from hmdbattn.report import err_console, print_excluded, progress


@dataclass
class PretrainState:
    """What a pretraining checkpoint restores besides the weights."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""


@dataclass
class PretrainRun:
    """The objects of one pretraining run."""

    config: Config
    runtime: Runtime
    run: RunDir
    clips: TrainClips
    excluded: list[Excluded]
    pretrainer: Pretrainer
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    state: PretrainState = field(default_factory=PretrainState)


def pretrain_clips(config: Config) -> tuple[TrainClips, list[Excluded]]:
    """Training clips of every video in ``pretrain.subsets`` (labels are carried, never used)."""
    index = index_dataset(config.data)
    data = config.model_copy(update={"data": config.data.model_copy(update={"train_per_class": 0})})
    videos, excluded = [], []
    for subset in config.pretrain.subsets:
        if subset == "unused" and not index.subset(config.data.split, subset):
            continue  # ucf101, folders and list have no unused videos: nothing to add
        usable, left_out = resolve_videos(data, index, subset)
        videos += usable
        excluded += left_out
    return TrainClips(config, sorted(videos, key=lambda v: v.path), index.classes), excluded


def pretrain_optimizer(pretrainer: Pretrainer, config: Config) -> torch.optim.Optimizer:
    """The model's optimiser (``train.*``) with one more parameter group: the decoder's."""
    optimizer = build_optimizer(pretrainer.model, config.train)
    optimizer.add_param_group(
        {
            "name": "decoder",
            "params": list(pretrainer.decoder.parameters()),
            "weight_decay": config.train.weight_decay,
        }
    )
    return optimizer


def build_run(
    config: Config, run_dir: RunDir, runtime: Runtime, last: dict[str, Any] | None
) -> PretrainRun:
    """Data, model, objective, optimiser (restored from `last`, ``last.pt``, when resuming)."""
    torch.manual_seed(config.train.seed)
    clips, excluded = pretrain_clips(config)
    model = build_model(config, len(clips.classes))
    if config.model.init is not None and last is None:
        report = load_init(model, config.model.init, config.model.init_parts, None)
        if runtime.is_main:
            err_console.print(report.line(), highlight=False)
    pretrainer = build_pretrainer(model, config).to(runtime.device)
    pretrainer = pretrainer.to(memory_format=memory_format(config, runtime.device))
    optimizer = pretrain_optimizer(pretrainer, config)
    steps = math.ceil(len(clips) / (config.data.batch_size * runtime.world_size))
    run = PretrainRun(
        config,
        runtime,
        run_dir,
        clips,
        excluded,
        pretrainer,
        optimizer,
        Schedule(optimizer, config.train, steps),
        torch.amp.GradScaler("cuda", enabled=fp16(config, runtime.device)),
    )
    if last is not None:
        restore(run, last)
    return run


def restore(run: PretrainRun, ckpt: dict[str, Any]) -> None:
    """Continue where `ckpt` stopped: weights, decoder, optimiser, scaler, counters, RNG."""
    with damaged(run.run.last):
        run.pretrainer.load_states(ckpt["model"], ckpt["decoder"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scaler.load_state_dict(ckpt["scaler"])
        s = ckpt["state"]
        run.state = PretrainState(s["epoch"], s["step"], s["history"], s["stop_reason"])
        set_rng_states(ckpt["rng"])


def checkpoint(run: PretrainRun) -> dict[str, Any]:
    """The CNN + head for ``model.init`` (under ``model``), and all a resumed run needs."""
    s = run.state
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": "pretrain",
        "model": run.pretrainer.encoder_state(),
        "decoder": run.pretrainer.objective_state(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "state": dataclasses.asdict(s),
        "rng": rng_states(),
        "classes": None,  # no classifier: a fine-tuning run makes its own
        "config": run.config.model_dump(mode="json"),
    }


def pretrain_epoch(
    run: PretrainRun, loader: DataLoader, forward: nn.Module, bar: Progress, task: TaskID
) -> float:
    """One pass over the clips; returns the mean loss over every rank."""
    cfg, rt, state = run.config, run.runtime, run.state
    transform = VideoTransform.from_config(cfg.data, "train")
    generator = epoch_generator(cfg.train.seed, state.epoch, rt.rank)
    grid = mask_grid(cfg, run.pretrainer.model)
    parts = StepParts(
        forward,
        run.pretrainer.parameters,
        run.optimizer,
        run.scaler,
        cfg.train,
        lambda: autocast(rt.device, cfg.train.amp),
        loss=lambda loss, _: loss,  # the pretrainer returns its own loss
    )
    forward.train()
    layout = memory_format(cfg, rt.device)
    totals = torch.zeros(2, device=rt.device)  # loss sum, clips
    for number, (frames, _labels, _) in enumerate(loader):
        run.schedule.apply(state.step)
        x = transform(frames.to(rt.device, non_blocking=True), generator)  # (B, C, T, h, w)
        x = x.contiguous(memory_format=layout)
        mask = tube_mask(len(x), grid, cfg.pretrain.mask_ratio, generator).to(rt.device)
        step = dataclasses.replace(parts, forward=functools.partial(forward, mask=mask))
        loss, _ = train_step(step, x, x.new_zeros(()))
        run.pretrainer.after_step()
        state.step += 1
        totals += torch.stack([loss * len(x), loss.new_tensor(len(x))])
        if number % CHECK_EVERY == 0 or number == len(loader) - 1:
            _check_finite(run, totals[0])
            mean = (totals[0] / totals[1]).item()
            bar.update(task, completed=number + 1, description=_step_text(run, mean))
        if cfg.train.max_steps and state.step >= cfg.train.max_steps:
            break
    loss_sum, count = (sum(t) for t in zip(*gather(totals.tolist(), rt), strict=True))
    return loss_sum / count


def _step_text(run: PretrainRun, loss: float) -> str:
    return f"pretrain epoch {run.state.epoch + 1}/{run.config.train.epochs}  loss {loss:.4f}"


def _check_finite(run: PretrainRun, loss_sum: torch.Tensor) -> None:
    if any(gather(not bool(torch.isfinite(loss_sum)), run.runtime)):
        last = run.run.last
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint yet"
        raise UserError(
            f"the pretraining loss became non-finite in epoch {run.state.epoch + 1}; {kept}. "
            "Lower train.lr or set train.grad_clip"
        )


def end_epoch(run: PretrainRun, row: dict[str, Any]) -> None:
    """Record an epoch: history, then rank 0's writes (every rank stops if they fail)."""
    s, c = run.state, run.config.train
    s.history.append(row)
    s.epoch += 1
    s.stop_reason = stop_reason(c, s.epoch, s.step, None)
    on_main(lambda: _record(run), run.runtime, f"save epoch {s.epoch}")


def _record(run: PretrainRun) -> None:
    """Rank 0's writes of an epoch: checkpoint, metrics, pictures."""
    run.run.save_checkpoint(checkpoint(run), best=False)
    run.run.write_metrics(run.state.history)
    if run.config.pretrain.pictures:
        from hmdbattn.reconstruction import draw_epoch

        pictures = run.run.path / "pictures"
        with run.run.writing(pictures):
            draw_epoch(run.pretrainer, run.clips, run.config, pictures, run.state.epoch)


def run_epochs(run: PretrainRun) -> PretrainState:
    """Pretrain from the state's epoch to ``train.epochs`` (or the step limit)."""
    cfg, rt, state = run.config, run.runtime, run.state
    forward = wrap_ddp(run.pretrainer, rt)
    sampler, loader = epoch_loader(run.clips, cfg, rt)
    with progress("steps", disable=not rt.is_main) as bar:
        task = bar.add_task("", total=len(loader))
        while state.epoch < cfg.train.epochs and not state.stop_reason:
            sampler.set_epoch(state.epoch)
            run.clips.set_epoch(state.epoch)
            bar.reset(task, total=len(loader))
            start = time.perf_counter()
            row: dict[str, Any] = {"epoch": state.epoch + 1, "lr": run.schedule.apply(state.step)}
            row["pretrain_loss"] = pretrain_epoch(run, loader, forward, bar, task)
            row["seconds"] = time.perf_counter() - start
            row["clips_per_s"] = len(run.clips) / row["seconds"]
            end_epoch(run, row)
            if rt.is_main:
                err_console.print(_epoch_line(row), highlight=False)
    if not state.stop_reason:
        state.stop_reason = "finished"
    return state


def _epoch_line(row: dict[str, Any]) -> str:
    return (
        f"pretrain epoch {row['epoch']}: loss {row['pretrain_loss']:.4f}  lr {row['lr']:.2e}"
        f"  {row['clips_per_s']:.1f} clips/s  {row['seconds']:.1f}s"
    )


def pretrain(
    config: Config, run_dir: Path, runtime: Runtime, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Pretrain (or resume) the run in `run_dir`; returns its summary (also ``result.json``).

    The run directory's contract is `train`'s (see `RunDir`): nothing is written before a
    resume has restored ``last.pt``, and a `train` run is refused.
    """
    folder = RunDir(run_dir, "pretrain")
    last = folder.resume(config, runtime) if resume else None
    if last is None:
        folder.start_on_main(config, runtime, overwrite)
    with folder.starting(runtime):  # a new run refused here leaves no folder behind
        run = build_run(config, folder, runtime, last)

        def begin() -> None:
            if last is not None:
                folder.after_restore(config, last)
            print_excluded(run.excluded)
            folder.write_text("videos.txt", "".join(f"{v.path}\n" for v in run.clips.videos))

        on_main(begin, runtime, f"write the files of {run_dir}")
    run_epochs(run)
    sums = gather(checksum(run.pretrainer), runtime)
    if len(set(sums)) > 1:
        raise RuntimeError(f"the ranks hold different weights after pretraining: {sums}")
    result = summary(run) | {"ranks": runtime.world_size, "rank_checksums": sums}
    if runtime.is_main:
        run.run.write_result(result)
    return result


def summary(run: PretrainRun) -> dict[str, Any]:
    """The run's outcome: mode, videos used, epochs, losses, why it stopped."""
    s, pc = run.state, run.config.pretrain
    return {
        "mode": pc.mode,
        "target": pc.target if pc.mode == "video" else "features",
        "subsets": list(pc.subsets),
        "videos": len(run.clips),
        "epochs": s.epoch,
        "steps": s.step,
        "first_loss": s.history[0]["pretrain_loss"] if s.history else None,
        "last_loss": s.history[-1]["pretrain_loss"] if s.history else None,
        "checkpoint": str(run.run.last),
        "stop_reason": s.stop_reason,
    }
