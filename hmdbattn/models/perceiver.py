"""A Perceiver-style attention head over the CNN's space-time tokens (reference.md section 1).

Layout: ``cross_layers`` x (one cross-attention layer + ``self_layers`` self-attention blocks).
Learned latents cross-attend to the tokens (CNN features concatenated with a Fourier position
encoding); a learned CLS token joins the latents for self-attention; the classifier reads the CLS
output (or the mean latent when there is no self-attention). With ``cross_layers = 0`` the
self-attention runs on the CNN tokens themselves, with the position encoding added.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hmdbattn.config import ModelConfig


def fourier_encode(grid: tuple[int, ...], num_bands: int, max_freq: float, device=None):
    """Fourier features of a (T, H, W) grid: (T*H*W, 3 * (2 * num_bands + 1)).

    Each axis contributes sin and cos of its position in [-1, 1] at `num_bands` frequencies
    spread linearly from 1 to max_freq / 2, plus the raw position.
    """
    axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in grid]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (T, H, W, 3)
    freqs = torch.linspace(1.0, max_freq / 2, num_bands, device=device)  # (F,)
    scaled = pos[..., None] * freqs * math.pi  # (T, H, W, 3, F)
    enc = torch.cat([scaled.sin(), scaled.cos(), pos[..., None]], dim=-1)  # (T, H, W, 3, 2F+1)
    return enc.flatten(0, 2).flatten(1)  # (T*H*W, 3*(2F+1))


def fourier_channels(num_bands: int) -> int:
    """Channels the position encoding adds to each token."""
    return 3 * (2 * num_bands + 1)


class Attention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention`` (queries from x)."""

    def __init__(
        self,
        dim: int,
        context_dim: int,
        heads: int,
        dim_head: int,
        dropout: float,
        logit_scale: float = 1.0,
    ):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dropout = heads, dropout
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        # A learned factor on the logits (kept as its log, so it stays positive), started at
        # `logit_scale`; at 1 there is none, the plain attention (and its checkpoints) unchanged.
        self.log_scale = (
            nn.Parameter(torch.tensor(math.log(logit_scale))) if logit_scale != 1.0 else None
        )

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> per-head queries (B, h, N, d), times the learned logit factor."""
        q = self.split_heads(self.to_q(x))
        return q if self.log_scale is None else q * self.log_scale.exp()

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)  # (B, N, h*d) -> (B, h, N, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self.queries(x)
        k, v = (self.split_heads(t) for t in self.to_kv(context).chunk(2, dim=-1))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, N, d)
        return self.to_out(out.transpose(1, 2).flatten(2))  # (B, N, h*d) -> (B, N, dim)

    def weights(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attention probabilities (B, h, N_query, N_context), for explanations."""
        q = self.queries(x)
        k, _ = (self.split_heads(t) for t in self.to_kv(context).chunk(2, dim=-1))
        return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(dim=-1)


class FeedForward(nn.Module):
    """Pre-norm GEGLU feed-forward: d -> 2*mult*d -> GEGLU -> mult*d -> d."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.proj_out = nn.Linear(mult * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return x + self.dropout(self.proj_out(h * F.gelu(gate)))


class SelfBlock(nn.Module):
    """Pre-norm self-attention and feed-forward, each with a residual."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c.latent_dim)
        self.attn = Attention(
            c.latent_dim, c.latent_dim, c.latent_heads, c.latent_dim_head, c.attn_dropout
        )
        self.ff = FeedForward(c.latent_dim, c.ff_mult, c.ff_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return self.ff(x + self.attn(h, h))


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of tokens (B, N, C): each channel standardised over the
    batch's tokens (running statistics in eval mode).

    LayerNorm rescales every token to unit variance, so a background token that barely fires
    looks as loud as the object's; per-channel statistics keep that difference, which is what
    max pooling exploits.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)  # (B, N, C) via (B, C, N)


def token_norm(kind: str, dim: int) -> nn.Module:
    """The normalisation of the tokens a cross-attention layer reads (``model.token_norm``)."""
    return TokenBatchNorm(dim) if kind == "batch" else nn.LayerNorm(dim)


