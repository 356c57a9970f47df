"""The loader contract on both backends: equal batch counts per rank, every sample once per
epoch across the ranks, a new order and a new split every epoch, split indices, exact resume;
the torch backend where DALI is not installed; the defaults resolved where the loader runs
(memory maps off on network filesystems, prefetch depth by device)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslpipe.datasets.filesystems import (
    MOUNTS,
    filesystem_type,
    is_network_type,
    on_network_filesystem,
    parse_mounts,
)
from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.loaders import PREFETCH_DEFAULT, LoaderConfig, build_loader, with_defaults
from sslpipe.datasets.recipes import ViewRecipe

BACKENDS = ["dali", "torch"]
TINY = [ViewRecipe(size=8, crop_scale=(0.5, 1.0), blur_p=0)]
SAMPLES = 101  # not a multiple of the ranks or the batch


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from sslpipe.datasets.sources import SyntheticShapesSource

    out = tmp_path_factory.mktemp("contract")
    ingest(SyntheticShapesSource(SAMPLES, image_size=16), out, shard_size=10, val_fraction=0)
    return split_shards(out, "train")


def _indices(loader) -> list[int]:
    return [int(i) for _, _, indices in loader for i in indices]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_split_each_epoch_and_reshuffle(backend: str, shards: list[Path]) -> None:
    ranks = 3
    loaders = [
        build_loader(
            backend,
            shards,
            TINY,
            LoaderConfig(
                batch_size=8,
                shard_id=rank,
                num_shards=ranks,
                seed=5,
                with_index=True,
                num_threads=1 if backend == "dali" else 0,
            ),
        )
        for rank in range(ranks)
    ]
    epochs = [[_indices(loader) for loader in loaders] for _ in range(2)]
    assert len({len(loader) for loader in loaders}) == 1, "equal batch counts"
    for epoch in epochs:
        assert all(len(seen) == 8 * len(loaders[0]) for seen in epoch)
        flat = [i for seen in epoch for i in seen]
        assert len(flat) == len(set(flat)), "a sample went to two ranks in one epoch"
        assert set(flat) <= set(range(SAMPLES)) and len(flat) > SAMPLES - ranks * 8
    for rank in range(ranks):
        assert epochs[0][rank] != epochs[1][rank], "a rank read the same order twice"
        assert set(epochs[0][rank]) != set(epochs[1][rank]), "the ranks' splits stayed put"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ordered_pass_reads_each_sample_once_with_its_label(
    backend: str, shards: list[Path]
) -> None:
    config = LoaderConfig(batch_size=16, shuffle=False, drop_last=False, with_index=True,
                          num_threads=1 if backend == "dali" else 0)  # fmt: skip
    batches = list(build_loader(backend, shards, TINY, config))
    assert [int(i) for _, _, indices in batches for i in indices] == list(range(SAMPLES))
    labels = torch.cat([labels for _, labels, _ in batches])
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= set(range(10))


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_mid_epoch_gives_the_same_samples_and_augmentations(
    backend: str, shards: list[Path]
) -> None:
    config = LoaderConfig(batch_size=8, seed=3, with_index=True, num_threads=2)
    loader = build_loader(backend, shards, TINY, config)
    list(loader)  # resume in the second epoch, where the order is no longer the first
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    expected = list(batches)
    resumed = list(build_loader(backend, shards, TINY, config, checkpoint=state))
    assert len(resumed) == len(expected) == len(loader) - 1
    for (views, labels, indices), (again, again_labels, again_indices) in zip(
        expected, resumed, strict=True
    ):
        assert torch.equal(indices, again_indices) and torch.equal(labels, again_labels)
        assert torch.equal(views[0], again[0])


def test_a_checkpoint_of_the_other_backend_is_refused(shards: list[Path]) -> None:
    config = LoaderConfig(batch_size=8, num_threads=0)
    state = build_loader("torch", shards, TINY, config).state_dict()
    with pytest.raises(ValueError, match="from the 'torch' loader"):
        build_loader("dali", shards, TINY, config, checkpoint=state)
    with pytest.raises(ValueError, match="choose one of dali, torch"):
        build_loader("pil", shards, TINY, config)


def test_torch_backend_needs_no_dali(shards: list[Path]) -> None:
    """With ``nvidia.dali`` unimportable, the torch loader runs and the DALI one says what
    to install; ``recipes`` imports no torch."""
    script = f"""
import sys
class NoDali:
    def find_spec(self, name, path=None, target=None):
        if name == "nvidia" or name.startswith("nvidia."):
            raise ImportError("No module named " + repr(name), name=name)
sys.meta_path.insert(0, NoDali())
import sslpipe.datasets.recipes
assert "torch" not in sys.modules
from sslpipe.datasets.loaders import LoaderConfig, build_loader
from sslpipe.datasets.recipes import get_recipe
shards = {[str(s) for s in shards[:2]]!r}
config = LoaderConfig(batch_size=4, num_threads=0)
views, labels = next(iter(build_loader("torch", shards, get_recipe("vicreg_cifar"), config)))
assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2
try:
    build_loader("dali", shards, get_recipe("vicreg_cifar"), config)
except ImportError as error:
    print(error)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "the dali loader needs nvidia" in result.stdout
    assert "or use the torch loader" in result.stdout


MOUNT_TABLE = """\
/dev/vda1 / ext4 rw,relatime 0 0
server:/export /data nfs4 rw,relatime,vers=4.2 0 0
10.0.0.1@tcp:/lustre /data/lustre lustre rw,flock 0 0
s3fs /data/lustre/bucket fuse.s3fs rw,nosuid 0 0
/dev/vdb /data/local\\040disk ext4 rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "kind", "networked"),
    [
        ("/home/someone/shards/train-000000.tar", "ext4", False),
        ("/data/imagenet/train-000000.tar", "nfs4", True),
        ("/data/lustre/imagenet", "lustre", True),
        ("/data/lustre/bucket/train-000000.tar", "fuse.s3fs", True),
        ("/data/local disk/train-000000.tar", "ext4", False),  # the octal escape of a space
        ("/database/train-000000.tar", "ext4", False),  # /data is no prefix of /database
    ],
)
def test_network_filesystems_from_a_mount_table(path: str, kind: str, networked: bool) -> None:
    assert filesystem_type(path, parse_mounts(MOUNT_TABLE)) == kind
    assert is_network_type(kind) is networked


@pytest.mark.skipif(not MOUNTS.exists(), reason="no /proc/mounts (not Linux)")
def test_local_shards_are_memory_mapped_and_prefetch_follows_the_device(
    shards: list[Path],
) -> None:
    assert filesystem_type(shards[0], parse_mounts(MOUNTS.read_text())) is not None
    assert not on_network_filesystem(shards[0])
    resolved = with_defaults(LoaderConfig(batch_size=4, device="cpu"), shards)
    assert resolved.memory_map is True and resolved.prefetch == PREFETCH_DEFAULT["cpu"] == 2
    assert PREFETCH_DEFAULT["gpu"] == 3
    chosen = LoaderConfig(batch_size=4, device="cpu", memory_map=False, prefetch=5)
    assert with_defaults(chosen, shards) == chosen
