"""Shared fixtures: small real data sets (synthetic and a CIFAR-10 slice) and Ray teardown."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR10_TAR = REPO.parent / "shared" / "data" / "cifar10" / "train.tar"


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


@pytest.fixture
def ray_cleanup():
    """Shut Ray down after a test that started it in-process, even when the test fails."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
