"""PIRL: Pretext-Invariant Representation Learning with a memory bank and NCE.

Misra, van der Maaten, "Self-Supervised Learning of Pretext-Invariant Representations", CVPR 2020
(https://arxiv.org/abs/1912.01991), eq. (3)-(5); the NCE estimator and normalising constant of
Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018
(https://arxiv.org/abs/1805.01978), eq. (5)-(8), as in VISSL's ``NCELossWithMemory``
(facebookresearch/vissl, ``vissl/losses/nce_loss.py``; config
``configs/config/pretrain/pirl/pirl_jigsaw_4node_resnet50.yaml``).

A ``MemoryBank`` holds one L2-normalised row m_I per training image (n rows). For a unit-norm
embedding v of image I, with K negative rows m_{I'} drawn uniformly from the bank for this sample
and this branch (VISSL's ``do_negative_sampling``: a fresh draw per sample and per embedding),
τ = 0.07 and s(a, b) = a·b:

    P(I | v)  = exp(s(m_I, v)/τ) / Z                                 Z = n·mean(exp(s/τ))
    h(I, v)   = P(I | v) / (P(I | v) + K/n)                       posterior of "data, not noise"
    NCE(v)    = -log h(I, v) - Σ_{I'} log(1 - h(I', v))
    loss      = λ·NCE(g(v_{I^t})) + (1 - λ)·NCE(f(v_I)),   λ = 0.5     (mean over the batch)

evaluated with softplus on the log-odds log P - log(K/n) (VISSL's ``NCECriterion`` adds float32's
ε to both denominators; we do not). Z is set once, from the jigsaw branch's scores (positive and
negatives) of the first batch, as VISSL's ``compute_partition_function`` on the first embedding,
then frozen. After scoring, the bank rows of the batch are updated with the image-branch
embedding: m_I ← normalize(0.5·m_I + 0.5·f(v_I)).

The loss is a mean of per-sample terms, so under torch.distributed each rank scores only its own
samples (as VISSL): the returned value is the rank's mean and DDP's gradient averaging makes the
step that of the global mean (``distributed`` module docstring). Spanning ranks: Z (the first
batch's scores of every rank) and the bank update (the gathered embeddings and indices), so every
rank keeps an identical replica and a checkpoint from any rank holds the whole bank and Z. Each
rank draws the negatives of all W rank blocks of the global batch and keeps its own block, so with
generators seeded alike the negatives of every sample are those one process would draw.

Cost. The K negatives of each sample are bank rows gathered into a K×D block: at the paper's
shapes (local batch 32, K = 32 000, D = 128) 0.5 GB per branch if held at once, 16.8 GB for a
batch of 1024 in one process. Rows are therefore scored in chunks of at most
``CHUNK_ELEMENTS`` gathered values (128 MB in float32), and the gradient with respect to the
embedding is accumulated in the same pass, so backward keeps only an NxD tensor per branch
(nothing of the bank, which ``update`` rewrites before backward runs).

``JigsawHead`` computes g: each of the 9 patches goes through the shared backbone and a linear
map to 128-d; the 9 patch vectors are concatenated in the (shuffled) order in which they arrive
and mapped to 128-d (VISSL's ``siamese_concat_view`` head between two ``mlp`` heads), so the
permutation changes g's input and the representation has to become invariant to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ._common import full_precision, l2_normalize
from .checks import check_finite
from .distributed import gather, rank, world_size
from .method import Batch, MethodOutput, MethodSettings, SSLMethod, load_attribute

if TYPE_CHECKING:
    from .catalog import MethodCard

# Most bank values gathered at once while scoring negatives (2**25 float32 values = 128 MB).
CHUNK_ELEMENTS = 1 << 25


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
        self._z_known = False  # host-side cache: reading log_z is a host sync on a GPU

    @property
    def num_items(self) -> int:
        return self.rows.shape[0]

    @property
    def z_is_set(self) -> bool:
        if not self._z_known:
            self._z_known = not bool(torch.isnan(self.log_z))
        return self._z_known

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(*args, **kwargs)
        self._z_known = False

    @torch.no_grad()
    def update(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None:
        """m_I ← normalize(momentum·m_I + (1 - momentum)·e_I) for the (global) batch."""
        mixed = self.momentum * self.rows[indices] + (1 - self.momentum) * embeddings.detach()
        self.rows[indices] = l2_normalize(mixed).to(self.rows.dtype)

    def negatives(
        self, local_rows: int, k: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``local_rows``×K indices uniform over the bank: this rank's block of a draw for the
        global batch (every rank draws every block, in rank order, and keeps its own)."""
        device = generator.device if generator is not None else self.rows.device
        mine: torch.Tensor | None = None
        for block in range(world_size()):
            drawn = torch.randint(
                self.num_items, (local_rows, k), generator=generator, device=device
            )
            if block == rank():
                mine = drawn
        assert mine is not None
        return mine.to(self.rows.device)


