"""PIRL: Pretext-Invariant Representation Learning with a memory bank and NCE.

Misra, van der Maaten, "Self-Supervised Learning of Pretext-Invariant Representations", CVPR 2020
(https://arxiv.org/abs/1912.01991), eq. (3)-(5); the NCE estimator and normalising constant of
Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018
(https://arxiv.org/abs/1805.01978), eq. (5)-(8), as in VISSL's ``NCELossWithMemory``.

A ``MemoryBank`` holds one L2-normalised row m_I per training image (n rows). For a unit-norm
embedding v of image I, with K negative rows m_{I'} drawn uniformly from the bank (shared by the
batch), τ = 0.07 and s(a, b) = a·b:

    P(I | v)  = exp(s(m_I, v)/τ) / Z,     Z = n·mean(exp(s/τ)) over the first batch, then frozen
    h(I, v)   = P(I | v) / (P(I | v) + K/n)                       posterior of "data, not noise"
    NCE(v)    = -log h(I, v) - Σ_{I'} log(1 - h(I', v))
    loss      = λ·NCE(g(v_{I^t})) + (1 - λ)·NCE(f(v_I)),   λ = 0.5     (mean over the batch)

evaluated with softplus on the log-odds log P - log(K/n). After scoring, the bank rows of the
batch are updated with the image-branch embedding: m_I ← normalize(0.5·m_I + 0.5·f(v_I)).

Under torch.distributed the bank is replicated: every rank holds all n rows, scores the gathered
global batch against the same negatives (drawn on rank 0 and broadcast) and applies the same
update with the gathered embeddings and indices, so replicas stay identical and a checkpoint
from any rank (``state_dict``) holds the whole bank and Z.

``JigsawHead`` computes g: each of the 9 patches goes through the shared backbone, a linear map
to 128-d; the 9 patch vectors are concatenated in canonical (grid) order and mapped to 128-d.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import full_precision, l2_normalize
from .checks import check_finite
from .distributed import gather_with_grad, shared_randint


class MemoryBank(nn.Module):
    """One L2-normalised ``dim``-d row per training image, updated with momentum."""

    rows: torch.Tensor
    log_z: torch.Tensor

    def __init__(
        self, num_items: int, dim: int = 128, *, momentum: float = 0.5, seed: int = 0
    ) -> None:
        super().__init__()
        if num_items < 2:
            raise ValueError(f"MemoryBank: needs at least 2 rows, got {num_items}")
        self.momentum = momentum
        # A seeded initialisation keeps the replicas on every rank identical from step 0.
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("rows", l2_normalize(torch.randn(num_items, dim, generator=generator)))
        self.register_buffer("log_z", torch.tensor(float("nan"), dtype=torch.float64))

    @property
    def num_items(self) -> int:
        return self.rows.shape[0]

    @property
    def z_is_set(self) -> bool:
        return not bool(torch.isnan(self.log_z))

    @torch.no_grad()
    def update(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None:
        """m_I ← normalize(momentum·m_I + (1 - momentum)·e_I) for the (global) batch."""
        mixed = self.momentum * self.rows[indices] + (1 - self.momentum) * embeddings.detach()
        self.rows[indices] = l2_normalize(mixed).to(self.rows.dtype)

    def sample(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """K indices uniform over the bank, identical on every rank."""
        return shared_randint(self.num_items, k, device=self.rows.device, generator=generator)


def _nce(log_odds_positive: torch.Tensor, log_odds_negative: torch.Tensor) -> torch.Tensor:
    # -log h = softplus(-a), -log(1 - h) = softplus(a) for the log-odds a.
    return (F.softplus(-log_odds_positive) + F.softplus(log_odds_negative).sum(dim=1)).mean()


@full_precision
def pirl_nce_loss(
    image_embedding: torch.Tensor,
    jigsaw_embedding: torch.Tensor,
    indices: torch.Tensor,
    bank: MemoryBank,
    *,
    temperature: float = 0.07,
    num_negatives: int = 32000,
    loss_weight: float = 0.5,
    generator: torch.Generator | None = None,
    update_bank: bool = True,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PIRL loss of the image branch f(v_I) and jigsaw branch g(v_{I^t}) (module docstring).

    ``indices`` are the dataset indices of the batch's images (rows of ``bank``). The bank is
    updated in place after scoring unless ``update_bank=False``.
    """
    if image_embedding.shape != jigsaw_embedding.shape or image_embedding.dim() != 2:
        raise ValueError(
            "pirl_nce_loss: image and jigsaw embeddings must both be NxD, got "
            f"{tuple(image_embedding.shape)} and {tuple(jigsaw_embedding.shape)}"
        )
    if image_embedding.shape[1] != bank.rows.shape[1]:
        raise ValueError(
            f"pirl_nce_loss: embedding dim {image_embedding.shape[1]} != bank dim "
            f"{bank.rows.shape[1]}"
        )
    check_finite("pirl_nce_loss", image_embedding, jigsaw_embedding)
    image = l2_normalize(gather_with_grad(image_embedding))
    jigsaw = l2_normalize(gather_with_grad(jigsaw_embedding))
    indices = gather_with_grad(indices.to(bank.rows.device))
    positives = bank.rows[indices].to(image.dtype)
    negatives = bank.rows[bank.sample(num_negatives, generator)].to(image.dtype)

    def scores(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (v * positives).sum(dim=1) / temperature, v @ negatives.T / temperature

    image_pos, image_neg = scores(image)
    jigsaw_pos, jigsaw_neg = scores(jigsaw)
    if not bank.z_is_set:
        with torch.no_grad():
            every = torch.cat(
                [s.detach().flatten() for s in (image_pos, image_neg, jigsaw_pos, jigsaw_neg)]
            )
            log_mean = every.logsumexp(dim=0) - math.log(every.numel())
            bank.log_z.fill_(math.log(bank.num_items) + float(log_mean))
    offset = bank.log_z.to(image.dtype) + math.log(num_negatives / bank.num_items)
    jigsaw_nce = _nce(jigsaw_pos - offset, jigsaw_neg - offset)
    image_nce = _nce(image_pos - offset, image_neg - offset)
    loss = loss_weight * jigsaw_nce + (1 - loss_weight) * image_nce
    if update_bank:
        bank.update(indices, image.detach())
    terms = {"nce_jigsaw": jigsaw_nce.detach(), "nce_image": image_nce.detach()}
    return (loss, terms) if return_terms else loss


class JigsawHead(nn.Module):
    """g(v_{I^t}): per-patch linear map, concatenation in canonical order, linear map."""

    def __init__(self, feature_dim: int, dim: int = 128, num_patches: int = 9) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.patch = nn.Linear(feature_dim, dim)
        self.out = nn.Linear(num_patches * dim, dim)

    def forward(
        self, patch_features: torch.Tensor, order: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``patch_features``: NxPxF; ``order[n, j]`` = grid position of input patch j."""
        if patch_features.dim() != 3 or patch_features.shape[1] != self.num_patches:
            raise ValueError(
                f"JigsawHead: expected Nx{self.num_patches}xF features, "
                f"got {tuple(patch_features.shape)}"
            )
        h = self.patch(patch_features)
        if order is not None:
            source = order.argsort(dim=1)
            h = h.gather(1, source[..., None].expand_as(h))
        return self.out(h.flatten(1))

    def embed(
        self, backbone: nn.Module, patches: torch.Tensor, order: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the shared ``backbone`` on NxPxCxHxW patches, then the head."""
        n, p = patches.shape[:2]
        features = backbone(patches.flatten(0, 1)).view(n, p, -1)
        return self(features, order)
