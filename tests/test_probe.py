"""The probes on known features: a weighted kNN checked by hand, a linear probe on clusters."""

from __future__ import annotations

import math

import torch

from sslpipe.pipelines.stages.probe import ProbeConfig, accuracy, knn_probe, linear_probe

CONFIG = ProbeConfig(name="probe", type="probe", model="m", data="d", knn_k=[2], epochs=30)


def test_weighted_knn_votes_by_exp_similarity_over_temperature() -> None:
    train = (torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), torch.tensor([0, 1, 1]))
    query = (torch.tensor([[1.0, 0.1]]), torch.tensor([0]))
    result = knn_probe(train, query, 2, CONFIG)["k2"]
    q = torch.nn.functional.normalize(query[0], dim=1)[0]
    s0, s1 = float(q @ train[0][0]), float(q @ train[0][1])  # the two nearest: rows 0 and 1
    votes = [math.exp(s0 / 0.07), math.exp(s1 / 0.07)]
    assert result["top1"] == (100.0 if votes[0] > votes[1] else 0.0)
    assert result["confusion"] == [[1, 0], [0, 0]]


def test_linear_probe_separates_clusters_and_reports_per_class() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=generator) * 4
    labels = torch.arange(6).repeat(40)
    features = centres[labels] + torch.randn(240, 16, generator=generator)
    config = CONFIG.model_copy(update={"lr": 0.05, "epochs": 100})
    result = linear_probe((features[:180], labels[:180]), (features[180:], labels[180:]), 6, config)
    assert result["top1"] > 95 and result["top5"] == 100.0
    assert len(result["per_class_top1"]) == 6


def test_accuracy_top5_and_missing_classes() -> None:
    scores = torch.eye(6)[[0, 1, 2]] + 0.01 * torch.arange(6)
    result = accuracy(scores, torch.tensor([0, 2, 2]), 6)
    assert math.isclose(result["top1"], 200 / 3, rel_tol=1e-6)
    assert result["top5"] == 100.0
    assert result["per_class_top1"][:3] == [100.0, None, 50.0]
