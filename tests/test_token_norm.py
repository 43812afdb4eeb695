"""model.token_norm: how the cross-attention sees the CNN tokens (per token or per channel)."""

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


def _model(norm: str) -> torch.nn.Module:
    return build_model(load_config(None, {**SMALL, "model.token_norm": norm}), num_classes=3)


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
