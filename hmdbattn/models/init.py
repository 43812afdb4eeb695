"""``model.init``: start a model from another run's checkpoint (``train`` or ``pretrain``).

A model's weights fall into three parts: the CNN (``backbone.*``), the head without its classifier
(``head.*``) and the classifier (``head.classifier.*``). By default every part the checkpoint can
give is loaded; the classifier is re-made when the checkpoint was trained on other classes (or has
none, as a pretraining checkpoint). Anything that does not fit is an error naming the key, unless
``model.init_parts`` says which parts to take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hmdbattn.checkpoint import load_checkpoint
from hmdbattn.config import Config
from hmdbattn.errors import UserError

PARTS = ("backbone", "head", "classifier")


def part_of(key: str) -> str:
    """The part a state-dict key belongs to."""
    if key.startswith("backbone."):
        return "backbone"
    return "classifier" if key.startswith("head.classifier.") else "head"


def split_parts(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A state dict grouped by part (parts without keys are absent)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        parts.setdefault(part_of(key), {})[key] = tensor
    return parts


@dataclass
class InitReport:
    """What ``model.init`` loaded (part -> tensors) and what is new (part -> why)."""

    source: str
    loaded: dict[str, int] = field(default_factory=dict)
    new: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        """One line for the run's log and the dry run."""
        loaded = ", ".join(f"{p} ({n} tensors)" for p, n in self.loaded.items()) or "nothing"
        new = ", ".join(f"{p} ({why})" for p, why in self.new.items()) or "nothing"
        return f"model.init {self.source}: loaded {loaded}; new: {new}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": self.loaded, "new": self.new}


def _check_fits(
    part: str, own: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], source: str
) -> None:
    """Every key of the model's part is in the checkpoint's with the same shape, and no more."""
    hint = "; set model.init_parts to the parts that fit"
    if own and not theirs:
        first = next(iter(own))
        raise UserError(
            f"model.init {source}: the checkpoint has no {part} weights ({first!r}){hint}"
        )
    for key, tensor in own.items():
        if key not in theirs:
            raise UserError(f"model.init {source}: {part} key {key!r} is missing{hint}")
        if theirs[key].shape != tensor.shape:
            raise UserError(
                f"model.init {source}: {part} key {key!r} has shape {tuple(theirs[key].shape)}, "
                f"this model's is {tuple(tensor.shape)}{hint}"
            )
    extra = sorted(set(theirs) - set(own))
    if extra:
        raise UserError(f"model.init {source}: {part} key {extra[0]!r} is not in this model{hint}")


def _default_parts(
    own: dict[str, dict], theirs: dict[str, dict], same_classes: bool, report: InitReport
) -> list[str]:
    """Every part the checkpoint can give; the classifier only for the same classes."""
    parts = []
    for part in PARTS:
        if part == "classifier" and not (same_classes and part in theirs):
            report.new[part] = "other classes" if part in theirs else "not in the checkpoint"
        else:
            parts.append(part)
    return parts


def load_init(
    model: nn.Module,
    path: Path,
    parts: Sequence[str] | None,
    classes: Sequence[str] | None,
) -> InitReport:
    """Load the parts of checkpoint `path` into `model`; `classes` are the run's class names.

    `parts` None takes every part the checkpoint can give (see the module docstring).
    """
    ckpt = load_checkpoint(path)
    report = InitReport(str(path))
    own, theirs = split_parts(model.state_dict()), split_parts(ckpt["model"])
    same_classes = classes is not None and list(ckpt.get("classes") or []) == list(classes)
    if parts is None:
        chosen = _default_parts(own, theirs, same_classes, report)
    else:
        chosen = list(parts)
        if "classifier" in chosen and not same_classes:
            raise UserError(
                f"model.init {path}: init_parts takes the classifier, but the checkpoint's "
                f"classes {ckpt.get('classes')} are not this run's: leave classifier out"
            )
    for part in PARTS:
        if part not in chosen:
            report.new.setdefault(part, "not taken (model.init_parts)")
    loaded: dict[str, torch.Tensor] = {}
    for part in chosen:
        # A part may be empty on both sides: the pool head has no weights but its classifier.
        _check_fits(part, own.get(part, {}), theirs.get(part, {}), str(path))
        if part in own:
            loaded |= theirs[part]
            report.loaded[part] = len(own[part])
    model.load_state_dict(loaded, strict=False)
    return report


def plan_init(config: Config) -> str:
    """What ``model.init`` would load into `config`'s model (for the dry run), as one line.

    The classes are the dataset's when its split files are there; otherwise the classifier is
    taken as new. A checkpoint that does not fit gives its error line instead.
    """
    from hmdbattn.data.formats import index_dataset
    from hmdbattn.models.classifier import build_model

    assert config.model.init is not None
    try:
        classes: list[str] | None = index_dataset(config.data).classes
    except UserError:
        classes = None
    mc = config.model.model_copy(update={"pretrained": False, "weights": None})
    model = build_model(mc, len(classes) if classes else None)
    try:
        return load_init(model, config.model.init, config.model.init_parts, classes).line()
    except UserError as exc:
        return f"cannot start from it: {exc}"