def _scored_chunks(
    v: torch.Tensor, bank: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Row chunks of ``v``: (rows, their gathered negatives c×K×D, the scores s/τ c×K)."""
    step = max(1, CHUNK_ELEMENTS // (negatives.shape[1] * v.shape[1]))
    for start in range(0, v.shape[0], step):
        rows = slice(start, start + step)
        block = negatives[rows]
        gathered = bank.index_select(0, block.flatten()).view(*block.shape, -1).to(v.dtype)
        yield rows, gathered, torch.bmm(gathered, v[rows, :, None]).squeeze(-1) / temperature


class _NegativeNCE(torch.autograd.Function):
    """Per row i: Σ_k softplus(v_i·m_{j_ik}/τ - offset), chunked; the gradient with respect to v
    is computed in the same pass (the bank may change before backward)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        v: torch.Tensor,
        bank: torch.Tensor,
        negatives: torch.Tensor,
        offset: torch.Tensor,
        temperature: float,
        with_grad: bool,
    ) -> torch.Tensor:
        out = v.new_empty(v.shape[0])
        grad = torch.empty_like(v) if with_grad else None
        for rows, gathered, scores in _scored_chunks(v, bank, negatives, temperature):
            log_odds = scores - offset
            out[rows] = F.softplus(log_odds).sum(dim=1)
            if grad is not None:
                weights = torch.sigmoid(log_odds)[:, None, :] / temperature
                grad[rows] = torch.bmm(weights, gathered).squeeze(1)
        ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, upstream: torch.Tensor) -> tuple:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return upstream[:, None] * grad, None, None, None, None, None


