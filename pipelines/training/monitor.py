"""Watching the representation while it trains: an online linear probe on detached features,
the embedding std, RankMe, and the guards that stop a run (NaN/Inf, collapse).

Nothing here synchronises with the host per step: the probe's accuracy and the guards'
statistics stay on the device until the trainer's sync point reads them, all at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sslpipe.ssl_ops import MethodOutput, rankme

from ..stages.pretrain import PretrainConfig


class OnlineProbe:
    """A linear classifier on the first view's detached backbone features (Adam, lr 1e-3):
    a running label-accuracy signal at no extra forward pass."""

    def __init__(self, feature_dim: int, num_classes: int, device: torch.device) -> None:
        self.linear = nn.Linear(feature_dim, num_classes).to(device)
        self.optimizer = torch.optim.Adam(self.linear.parameters(), lr=1e-3)
        self.correct = torch.zeros((), device=device)
        self.seen = torch.zeros((), device=device)

    def train_step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        # Unlabelled samples (−1) are ignored by the loss and the accuracy alike.
        logits = self.linear(features.float())
        labelled = labels >= 0
        loss = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
        self.optimizer.zero_grad(set_to_none=True)
        (loss / labelled.sum().clamp_min(1)).backward()
        self.optimizer.step()
        self.correct += ((logits.argmax(1) == labels) & labelled).sum()
        self.seen += labelled.sum()

    def take_accuracy(self) -> torch.Tensor:
        """Top-1 (%) since the last call (NaN when nothing was labelled); resets the count."""
        accuracy = 100.0 * self.correct / self.seen
        self.correct.zero_()
        self.seen.zero_()
        return accuracy


def normalised_std(z: torch.Tensor) -> torch.Tensor:
    """√D · mean std of the L2-normalised embeddings: 1 when spread, 0 when collapsed."""
    z = z.float()
    return F.normalize(z, dim=1).std(dim=0).mean() * math.sqrt(z.shape[1])


@dataclass
class Monitor:
    config: PretrainConfig
    probe: OnlineProbe | None
    low_std_checks: int = 0
    latest: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(
        cls, config: PretrainConfig, feature_dim: int, num_classes: int, device: torch.device
    ) -> Monitor:
        probe = OnlineProbe(feature_dim, num_classes, device) if num_classes > 1 else None
        return cls(config, probe)

    def observe(self, output: MethodOutput, labels: torch.Tensor) -> None:
        """Every step: train the online probe on the features the method offers (no host
        synchronisation)."""
        if self.probe is not None and output.features is not None:
            self.probe.train_step(output.features, labels)

    def is_check_step(self, step: int) -> bool:
        return step % self.config.monitor_every_steps == 0

    def statistics(self, output: MethodOutput, step: int) -> dict[str, torch.Tensor]:
        """At a sync point: device scalars for the history. The embedding's statistics where
        the method offers an embedding (RankMe, a collective over the global batch, at every
        check step), and the probe's accuracy at every check step."""
        z = output.embedding
        stats = {}
        if z is not None:
            stats["embedding_std"] = z.float().std(dim=0).mean()
            stats["normalised_std"] = normalised_std(z)
        if self.is_check_step(step):
            if z is not None:
                stats["rankme"] = rankme(z)
            if self.probe is not None:
                stats["online_probe_top1"] = self.probe.take_accuracy()
        return stats

    @staticmethod
    def spread(stats: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """What the collapse guard reads: the normalised std, or +∞ (never collapsed) for a
        method without an embedding."""
        if "normalised_std" in stats:
            return stats["normalised_std"].float()
        return torch.full((), math.inf, device=device)

    def collapse(self, spread: float, step: int) -> str | None:
        """The collapse guard at a check step, given the largest normalised std over ranks:
        the reason to stop after ``collapse_patience`` low checks in a row, else None."""
        if not self.is_check_step(step) or spread >= self.config.collapse_std_threshold:
            if self.is_check_step(step):
                self.low_std_checks = 0
            return None
        self.low_std_checks += 1
        if self.low_std_checks < self.config.collapse_patience:
            return None
        return (
            f"step {step}: representation collapse — normalised embedding std {spread:.4f} < "
            f"{self.config.collapse_std_threshold} for {self.low_std_checks} consecutive checks "
            "(set collapse_std_threshold: 0 to disable)"
        )
