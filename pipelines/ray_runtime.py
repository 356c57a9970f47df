"""Ray lifecycle: join the cluster named by ``RAY_ADDRESS``, else start Ray in-process."""

from __future__ import annotations

import logging
import os

import ray

from .interrupt import keep_stop_handlers


def ensure_ray() -> None:
    if ray.is_initialized():
        return
    # Workers' prints reach the driver once, as plain lines (not through Ray's log patch).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    keep_stop_handlers(
        lambda: ray.init(
            address=os.environ.get("RAY_ADDRESS") or None,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    )


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
