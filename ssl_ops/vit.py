"""timm's Vision Transformer as an sslpipe backbone: the CLS token as the pooled feature, and
the tokens, with a per-sample mask or a subset of visible patches, for the methods that need
them (``backbones.Backbone`` is the protocol; ``backbones.VIT_SHAPES`` the named sizes)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class Tokens(NamedTuple):
    """A ViT's output tokens after the final norm."""

    cls: torch.Tensor  # (N, D)
    patches: torch.Tensor  # (N, P', D): every patch, or the kept ones


class ViT(VisionTransformer):
    """timm's ``VisionTransformer`` (class token, learnt absolute position embeddings,
    pre-norm blocks, LayerNorm ε 1e-6, qkv bias: the architecture of facebookresearch/dino
    ``vision_transformer.py`` and facebookresearch/mae ``models_mae.py``) without a
    classifier; the pooled feature is the CLS token after the final norm.

    Position embeddings are interpolated to other grids bicubically without antialiasing,
    as the official DINO ``VisionTransformer.interpolate_pos_encoding`` does.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        image_size: int,
        drop_path_rate: float = 0.0,
        mask_token: bool = False,
    ) -> None:
        super().__init__(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            num_classes=0,
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
        )
        self.feature_dim = embed_dim
        self.patch_size = patch_size
        self.mask_token = nn.Parameter(torch.zeros(embed_dim)) if mask_token else None

    def num_patches(self, image_size: int) -> int:
        return (image_size // self.patch_size) ** 2

    def _embed(self, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Patch embeddings (masked ones replaced), the class token prepended, position
        embeddings added: (N, 1 + P, D)."""
        patches = self.patch_embed(images)  # (N, H', W', D) with dynamic_img_size
        batch, height, width, dim = patches.shape
        patches = patches.reshape(batch, height * width, dim)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("forward_tokens(mask=...): build the ViT with mask_token")
            token = self.mask_token.to(patches.dtype)
            patches = torch.where(mask.unsqueeze(-1), token, patches)
        position = self.pos_embed
        grid = tuple(self.patch_embed.grid_size)
        if (height, width) != grid:
            position = resample_abs_pos_embed(
                position, new_size=[height, width], old_size=list(grid), antialias=False
            )
        cls = self.cls_token.expand(batch, -1, -1)
        return torch.cat([cls, patches], dim=1) + position

    def forward_tokens(
        self,
        images: torch.Tensor,
        keep: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> Tokens:
        """The class and patch tokens. ``keep`` (N, K) int64: only these patches enter the
        blocks (position embeddings added before dropping, as MAE's
        ``forward_encoder``); ``mask`` (N, P) bool: those patches become the mask token
        (iBOT)."""
        tokens = self._embed(images, mask)
        if keep is not None:
            patches = tokens[:, 1:].gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
            tokens = torch.cat([tokens[:, :1], patches], dim=1)
        tokens = self.norm(self.blocks(self.norm_pre(self.patch_drop(tokens))))
        return Tokens(tokens[:, 0], tokens[:, 1:])

    def forward_last_blocks(self, images: torch.Tensor, n: int) -> list[torch.Tensor]:
        """The normed outputs (N, 1 + P, D) of the last ``n`` blocks (DINO's evaluation,
        ``get_intermediate_layers`` in the official vision_transformer.py)."""
        tokens = self.norm_pre(self.patch_drop(self._embed(images, None)))
        outputs = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index >= len(self.blocks) - n:
                outputs.append(self.norm(tokens))
        return outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.forward_tokens(images).cls


class LastBlocksFeatures(nn.Module):
    """A ViT's features as DINO's linear evaluation takes them (facebookresearch/dino
    ``eval_linear.py``: ``get_intermediate_layers(inp, n)``): the CLS tokens of the last
    ``n_last_blocks`` blocks concatenated (n = 4 for ViT-S), and with ``avgpool_patch_tokens``
    the mean patch token of the last block too (ViT-B, n = 1). The official code interleaves
    the CLS and mean features when it pools; this concatenates them (the same features in
    another order, equivalent for a linear or kNN probe)."""

    def __init__(self, vit: ViT, n_last_blocks: int, avgpool_patch_tokens: bool) -> None:
        super().__init__()
        self.vit = vit
        self.n_last_blocks = n_last_blocks
        self.avgpool_patch_tokens = avgpool_patch_tokens
        self.feature_dim = vit.embed_dim * (n_last_blocks + int(avgpool_patch_tokens))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.vit.forward_last_blocks(images, self.n_last_blocks)
        features = [tokens[:, 0] for tokens in outputs]
        if self.avgpool_patch_tokens:
            features.append(outputs[-1][:, 1:].mean(dim=1))
        return torch.cat(features, dim=-1)
