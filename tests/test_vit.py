"""timm ViTs as backbones: the CLS feature, tokens with kept patches or a mask, crops of other
sizes, DINO's evaluation features; the joint-embedding methods train on them."""

from __future__ import annotations

import pytest
import torch

from sslpipe.pipelines.stages.pretrain import PretrainConfig
from sslpipe.pipelines.training.step import (
    build_scheduler,
    build_training_method,
    build_training_optimizer,
    train_step,
)
from sslpipe.ssl_ops import Backbone, Batch, LastBlocksFeatures, Progress, build_backbone


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("vit_mini_patch4", image_size=32, mask_token=True).eval()


def test_cls_feature_and_crops_of_another_size(vit) -> None:
    assert isinstance(vit, Backbone) and vit.feature_dim == vit.embed_dim == 128
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = vit(images)
        tokens = vit.forward_tokens(images)
        local = vit(torch.randn(3, 3, 16, 16))  # position embeddings interpolated to 4×4
    assert features.shape == (3, 128) and local.shape == (3, 128)
    torch.testing.assert_close(tokens.cls, features)
    assert tokens.patches.shape == (3, vit.num_patches(32), 128)


def test_kept_patches_carry_their_own_positions(vit) -> None:
    """Attention is blind to token order, so the patches kept in any order give the same
    tokens as the full image's only if their position embeddings were added before the
    dropping (MAE's encoder)."""
    images = torch.randn(2, 3, 32, 32)
    order = torch.stack([torch.randperm(64), torch.randperm(64)])
    with torch.no_grad():
        full = vit.forward_tokens(images)
        shuffled = vit.forward_tokens(images, keep=order)
        kept = vit.forward_tokens(images, keep=order[:, :16])
    in_order = full.patches.gather(1, order[..., None].expand(-1, -1, 128))
    torch.testing.assert_close(shuffled.cls, full.cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled.patches, in_order, atol=1e-5, rtol=1e-5)
    assert kept.patches.shape == (2, 16, 128)
    assert not torch.allclose(kept.cls, full.cls, atol=1e-3)


def test_masked_patches_are_replaced_by_the_mask_token(vit) -> None:
    images = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, :8] = True  # the top row of 4×4 patches: pixel rows 0-3
    changed = images.clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 32)
    with torch.no_grad():
        masked = vit.forward_tokens(images, mask=mask)
        masked_changed = vit.forward_tokens(changed, mask=mask)
        unmasked_changed = vit.forward_tokens(changed)
        unmasked = vit.forward_tokens(images)
    torch.testing.assert_close(masked_changed.patches, masked.patches)
    assert not torch.allclose(unmasked_changed.cls, unmasked.cls, atol=1e-4)
    with pytest.raises(ValueError, match="mask_token"):
        build_backbone("vit_mini_patch4", image_size=32).forward_tokens(images, mask=mask)


def test_dino_evaluation_features(vit) -> None:
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last = LastBlocksFeatures(vit, 1, avgpool_patch_tokens=False)(images)
        four = LastBlocksFeatures(vit, 4, avgpool_patch_tokens=False)
        pooled = LastBlocksFeatures(vit, 1, avgpool_patch_tokens=True)
        tokens = vit.forward_tokens(images)
        torch.testing.assert_close(last, vit(images))
        assert four(images).shape == (2, four.feature_dim) == (2, 4 * 128)
        torch.testing.assert_close(four(images)[:, -128:], last)
        torch.testing.assert_close(pooled(images)[:, 128:], tokens.patches.mean(dim=1))


def test_drop_path_is_a_setting() -> None:
    vit = build_backbone("vit_mini_patch4", image_size=32, drop_path_rate=0.1)
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in vit.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1)  # linear over the blocks


@pytest.mark.parametrize("method", ["vicreg", "barlow_twins", "simclr", "byol", "simsiam", "wmse"])
def test_joint_embedding_methods_train_a_vit(method: str) -> None:
    fields: dict = {"loss": {"w_size": 32}} if method == "wmse" else {}
    batch_size = 32 if method == "wmse" else 16
    config = PretrainConfig.model_validate(
        {
            "name": "pretrain",
            "type": "pretrain",
            "data": "ingest",
            "method": method,
            "backbone": "vit_mini_patch4",
            "projector": [32, 16],
            "view_overrides": {"size": 16},
            "global_batch_size": batch_size,
            **fields,
        }
    )
    model = build_training_method(config, 0, 1, torch.device("cpu"))
    assert model.backbone.patch_embed.grid_size == (4, 4)  # built for the views' size
    optimizer = build_training_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch=10)
    before = model.backbone.blocks[0].attn.qkv.weight.detach().clone()
    views = [torch.randn(batch_size, 3, 16, 16) for _ in config.recipes()]
    batch = Batch(torch.zeros(batch_size, dtype=torch.long))
    output = train_step(
        model, model, views, batch, optimizer, scheduler, config, Progress.at(0, 10, 10)
    )
    assert torch.isfinite(output.losses["loss"])
    assert not torch.equal(model.backbone.blocks[0].attn.qkv.weight, before)