def _nce(
    v: torch.Tensor,
    positives: torch.Tensor,
    bank: MemoryBank,
    negatives: torch.Tensor,
    offset: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean over rows of -log h(I, v) - Σ_{I'} log(1 - h(I', v)) (softplus of the log-odds)."""
    positive = F.softplus(offset - (v * positives).sum(dim=1) / temperature)
    with_grad = torch.is_grad_enabled() and v.requires_grad
    negative = _NegativeNCE.apply(v, bank.rows, negatives, offset, temperature, with_grad)
    return (positive + negative).mean()


@torch.no_grad()
def _set_log_z(
    bank: MemoryBank, v: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, tau: float
) -> None:
    """log Z = log n + log mean exp(s/τ) over the positive and negative scores of ``v``, of the
    whole global batch (equal local batches: the ranks' log-sum-exps are combined)."""
    parts = [((v * positives).sum(dim=1) / tau).logsumexp(dim=0)]
    for _, _, scores in _scored_chunks(v, bank.rows, negatives, tau):
        parts.append(scores.flatten().logsumexp(dim=0))
    local = torch.stack(parts).logsumexp(dim=0, keepdim=True)
    total = gather(local).logsumexp(dim=0)
    count = world_size() * negatives.shape[0] * (negatives.shape[1] + 1)
    bank.log_z.copy_(total - math.log(count) + math.log(bank.num_items))


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

    ``indices`` are the dataset indices of the local batch's images (rows of ``bank``). Under
    torch.distributed the value is this rank's mean (module docstring). The bank is updated in
    place after scoring unless ``update_bank=False``.
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
    image, jigsaw = l2_normalize(image_embedding), l2_normalize(jigsaw_embedding)
    indices = indices.to(bank.rows.device)
    positives = bank.rows[indices].to(image.dtype)
    n = image.shape[0]
    jigsaw_negatives = bank.negatives(n, num_negatives, generator)
    image_negatives = bank.negatives(n, num_negatives, generator)
    if not bank.z_is_set:
        _set_log_z(bank, jigsaw.detach(), positives, jigsaw_negatives, temperature)
    offset = bank.log_z.to(image.dtype) + math.log(num_negatives / bank.num_items)
    jigsaw_nce = _nce(jigsaw, positives, bank, jigsaw_negatives, offset, temperature)
    image_nce = _nce(image, positives, bank, image_negatives, offset, temperature)
    loss = loss_weight * jigsaw_nce + (1 - loss_weight) * image_nce
    if update_bank:
        bank.update(gather(indices), gather(image.detach()))
    terms = {"nce_jigsaw": jigsaw_nce.detach(), "nce_image": image_nce.detach()}
    return (loss, terms) if return_terms else loss


class JigsawHead(nn.Module):
    """g(v_{I^t}): per-patch linear map, concatenation in arrival order, linear map."""

    def __init__(self, feature_dim: int, dim: int = 128, num_patches: int = 9) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.patch = nn.Linear(feature_dim, dim)
        self.out = nn.Linear(num_patches * dim, dim)

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        """``patch_features``: NxPxF, the patches in the shuffled order the loader yields."""
        if patch_features.dim() != 3 or patch_features.shape[1] != self.num_patches:
            raise ValueError(
                f"JigsawHead: expected Nx{self.num_patches}xF features, "
                f"got {tuple(patch_features.shape)}"
            )
        return self.out(self.patch(patch_features).flatten(1))

    def embed(self, backbone: nn.Module, patches: torch.Tensor) -> torch.Tensor:
        """Run the shared ``backbone`` on NxPxCxHxW patches, then the head."""
        n, p = patches.shape[:2]
        features = backbone(patches.flatten(0, 1)).view(n, p, -1)
        return self(features)


class PIRL(SSLMethod):
    """PIRL's two branches on one backbone (section 3.2): f = projector(backbone(image)) and
    g = ``JigsawHead`` over the backbone features of the shuffled patches, scored against a
    ``MemoryBank`` with one row per training image (``settings.num_samples``; the batch's split
    indices address it). ``views = [image, patches, order]`` as a ``pirl`` loader yields them;
    ``order`` is not read: the head takes the patches in the order they arrive (VISSL). The
    option ``num_patches`` is the jigsaw grid's cell count. Under torch.distributed the loss is
    this rank's mean (``pirl_nce_loss``)."""

    def __init__(self, card: MethodCard, settings: MethodSettings) -> None:
        super().__init__()
        options = settings.options
        self.objective = load_attribute(card.objective)
        self.loss_kwargs = dict(settings.loss)
        self.backbone = settings.make_backbone()
        feature_dim = self.backbone.feature_dim
        # VISSL's image head ``mlp [2048, 128]`` keeps its bias (an L2 normalisation follows).
        self.projector = self.build_projector(feature_dim, settings.projector, last_bias=True)
        dim = settings.projector[-1]
        self.jigsaw = JigsawHead(feature_dim, dim, int(options.get("num_patches", 9)))
        self.bank = MemoryBank(settings.num_samples, dim, seed=settings.seed)

    def forward(self, views: list[torch.Tensor], batch: Batch) -> MethodOutput:
        image, patches, _order = views
        if batch.indices is None:
            raise ValueError("PIRL needs each sample's split index (a loader with_index)")
        features = self.backbone(image)
        image_embedding = self.projector(features)
        jigsaw_embedding = self.jigsaw.embed(self.backbone, patches)
        loss, terms = self.objective(
            image_embedding,
            jigsaw_embedding,
            batch.indices,
            self.bank,
            return_terms=True,
            **self.loss_kwargs,
        )
        return MethodOutput({"loss": loss, **terms}, image_embedding.detach(), features.detach())
