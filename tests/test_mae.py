"""MAE against a line-by-line port of the official code (facebookresearch/mae @ efb2a80), in
float64: masking, the encoder on the kept patches, the decoder, the sin-cos embeddings and the
loss; and the method's step."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

from sslpipe.ssl_ops.catalog import get_method
from sslpipe.ssl_ops.heads import Encoder, HeadSpec
from sslpipe.ssl_ops.mae import (
    mae_loss,
    patchify,
    random_masking,
    sincos_position_embedding,
)
from sslpipe.ssl_ops.method import Batch, MethodSettings, build_method

# ---- the official code, ported line by line (np.float for the removed numpy alias) ----


def get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False):  # util/pos_embed.py:20-35
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0)

    grid = grid.reshape([2, 1, grid_size, grid_size])
    pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid)
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


def get_2d_sincos_pos_embed_from_grid(embed_dim, grid):  # util/pos_embed.py:38-46
    assert embed_dim % 2 == 0
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # (H*W, D/2)
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # (H*W, D/2)
    emb = np.concatenate([emb_h, emb_w], axis=1)  # (H*W, D)
    return emb


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):  # util/pos_embed.py:49-65
    assert embed_dim % 2 == 0
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega  # (D/2,)
    pos = pos.reshape(-1)  # (M,)
    out = np.einsum("m,d->md", pos, omega)  # (M, D/2), outer product
    emb_sin = np.sin(out)  # (M, D/2)
    emb_cos = np.cos(out)  # (M, D/2)
    emb = np.concatenate([emb_sin, emb_cos], axis=1)  # (M, D)
    return emb


class OfficialMAEParts(nn.Module):
    """``MaskedAutoencoderViT``'s masking, encoder loop, decoder and loss (models_mae.py:
    95-214), on the modules of a given encoder (patch_embed, cls_token, pos_embed, blocks,
    norm) so both sides share weights."""

    def __init__(self, encoder, patch_size, embed_dim, decoder_embed_dim, decoder_depth,
                 decoder_num_heads, num_patches, norm_pix_loss):  # fmt: skip
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.encoder = encoder
        self.p = patch_size
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [
                Block(
                    decoder_embed_dim, decoder_num_heads, 4.0, qkv_bias=True, norm_layer=norm_layer
                )
                for i in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * 3, bias=True)
        self.norm_pix_loss = norm_pix_loss
        decoder_pos_embed = get_2d_sincos_pos_embed(
            self.decoder_pos_embed.shape[-1], int(num_patches**0.5), cls_token=True
        )
        self.decoder_pos_embed.data.copy_(torch.from_numpy(decoder_pos_embed).float().unsqueeze(0))

    def patchify(self, imgs):
        p = self.p
        assert imgs.shape[2] == imgs.shape[3] and imgs.shape[2] % p == 0
        h = w = imgs.shape[2] // p
        x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
        x = torch.einsum("nchpwq->nhwpqc", x)
        x = x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))
        return x

    def random_masking(self, x, mask_ratio):
        N, L, D = x.shape  # batch, length, dim
        len_keep = int(L * (1 - mask_ratio))
        noise = torch.rand(N, L, device=x.device)  # noise in [0, 1]
        ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep, large is remove
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore, ids_keep

    def forward_encoder(self, x, mask_ratio):
        e = self.encoder
        x = e.patch_embed(x).flatten(1, 2)  # timm's dynamic_img_size gives (N, H', W', D)
        x = x + e.pos_embed[:, 1:, :]
        x, mask, ids_restore, ids_keep = self.random_masking(x, mask_ratio)
        cls_token = e.cls_token + e.pos_embed[:, :1, :]
        cls_tokens = cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        for blk in e.blocks:
            x = blk(x)
        x = e.norm(x)
        return x, mask, ids_restore, ids_keep

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # no cls token
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)  # append cls token
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)
        x = x[:, 1:, :]
        return x

    def forward_loss(self, imgs, pred, mask):
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = (pred - target) ** 2
        loss = loss.mean(dim=-1)  # [N, L], mean loss per patch
        loss = (loss * mask).sum() / mask.sum()  # mean loss on removed patches
        return loss


# ---- the tests ----

DIM, SIZE, PATCH = 32, 16, 4


def test_sincos_matches_the_official() -> None:
    expected = get_2d_sincos_pos_embed(DIM, 5, cls_token=False)
    torch.testing.assert_close(
        sincos_position_embedding(DIM, 5, 5), torch.from_numpy(expected), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_masking_encoder_decoder_and_loss_match_the_official(norm_pix_loss: bool) -> None:
    settings = MethodSettings(
        backbone="vit_mini_patch4",
        projector=(),
        options={**get_method("mae").options, "decoder_dim": 16, "decoder_depth": 2},
        loss={"norm_pix_loss": norm_pix_loss},
        image_size=SIZE,
    )
    method = build_method(get_method("mae"), settings).double().eval()
    grid = (SIZE // PATCH, SIZE // PATCH)
    official = OfficialMAEParts(
        method.backbone, PATCH, 128, 16, 2, 16, grid[0] * grid[1], norm_pix_loss
    )
    decoder = {
        (k if k == "mask_token" else f"decoder_{k}"): v
        for k, v in method.projector.state_dict().items()
    }
    loaded = official.load_state_dict(decoder, strict=False)  # the encoder is shared
    assert loaded.unexpected_keys == []
    assert [k for k in loaded.missing_keys if not k.startswith("encoder.")] == [
        "decoder_pos_embed"  # computed (fixed sin-cos)
    ]
    official.double()
    # The official table is float32 (``.float()``); the float64 comparison takes it unrounded.
    table = get_2d_sincos_pos_embed(16, grid[0], cls_token=True)
    official.decoder_pos_embed.data.copy_(torch.from_numpy(table).unsqueeze(0))
    images = torch.randn(3, 3, SIZE, SIZE, dtype=torch.float64)

    torch.manual_seed(5)
    latent, mask, ids_restore, ids_keep = official.forward_encoder(images, 0.75)
    pred = official.forward_decoder(latent, ids_restore)
    expected = official.forward_loss(images, pred, mask)

    torch.manual_seed(5)
    keep, ours_mask = random_masking(3, grid[0] * grid[1], 0.75)
    torch.testing.assert_close(keep, ids_keep, rtol=0, atol=0)
    torch.testing.assert_close(ours_mask, mask, rtol=0, atol=0)
    tokens = method.backbone.forward_tokens(images, keep=keep)
    torch.testing.assert_close(torch.cat([tokens.cls[:, None], tokens.patches], 1), latent)
    ours_pred = method.projector(tokens, keep, grid)
    torch.testing.assert_close(ours_pred, pred, rtol=1e-10, atol=1e-12)
    loss = mae_loss(ours_pred, patchify(images, PATCH), ours_mask, norm_pix_loss=norm_pix_loss)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)

    torch.manual_seed(5)
    output = method([images], Batch(torch.zeros(3)))
    torch.testing.assert_close(output.losses["loss"], expected, rtol=1e-12, atol=1e-14)
    assert output.embedding is None


def test_a_step_trains_encoder_and_decoder_only_on_hidden_patches() -> None:
    card = get_method("mae")
    settings = MethodSettings(
        backbone="vit_mini_patch4",
        projector=(),
        options={**card.options, "decoder_dim": 16, "decoder_depth": 1},
        loss=dict(card.loss),
        image_size=SIZE,
    )
    method = build_method(card, settings)
    assert not method.backbone.pos_embed.requires_grad  # fixed sin-cos, as the official
    output = method([torch.randn(2, 3, SIZE, SIZE)], Batch(torch.zeros(2)))
    output.losses["loss"].backward()
    assert method.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.projector.mask_token.grad.abs().sum() > 0
    assert output.features.shape == (2, method.backbone.feature_dim)
    # model.json's head spec rebuilds the decoder; the encoder reconstructs every patch.
    spec = json.loads(json.dumps(vars(method.head_spec)))
    decoder = HeadSpec(spec["kind"], spec["kwargs"]).build()
    decoder.load_state_dict(method.projector.state_dict())
    images = torch.randn(2, 3, SIZE, SIZE)
    rebuilt = Encoder(method.backbone, decoder).eval()(images)
    assert rebuilt.shape == (2, (SIZE // PATCH) ** 2, PATCH**2 * 3)
    torch.testing.assert_close(rebuilt, method.encoder().eval()(images))
