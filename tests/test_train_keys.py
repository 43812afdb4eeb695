"""Training keys do what their names say, through the trainer's own objects.

Each test builds a trainer from the tiny config with the key set (`build_trainer`, the models,
optimiser and schedule a run uses), takes one training step as `train_epoch` takes it
(`Schedule.apply`, then `train_step` with `step_parts`) and checks the effect against the
formula written out here: the loss of label smoothing, the gradient norm after clipping, the
update of each optimiser, the learning rate of the CNN's parameters, where head dropout acts;
and `train.seed`: each epoch's order comes from (seed, epoch) only, so a resumed run repeats it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_overrides
from torch import nn

from hmdbattn import load_config
from hmdbattn.engine import train as train_module
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.rundir import RunDir
from hmdbattn.engine.train import Trainer, build_trainer, run_epochs, step_parts, train_step
from hmdbattn.models.classifier import build_model
from hmdbattn.report import quiet

CPU = Runtime(torch.device("cpu"))
CLASSES = 4  # the tiny dataset's


def trainer_with(root: Path, out: Path, **keys: object) -> Trainer:
    """The trainer a run with these config keys starts with (weights from ``train.seed``)."""
    config = load_config(None, tiny_overrides(root, out, **keys))
    return build_trainer(config, RunDir(out / "run"), CPU)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of 4 normalised clips (B, 3, T, h, w) at the tiny size, one per class."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 4, 16, 16, generator=generator), torch.arange(4)


def one_step(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The first training step of `trainer`: (loss, logits, weights before the step)."""
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.schedule.apply(0)
    trainer.model.train()
    x, y = batch()
    loss, logits = train_step(step_parts(trainer, trainer.model), x, y)
    return loss, logits, before


