"""Collapse, tiny shapes, bad inputs, precision, PIRL state, the loss modules (the method
catalog is checked in tests/test_methods.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from sslpipe import ssl_ops
from sslpipe.ssl_ops.byol import byol_loss
from sslpipe.ssl_ops.checks import strict_checks
from sslpipe.ssl_ops.simsiam import simsiam_loss

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PAIRWISE: dict[str, Objective] = {
    "vicreg": ssl_ops.vicreg_loss,
    "vicreg_exp": ssl_ops.vicreg_exp_loss,
    "vicreg_ctr": ssl_ops.vicreg_ctr_loss,
    "barlow_twins": ssl_ops.barlow_twins_loss,
    "nt_xent": lambda a, b: ssl_ops.nt_xent_loss([a, b]),
    "nt_xent_std": lambda a, b: ssl_ops.nt_xent_loss([a, b], standardize=True),
    "simclr_abs": lambda a, b: ssl_ops.simclr_abs_loss([a, b]),
    "simclr_sq": lambda a, b: ssl_ops.simclr_sq_loss([a, b]),
    "dcl": ssl_ops.dcl_loss,
    "dclw": lambda a, b: ssl_ops.dcl_loss(a, b, weighted=True),
    "dcl_abs": ssl_ops.dcl_abs_loss,
    "dcl_sq": ssl_ops.dcl_sq_loss,
    "spectral": ssl_ops.spectral_contrastive_loss,
    "wmse_shrunk": lambda a, b: ssl_ops.wmse_loss([a, b], w_size=a.shape[0], eps=0.1),
    "sample_criterion": lambda a, b: ssl_ops.sample_contrastive_criterion(a),
    "dimension_criterion": lambda a, b: ssl_ops.dimension_contrastive_criterion(a),
    "uniformity": lambda a, b: ssl_ops.uniformity(a),
}


def _finite_loss_and_grads(fn: Objective, z1: torch.Tensor, z2: torch.Tensor) -> None:
    z1, z2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = fn(z1, z2)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for z in (z1, z2):
        assert z.grad is None or torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", list(PAIRWISE))
def test_constant_embeddings_give_finite_loss_and_gradient(name: str) -> None:
    z = torch.full((8, 4), 0.3)
    _finite_loss_and_grads(PAIRWISE[name], z, z.clone())


@pytest.mark.parametrize("name", [n for n in PAIRWISE if n not in ("vicreg_ctr", "vicreg_exp")])
def test_two_samples_one_dimension(name: str) -> None:
    z1, z2 = torch.tensor([[0.5], [-1.0]]), torch.tensor([[0.7], [-0.2]])
    _finite_loss_and_grads(PAIRWISE[name], z1, z2)


@pytest.mark.parametrize("name", list(PAIRWISE))
def test_nan_input_raises(name: str) -> None:
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    z2[3, 1] = float("nan")
    with strict_checks(), pytest.raises(FloatingPointError, match="NaN or Inf"):
        fn = PAIRWISE[name]
        fn(z1, z2) if "criterion" not in name and name != "uniformity" else fn(z2, z1)


@pytest.mark.parametrize(
    "name", [n for n in PAIRWISE if not n.startswith("wmse") and "criterion" not in n]
)
def test_single_sample_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        PAIRWISE[name](torch.randn(1, 4), torch.randn(1, 4))


def test_vicreg_variance_term_at_its_maximum_under_collapse() -> None:
    z = torch.ones(16, 8)
    _, terms = ssl_ops.vicreg_loss(z, z, return_terms=True, eps=0.0)
    assert float(terms["variance"]) == 1.0
    assert float(terms["covariance"]) == 0.0 and float(terms["invariance"]) == 0.0
    _, terms = ssl_ops.vicreg_loss(z, z, return_terms=True)
    assert float(terms["variance"]) == pytest.approx(1 - math.sqrt(1e-4))


@pytest.mark.parametrize("fn", [ssl_ops.vicreg_ctr_loss, ssl_ops.vicreg_exp_loss])
def test_duality_variants_need_two_dimensions(fn: Objective) -> None:
    with pytest.raises(ValueError, match="D >= 2"):
        fn(torch.randn(4, 1), torch.randn(4, 1))


def test_wmse_refuses_bad_shapes_and_singular_covariance() -> None:
    views = [torch.randn(32, 8), torch.randn(32, 8)]
    with pytest.raises(ValueError, match="must exceed the embedding dimension"):
        ssl_ops.wmse_loss(views, w_size=8)
    with pytest.raises(ValueError, match="not divisible by w_size"):
        ssl_ops.wmse_loss(views, w_size=12)
    with pytest.raises(ValueError, match="at least two views"):
        ssl_ops.wmse_loss(views[:1], w_size=16)
    collapsed = [torch.ones(32, 8), torch.ones(32, 8)]
    with strict_checks(), pytest.raises(FloatingPointError, match="not positive definite"):
        ssl_ops.wmse_loss(collapsed, w_size=16)
    # Outside the strict block: decided on the device, a NaN loss for the trainer's guard.
    assert torch.isnan(ssl_ops.wmse_loss(collapsed, w_size=16))


def test_wmse_depends_on_the_generator_and_is_reproducible() -> None:
    views = [torch.randn(64, 4), torch.randn(64, 4)]

    def loss(seed: int) -> float:
        gen = torch.Generator().manual_seed(seed)
        return float(ssl_ops.wmse_loss(views, w_size=16, generator=gen))

    assert loss(0) == loss(0)
    assert loss(0) != loss(1)


def test_contrastive_losses_under_bf16_autocast_are_float32_and_stable() -> None:
    z1, z2 = torch.randn(64, 32).bfloat16(), torch.randn(64, 32).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ssl_ops.nt_xent_loss([z1, z2], temperature=0.01)
        dcl = ssl_ops.dcl_loss(z1, z2, temperature=0.01)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(dcl)
    reference = ssl_ops.nt_xent_loss([z1.float(), z2.float()], temperature=0.01)
    assert float(loss) == pytest.approx(float(reference), rel=1e-5)
    big = ssl_ops.nt_xent_loss([z1.float() * 1e4, z2.float()], temperature=1e-3)
    assert torch.isfinite(big)


def test_nt_xent_perfect_alignment_and_positive_count() -> None:
    # Orthogonal images, identical views: each anchor's d-1 positives sit at cosine 1.
    z = torch.eye(4, dtype=torch.float64)
    tau = 0.5
    for views in (2, 3):
        loss = ssl_ops.nt_xent_loss([z] * views, temperature=tau)
        pos = (views - 1) * math.exp(1 / tau)
        expected = -math.log(pos / (pos + 3 * views))
        assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_memory_bank_state_roundtrip_and_frozen_normaliser() -> None:
    bank = ssl_ops.MemoryBank(50, 8, seed=0)
    assert torch.allclose(bank.rows.norm(dim=1), torch.ones(50))
    assert not bank.z_is_set
    image, jigsaw, idx = torch.randn(6, 8), torch.randn(6, 8), torch.arange(6)
    ssl_ops.pirl_nce_loss(image, jigsaw, idx, bank, num_negatives=10)
    log_z = float(bank.log_z)
    assert bank.z_is_set and math.isfinite(log_z)
    ssl_ops.pirl_nce_loss(image * 3, jigsaw, idx + 6, bank, num_negatives=10)
    assert float(bank.log_z) == log_z
    restored = ssl_ops.MemoryBank(50, 8, seed=1)
    assert not torch.equal(restored.rows, bank.rows)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.rows, bank.rows) and float(restored.log_z) == log_z
    module = ssl_ops.PIRLLoss(50, 8, num_negatives=10)
    assert set(module.state_dict()) == {"bank.rows", "bank.log_z"}


def test_pirl_bank_update_can_be_skipped_and_rejects_wrong_dim() -> None:
    bank = ssl_ops.MemoryBank(20, 4)
    before = bank.rows.clone()
    ssl_ops.pirl_nce_loss(torch.randn(3, 4), torch.randn(3, 4), torch.arange(3), bank,
                          num_negatives=5, update_bank=False)  # fmt: skip
    assert torch.equal(bank.rows, before)
    with pytest.raises(ValueError, match="bank dim"):
        ssl_ops.pirl_nce_loss(torch.randn(3, 5), torch.randn(3, 5), torch.arange(3), bank)


def test_jigsaw_head_concatenates_in_arrival_order() -> None:
    # VISSL's siamese_concat_view: the shuffled patches' features are concatenated as they come,
    # so the permutation reaches g and PIRL can learn to be invariant to it.
    torch.manual_seed(0)
    head = ssl_ops.JigsawHead(feature_dim=6, dim=8)
    features = torch.randn(2, 9, 6)
    out = head(features)
    per_patch = [head.patch(features[:, j]) for j in range(9)]
    torch.testing.assert_close(out, head.out(torch.cat(per_patch, dim=1)))
    shuffled = features[:, torch.randperm(9)]
    assert not torch.allclose(head(shuffled), out)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 6))
    patches = torch.randn(2, 9, 3, 4, 4)
    assert head.embed(backbone, patches).shape == (2, 8)
    with pytest.raises(ValueError, match="Nx9xF"):
        head(torch.randn(2, 8, 6))


@pytest.mark.parametrize("fn", [byol_loss, simsiam_loss])
def test_per_sample_losses_refuse_bad_input_and_survive_zero_vectors(fn) -> None:
    p1, p2, t1, t2 = (torch.randn(4, 3) for _ in range(4))
    with pytest.raises(ValueError, match="one shape"):
        fn(p1, p2, t1, torch.randn(4, 2))
    t2[1, 2] = float("inf")
    with strict_checks(), pytest.raises(FloatingPointError, match="NaN or Inf"):
        fn(p1, p2, t1, t2)
    zeros = torch.zeros(4, 3, requires_grad=True)
    loss = fn(zeros, zeros, zeros, zeros)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zeros.grad).all()
    single = fn(*(torch.randn(1, 3) for _ in range(4)))  # per-sample: one row is a batch
    assert torch.isfinite(single)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fn(*(x.bfloat16() for x in (p1, p2, t1, t1)))
    assert low.dtype == torch.float32


def test_barlow_twins_and_nt_xent_refuse_unknown_options() -> None:
    z = torch.randn(8, 4)
    with pytest.raises(ValueError, match="scaling must be one of"):
        ssl_ops.barlow_twins_loss(z, z, scaling="per_gpu")
    with pytest.raises(ValueError, match="reduction must be one of"):
        ssl_ops.nt_xent_loss([z, z], reduction="sum")


def test_modules_bind_keyword_arguments() -> None:
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    module = ssl_ops.VICRegLoss(sim_coeff=1.0)
    assert float(module(z1, z2)) == float(ssl_ops.vicreg_loss(z1, z2, sim_coeff=1.0))
    nt = ssl_ops.NTXentLoss(temperature=0.5)
    assert float(nt([z1, z2])) == float(ssl_ops.nt_xent_loss([z1, z2], temperature=0.5))
    with pytest.raises(TypeError, match="unknown keyword"):
        ssl_ops.BarlowTwinsLoss(lambda_=0.1)


def test_ssl_ops_imports_no_pipeline_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sslpipe.ssl_ops; "
        "bad = [m for m in sys.modules if m.startswith(('ray', 'yaml', "
        "'sslpipe.datasets', 'sslpipe.pipelines'))]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
