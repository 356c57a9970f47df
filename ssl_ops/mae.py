"""MAE: masked autoencoders (He et al., CVPR 2022), as the official code trains them
(facebookresearch/mae @ efb2a80; ``models_mae.py``, ``main_pretrain.py``, ``util/pos_embed.py``).

Per sample, 75 % of the patches are hidden: a uniform noise per patch is argsorted and the
patches of the smallest quarter are kept (``random_masking``, ``models_mae.py:123-148``). The
encoder (the backbone) runs on the kept patches only, its position embeddings added before the
others are dropped (``forward_encoder``, ``models_mae.py:150-170``). A light decoder — a linear
map to 512 wide, a learnt mask token in every hidden place, fixed 2-d sin-cos position
embeddings, 8 transformer blocks of 16 heads, a norm and a linear map to the patch's pixels
(``forward_decoder``, ``models_mae.py:172-196``; ``mae_vit_*_dec512d8b``) — predicts every patch.
The loss is the mean squared error on the hidden patches only, each patch's target normalised
by its own mean and variance (``norm_pix_loss``, ``forward_loss``, ``models_mae.py:198-214``)::

    loss = Σ_n,l mask[n, l] · mean_j (pred[n, l, j] − target[n, l, j])² / Σ mask

MAE keeps no state besides its weights and has no embedding to monitor.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from ._common import full_precision
from .heads import register_head
from .method import Batch, MethodOutput, MethodSettings, SSLMethod, load_attribute

if TYPE_CHECKING:
    from .catalog import MethodCard
    from .vit import Tokens


def sincos_position_embedding(dim: int, height: int, width: int) -> torch.Tensor:
    """The fixed (height·width)×dim 2-d sin-cos embedding of ``util/pos_embed.py:20-64``, rows in
    row-major patch order: the first half of each row encodes the column, the second the row,
    each as [sin(x·ω), cos(x·ω)] with ω_i = 10000^(−i/(dim/4)) (float64, then cast by the user)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding: width {dim} is not a multiple of 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )

    def encode(position: torch.Tensor) -> torch.Tensor:
        angles = position.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """N×3×H×W → N×L×(patch²·3), patches row-major, pixels (row, column, channel) inside each
    (``patchify``, ``models_mae.py:95-107``)."""
    n, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"patchify: image {h}×{w} is not a whole number of {patch}-px patches")
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // patch) * (w // patch), -1)


