"""The probes on frozen features: a linear classifier and a weighted kNN, and their accuracy.

Pure torch: nothing here knows about shards, Ray or files. Features come as ``Rows``, any
N×D array that a slice or an index tensor turns into CPU tensor rows: a ``torch.Tensor``, or
a memory-mapped feature file (``features.FeatureFile``). Every pass reads
``chunk_rows`` rows at a time, so memory does not grow with the number of samples beyond
the labels (8 bytes each) and the linear probe's permutation (8 bytes each).

* Linear probe: features standardised per dimension with the train split's mean and
  (unbiased) standard deviation, computed in one streaming pass, then a linear layer trained
  with AdamW and a cosine schedule over full epochs of shuffled mini-batches.
* Weighted kNN (Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
  Discrimination", CVPR 2018, eq. 6): with cosine similarities s_i to the k nearest train
  features, class c scores Σ_{i ∈ top-k, y_i = c} exp(s_i / τ). One top-k for the largest k
  serves every k (smaller k are its prefixes); the train bank streams in chunks against a
  block of queries, merging each chunk's top-k into the block's running top-k.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_ROWS = 4096  # rows per read; a kNN similarity block is CHUNK_ROWS² float32 (64 MiB)


class Rows(Protocol):
    """N×D features: ``rows[a:b]`` and ``rows[index_tensor]`` give CPU tensors."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: slice | torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Features:
    """One split's features and their labels (int64, on the CPU)."""

    x: Rows
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


def blocks(n: int, size: int) -> Iterator[slice]:
    """``slice(0, size), slice(size, 2·size), …`` covering ``range(n)``."""
    return (slice(start, min(start + size, n)) for start in range(0, n, size))


class Accuracy:
    """Top-1, top-5 (with at least 5 classes), per-class top-1 and the confusion matrix,
    accumulated over batches of class scores."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.top5 = 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        scores, labels = scores.cpu(), labels.cpu()
        predicted = scores.argmax(dim=1)
        self.confusion.index_put_((labels, predicted), torch.ones_like(predicted), accumulate=True)
        if self.num_classes >= 5:
            self.top5 += int((scores.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum())

    def result(self) -> dict[str, Any]:
        per_class = self.confusion.sum(dim=1)
        correct = self.confusion.diagonal()
        result: dict[str, Any] = {"top1": 100.0 * int(correct.sum()) / int(per_class.sum())}
        if self.num_classes >= 5:
            result["top5"] = 100.0 * self.top5 / int(per_class.sum())
        result["per_class_top1"] = [
            100.0 * int(c) / int(n) if n else None for c, n in zip(correct, per_class, strict=True)
        ]
        result["confusion"] = self.confusion.tolist()
        return result


def _to_device(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return rows.pin_memory().to(device, non_blocking=True)
    return rows


@torch.no_grad()
def feature_stats(
    x: Rows, device: torch.device, chunk_rows: int = CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and unbiased standard deviation (+1e-6) in one streaming pass:
    sums of x and x² accumulated in float64, float32 results on ``device``."""
    n, dim = x.shape[0], x.shape[1]
    total = torch.zeros(dim, dtype=torch.float64, device=device)
    squares = torch.zeros(dim, dtype=torch.float64, device=device)
    for rows in blocks(n, chunk_rows):
        chunk = _to_device(x[rows], device).float()
        total += chunk.sum(dim=0, dtype=torch.float64)
        squares += chunk.square().sum(dim=0, dtype=torch.float64)
    mean = total / n
    variance = (squares - n * mean.square()) / max(n - 1, 1)
    return mean.float(), variance.clamp_min(0).sqrt().float() + 1e-6


def train_linear(
    train: Features,
    num_classes: int,
    standardise: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    chunk_rows: int = CHUNK_ROWS,
) -> nn.Linear:
    """A linear layer on standardised features: AdamW, cosine decay over ``epochs``, each
    epoch one random permutation cut into ``batch_size`` batches. Rows are read a chunk of
    whole batches at a time, so the batches do not depend on ``chunk_rows``."""
    mean, std = standardise
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classifier = nn.Linear(train.x.shape[1], num_classes).to(device)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    labels = train.labels.to(device)
    per_chunk = batch_size * max(1, chunk_rows // batch_size)
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator)
        for chunk in order.split(per_chunk):
            x = (_to_device(train.x[chunk], device).float() - mean) / std
            y = labels[chunk.to(device)]
            for batch in blocks(len(chunk), batch_size):
                loss = F.cross_entropy(classifier(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        scheduler.step()
    return classifier


def linear_probe(
    train: Features,
    test: Features,
    num_classes: int,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, Any]:
    """Standardised features → linear layer (``train_linear``), scored on ``test``."""
    mean, std = feature_stats(train.x, device, chunk_rows)
    classifier = train_linear(
        train,
        num_classes,
        (mean, std),
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        seed=seed,
        device=device,
        chunk_rows=chunk_rows,
    )
    accuracy = Accuracy(num_classes)
    with torch.no_grad():
        for rows in blocks(len(test), chunk_rows):
            x = (_to_device(test.x[rows], device).float() - mean) / std
            accuracy.update(classifier(x), test.labels[rows])
    return accuracy.result()


def _normalised(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    return F.normalize(_to_device(rows, device).float(), dim=1)


@torch.no_grad()
def nearest_neighbours(
    queries: Rows, bank: Rows, k: int, device: torch.device, chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Per block of ``chunk_rows`` queries: ``(rows, similarity, index)``, the cosine
    similarities (most similar first) and bank rows of each query's ``k`` nearest bank rows.
    The bank streams once per query block in chunks of ``chunk_rows``."""
    n_bank = bank.shape[0]
    k = min(k, n_bank)
    for rows in blocks(queries.shape[0], chunk_rows):
        q = _normalised(queries[rows], device)
        best = torch.empty(len(q), 0, device=device)
        best_index = torch.empty(len(q), 0, dtype=torch.long, device=device)
        for part in blocks(n_bank, chunk_rows):
            similarity = q @ _normalised(bank[part], device).T
            top, index = similarity.topk(min(k, similarity.shape[1]), dim=1)
            best, pick = torch.cat([best, top], dim=1).topk(min(k, best.shape[1] + top.shape[1]))
            best_index = torch.cat([best_index, index + part.start], dim=1).gather(1, pick)
        yield rows, best, best_index


@torch.no_grad()
def knn_probe(
    train: Features,
    test: Features,
    num_classes: int,
    *,
    ks: list[int],
    temperature: float,
    device: torch.device,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, Any]:
    """Weighted kNN votes exp(s/τ) for each k in ``ks`` from one top-max(k) search:
    ``{"k20": accuracy, ...}``."""
    accuracies = {k: Accuracy(num_classes) for k in ks}
    bank_labels = train.labels.to(device)
    neighbours = nearest_neighbours(test.x, train.x, max(ks), device, chunk_rows)
    for rows, similarity, index in neighbours:
        weights, labels = (similarity / temperature).exp(), bank_labels[index]
        for k, accuracy in accuracies.items():
            votes = torch.zeros(len(weights), num_classes, device=device)
            votes.scatter_add_(1, labels[:, :k], weights[:, :k])
            accuracy.update(votes, test.labels[rows])
    return {f"k{k}": accuracy.result() for k, accuracy in accuracies.items()}
