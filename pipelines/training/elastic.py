"""An elastic worker group that takes only the sizes the spec allows.

Ray Train's ``ElasticScalingPolicy`` (``ScalingConfig(num_workers=(min, max))``) sizes the group
to whatever the cluster can hold between min and max. A pretraining group must also split the
global batch evenly (``stages.pretrain.group_sizes``), so this policy rounds Ray's count down
to the largest allowed size; below ``min`` Ray waits, as it does without us.

Ray 2.60 builds the policy in ``DataParallelTrainer.fit`` and hands it to the controller actor
(``ray/train/v2/api/data_parallel_trainer.py``, ``_initialize_and_run_controller``); the
policy's worker count comes from ``ElasticScalingPolicy._count_possible_workers``
(``ray/train/v2/_internal/execution/scaling_policy/elastic.py``). Both are internal: a Ray
upgrade must keep ``tests/test_elastic.py`` passing.
"""

from __future__ import annotations

import contextlib
from typing import Any

import ray
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy
from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
    AUTOSCALING_REQUESTS_GET_TIMEOUT_S,
)
from ray.train.v2._internal.util import time_monotonic
from ray.train.v2.api.config import ScalingConfig


class AllowedSizesPolicy(ElasticScalingPolicy):
    """Ray's elastic policy, with each size it picks rounded down to an allowed one, and
    counted on the cluster's nodes as they are now, draining ones left out.

    Ray's policy reads the resources the ``AutoscalingCoordinator`` reserved for the run,
    computed on its view of the nodes, which it refreshes every 20 s
    (``_AutoscalingCoordinatorActor.TICK_INTERVAL_S``, ``ray/data/_internal/cluster_autoscaler/
    default_autoscaling_coordinator.py``): a group that lost a node would be restarted at its
    old size on a node that is gone, and one that could grow would wait up to 20 s more. Asked
    with ``recompute=True`` the coordinator refreshes its view first; the policy asks at most
    once a second while the group is down (the first time at once, not with the answer it got
    while the group ran) and once per ``resize_check_seconds`` while it runs.

    A running group never shrinks because one of its nodes is draining: its workers
    checkpoint on the notice and wait (``worker.py``), whereas Ray's policy would resize at
    once, restarting the group from an older checkpoint and losing the steps since. It
    shrinks when the node has gone, from the drain checkpoint. It may grow, onto nodes that
    are not draining.
    """

    def __init__(self, scaling_config: ScalingConfig, sizes: list[int]) -> None:
        super().__init__(scaling_config)
        self.sizes = sorted(sizes)
        self._running_size: int | None = None  # the running group's size; None while down

    def make_decision_for_running_worker_group(
        self, worker_group_state: Any, worker_group_status: Any
    ) -> Any:
        self._running_size = worker_group_state.num_workers
        return super().make_decision_for_running_worker_group(
            worker_group_state, worker_group_status
        )

    def make_decision_for_non_running_worker_group(self) -> Any:
        if self._running_size is not None:  # the group just went down: what was reserved is stale
            self._running_size = None
            self._latest_reserved_resources_query_time = float("-inf")
        return super().make_decision_for_non_running_worker_group()

    def _get_reserved_resources(self) -> Any:
        elapsed = time_monotonic() - self._latest_reserved_resources_query_time
        if elapsed >= self.GET_RESERVED_RESOURCES_INTERVAL_S:
            coordinator = self._autoscaling_coordinator
            refresh = coordinator.get_reserved_resources.remote(self._requester_id, recompute=True)
            # On failure Ray's own query below reports it and the decision waits.
            with contextlib.suppress(Exception):
                ray.get(refresh, timeout=AUTOSCALING_REQUESTS_GET_TIMEOUT_S)
        return super()._get_reserved_resources()

    def _count_possible_workers(self, reserved_resources: Any) -> int:
        # A draining node still counts as alive, but takes no new workers and is about to go
        # (the same source as Ray Train's PreemptionWatcher, ray/train/v2/_internal/execution/
        # preemption.py): a group restarted on it would wait for a placement that never comes.
        draining = ray._private.state.state.get_draining_nodes() or {}
        usable = {node: free for node, free in reserved_resources.items() if node not in draining}
        possible = super()._count_possible_workers(usable)
        if self._running_size is not None and possible < self._running_size:
            # Smaller only without the draining nodes: keep the group until they have gone.
            possible = super()._count_possible_workers(reserved_resources)
        return max((size for size in self.sizes if size <= possible), default=possible)


class ElasticTorchTrainer(TorchTrainer):
    """A ``TorchTrainer`` whose elastic group takes only ``group_sizes`` workers."""

    def __init__(self, *args: Any, group_sizes: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group_sizes = group_sizes

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
        if self.scaling_config.elasticity_enabled:
            controller_init_kwargs["scaling_policy"] = AllowedSizesPolicy(
                self.scaling_config, self.group_sizes
            )
        return super()._initialize_and_run_controller(**controller_init_kwargs)