def moves(trainer: Trainer, before: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each parameter's change in the step."""
    return [p.detach() - b for p, b in zip(trainer.model.parameters(), before, strict=True)]


def test_label_smoothing_gives_the_smoothed_cross_entropy(tiny_dataset, tmp_path) -> None:
    eps = 0.3
    trainer = trainer_with(tiny_dataset, tmp_path, **{"train.label_smoothing": eps})
    loss, logits, _ = one_step(trainer)
    # Targets: 1 - eps + eps / K on the label, eps / K elsewhere; loss = -sum q log p.
    targets = torch.full((4, CLASSES), eps / CLASSES)
    targets[torch.arange(4), batch()[1]] += 1 - eps
    expected = -(targets * logits.log_softmax(1)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    plain = nn.functional.cross_entropy(logits, batch()[1])
    assert abs(loss.item() - plain.item()) > 1e-3  # the key changed the loss


def grad_norm(trainer: Trainer) -> float:
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


def test_grad_clip_bounds_the_gradient_and_the_step(tiny_dataset, tmp_path) -> None:
    # SGD (lr, Nesterov momentum m, no weight decay): the first update is -lr (1 + m) g.
    keys = {"train.optimizer": "sgd", "train.lr": 0.1, "train.weight_decay": 0.0}
    free = trainer_with(tiny_dataset, tmp_path / "free", **keys)
    one_step(free)
    raw = grad_norm(free)
    clip = raw / 10
    clipped = trainer_with(tiny_dataset, tmp_path / "clip", **keys, **{"train.grad_clip": clip})
    _, _, before = one_step(clipped)
    assert grad_norm(clipped) == pytest.approx(clip, rel=1e-4)
    # The same direction, scaled down: every gradient is the unclipped one x clip / raw.
    for a, b in zip(clipped.model.parameters(), free.model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad * (clip / raw), rtol=1e-4, atol=1e-9)
    step = torch.linalg.vector_norm(torch.cat([d.flatten() for d in moves(clipped, before)]))
    assert step.item() == pytest.approx(0.1 * 1.9 * clip, rel=1e-3)


def test_cnn_lr_is_the_step_of_the_cnn_weights(tiny_dataset, tmp_path) -> None:
    lr, cnn_lr, momentum = 0.01, 0.001, 0.9
    keys = {
        "train.optimizer": "sgd",
        "train.lr": lr,
        "train.cnn_lr": cnn_lr,
        "train.momentum": momentum,
        "train.weight_decay": 0.0,
    }
    trainer = trainer_with(tiny_dataset, tmp_path, **keys)
    groups = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert groups == {"cnn": cnn_lr, "head": lr}
    _, _, before = one_step(trainer)
    cnn = {id(p) for p in trainer.model.backbone.parameters()}
    for p, move in zip(trainer.model.parameters(), moves(trainer, before), strict=True):
        rate = cnn_lr if id(p) in cnn else lr
        assert p.grad is not None and p.grad.abs().sum() > 0
        expected = -rate * (1 + momentum) * p.grad
        # Compared as whole tensors: float32 rounding of weight - step swamps single elements.
        assert (move - expected).norm() < 1e-2 * expected.norm()


def sgd_step(p: torch.Tensor, g: torch.Tensor, lr: float, wd: float) -> torch.Tensor:
    """The first step of SGD with Nesterov momentum 0.9 and (coupled) weight decay."""
    d = g + wd * p
    return p - lr * (d + 0.9 * d)


def adamw_step(p: torch.Tensor, g: torch.Tensor, lr: float, wd: float) -> torch.Tensor:
    """The first step of AdamW: decoupled decay, then lr x g / |g| (bias-corrected moments)."""
    return p * (1 - lr * wd) - lr * g / (g.abs() + 1e-8)


def adam_step(p: torch.Tensor, g: torch.Tensor, lr: float, wd: float) -> torch.Tensor:
    """The first step of Adam: the decay enters the gradient, then lr x d / |d|."""
    d = g + wd * p
    return p - lr * d / (d.abs() + 1e-8)


@pytest.mark.parametrize(
    ("name", "kind", "rule"),
    [
        ("sgd", torch.optim.SGD, sgd_step),
        ("adamw", torch.optim.AdamW, adamw_step),
        ("adam", torch.optim.Adam, adam_step),
    ],
)
def test_optimizer_key_picks_the_class_and_its_update(
    tiny_dataset, tmp_path, name, kind, rule
) -> None:
    lr, wd = 0.05, 0.5  # a large decay, so that coupled and decoupled decay differ
    keys = {"train.optimizer": name, "train.lr": lr, "train.weight_decay": wd}
    trainer = trainer_with(tiny_dataset, tmp_path, **keys)
    assert type(trainer.optimizer) is kind
    _, _, before = one_step(trainer)
    for p, p0 in zip(trainer.model.parameters(), before, strict=True):
        assert p.grad is not None
        decay = wd if p.ndim > 1 else 0.0  # biases and norm weights are not decayed
        torch.testing.assert_close(p.detach(), rule(p0, p.grad, lr, decay), rtol=1e-4, atol=1e-7)


def classifier_inputs(head_dropout: float, head: str, train: bool) -> list[torch.Tensor]:
    """What the classifier's linear layer receives, twice, in train or eval mode."""
    torch.manual_seed(0)
    config = load_config(None, {**TINY, "model.head_dropout": head_dropout, "model.head": head})
    model = build_model(config, CLASSES).eval()
    model.head.train(train)  # the CNN in eval mode: the same features in both modes
    seen: list[torch.Tensor] = []
    fc = model.head.get_submodule("classifier.fc")
    fc.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    features = model.features(batch()[0]).detach()  # the same features for every pass
    with torch.no_grad():
        model.head(features)
        model.head(features)
    return seen


@pytest.mark.parametrize("head", ["perceiver", "pool"])
def test_head_dropout_drops_in_training_only(head: str) -> None:
    p = 0.5
    plain = classifier_inputs(0.0, head, train=False)[0]
    first, second = classifier_inputs(p, head, train=True)
    for dropped in (first, second):
        kept = dropped != 0
        # Inverted dropout before the classifier: about half zeroed, the rest scaled by 2.
        assert 0.3 < 1 - kept.float().mean().item() < 0.7
        torch.testing.assert_close(dropped[kept], plain[kept] / (1 - p))
    assert not torch.equal(first, second)  # a fresh mask each pass
    # Evaluation: no dropout at all, the same inputs as without the key.
    for evaluated in classifier_inputs(p, head, train=False):
        assert torch.equal(evaluated, plain)


def epoch_orders(trainer: Trainer, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The item order of every epoch `run_epochs` runs for `trainer` (no model steps)."""
    orders: list[list[int]] = []

    def record(trainer: Trainer, loader, *_: object) -> dict[str, float]:
        orders.append([i for _, _, items in loader for i in items.tolist()])
        return {"train_loss": 0.0, "train_clip_acc": 0.0, "clips": 1}

    monkeypatch.setattr(train_module, "train_epoch", record)
    monkeypatch.setattr(train_module, "validate", lambda _: {"val_video_acc": 0.0})
    monkeypatch.setattr(train_module, "_epoch_line", lambda _: "")
    with quiet():
        run_epochs(trainer)
    return orders


def test_train_seed_and_epoch_alone_fix_each_epochs_order(
    tiny_dataset, tmp_path, monkeypatch
) -> None:
    keys = {"train.epochs": 3, "train.tensorboard": False}
    orders = epoch_orders(trainer_with(tiny_dataset, tmp_path / "a", **keys), monkeypatch)
    items = list(range(len(trainer_with(tiny_dataset, tmp_path / "n", **keys).data.train)))
    assert len(orders) == 3 and all(sorted(order) == items for order in orders)
    assert len({tuple(order) for order in orders}) == 3  # reshuffled every epoch
    assert orders[0] != items  # shuffled, not in dataset order
    # A run resumed at epoch 3 sees the order the uninterrupted run saw in its epoch 3.
    resumed = trainer_with(tiny_dataset, tmp_path / "b", **keys)
    resumed.state.epoch = 2
    assert epoch_orders(resumed, monkeypatch) == orders[2:]
    # Another seed, other orders.
    other = trainer_with(tiny_dataset, tmp_path / "c", **keys, **{"train.seed": 1})
    assert epoch_orders(other, monkeypatch)[0] != orders[0]
