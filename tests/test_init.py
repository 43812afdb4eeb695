"""model.init: which parts of a checkpoint load into a new model, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY

from hmdbattn import load_config
from hmdbattn.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, atomic_save
from hmdbattn.errors import ConfigError, UserError
from hmdbattn.models.classifier import VideoClassifier, build_model
from hmdbattn.models.init import load_init

CLASSES = ["a", "b", "c", "d"]


def tiny_model(num_classes: int = 4, **extra: object) -> VideoClassifier:
    return build_model(load_config(None, {**TINY, **extra}), num_classes)


def save(model: VideoClassifier, path: Path, classes: list[str] | None) -> Path:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": state}
    atomic_save(ckpt | {"classes": classes, "config": {}}, path)
    return path


def same(a: VideoClassifier, b: VideoClassifier, prefix: str) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(sa[k], sb[k]) for k in keys)


def test_everything_loads_for_the_same_classes(tmp_path) -> None:
    torch.manual_seed(1)
    source = tiny_model()
    path = save(source, tmp_path / "a.pt", CLASSES)
    torch.manual_seed(2)
    model = tiny_model()
    assert not same(model, source, "backbone.")
    report = load_init(model, path, None, CLASSES)
    for prefix in ("backbone.", "head.cross.", "head.blocks.", "head.classifier."):
        assert same(model, source, prefix), prefix
    assert set(report.loaded) == {"backbone", "head", "classifier"} and not report.new


def test_classifier_is_new_for_other_classes(tmp_path) -> None:
    source = tiny_model(num_classes=6)
    path = save(source, tmp_path / "a.pt", [*CLASSES, "e", "f"])
    torch.manual_seed(3)
    model = tiny_model()
    fresh = model.head.classifier.fc.weight.clone()
    report = load_init(model, path, None, CLASSES)
    assert same(model, source, "backbone.") and same(model, source, "head.cross.")
    assert torch.equal(model.head.classifier.fc.weight, fresh)  # untouched, 4 classes
    assert report.new == {"classifier": "other classes"}
    assert "classifier (other classes)" in report.line()


def test_init_parts_takes_only_what_it_names(tmp_path) -> None:
    source = tiny_model()
    path = save(source, tmp_path / "a.pt", CLASSES)
    torch.manual_seed(4)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_init(model, path, ["backbone"], CLASSES)
    assert same(model, source, "backbone.")
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("head."))
    assert list(report.loaded) == ["backbone"]
    assert set(report.new) == {"head", "classifier"}


def test_a_pool_checkpoint_gives_no_attention_head(tmp_path) -> None:
    path = save(tiny_model(**{"model.head": "pool"}), tmp_path / "pool.pt", CLASSES)
    with pytest.raises(UserError, match=r"has no head weights \('head\..*init_parts"):
        load_init(tiny_model(), path, None, CLASSES)
    load_init(tiny_model(), path, ["backbone"], CLASSES)  # what the hint says works


def test_wrong_shapes_and_missing_blocks_name_the_key(tmp_path) -> None:
    path = save(tiny_model(**{"model.latent_dim": 48}), tmp_path / "wide.pt", CLASSES)
    with pytest.raises(UserError, match=r"head key '.*' has shape .*48"):
        load_init(tiny_model(), path, None, CLASSES)
    path = save(tiny_model(), tmp_path / "one.pt", CLASSES)
    with pytest.raises(UserError, match=r"backbone key 'backbone\.layer1\.1\..*' is missing"):
        load_init(tiny_model(**{"model.cnn_blocks": 2}), path, ["backbone"], CLASSES)


def test_classifier_of_other_classes_cannot_be_asked_for(tmp_path) -> None:
    path = save(tiny_model(), tmp_path / "a.pt", ["w", "x", "y", "z"])
    with pytest.raises(UserError, match="leave classifier out"):
        load_init(tiny_model(), path, ["backbone", "classifier"], CLASSES)


def test_not_a_checkpoint_is_refused(tmp_path) -> None:
    bad = tmp_path / "x.pt"
    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="not an hmdbattn checkpoint"):
        load_init(tiny_model(), bad, None, CLASSES)


def test_init_parts_needs_init() -> None:
    with pytest.raises(ConfigError, match=r"model: .*init_parts is set but init is not"):
        load_config(None, {"model.init_parts": ["backbone"]})
    with pytest.raises(ConfigError, match=r"model\.init_parts"):
        load_config(None, {"model.init": "x.pt", "model.init_parts": ["cnn"]})
