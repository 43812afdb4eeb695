"""The attention head's options for small data: model.token_norm, model.cross_logit_scale."""

from __future__ import annotations

import torch

from hmdbattn import build_model, load_config
from hmdbattn.models.classifier import param_counts
from hmdbattn.models.perceiver import TokenBatchNorm

SMALL = {
    "model.cnn_blocks": 1,
    "model.num_latents": 4,
    "model.latent_dim": 16,
    "model.latent_heads": 2,
    "model.latent_dim_head": 8,
    "model.cross_dim_head": 8,
    "model.num_freq_bands": 1,
}


def _model(norm: str = "layer", **extra: object) -> torch.nn.Module:
    overrides = {**SMALL, "model.token_norm": norm, **extra}
    return build_model(load_config(None, overrides), num_classes=3)


def test_batch_norm_keeps_how_strongly_a_token_fires() -> None:
    # Two tokens pointing the same way, one ten times stronger: LayerNorm makes them equal,
    # the per-channel norm keeps them apart (that difference is what max pooling reads).
    weak = torch.tensor([1.0, 0.0, 2.0, 0.0])
    tokens = torch.stack([weak, 10 * weak, torch.zeros(4), torch.ones(4)])[None]  # (1, 4, C)
    layer = torch.nn.LayerNorm(4)(tokens)
    batch = TokenBatchNorm(4).train()(tokens)
    assert torch.allclose(layer[0, 0], layer[0, 1], atol=1e-4)
    assert not torch.allclose(batch[0, 0], batch[0, 1], atol=1e-1)
    assert torch.allclose(batch.mean(dim=(0, 1)), torch.zeros(4), atol=1e-5)


def test_token_norm_swaps_the_norm_and_keeps_the_parameter_count() -> None:
    layer, batch = _model("layer"), _model("batch")
    norms = [m.norm_context for m in batch.head.cross]
    assert all(isinstance(n, TokenBatchNorm) for n in norms)
    assert not any(isinstance(m.norm_context, TokenBatchNorm) for m in layer.head.cross)
    assert param_counts(layer) == param_counts(batch)


def test_batch_token_norm_uses_running_statistics_in_eval() -> None:
    model = _model("batch")
    clips = torch.randn(4, 3, 4, 16, 16)  # (B, C, T, H, W)
    model.train()(clips)  # one batch of statistics
    model.eval()
    alone = model(clips[:1])
    together = model(clips)[:1]
    assert torch.allclose(alone, together, atol=1e-5), "eval output depends on the batch"
    model.train()
    assert not torch.allclose(model(clips[:1]), model(clips)[:1], atol=1e-5)


def _entropy(p: torch.Tensor) -> float:
    return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean().detach())


def test_cross_logit_scale_sharpens_the_attention_and_is_learned() -> None:
    plain, sharp = _model(), _model(**{"model.cross_logit_scale": 4.0})
    assert set(sharp.state_dict()) - set(plain.state_dict()) == {"head.cross.0.attn.log_scale"}
    sharp.load_state_dict(plain.state_dict(), strict=False)  # same weights but the factor
    layer_p, layer_s = plain.head.cross[0], sharp.head.cross[0]
    tokens = plain.head.tokens(plain.features(torch.randn(2, 3, 4, 16, 16)))  # (B, N, C + P)
    queries = layer_p.latents.expand(2, -1, -1)  # (B, L, D)

    def weights(layer: torch.nn.Module) -> torch.Tensor:
        return layer.attn.weights(layer.norm(queries), layer.norm_context(tokens))

    assert _entropy(weights(layer_s)) < _entropy(weights(layer_p)) - 0.05
    with torch.no_grad():
        layer_s.attn.log_scale.zero_()  # a factor of 1: the plain attention again
    assert torch.allclose(weights(layer_s), weights(layer_p), atol=1e-6)
    sharp(torch.randn(2, 3, 4, 16, 16)).sum().backward()
    assert layer_s.attn.log_scale.grad is not None and layer_s.attn.log_scale.grad != 0