class CrossLayer(nn.Module):
    """Latents cross-attend to the tokens (both normalised), then a feed-forward.

    Each layer owns a learned latent array: the first layer's is the query set; later layers add
    theirs to the incoming latents as a learned per-layer query. (The research's parameter counts,
    e.g. 57.2M for 2 cross + 12 self, count one latent array per cross layer.)
    """

    def __init__(self, c: ModelConfig, token_dim: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(c.num_latents, c.latent_dim) * 0.02)
        self.norm = nn.LayerNorm(c.latent_dim)
        self.norm_context = token_norm(c.token_norm, token_dim)
        self.attn = Attention(
            c.latent_dim,
            token_dim,
            c.cross_heads,
            c.cross_dim_head,
            c.attn_dropout,
            c.cross_logit_scale,
        )
        self.ff = FeedForward(c.latent_dim, c.ff_mult, c.ff_dropout)

    def forward(self, x: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        queries = self.latents.expand(tokens.shape[0], -1, -1)  # (B, L, D)
        x = queries if x is None else x + queries
        x = x + self.attn(self.norm(x), self.norm_context(tokens))
        return self.ff(x)


class Classifier(nn.Module):
    """LayerNorm, dropout and a linear layer to class logits."""

    def __init__(self, dim: int, num_classes: int, dropout: float, norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.norm(x)))


class PerceiverHead(nn.Module):
    """CNN feature map (B, C, T', H', W') -> logits (B, num_classes)."""

    def __init__(self, c: ModelConfig, token_dim: int, num_classes: int) -> None:
        super().__init__()
        self.c, self.token_dim = c, token_dim
        pos_dim = fourier_channels(c.num_freq_bands)
        if c.cross_layers > 0:
            self.cross = nn.ModuleList(
                CrossLayer(c, token_dim + pos_dim) for _ in range(c.cross_layers)
            )
        else:
            # Self-attention straight on the CNN tokens: project them (when widths differ) and
            # add the projected position encoding.
            self.token_proj = (
                nn.Linear(token_dim, c.latent_dim) if token_dim != c.latent_dim else nn.Identity()
            )
            self.pos_proj = nn.Linear(pos_dim, c.latent_dim)
        stages = max(1, c.cross_layers)
        self.blocks = nn.ModuleList(
            nn.Sequential(*(SelfBlock(c) for _ in range(c.self_layers))) for _ in range(stages)
        )
        if c.share_cross_weights:
            # The Perceiver's weight sharing: every repeat after the second reuses the second.
            for i in range(2, c.cross_layers):
                self.cross[i], self.blocks[i] = self.cross[1], self.blocks[1]
        # Random, not zero: a zero CLS query would give to_q of the last block no gradient.
        self.cls = nn.Parameter(torch.randn(1, 1, c.latent_dim) * 0.02) if c.self_layers else None
        self.classifier = Classifier(c.latent_dim, num_classes, c.head_dropout)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, T', H', W') -> (B, T'*H'*W', C + position channels)."""
        b, _, t, h, w = features.shape
        x = features.permute(0, 2, 3, 4, 1).flatten(1, 3)  # (B, T'*H'*W', C)
        pos = fourier_encode((t, h, w), self.c.num_freq_bands, self.c.max_freq, features.device)
        pos = pos.to(x.dtype).expand(b, -1, -1)  # (B, T'*H'*W', P)
        return torch.cat([x, pos], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(features))

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        """The vector the classifier reads: (B, latent_dim)."""
        cls, latents = self.encode(self.tokens(features))
        return latents.mean(dim=1) if cls is None else cls[:, 0]  # (B, D)

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Tokens (B, N, C + P) -> the CLS output (B, 1, D) or None, and the latents (B, L, D).

        `tokens` may be any subset of a clip's tokens (pretraining hides the masked ones).
        """
        latents: torch.Tensor | None = None
        if self.c.cross_layers == 0:
            c = self.token_dim
            latents = self.token_proj(tokens[..., :c]) + self.pos_proj(tokens[..., c:])  # (B, N, D)
        cls = None if self.cls is None else self.cls.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        for i, blocks in enumerate(self.blocks):
            if self.c.cross_layers > 0:
                latents = self.cross[i](latents, tokens)  # (B, L, D)
            assert latents is not None
            if cls is not None:
                x = blocks(torch.cat([cls, latents], dim=1))  # (B, 1 + L, D)
                cls, latents = x[:, :1], x[:, 1:]
        assert latents is not None
        return cls, latents
