"""Getting batches onto the device, and timing how long the device waits for them."""

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


class DataWaitClock:
    """How long the device waited for data, between the end of one step and the start of the
    next.

    ``begin()`` marks the moment the previous step's work is all queued (the loop asks the
    loader for the next batch), ``end()`` the moment the next batch is ready to use. On CUDA
    the marks are events on the current stream: the time between them is the time the GPU ran
    nothing of ours — 0 when the step's queued kernels outlast the host's wait for the loader,
    and including the batch's own hand-over work (DALI's copy out, the layout change) and any
    wait of the stream for it. Reading it synchronises, so ``take()`` belongs at a sync point,
    after the host has waited for the device. On the CPU the marks are host clock readings.
    """

    def __init__(self, device: torch.device) -> None:
        self.on_cuda = device.type == "cuda"
        self.pending: Any = None  # a begin() not yet ended
        self.spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.host_seconds = 0.0

    def _mark(self) -> Any:
        if not self.on_cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def begin(self) -> None:
        """The previous step is queued; an earlier ``begin()`` not yet ended stays the start."""
        if self.pending is None:
            self.pending = self._mark()

    def end(self) -> None:
        """The batch is ready: the span since ``begin()`` was data wait."""
        if self.pending is None:
            return
        start, self.pending = self.pending, None
        stop = self._mark()
        if self.on_cuda:
            self.spans.append((start, stop))
        else:
            self.host_seconds += stop - start

    def take(self) -> float:
        """Seconds of data wait since the last ``take()``."""
        if self.on_cuda:
            if self.spans:
                self.spans[-1][1].synchronize()  # recorded in stream order: all are done
            waited = sum(start.elapsed_time(stop) for start, stop in self.spans) / 1000
            self.spans = []
            return waited
        waited, self.host_seconds = self.host_seconds, 0.0
        return waited


@dataclass
class TimedLoader:
    """Iterates a loader, yielding batches already on ``clock``'s device (``prepare_batch``),
    and has ``clock`` time the data wait: from when the consumer asks for a batch (its step's
    work queued) to when that batch is ready. The step's own time is the trainer's."""

    loader: Any
    device: torch.device
    clock: DataWaitClock

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], Batch]]:
        self.clock.begin()
        iterator = iter(self.loader)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return  # the wait goes on into the next epoch's first batch
            prepared = prepare_batch(item, self.device)
            self.clock.end()
            yield prepared
            self.clock.begin()


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
