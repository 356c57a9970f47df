"""Every objective against an independent float64 hand computation (loops), and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from sslpipe import ssl_ops
from sslpipe.ssl_ops.byol import byol_loss, cosine_momentum, momentum_update
from sslpipe.ssl_ops.simsiam import simsiam_loss

DT = torch.float64


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT) * scale


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return dot(a, b) / math.sqrt(dot(a, a) * dot(b, b))


def column(z: torch.Tensor, a: int) -> list[float]:
    return [float(z[i, a]) for i in range(z.shape[0])]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def cov_entry(z: torch.Tensor, a: int, b: int, denominator: float) -> float:
    ca, cb = column(z, a), column(z, b)
    ma, mb = mean(ca), mean(cb)
    return sum((x - ma) * (y - mb) for x, y in zip(ca, cb, strict=True)) / denominator


def ref_invariance(z1: torch.Tensor, z2: torch.Tensor) -> float:
    n, d = z1.shape
    return sum(float(z1[i, a] - z2[i, a]) ** 2 for i in range(n) for a in range(d)) / (n * d)


def ref_variance(z: torch.Tensor, eps: float) -> float:
    n, d = z.shape
    hinge = [max(0.0, 1 - math.sqrt(cov_entry(z, a, a, n - 1) + eps)) for a in range(d)]
    return mean(hinge)


def ref_vicreg(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> float:
    n, d = z1.shape

    def cov_term(z: torch.Tensor) -> float:
        pairs = [(a, b) for a in range(d) for b in range(d) if a != b]
        return sum(cov_entry(z, a, b, n - 1) ** 2 for a, b in pairs) / d

    variance = (ref_variance(z1, eps) + ref_variance(z2, eps)) / 2
    return 25 * ref_invariance(z1, z2) + 25 * variance + cov_term(z1) + cov_term(z2)


def ref_barlow(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> float:
    n, d = z1.shape

    def standardised(z: torch.Tensor) -> list[list[float]]:
        cols = []
        for a in range(d):
            c = column(z, a)
            m = mean(c)
            var = sum((x - m) ** 2 for x in c) / n
            cols.append([(x - m) / math.sqrt(var + 1e-5) for x in c])
        return cols

    s1, s2 = standardised(z1), standardised(z2)
    loss = 0.0
    for a in range(d):
        for b in range(d):
            c = sum(s1[a][i] * s2[b][i] for i in range(n)) / n
            loss += (c - 1) ** 2 if a == b else lambd * c**2
    return loss


def ref_nt_xent(views: list[torch.Tensor], tau: float, phi=lambda c: c, std: bool = False) -> float:
    if std:
        views = [ref_standardize(v) for v in views]
    n, total = views[0].shape[0], 0.0
    rows = [(v, i) for v in range(len(views)) for i in range(n)]
    for v, i in rows:
        numerator = denominator = 0.0
        for w, k in rows:
            if (w, k) == (v, i):
                continue
            c = cos(views[v][i], views[w][k])
            if k == i:
                numerator += math.exp(c / tau)
                denominator += math.exp(c / tau)
            else:
                denominator += math.exp(phi(c) / tau)
        total += -math.log(numerator / denominator)
    return total / len(rows)


def ref_standardize(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    out = torch.empty_like(z)
    for a in range(d):
        c = column(z, a)
        m = mean(c)
        norm = math.sqrt(sum((x - m) ** 2 for x in c))
        for i in range(n):
            out[i, a] = (c[i] - m) * math.sqrt(n / d) / norm
    return out


def ref_dcl(z1, z2, tau, phi=lambda c: c, weighted=False, sigma=0.5) -> float:
    n = z1.shape[0]
    positives = [cos(z1[i], z2[i]) for i in range(n)]
    if weighted:
        partition = sum(math.exp(p / sigma) for p in positives)
        weights = [2 - n * math.exp(p / sigma) / partition for p in positives]
    else:
        weights = [1.0] * n
    total = 0.0
    for a, b in ((z1, z2), (z2, z1)):
        for i in range(n):
            negatives = sum(
                math.exp(phi(cos(a[i], other[k])) / tau)
                for other in (a, b)
                for k in range(n)
                if k != i
            )
            total += -weights[i] * positives[i] / tau + math.log(negatives)
    return total / (2 * n)


def ref_spectral(z1, z2, mu=1.0) -> float:
    n = z1.shape[0]

    def clip(row: torch.Tensor) -> torch.Tensor:
        norm = math.sqrt(dot(row, row))
        return row * math.sqrt(mu) / norm if norm > math.sqrt(mu) else row

    a, b = [clip(r) for r in z1], [clip(r) for r in z2]
    attraction = -2 / n * sum(dot(a[i], b[i]) for i in range(n))
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    repulsion = sum(dot(a[i], b[j]) ** 2 for i, j in pairs) / (n * (n - 1))
    return (attraction + repulsion) / mu


def ref_whiten(x: torch.Tensor, eps: float) -> torch.Tensor:
    m, d = x.shape
    cov = torch.tensor([[cov_entry(x, a, b, m - 1) for b in range(d)] for a in range(d)], dtype=DT)
    shrunk = (1 - eps) * cov + eps * torch.eye(d, dtype=DT)
    inverse = torch.linalg.inv(torch.linalg.cholesky(shrunk))
    centred = x - torch.tensor([mean(column(x, a)) for a in range(d)], dtype=DT)
    return torch.stack([inverse @ row for row in centred])


def ref_wmse(views, w_size, w_iter, eps, normalize, seed) -> float:
    g = torch.Generator().manual_seed(seed)
    n, d = views[0].shape
    total, count = 0.0, 0
    for _ in range(w_iter):
        perm = torch.randperm(n, generator=g).tolist()
        for start in range(0, n, w_size):
            block = perm[start : start + w_size]
            white = [ref_whiten(v[block], eps) for v in views]
            for k in range(len(views)):
                for m in range(k + 1, len(views)):
                    for i in range(w_size):
                        if normalize:
                            total += 2 - 2 * cos(white[k][i], white[m][i])
                        else:
                            diff = white[k][i] - white[m][i]
                            total += dot(diff, diff) / d
                        count += 1
    return total / count


def ref_vicreg_exp(z1, z2, tau, eps=1e-4) -> float:
    n, d = z1.shape

    def exp_term(z: torch.Tensor) -> float:
        rows = []
        for a in range(d):
            s = sum(math.exp(cov_entry(z, a, b, n - 1) / tau) for b in range(d) if b != a)
            rows.append(math.log(s))
        return mean(rows)

    variance = (ref_variance(z1, eps) + ref_variance(z2, eps)) / 2
    return 25 * ref_invariance(z1, z2) + 25 * variance + exp_term(z1) + exp_term(z2)


def ref_vicreg_ctr(z1, z2, tau, eps=1e-4) -> float:
    n, d = z1.shape

    def terms(z: torch.Tensor) -> tuple[float, float]:
        gram = [[dot(z[i], z[j]) / (d - 1) for j in range(n)] for i in range(n)]
        norm = mean([max(0.0, 1 - math.sqrt(gram[i][i] + eps)) for i in range(n)])
        sums = [sum(math.exp(gram[i][j] / tau) for j in range(n) if j != i) for i in range(n)]
        lse = mean([math.log(s) for s in sums])
        return norm, lse

    (v1, e1), (v2, e2) = terms(z1), terms(z2)
    return 25 * ref_invariance(z1, z2) + 25 * (v1 + v2) / 2 + e1 + e2


def test_vicreg_matches_hand_computation() -> None:
    z1, z2 = randn(7, 4, seed=1, scale=0.6), randn(7, 4, seed=2, scale=1.3)
    assert float(ssl_ops.vicreg_loss(z1, z2)) == pytest.approx(ref_vicreg(z1, z2), rel=1e-10)


def test_barlow_twins_matches_hand_computation() -> None:
    z1, z2 = randn(6, 4, seed=3), randn(6, 4, seed=4)
    assert float(ssl_ops.barlow_twins_loss(z1, z2)) == pytest.approx(ref_barlow(z1, z2), rel=1e-10)


@pytest.mark.parametrize(
    ("fn", "phi"),
    [
        (ssl_ops.nt_xent_loss, lambda c: c),
        (ssl_ops.simclr_abs_loss, abs),
        (ssl_ops.simclr_sq_loss, lambda c: c * c),
    ],
)
@pytest.mark.parametrize("num_views", [2, 3])
def test_nt_xent_family_matches_hand_computation(fn, phi, num_views: int) -> None:
    views = [randn(5, 3, seed=10 + v) for v in range(num_views)]
    expected = ref_nt_xent(views, 0.3, phi)
    assert float(fn(views, temperature=0.3)) == pytest.approx(expected, rel=1e-10)
    summed = float(fn(views, temperature=0.3, reduction="view_sum"))
    assert summed == pytest.approx(num_views * expected, rel=1e-10)


def test_nt_xent_view_sum_is_the_official_simclr_loss() -> None:
    # google-research/simclr tf2/objective.py: mean over images of loss_a + loss_b, where
    # loss_a is the cross-entropy of [logits_ab, logits_aa - large·I] with label i.
    a, b = randn(6, 4, seed=14), randn(6, 4, seed=15)
    ua, ub = (torch.nn.functional.normalize(v, dim=1) for v in (a, b))
    eye = torch.eye(6, dtype=DT)
    ce = torch.nn.functional.cross_entropy
    total = 0.0
    for x, y in ((ua, ub), (ub, ua)):
        logits = torch.cat([x @ y.T, x @ x.T - 1e9 * eye], dim=1) / 0.5
        total = total + ce(logits, torch.arange(6))
    got = ssl_ops.nt_xent_loss([a, b], temperature=0.5, reduction="view_sum")
    assert float(got) == pytest.approx(float(total), rel=1e-12)


def test_nt_xent_dimension_standardisation_matches_hand_computation() -> None:
    views = [randn(6, 3, seed=20) * 3 + 1, randn(6, 3, seed=21)]
    got = ssl_ops.nt_xent_loss(views, temperature=0.2, standardize=True)
    assert float(got) == pytest.approx(ref_nt_xent(views, 0.2, std=True), rel=1e-10)
    standardised = ssl_ops.standardize_dims(views[0])
    assert torch.allclose(standardised.mean(0), torch.zeros(3, dtype=DT), atol=1e-12)
    assert torch.allclose(standardised.norm(dim=0), torch.full((3,), math.sqrt(6 / 3), dtype=DT))


@pytest.mark.parametrize(
    ("kwargs", "fn", "phi"),
    [
        ({}, ssl_ops.dcl_loss, lambda c: c),
        ({"weighted": True, "sigma": 0.5}, ssl_ops.dcl_loss, lambda c: c),
        ({}, ssl_ops.dcl_abs_loss, abs),
        ({}, ssl_ops.dcl_sq_loss, lambda c: c * c),
    ],
)
def test_dcl_family_matches_hand_computation(kwargs, fn, phi) -> None:
    z1, z2 = randn(5, 3, seed=30), randn(5, 3, seed=31)
    expected = ref_dcl(z1, z2, 0.2, phi, kwargs.get("weighted", False), kwargs.get("sigma", 0.5))
    assert float(fn(z1, z2, temperature=0.2, **kwargs)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("mu", [1.0, 4.0])
def test_spectral_matches_hand_computation(mu: float) -> None:
    z1, z2 = randn(6, 3, seed=40), randn(6, 3, seed=41)
    got = ssl_ops.spectral_contrastive_loss(z1, z2, mu=mu)
    assert float(got) == pytest.approx(ref_spectral(z1, z2, mu), rel=1e-10)
    wide1, wide2 = randn(3, 6, seed=42), randn(3, 6, seed=43)  # the D > N code path
    got = ssl_ops.spectral_contrastive_loss(wide1, wide2, mu=mu)
    assert float(got) == pytest.approx(ref_spectral(wide1, wide2, mu), rel=1e-10)


@pytest.mark.parametrize(
    ("num_views", "w_iter", "eps", "normalize"),
    [(2, 1, 0.0, True), (4, 2, 0.1, True), (3, 1, 0.0, False)],
)
def test_wmse_matches_hand_computation(num_views, w_iter, eps, normalize) -> None:
    views = [randn(12, 2, seed=50 + v) for v in range(num_views)]
    got = ssl_ops.wmse_loss(
        views,
        w_size=4,
        w_iter=w_iter,
        eps=eps,
        normalize=normalize,
        generator=torch.Generator().manual_seed(7),
    )
    expected = ref_wmse(views, 4, w_iter, eps, normalize, seed=7)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_whitening_gives_identity_covariance() -> None:
    x = randn(3, 10, 4, seed=55) @ randn(4, 4, seed=56)
    white = ssl_ops.whiten(x)
    cov = white.transpose(1, 2) @ white / 9
    assert torch.allclose(cov, torch.eye(4, dtype=DT).expand(3, 4, 4), atol=1e-10)
    assert torch.allclose(white.mean(1), torch.zeros(3, 4, dtype=DT), atol=1e-12)


def test_duality_criteria_and_identity() -> None:
    x = randn(5, 3, seed=60)
    n, d = x.shape
    rows, cols = range(n), range(d)
    l_c = sum(dot(x[i], x[j]) ** 2 for i in rows for j in rows if i != j)
    xt = x.T
    l_nc = sum(dot(xt[a], xt[b]) ** 2 for a in cols for b in cols if a != b)
    got_c = float(ssl_ops.sample_contrastive_criterion(x))
    got_nc = float(ssl_ops.dimension_contrastive_criterion(x))
    assert got_c == pytest.approx(l_c, rel=1e-12)
    assert got_nc == pytest.approx(l_nc, rel=1e-12)
    row_norms = sum(dot(x[i], x[i]) ** 2 for i in rows)
    col_norms = sum(dot(xt[a], xt[a]) ** 2 for a in cols)
    assert got_nc + col_norms == pytest.approx(got_c + row_norms, rel=1e-12)
    assert got_c != pytest.approx(got_nc)  # the identity is not trivial here


def test_vicreg_exp_and_ctr_match_hand_computation() -> None:
    z1, z2 = randn(6, 4, seed=70, scale=0.8), randn(6, 4, seed=71, scale=0.8)
    got = ssl_ops.vicreg_exp_loss(z1, z2, temperature=0.5)
    assert float(got) == pytest.approx(ref_vicreg_exp(z1, z2, 0.5), rel=1e-10)
    got = ssl_ops.vicreg_ctr_loss(z1, z2, temperature=0.5)
    assert float(got) == pytest.approx(ref_vicreg_ctr(z1, z2, 0.5), rel=1e-10)


def test_pirl_matches_hand_computation_and_updates_bank() -> None:
    n_items, k, tau, n, d = 20, 7, 0.07, 4, 5
    bank = ssl_ops.MemoryBank(n_items, d, seed=3)
    rows = bank.rows.clone().to(DT)
    image, jigsaw = randn(n, d, seed=80), randn(n, d, seed=81)
    indices = torch.tensor([3, 11, 0, 17])
    got = ssl_ops.pirl_nce_loss(
        image,
        jigsaw,
        indices,
        bank,
        temperature=tau,
        num_negatives=k,
        generator=torch.Generator().manual_seed(5),
    )
    # K negatives per sample and per branch, the jigsaw branch's drawn first (VISSL).
    draws = torch.Generator().manual_seed(5)
    negatives = {
        branch: torch.randint(n_items, (n, k), generator=draws).tolist()
        for branch in ("jigsaw", "image")
    }

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v / math.sqrt(dot(v, v))

    scores = {}  # branch -> list of (positive score, [negative scores])
    for branch, emb in (("image", image), ("jigsaw", jigsaw)):
        scores[branch] = [
            (
                dot(unit(emb[i]), rows[indices[i]]) / tau,
                [dot(unit(emb[i]), rows[j]) / tau for j in negatives[branch][i]],
            )
            for i in range(n)
        ]
    # Z from the jigsaw branch's first batch only (VISSL: the first embedding's scores).
    z = n_items * mean([math.exp(s) for p, ns in scores["jigsaw"] for s in [p, *ns]])
    noise = k / n_items

    def nce(branch: str) -> float:
        total = 0.0
        for p, ns in scores[branch]:
            total -= math.log((math.exp(p) / z) / (math.exp(p) / z + noise))
            total -= sum(math.log(1 - (math.exp(s) / z) / (math.exp(s) / z + noise)) for s in ns)
        return total / n

    expected = 0.5 * nce("jigsaw") + 0.5 * nce("image")
    assert float(got) == pytest.approx(expected, rel=1e-9)
    assert float(bank.log_z) == pytest.approx(math.log(z), rel=1e-9)
    for i, row in enumerate(indices.tolist()):
        mixed = 0.5 * rows[row] + 0.5 * unit(image[i])
        assert torch.allclose(bank.rows[row].to(DT), unit(mixed), atol=1e-6)
    untouched = [r for r in range(n_items) if r not in indices.tolist()]
    assert torch.equal(bank.rows[untouched].to(DT), rows[untouched])


def test_pirl_chunked_scoring_matches_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of one row (CHUNK_ELEMENTS below K·D) give the loss and gradient of a single chunk.
    from sslpipe.ssl_ops import pirl

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        bank = ssl_ops.MemoryBank(50, 6, seed=1)
        image = randn(9, 6, seed=82).requires_grad_()
        loss = ssl_ops.pirl_nce_loss(
            image, randn(9, 6, seed=83), torch.arange(9), bank, num_negatives=11,
            generator=torch.Generator().manual_seed(2),
        )  # fmt: skip
        return loss.detach(), torch.autograd.grad(loss, image)[0]

    whole = run()
    monkeypatch.setattr(pirl, "CHUNK_ELEMENTS", 1)
    chunked = run()
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-15)


def ref_byol(p1, p2, t1, t2) -> float:
    def regression(p: torch.Tensor, t: torch.Tensor) -> float:
        return 2 - 2 * cos(p, t)

    n = p1.shape[0]
    return sum(regression(p1[i], t2[i]) + regression(p2[i], t1[i]) for i in range(n)) / n


def ref_simsiam(p1, p2, z1, z2) -> float:
    n = p1.shape[0]
    return -0.5 * (
        mean([cos(p1[i], z2[i]) for i in range(n)]) + mean([cos(p2[i], z1[i]) for i in range(n)])
    )


def test_byol_and_simsiam_match_hand_computation() -> None:
    p1, p2, t1, t2 = (randn(5, 4, seed=120 + i) for i in range(4))
    assert float(byol_loss(p1, p2, t1, t2)) == pytest.approx(ref_byol(p1, p2, t1, t2), rel=1e-12)
    got = simsiam_loss(p1, p2, t1, t2)
    assert float(got) == pytest.approx(ref_simsiam(p1, p2, t1, t2), rel=1e-12)
    # aligned predictions: BYOL 0, SimSiam -1
    assert float(byol_loss(p1, p2, 3 * p2, 2 * p1)) == pytest.approx(0.0, abs=1e-12)
    assert float(simsiam_loss(p1, p2, 3 * p2, 2 * p1)) == pytest.approx(-1.0, rel=1e-12)


@pytest.mark.parametrize("fn", [byol_loss, simsiam_loss])
def test_targets_are_stop_gradient(fn) -> None:
    # gradcheck cannot see a stop-gradient: the targets get none, and the predictions' gradient
    # is that of the loss with the targets as constants.
    p1, p2, t1, t2 = (randn(6, 3, seed=130 + i).requires_grad_() for i in range(4))
    fn(p1, p2, t1, t2).backward()
    assert t1.grad is None and t2.grad is None
    q1, q2 = (randn(6, 3, seed=130 + i).requires_grad_() for i in range(2))
    constants = [randn(6, 3, seed=132 + i) for i in range(2)]
    expected = torch.autograd.grad(fn(q1, q2, *constants), (q1, q2))
    torch.testing.assert_close((p1.grad, p2.grad), expected, rtol=0, atol=1e-14)


def test_momentum_update_and_cosine_schedule() -> None:
    torch.manual_seed(0)
    online, target = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.normal_(), online.bias.normal_(), online.running_mean.fill_(5.0)
    before = [p.detach().clone() for p in target.parameters()]
    momentum_update(target, online, 0.9)
    for xi, xi0, theta in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(xi.detach(), 0.9 * xi0 + 0.1 * theta.detach())
    assert torch.equal(target.running_mean, torch.zeros(3))  # buffers are the target's own
    with pytest.raises(ValueError, match="differ"):
        momentum_update(target, torch.nn.Linear(3, 3), 0.9)
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(1 - 0.004 / 2)
    assert cosine_momentum(100, 100) == 1.0 == cosine_momentum(250, 100)
    k, total = 30, 100
    expected = 1 - (1 - 0.99) * (math.cos(math.pi * k / total) + 1) / 2
    assert cosine_momentum(k, total, base_tau=0.99) == pytest.approx(expected, rel=1e-15)


def test_metrics_match_hand_computation() -> None:
    z1, z2 = randn(6, 3, seed=90), randn(6, 3, seed=91)
    stds = [math.sqrt(cov_entry(z1, a, a, 5)) for a in range(3)]
    got = ssl_ops.embedding_std(z1)
    assert float(got["std_mean"]) == pytest.approx(mean(stds), rel=1e-12)
    assert float(got["std_min"]) == pytest.approx(min(stds), rel=1e-12)
    eigenvalues = torch.linalg.eigvalsh(z1.T @ z1).clamp_min(0).sqrt().tolist()
    p = [s / sum(eigenvalues) + 1e-7 for s in eigenvalues]
    assert float(ssl_ops.rankme(z1)) == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)))
    u1, u2 = [(z / z.norm(dim=1, keepdim=True)) for z in (z1, z2)]
    align = mean([dot(u1[i] - u2[i], u1[i] - u2[i]) for i in range(6)])
    assert float(ssl_ops.alignment(z1, z2)) == pytest.approx(align, rel=1e-12)
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    potentials = [math.exp(-2 * dot(u1[i] - u1[j], u1[i] - u1[j])) for i, j in pairs]
    assert float(ssl_ops.uniformity(z1)) == pytest.approx(math.log(mean(potentials)), rel=1e-12)


@pytest.mark.parametrize(("n", "d"), [(12, 5), (5, 12), (7, 7)])
def test_rankme_from_the_smaller_gram_matches_svdvals(n: int, d: int) -> None:
    z = randn(n, d, seed=n * d) @ torch.diag(torch.logspace(0, -3, d, dtype=DT))
    sigma = torch.linalg.svdvals(z)
    p = sigma / sigma.sum() + 1e-7
    expected = math.exp(-float((p * p.log()).sum()))
    assert float(ssl_ops.rankme(z)) == pytest.approx(expected, rel=1e-12)
    assert float(ssl_ops.rankme(z.float())) == pytest.approx(expected, rel=1e-5)


def test_rankme_counts_the_rank() -> None:
    basis = torch.linalg.qr(randn(8, 8, seed=95))[0]
    low_rank = torch.cat([basis[:, :3], torch.zeros(8, 5, dtype=DT)], dim=1)
    assert float(ssl_ops.rankme(low_rank)) == pytest.approx(3.0, rel=1e-4)
    # float32 input: the Gram is formed in float64, so no noise floor lifts the rank
    assert float(ssl_ops.rankme(low_rank.float())) == pytest.approx(3.0, rel=1e-4)


def _seeded(fn, seed: int = 0):
    def call(*args, **kwargs):
        return fn(*args, generator=torch.Generator().manual_seed(seed), **kwargs)

    return call


def _pirl_for_gradcheck():
    bank = ssl_ops.MemoryBank(10, 3, seed=1)
    bank.log_z.fill_(math.log(10.0))
    pirl = _seeded(ssl_ops.pirl_nce_loss)
    return lambda a, b: pirl(a, b, torch.arange(8), bank, num_negatives=5, update_bank=False)


GRADCHECK = {
    "vicreg": (lambda a, b: ssl_ops.vicreg_loss(a, b), 2, 0.5),
    "barlow_twins": (lambda a, b: ssl_ops.barlow_twins_loss(a, b), 2, 1.0),
    "nt_xent": (lambda *v: ssl_ops.nt_xent_loss(list(v), temperature=0.5), 3, 1.0),
    "nt_xent_std": (
        lambda *v: ssl_ops.nt_xent_loss(list(v), temperature=0.5, standardize=True),
        2,
        1.0,
    ),
    "simclr_abs": (lambda *v: ssl_ops.simclr_abs_loss(list(v), temperature=0.5), 2, 1.0),
    "simclr_sq": (lambda *v: ssl_ops.simclr_sq_loss(list(v), temperature=0.5), 2, 1.0),
    "dcl": (lambda a, b: ssl_ops.dcl_loss(a, b, temperature=0.5), 2, 1.0),
    "dcl_abs": (lambda a, b: ssl_ops.dcl_abs_loss(a, b, temperature=0.5), 2, 1.0),
    "dcl_sq": (lambda a, b: ssl_ops.dcl_sq_loss(a, b, temperature=0.5), 2, 1.0),
    "spectral": (lambda a, b: ssl_ops.spectral_contrastive_loss(a, b, mu=2.0), 2, 1.0),
    "wmse": (lambda *v: _seeded(ssl_ops.wmse_loss)(list(v), w_size=4), 3, 1.0),
    "vicreg_exp": (lambda a, b: ssl_ops.vicreg_exp_loss(a, b, temperature=0.5), 2, 0.5),
    "vicreg_ctr": (lambda a, b: ssl_ops.vicreg_ctr_loss(a, b, temperature=0.5), 2, 0.5),
    "sample_criterion": (ssl_ops.sample_contrastive_criterion, 1, 1.0),
    "dimension_criterion": (ssl_ops.dimension_contrastive_criterion, 1, 1.0),
    "uniformity": (ssl_ops.uniformity, 1, 1.0),
    "alignment": (ssl_ops.alignment, 2, 1.0),
    "byol": (
        lambda p1, p2: byol_loss(p1, p2, randn(8, 3, seed=7), randn(8, 3, seed=8)),
        2,
        1.0,
    ),
    "simsiam": (
        lambda p1, p2: simsiam_loss(p1, p2, randn(8, 3, seed=7), randn(8, 3, seed=8)),
        2,
        1.0,
    ),
}


@pytest.mark.parametrize("name", [*GRADCHECK, "pirl"])
def test_gradcheck(name: str) -> None:
    if name == "pirl":
        fn, count, scale = _pirl_for_gradcheck(), 2, 1.0
    else:
        fn, count, scale = GRADCHECK[name]
    inputs = [randn(8, 3, seed=100 + i, scale=scale).requires_grad_() for i in range(count)]
    assert torch.autograd.gradcheck(fn, inputs)


def test_dclw_weights_carry_no_gradient() -> None:
    # gradcheck cannot see a stop-gradient, so compare with the weights frozen by hand.
    z1, z2 = randn(6, 3, seed=110).requires_grad_(), randn(6, 3, seed=111).requires_grad_()
    ssl_ops.dcl_loss(z1, z2, temperature=0.5, weighted=True).backward()
    a, b = randn(6, 3, seed=110).requires_grad_(), randn(6, 3, seed=111).requires_grad_()
    u1, u2 = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    positive = (u1 * u2).sum(1)
    weight = 2 - 6 * torch.softmax(positive.detach() / 0.5, dim=0)
    eye = torch.eye(6, dtype=torch.bool)
    loss = 0.0
    for x, y in ((u1, u2), (u2, u1)):
        logits = torch.cat([x @ x.T, x @ y.T], dim=1) / 0.5
        negatives = logits.masked_fill(eye.repeat(1, 2), float("-inf")).logsumexp(1)
        loss = loss + (negatives - weight * positive / 0.5).mean() / 2
    loss.backward()
    assert torch.allclose(z1.grad, a.grad, atol=1e-12)
    assert torch.allclose(z2.grad, b.grad, atol=1e-12)
