"""Ray lifecycle: join the cluster named by ``RAY_ADDRESS``, else start Ray in-process; what
the cluster can hold; and Ray's own output kept out of ours unless asked for.

Quiet (the default), the driver prints only the lines our stages' workers print
(``[pretrain] step …``, without Ray's ``(RayTrainWorker pid=…)`` prefix) and Ray's errors
of its own process; the controller's notices, Ray's warnings and the workers' other output are
left in Ray's log files (``/tmp/ray/session_latest/logs``). ``set_verbose(True)`` (``sslpipe
--verbose``) prints everything as Ray does.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from .interrupt import keep_stop_handlers

_settings = {"verbose": False, "ours": False}  # ours: ensure_ray started or joined Ray
_OUR_LINE = re.compile(r"^\[[a-z][a-z0-9_]*\] ")  # "[stage] …", as stages and workers print
_HANDLER = "sslpipe_lines"


def set_verbose(verbose: bool) -> None:
    """Show Ray's own output (logs, warnings, prefixed worker lines) from the next start on."""
    _settings["verbose"] = verbose


def ensure_ray(min_cpus: int = 0) -> None:
    """Connect to Ray, or start it in-process with at least ``min_cpus`` logical CPUs: on a
    laptop the workers' loader threads share the cores anyway, and a run must not wait for a
    reservation that a single machine cannot grant (a cluster is sized by its operator)."""
    import ray

    if ray.is_initialized():
        return
    verbose = _settings["verbose"]
    address = os.environ.get("RAY_ADDRESS") or "local"
    num_cpus = None if address != "local" else max(os.cpu_count() or 1, min_cpus)
    # Workers' prints reach the driver once, as plain lines (not through Ray's log patch).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    keep_stop_handlers(
        lambda: ray.init(
            address=address,
            num_cpus=num_cpus,
            logging_level=logging.WARNING if verbose else logging.ERROR,
            log_to_driver=True,
        )
    )
    _settings["ours"] = True
    if not verbose:
        _print_only_our_lines()


def _print_only_our_lines() -> None:
    """Swap Ray's printer of worker output for one that passes our lines only."""
    # The dispatcher ray.init(log_to_driver=True) registers its printer with (Ray 2.5x-2.6x).
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler(_HANDLER)
    dispatcher.add_handler(_HANDLER, _print_our_lines)


def _print_our_lines(batch: dict[str, Any]) -> None:
    for line in batch.get("lines", ()):
        if _OUR_LINE.match(line):
            print(line, flush=True)


def shutdown_ray() -> None:
    """Leave the Ray that ``ensure_ray`` started or joined; one the caller (a notebook using
    the Python API) had already started stays up."""
    if not _settings["ours"]:
        return
    import ray

    _settings["ours"] = False
    if ray.is_initialized():
        ray.shutdown()


@dataclass(frozen=True)
class Capacity:
    """What the Ray cluster has, or can grow to when an autoscaler manages it.

    ``nodes``: each node's resources (with an autoscaler, also one entry per node group: the
    shape of the nodes it can add); ``total``: resource name → amount over the cluster (with
    an autoscaler, the most its node groups can reach).
    """

    nodes: list[dict[str, float]]
    total: dict[str, float]
    autoscaled: bool = False


def cluster_capacity(min_cpus: int = 0) -> Capacity:
    """The capacity of the cluster ``ensure_ray`` joins (started in-process without one, with
    at least ``min_cpus`` logical CPUs, as the stages about to run would start it).

    With an autoscaler (KubeRay, ``ray up``), the maximum counts of its node groups bound what
    can be placed, read from the cluster config as Ray Train itself does before it waits for
    a worker group; otherwise the nodes alive now are all there is.
    """
    import ray
    from ray._private.state import state

    ensure_ray(min_cpus)
    nodes = [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]
    maximum = state.get_max_resources_from_cluster_config()
    if not maximum:
        return Capacity(nodes, dict(ray.cluster_resources()))
    groups = [dict(group.resources) for group in state.get_cluster_config().node_group_configs]
    total = {name: float(amount) for name, amount in maximum.items()}
    return Capacity(nodes + groups, total, autoscaled=True)
