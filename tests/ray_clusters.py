"""Ray clusters for tests, on a machine that other Ray clusters may share.

- ``start_head``: ``ray start --head --block`` in its own process group; stopping it kills the
  group (GCS, raylet, dashboard, and the workers the raylet started) and nothing else.
- ``local_cluster``: ``ray.cluster_utils.Cluster``, several raylets (nodes) on this machine.

Both pick every port free, keep their files in their own folder, and give their processes
their own address in ``RAY_ADDRESS``. Without that, Ray code that looks "the" cluster up
(``ray.init()`` without an address, the state API inside Ray Train's placement-group
cleaner) reads ``/tmp/ray/ray_current_cluster``, which ``ray start`` and ``Cluster`` write by
default: a test's cluster would capture other runs on the machine, and theirs this one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READY = "Ray runtime started."


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held open together, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@dataclass(frozen=True)
class RayHead:
    pid: int  # the `ray start --block` process, leader of the head's process group
    address: str  # GCS address, what RAY_ADDRESS names
    dashboard: str  # http://127.0.0.1:PORT
    temp_dir: Path

    def stop(self) -> None:
        """SIGTERM to the group (Ray stops its processes), SIGKILL to whatever is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _group_alive(self.pid):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    with contextlib.suppress(ChildProcessError):  # reap the leader if this process started it
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_head(
    temp_dir: Path,
    num_cpus: int,
    *,
    object_store_memory: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> RayHead:
    """Start a head with ``num_cpus`` logical CPUs and its dashboard; return once it runs."""
    from ray.util import get_node_ip_address  # what Ray turns 127.0.0.1 into for drivers

    temp_dir.mkdir(parents=True, exist_ok=True)
    gcs, dashboard, client, metrics, agent = free_ports(5)
    address = f"{get_node_ip_address()}:{gcs}"
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"  # jobs run `sslpipe`
    env["RAY_ADDRESS"] = address  # for Ray's own processes (module docstring)
    # `ray start` turns token authentication on by itself when ~/.ray/auth_token exists (any
    # earlier in-process ray.init writes one), while a driver given an address does not: say
    # which, as a real cluster's operator would.
    env.setdefault("RAY_AUTH_MODE", "disabled")
    command = [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={gcs}"]
    command += ["--dashboard-host=127.0.0.1"]
    command += ["--include-dashboard=true", f"--dashboard-port={dashboard}"]
    command += [f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}"]
    command += [f"--dashboard-agent-listen-port={agent}"]
    command += [f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}", "--disable-usage-stats"]
    if object_store_memory is not None:
        command.append(f"--object-store-memory={object_store_memory}")
    log = temp_dir / "ray-start.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    head = RayHead(process.pid, address, f"http://127.0.0.1:{dashboard}", temp_dir)
    deadline = time.monotonic() + timeout
    while READY not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            head.stop()
            raise RuntimeError(f"ray start failed ({process.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return head


@contextlib.contextmanager
def local_cluster(
    temp_dir: Path, head: dict[str, Any], nodes: list[dict[str, Any]]
) -> Iterator[Any]:
    """A ``ray.cluster_utils.Cluster``: a head with the ``head`` arguments (``num_cpus``…)
    and its dashboard, and one node per item of ``nodes``. ``RAY_ADDRESS`` and ``RAY_TMPDIR``
    are set while it starts (its raylets and their workers keep them) and put back after, and
    ``temp_dir`` is removed at the end."""
    from ray.cluster_utils import Cluster
    from ray.util import get_node_ip_address

    gcs, dashboard, agent, metrics = free_ports(4)
    address = f"{get_node_ip_address()}:{gcs}"
    saved = {name: os.environ.get(name) for name in ("RAY_ADDRESS", "RAY_TMPDIR")}
    os.environ.update(RAY_ADDRESS=address, RAY_TMPDIR=str(temp_dir))
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                **head,
                "gcs_server_port": gcs,
                "include_dashboard": True,
                "dashboard_host": "127.0.0.1",
                "dashboard_port": dashboard,
                "dashboard_agent_listen_port": agent,
                "metrics_export_port": metrics,
                # A node killed without notice is declared dead after 3 missed health checks
                # of 1 s (Ray's defaults: 5 of 3 s); until then the GCS offers its resources.
                "_system_config": {
                    "health_check_period_ms": 1000,
                    "health_check_timeout_ms": 1000,
                    "health_check_failure_threshold": 3,
                },
            },
        )
        assert cluster.address == address, cluster.address
        for node in nodes:
            cluster.add_node(**node)
        yield cluster
    finally:
        if cluster is not None:
            cluster.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temp_dir, ignore_errors=True)
