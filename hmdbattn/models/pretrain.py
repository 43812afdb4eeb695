"""Self-supervised pretraining objectives for the CNN + attention head (``hmdbattn pretrain``).

Every objective hides space-time tubes (the same cells in every frame), lets the model encode
what is left into its latents, and asks a light decoder to predict what was hidden from those
latents alone, in the manner of Perceiver IO: one query per hidden position (its Fourier position
encoding) cross-attends to the latents. The decoder is dropped after pretraining; the CNN and the
head are what a fine-tuning run takes through ``model.init``.

- ``video`` mode, ``pixels``: the clip's hidden cells are zeroed (the dataset mean after
  normalisation) and their pixels reconstructed, normalised per patch as in VideoMAE.
- ``video`` mode, ``ema``: the same input masking; the targets are the CNN features of the whole
  clip computed by a slowly updated (EMA) copy of the CNN, layer-normalised per token.
- ``tokens`` mode: the CNN is frozen (already pretrained); its hidden tokens are removed before
  the head, which learns to predict their (layer-normalised) features from the visible ones.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hmdbattn.config import Config
from hmdbattn.errors import UserError
from hmdbattn.models.classifier import VideoClassifier
from hmdbattn.models.masking import gather_tokens, over_time, split_indices, upsample_mask
from hmdbattn.models.perceiver import (
    Attention,
    FeedForward,
    PerceiverHead,
    fourier_channels,
    fourier_encode,
)


class Decoder(nn.Module):
    """Queries (B, M, P) of hidden positions cross-attend to latents (B, L, D) -> (B, M, out)."""

    def __init__(self, latent_dim: int, pos_dim: int, dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(pos_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(latent_dim)
        self.attn = Attention(dim, latent_dim, heads, max(1, dim // heads), 0.0)
        self.ff = FeedForward(dim, 4, 0.0)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim))

    def forward(self, positions: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        q = self.query(positions)  # (B, M, dim)
        q = q + self.attn(self.norm(q), self.norm_context(latents))
        return self.out(self.ff(q))  # (B, M, out)


@dataclass
class Reconstruction:
    """One batch's hidden cells, predictions and targets (for pictures and tests)."""

    loss: torch.Tensor  # () mean squared error over the hidden positions
    hidden: torch.Tensor  # (B, M) indices into the target grid
    prediction: torch.Tensor  # (B, M, out)
    target: torch.Tensor  # (B, M, out)
    grid: tuple[int, int, int]  # the target grid (T, h, w) the indices refer to


def token_norm(features: torch.Tensor) -> torch.Tensor:
    """(B, C, T', H', W') -> (B, T'*H'*W', C), each token layer-normalised (no affine)."""
    tokens = features.permute(0, 2, 3, 4, 1).flatten(1, 3)  # (B, N, C)
    return F.layer_norm(tokens.float(), tokens.shape[-1:])


def head_context(head: PerceiverHead, tokens: torch.Tensor) -> torch.Tensor:
    """What the decoder reads: the CLS output (when there is one) and the latents (B, 1+L, D)."""
    cls, latents = head.encode(tokens)
    return latents if cls is None else torch.cat([cls, latents], dim=1)