def random_masking(
    batch: int,
    length: int,
    mask_ratio: float,
    *,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, mask)``: per sample, the indices (N×K, K = ⌊L·(1 − ratio)⌋) of the patches with
    the smallest noise, in increasing noise order, and the N×L mask (1 = hidden) of
    ``random_masking`` (``models_mae.py:123-148``)."""
    kept = int(length * (1 - mask_ratio))
    if not 0 < kept < length:
        raise ValueError(f"mask_ratio {mask_ratio} of {length} patches keeps {kept} of them")
    noise = torch.rand(batch, length, device=device, generator=generator)
    keep = torch.argsort(noise, dim=1)[:, :kept]
    mask = torch.ones(batch, length, device=device).scatter_(1, keep, 0.0)
    return keep, mask


@full_precision
def mae_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    norm_pix_loss: bool = True,
) -> torch.Tensor:
    """Mean over the hidden patches (``mask`` 1) of the per-patch mean squared error between
    ``pred`` and the patchified image ``target`` (N×L×P), the target normalised per patch with
    ``norm_pix_loss`` (variance unbiased, + 1e-6; ``forward_loss``)."""
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


@register_head("mae_decoder")
class MAEDecoder(nn.Module):
    """The MAE decoder (module docstring): ``forward(tokens, keep, grid)`` takes the encoder's
    normed tokens (``Tokens``: CLS N×D, kept patches N×K×D), the kept patches' indices (N×K) in
    a ``grid`` = (rows, columns) of patches, and returns every patch's prediction
    (N×L×patch²·3). Without ``keep`` every patch was kept, in order, on a square grid unless
    ``grid`` says otherwise (what ``SSLMethod.encoder()`` gives it). Initialised as
    ``initialize_weights`` (xavier-uniform linears, zero biases, mask token normal, std 0.02)."""

    takes_tokens = True  # the encoder feeds it backbone.forward_tokens(images)

    def __init__(
        self,
        embed_dim: int,
        patch_size: int,
        *,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
    ) -> None:
        from timm.models.vision_transformer import Block  # the official decoder's block

        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)
        )
        self.norm = norm(dim)
        self.pred = nn.Linear(dim, patch_size**2 * in_chans)
        self.apply(_xavier_init)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(
        self,
        tokens: Tokens,
        keep: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        x = self.embed(torch.cat([tokens.cls.unsqueeze(1), tokens.patches], dim=1))
        n, dim = x.shape[0], self.dim
        if grid is None:
            if keep is not None:
                raise ValueError("MAEDecoder: give the grid of the patches that keep indexes")
            side = math.isqrt(tokens.patches.shape[1])
            grid = (side, side)
        length = grid[0] * grid[1]
        if keep is None:
            keep = torch.arange(length, device=x.device).expand(n, -1)
        # Mask tokens everywhere, the kept tokens scattered back to their places: the official
        # concatenation then unshuffle by ids_restore.
        patches = self.mask_token.to(x.dtype).expand(n, length, dim).clone()
        patches.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, dim), x[:, 1:])
        position = sincos_position_embedding(dim, *grid).to(x.device, x.dtype)
        # The CLS token's position embedding is zero (get_2d_sincos_pos_embed cls_token=True).
        x = torch.cat([x[:, :1], patches + position], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]


def _official_encoder_init(backbone: nn.Module) -> None:
    """The encoder as ``initialize_weights`` (``models_mae.py:65-93``) starts it: FIXED sin-cos
    position embeddings (zero for the CLS token; no gradient), the patch projection
    xavier-uniform as a linear map, the CLS token normal with std 0.02, linears xavier-uniform
    with zero biases, layer norms 1 and 0. ``backbone`` is a timm ViT (``pos_embed``
    1×(1 + P)×D, ``patch_embed``, ``cls_token``)."""
    backbone.apply(_xavier_init)
    weight = backbone.patch_embed.proj.weight
    with torch.no_grad():
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.normal_(backbone.cls_token, std=0.02)
        position = backbone.pos_embed
        table = sincos_position_embedding(position.shape[-1], *backbone.patch_embed.grid_size)
        position[0, 0].zero_()
        position[0, 1:].copy_(table)
    position.requires_grad_(False)


def _xavier_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MAE(SSLMethod):
    """A ViT backbone (the encoder) and ``MAEDecoder`` trained by ``mae_loss`` on one view
    (module docstring). The probe and export use the backbone alone, on whole images.

    Options: ``mask_ratio`` (0.75), ``decoder_dim`` (512), ``decoder_depth`` (8),
    ``decoder_heads`` (16).
    """

    def __init__(self, card: MethodCard, settings: MethodSettings) -> None:
        super().__init__()
        options = settings.options
        self.loss_options = dict(settings.loss)
        self.objective = load_attribute(card.objective)
        self.mask_ratio = float(options["mask_ratio"])
        self.backbone = settings.make_backbone()
        _official_encoder_init(self.backbone)
        self.patch_size = int(self.backbone.patch_size)
        self.projector = self.build_head(
            "mae_decoder",
            embed_dim=self.backbone.embed_dim,
            patch_size=self.patch_size,
            dim=int(options["decoder_dim"]),
            depth=int(options["decoder_depth"]),
            num_heads=int(options["decoder_heads"]),
        )

    def forward(self, views: list[torch.Tensor], batch: Batch) -> MethodOutput:
        (images,) = views
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        keep, mask = random_masking(
            images.shape[0], grid[0] * grid[1], self.mask_ratio, device=images.device
        )
        tokens = self.backbone.forward_tokens(images, keep=keep)
        pred = self.projector(tokens, keep, grid)
        target = patchify(images, self.patch_size)
        loss = self.objective(pred, target, mask, **self.loss_options)
        # The online probe reads the CLS token of the visible quarter (no second, unmasked pass).
        return MethodOutput({"loss": loss}, embedding=None, features=tokens.cls.detach())
