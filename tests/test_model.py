"""The model: research parameter counts, torchvision equivalence, strict weights, gradients."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models.video import r2plus1d_18
from typer.testing import CliRunner

from hmdbattn import build_model, load_config
from hmdbattn.cli import _register, app
from hmdbattn.errors import UserError
from hmdbattn.models import backbone as backbone_module

ROOT = Path(__file__).resolve().parents[1]

# (blocks, cross, self per cross, head) -> research's (CNN M, attention M), reference.md section 1
RESEARCH = [
    ((8, 1, 6, "perceiver"), (31.3, 28.6)),
    ((8, 1, 2, "perceiver"), (31.3, 11.8)),
    ((8, 1, 1, "perceiver"), (31.3, 7.6)),
    ((7, 1, 1, "perceiver"), (17.1, 7.6)),
    ((6, 1, 6, "perceiver"), (7.8, 28.6)),
    ((4, 1, 6, "perceiver"), (1.9, 28.6)),
    ((4, 2, 6, "perceiver"), (1.9, 57.2)),
    ((8, 1, 0, "perceiver"), (31.3, 3.4)),
    ((8, 0, 1, "perceiver"), (31.3, 4.2)),
    ((8, 1, 1, "pool"), (31.3, 0.0)),
]


@pytest.mark.parametrize(("arch", "expected"), RESEARCH, ids=lambda v: str(v))
def test_dry_run_reproduces_research_parameter_counts(arch, expected) -> None:
    blocks, cross, self_layers, head = arch
    _register()
    args = ["train", "--config", str(ROOT / "configs" / "hmdb51.toml"), "--dry-run", "--json"]
    for key, value in [
        ("cnn_blocks", blocks),
        ("cross_layers", cross),
        ("self_layers", self_layers),
        ("head", head),
        ("pretrained", "false"),
    ]:
        args += ["--set", f"model.{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    params = summary["params"]
    assert isinstance(params["cnn"], int) and isinstance(params["attention"], int)
    assert round(params["cnn"] / 1e6, 1) == expected[0]
    assert round(params["attention"] / 1e6, 1) == expected[1]
    assert isinstance(summary["gmacs"], float) and summary["gmacs"] > 40


def test_baseline_gmacs_match_torchvision() -> None:
    from hmdbattn.models.classifier import clip_profile

    _, gmacs, grid = clip_profile(load_config(None, {"model.head": "pool"}))
    assert abs(gmacs - 40.519) < 0.01  # torchvision's published figure for 3x16x112x112
    assert grid == (2, 7, 7)


def tiny(overrides: dict | None = None, **model) -> dict:
    base = {
        "model.num_latents": 8,
        "model.latent_dim": 32,
        "model.latent_heads": 2,
        "model.latent_dim_head": 16,
        "model.cross_dim_head": 16,
        "model.num_classes": 5,
        "data.crop_size": 16,
        "data.num_frames": 4,
    }
    base.update({f"model.{k}": v for k, v in model.items()})
    base.update(overrides or {})
    return base


def saved_torchvision_weights(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    reference = r2plus1d_18(weights=None).eval()
    path = tmp_path / "r2plus1d_18.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


def test_features_equal_torchvision_layer4(tmp_path) -> None:
    reference, path = saved_torchvision_weights(tmp_path)
    model = build_model(load_config(None, tiny(cnn_blocks=8, weights=str(path)))).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        r = reference
        expected = r.layer4(r.layer3(r.layer2(r.layer1(r.stem(x)))))
        got = model.features(x)
    assert got.shape == expected.shape == (2, 512, 1, 2, 2)
    assert (got - expected).abs().max().item() < 1e-5


def test_fewer_blocks_take_the_matching_prefix(tmp_path) -> None:
    reference, path = saved_torchvision_weights(tmp_path)
    model = build_model(load_config(None, tiny(cnn_blocks=3, weights=str(path)))).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        expected = reference.layer2[0](reference.layer1(reference.stem(x)))
        assert (model.features(x) - expected).abs().max().item() < 1e-5


def test_wrong_shape_weights_are_refused_naming_the_key(tmp_path) -> None:
    _, path = saved_torchvision_weights(tmp_path)
    state = torch.load(path, weights_only=True)
    state["layer1.0.conv1.0.0.weight"] = torch.zeros(3, 3, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(UserError, match=r"'layer1\.0\.conv1\.0\.0\.weight' has shape"):
        build_model(load_config(None, tiny(cnn_blocks=2, weights=str(path))))


def test_missing_key_is_refused_naming_the_key(tmp_path) -> None:
    _, path = saved_torchvision_weights(tmp_path)
    state = torch.load(path, weights_only=True)
    del state["stem.1.weight"]
    torch.save(state, path)
    with pytest.raises(UserError, match=r"missing key 'stem\.1\.weight'"):
        build_model(load_config(None, tiny(cnn_blocks=1, weights=str(path))))


def test_pickled_code_in_weights_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"stem.0.weight": torch.zeros(1), "hook": Path("/")}, path)
    with pytest.raises(UserError, match="refused"):
        build_model(load_config(None, tiny(cnn_blocks=1, weights=str(path))))


def test_failed_download_says_where_to_put_the_file(monkeypatch) -> None:
    def offline(self, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(
        type(backbone_module.R2Plus1D_18_Weights.KINETICS400_V1), "get_state_dict", offline
    )
    with pytest.raises(UserError) as info:
        build_model(load_config(None, tiny(cnn_blocks=1, pretrained=True)))
    message = str(info.value)
    assert "r2plus1d_18-91a641e6.pth" in message and "model.pretrained = false" in message


LAYOUTS = [
    {"cross_layers": 0, "self_layers": 1},
    {"cross_layers": 1, "self_layers": 0},
    {"cross_layers": 1, "self_layers": 1},
    {"cross_layers": 2, "self_layers": 1},
    {"cross_layers": 1, "self_layers": 6},
    {"cross_layers": 3, "self_layers": 1, "share_cross_weights": True},
    {"head": "pool"},
    {"head": "pool", "pool": "max"},
    {"head": "pool", "pool": "avgmax"},
]


@pytest.mark.parametrize(
    "layout", LAYOUTS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items())
)
def test_every_parameter_gets_a_finite_nonzero_gradient(layout) -> None:
    torch.manual_seed(0)
    model = build_model(load_config(None, tiny(cnn_blocks=2, **layout)))
    before = {name for name, _ in model.named_parameters()}
    logits = model(torch.randn(2, 3, 4, 16, 16))
    assert logits.shape == (2, 5)
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3])).backward()
    # Every parameter existed before the first forward (the optimiser must see them all).
    assert {name for name, _ in model.named_parameters()} == before
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax"])
def test_pool_head_pools_over_time_and_space(pool) -> None:
    from hmdbattn.models.classifier import PoolHead

    features = torch.zeros(2, 3, 4, 5, 5)  # (B, C, T', H', W')
    features[:, :, 1, 2, 3] = 10.0  # one bright spot per channel: mean 10 / 100, max 10
    pooled = PoolHead(3, 7, 0.0, pool).pooled(features)
    expected = {
        "avg": torch.full((2, 3), 0.1),
        "max": torch.full((2, 3), 10.0),
        "avgmax": torch.cat([torch.full((2, 3), 0.1), torch.full((2, 3), 10.0)], 1),
    }[pool]
    assert torch.allclose(pooled, expected)


def test_shared_cross_weights_have_fewer_parameters() -> None:
    """Repeats 3 and 4 are the second repeat's modules; a gradient step moves them together."""
    torch.manual_seed(0)
    config = load_config(None, tiny(cnn_blocks=1, cross_layers=4, share_cross_weights=True))
    model = build_model(config)
    head = model.head
    for i in (2, 3):
        assert head.cross[i] is head.cross[1] and head.blocks[i] is head.blocks[1]
    for modules in (head.cross, head.blocks):  # the first repeat has its own weights
        own = {id(p) for p in modules[0].parameters()}
        assert own.isdisjoint(id(p) for p in modules[1].parameters())
    shared = {id(p) for m in (head.cross[1], head.blocks[1]) for p in m.parameters()}
    unique = {id(p) for p in model.parameters()}  # each parameter once, for the optimiser
    assert shared <= unique and len(unique) == len(list(model.parameters()))
    before = {name: p.detach().clone() for name, p in head.named_parameters(remove_duplicate=False)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(
        model(torch.randn(2, 3, 4, 16, 16)), torch.tensor([0, 1])
    ).backward()
    optimizer.step()
    after = dict(head.named_parameters(remove_duplicate=False))
    for name, p in after.items():
        if name.startswith(("cross.1.", "blocks.1.")):
            assert not torch.equal(p, before[name]), name  # the step reached the shared weights
            for i in (2, 3):
                twin = name.replace(".1.", f".{i}.", 1)
                assert torch.equal(after[twin], p), twin  # ...and their repeats with them
    separate = build_model(load_config(None, tiny(cnn_blocks=1, cross_layers=4)))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    per_stage = (count(separate) - count(model)) / 2
    assert count(model) < count(separate) and per_stage > 0


def test_public_api() -> None:
    import hmdbattn

    assert callable(hmdbattn.load_config) and callable(hmdbattn.build_model)
    model = hmdbattn.build_model(hmdbattn.load_config(None, tiny(cnn_blocks=1)))
    assert model.features(torch.randn(1, 3, 4, 16, 16)).shape == (1, 64, 4, 8, 8)