class Pretrainer(nn.Module, abc.ABC):
    """The model being pretrained (classifier removed) plus its decoder; forward gives the loss.

    ``forward(clips, mask)``: clips (B, 3, T, H, W) normalised, mask (B, h, w) hidden cells of
    ``mask_grid``.
    """

    decoder: Decoder

    def __init__(self, model: VideoClassifier, config: Config) -> None:
        super().__init__()
        if not isinstance(model.head, PerceiverHead) or model.head.c.cross_layers < 1:
            raise UserError(
                "pretrain needs the attention head with cross-attention: set "
                'model.head = "perceiver" and model.cross_layers >= 1'
            )
        model.head.classifier = nn.Identity()  # type: ignore[assignment]  # no labels here
        self.model, self.config = model, config
        self.pos_dim = fourier_channels(model.head.c.num_freq_bands)

    @property
    def head(self) -> PerceiverHead:
        return self.model.head  # type: ignore[return-value]

    def forward(self, clips: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(clips, mask).loss

    @abc.abstractmethod
    def reconstruct(self, clips: torch.Tensor, mask: torch.Tensor) -> Reconstruction:
        """The loss of one batch, with what was hidden, predicted and aimed at."""

    def after_step(self) -> None:
        """Called after every optimiser step (the EMA objective updates its copy here)."""

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The weights ``model.init`` takes: CNN and head, without decoder or classifier."""
        return self.model.state_dict()

    def objective_state(self) -> dict[str, torch.Tensor]:
        """Everything else: the decoder (and the EMA copy), for resuming."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def load_states(self, encoder: dict[str, torch.Tensor], objective: dict[str, torch.Tensor]):
        """The inverse of `encoder_state` and `objective_state`, strictly."""
        self.load_state_dict({**{f"model.{k}": v for k, v in encoder.items()}, **objective})


def _decode_loss(
    decoder: Decoder,
    context: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
    hidden: torch.Tensor,
    grid: tuple[int, int, int],
) -> Reconstruction:
    """Predict the hidden targets from the context; mean squared error over them."""
    b = hidden.shape[0]
    pos = gather_tokens(positions.to(context.dtype).expand(b, -1, -1), hidden)  # (B, M, P)
    target = gather_tokens(targets, hidden)  # (B, M, out)
    prediction = decoder(pos, context).float()
    loss = F.mse_loss(prediction, target.float())
    return Reconstruction(loss, hidden, prediction, target, grid)


class PixelPretrainer(Pretrainer):
    """``video`` mode, ``pixels``: reconstruct hidden patches (normalised per patch)."""

    def __init__(self, model: VideoClassifier, config: Config) -> None:
        super().__init__(model, config)
        pc, d = config.pretrain, config.data
        self.p, self.tt = pc.patch_size, pc.patch_frames
        _check_divides("data.crop_size", d.crop_size, "pretrain.patch_size", self.p)
        _check_divides("data.num_frames", d.num_frames, "pretrain.patch_frames", self.tt)
        out = 3 * self.tt * self.p * self.p
        dim = self.head.c.latent_dim
        self.decoder = Decoder(dim, self.pos_dim, pc.decoder_dim, pc.decoder_heads, out)

    def raw_patches(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, N, 3, tt * p * p) patches, N = T/tt * H/p * W/p."""
        b, c, t, h, w = clips.shape
        p, tt = self.p, self.tt
        x = clips.reshape(b, c, t // tt, tt, h // p, p, w // p, p)  # (B, C, T/tt, tt, h, p, w, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, T/tt, h, w, C, tt, p, p)
        return x.reshape(b, -1, c, tt * p * p).float()  # (B, N, C, tt*p*p)

    def patches(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, N, 3 * tt * p * p), normalised per patch.

        Unnormalised with ``pretrain.norm_pixels = false``.
        """
        x = self.raw_patches(clips)
        if self.config.pretrain.norm_pixels:
            x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + 1e-6).sqrt()
        return x.flatten(2)  # (B, N, C*tt*p*p)

    def reconstruct(self, clips: torch.Tensor, mask: torch.Tensor) -> Reconstruction:
        t, h, w = clips.shape[2] // self.tt, clips.shape[3] // self.p, clips.shape[4] // self.p
        pixels = upsample_mask(mask, self.p)[:, None, None]  # (B, 1, 1, H, W)
        features = self.model.backbone(clips.masked_fill(pixels, 0.0))  # (B, C, T', H', W')
        context = head_context(self.head, self.head.tokens(features))
        c = self.head.c
        positions = fourier_encode((t, h, w), c.num_freq_bands, c.max_freq, clips.device)
        hidden, _ = split_indices(over_time(mask, t))
        return _decode_loss(
            self.decoder, context, positions, self.patches(clips), hidden, (t, h, w)
        )


