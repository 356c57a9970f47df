"""Shared fixtures: small real data sets (synthetic and a CIFAR-10 slice) and the session's
Ray head."""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_clusters import start_head

REPO = Path(__file__).resolve().parents[1]
CIFAR10_TAR = REPO.parent / "shared" / "data" / "cifar10" / "train.tar"

# Ray Train's controller polls its workers every 2 s: a run's end, or a dead worker, is seen up
# to 2 s late. Every run of the suite (its Ray heads and `sslpipe run` subprocesses inherit
# this) is polled every 0.5 s.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 30 images of each CIFAR-10 class, extracted as ``root/<class>/<n>.jpg``."""
    if not CIFAR10_TAR.exists():
        pytest.skip(f"{CIFAR10_TAR} is not present")
    root = tmp_path_factory.mktemp("cifar10")
    per_class: dict[str, int] = {}
    with tarfile.open(CIFAR10_TAR) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3:
                continue
            if per_class.get(parts[1], 0) >= 30:
                continue
            per_class[parts[1]] = per_class.get(parts[1], 0) + 1
            target = root / parts[1] / parts[2]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    return root


# The slowest files first, the rest in their usual order: `make test` hands files to its two
# xdist workers in collection order (--no-loadscope-reorder), so both finish at about the same
# time instead of one starting the quickstart when the other is nearly done.
SLOWEST_FIRST = (
    "test_quickstart.py",
    "test_pipeline_recovery.py",
    "test_submit.py",
    "test_retrain.py",
    "test_multinode.py",
    "test_elastic.py",
    "test_pretrain_pirl.py",
    "test_plugins.py",
    "test_pretrain_fault_tolerance.py",
    "test_pretrain_ray.py",
    "test_gpu_check.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# Logical CPUs of the shared head: a tiny run's pretrain workers and probe tasks each reserve
# dali_threads + 1 (2 here); the tests of one pytest process run one at a time.
SHARED_HEAD_CPUS = 8
SHARED_HEAD_OBJECT_STORE = 512 * 2**20


@pytest.fixture(scope="session")
def shared_ray_head() -> Iterator[str]:
    """One Ray head per pytest process (per xdist worker), started when a test first needs it
    and stopped at the end of the session; yields its address.

    It is a child of this process, so a test can find the Ray Train workers of its own run
    among this process's descendants; the other xdist worker's runs are on its own head.
    """
    temp_dir = Path("/tmp") / f"sslray-{os.getpid()}"  # short: Ray's socket paths must fit
    head = start_head(
        temp_dir, num_cpus=SHARED_HEAD_CPUS, object_store_memory=SHARED_HEAD_OBJECT_STORE
    )
    try:
        yield head.address
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def ray_cleanup(shared_ray_head: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Ray for a test that does not test Ray's own lifecycle: ``RAY_ADDRESS`` names the
    session's head, so ``ensure_ray`` in this process and ``sslpipe run`` in a subprocess join
    it instead of starting and stopping Ray for every run; the test's connection is closed
    after it, even when it fails. Tests of starting, signalling and shutting down in-process Ray
    start their own."""
    monkeypatch.setenv("RAY_ADDRESS", shared_ray_head)
    yield shared_ray_head
    import ray

    if ray.is_initialized():
        ray.shutdown()
