"""Getting batches onto the device, and timing only the loader's hand-over."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from sslpipe.ssl_ops import Batch

LoaderBatch = tuple[Any, ...]  # (views, labels) or (views, labels, indices)


def prepare_batch(item: LoaderBatch, device: torch.device) -> tuple[list[torch.Tensor], Batch]:
    """Views and labels on ``device``; on CUDA, 4-D image batches in ``channels_last`` (the
    layout the convolutions run fastest in). Jigsaw patches (N×P×C×H×W; the backbone sees
    them flattened to 4-D) and integer tensors (a jigsaw order, labels) keep their layout."""
    views, labels, *indices = item
    moved = [view.to(device, non_blocking=True) for view in views]
    if device.type == "cuda":
        moved = [
            view.contiguous(memory_format=torch.channels_last)
            if view.dim() == 4 and view.is_floating_point()
            else view
            for view in moved
        ]
    index = indices[0].to(device, non_blocking=True) if indices else None
    return moved, Batch(labels.to(device, non_blocking=True), index)


@dataclass
class TimedLoader:
    """Iterates a loader and adds up the time spent inside ``next()`` — the loader's
    hand-over, and nothing of the step (the step's GPU work runs asynchronously and is
    waited for at the sync points, whose wall time the trainer measures)."""

    loader: Any
    waited: float = 0.0

    def __iter__(self) -> Iterator[LoaderBatch]:
        iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self.waited += time.perf_counter() - start
            yield item

    def take_waited(self) -> float:
        waited, self.waited = self.waited, 0.0
        return waited


class ReplayLoader:
    """The first batch of ``loader``, moved to ``device`` once and handed over ``len(loader)``
    times per epoch: the training step with no loader behind it. A benchmark compares it
    with the real loader — data-bound share = 1 − step(synthetic) / step(real)."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        views, *rest = next(iter(loader))
        self.batch = ([v.to(device) for v in views], *(t.to(device) for t in rest))
        self.length = len(loader)
        self.device = device

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[LoaderBatch]:
        for _ in range(self.length):
            yield self.batch

    def state_dict(self) -> dict[str, Any]:
        return {}