class EmaPretrainer(Pretrainer):
    """``video`` mode, ``ema``: predict an EMA copy's CNN features at the hidden tokens."""

    def __init__(self, model: VideoClassifier, config: Config) -> None:
        super().__init__(model, config)
        pc = config.pretrain
        self.factor = _cells_per_token(config, model)
        self.teacher = copy.deepcopy(model.backbone).requires_grad_(False).eval()
        channels, dim = model.backbone.out_channels, self.head.c.latent_dim
        self.decoder = Decoder(dim, self.pos_dim, pc.decoder_dim, pc.decoder_heads, channels)

    def train(self, mode: bool = True) -> EmaPretrainer:
        super().train(mode)
        self.teacher.eval()  # the target copy always uses its running statistics
        return self

    @torch.no_grad()
    def after_step(self) -> None:
        keep = self.config.pretrain.ema_momentum
        student = self.model.backbone.state_dict()
        for name, value in self.teacher.state_dict().items():
            if value.is_floating_point():
                value.lerp_(student[name], 1.0 - keep)
            else:
                value.copy_(student[name])

    def reconstruct(self, clips: torch.Tensor, mask: torch.Tensor) -> Reconstruction:
        with torch.no_grad():
            targets = token_norm(self.teacher(clips))  # (B, N, C)
        pixels = upsample_mask(mask, self.factor[1])[:, None, None]  # (B, 1, 1, H, W)
        features = self.model.backbone(clips.masked_fill(pixels, 0.0))  # (B, C, T', H', W')
        t, h, w = features.shape[2:]
        context = head_context(self.head, self.head.tokens(features))
        token_mask = upsample_mask(mask, self.factor[0])  # (B, H', W')
        hidden, _ = split_indices(over_time(token_mask, t))
        c = self.head.c
        positions = fourier_encode((t, h, w), c.num_freq_bands, c.max_freq, clips.device)
        return _decode_loss(self.decoder, context, positions, targets, hidden, (t, h, w))


class TokenPretrainer(Pretrainer):
    """``tokens`` mode: frozen CNN; the head sees the visible tokens, predicts the hidden ones."""

    def __init__(self, model: VideoClassifier, config: Config) -> None:
        super().__init__(model, config)
        pc = config.pretrain
        model.backbone.requires_grad_(False)
        channels, dim = model.backbone.out_channels, self.head.c.latent_dim
        self.decoder = Decoder(dim, self.pos_dim, pc.decoder_dim, pc.decoder_heads, channels)

    def train(self, mode: bool = True) -> TokenPretrainer:
        super().train(mode)
        self.model.backbone.eval()  # frozen, BatchNorm statistics included
        return self

    def reconstruct(self, clips: torch.Tensor, mask: torch.Tensor) -> Reconstruction:
        with torch.no_grad():
            features = self.model.backbone(clips)  # (B, C, T', H', W')
        t, h, w = features.shape[2:]
        if mask.shape[1:] != (h, w):
            raise ValueError(f"tokens mode masks the token grid {h}x{w}, got {tuple(mask.shape)}")
        tokens = self.head.tokens(features)  # (B, N, C + P)
        hidden, visible = split_indices(over_time(mask, t))
        context = head_context(self.head, gather_tokens(tokens, visible))
        positions = tokens[0, :, features.shape[1] :]  # (N, P)
        return _decode_loss(
            self.decoder, context, positions, token_norm(features), hidden, (t, h, w)
        )


def _check_divides(key: str, value: int, by_key: str, by: int) -> None:
    if value % by:
        raise UserError(f"{key} = {value} is not a multiple of {by_key} = {by}: change one")


def _cells_per_token(config: Config, model: VideoClassifier) -> tuple[int, int]:
    """(tokens per mask cell side, pixels per mask cell side) for masking in pixels."""
    stride = model.backbone.spatial_stride
    p = config.pretrain.patch_size
    if p % stride:
        raise UserError(
            f"pretrain.patch_size = {p} is not a multiple of the CNN's spatial stride {stride} "
            f"at model.cnn_blocks = {config.model.cnn_blocks}: use {stride * max(1, p // stride)}"
        )
    _check_divides("data.crop_size", config.data.crop_size, "pretrain.patch_size", p)
    return p // stride, p


def mask_grid(config: Config, model: VideoClassifier) -> tuple[int, int]:
    """The (h, w) grid of cells a clip's mask is drawn on, for the configured mode."""
    crop = config.data.crop_size
    if config.pretrain.mode == "tokens":
        side = crop // model.backbone.spatial_stride
        return side, side
    p = config.pretrain.patch_size
    _check_divides("data.crop_size", crop, "pretrain.patch_size", p)
    return crop // p, crop // p


def build_pretrainer(model: VideoClassifier, config: Config) -> Pretrainer:
    """The objective named by ``pretrain.mode`` and ``pretrain.target``."""
    if config.pretrain.mode == "tokens":
        return TokenPretrainer(model, config)
    if config.pretrain.target == "ema":
        return EmaPretrainer(model, config)
    return PixelPretrainer(model, config)
