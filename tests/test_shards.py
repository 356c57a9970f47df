"""Shards written by the ingest code read back with plain webdataset (raw and with its default
decoders), byte for byte; shards with the member names written before still load."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds

from sslpipe.datasets.ingest import ingest, read_manifest, split_shards
from sslpipe.datasets.loaders import LoaderConfig, build_loader
from sslpipe.datasets.recipes import ViewRecipe
from sslpipe.datasets.shards import (
    INDEX_EXT,
    LABEL_EXT,
    LEGACY_EXTS,
    ShardWriter,
    count_samples,
    decode_index,
    decode_label,
    index_path,
    list_shards,
)
from sslpipe.datasets.sources import ImageFolderSource, SyntheticShapesSource


def _read_back(shards: list[Path]) -> dict[str, tuple[bytes, int]]:
    dataset = wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False)
    return {s["__key__"]: (s["jpg"], decode_label(s[LABEL_EXT])) for s in dataset}


def test_every_sample_reads_back_with_plain_webdataset(tmp_path: Path) -> None:
    source = SyntheticShapesSource(120, image_size=32)
    manifest = ingest(source, tmp_path, shard_size=25, val_fraction=0.25)
    expected = {item.key: source.load(item) for item in source.items()}

    seen: dict[str, tuple[bytes, int]] = {}
    for split in ("train", "val"):
        shards = split_shards(tmp_path, split)
        assert [p.name for p in shards] == [p.name for p in list_shards(tmp_path / split)]
        assert all(p.with_suffix(".idx").exists() for p in shards)
        samples = _read_back(shards)
        assert len(samples) == manifest["splits"][split]["num_samples"]
        assert not set(samples) & set(seen), "a sample is in both splits"
        seen |= samples
    assert set(seen) == set(expected)
    for key, (image, label) in seen.items():
        assert image == expected[key].image
        assert label == expected[key].label
    assert manifest["splits"]["val"]["num_samples"] == 30
    assert set(manifest["splits"]["val"]["class_counts"].values()) == {3}


def test_dali_index_offsets_point_at_the_members(tmp_path: Path) -> None:
    ingest(SyntheticShapesSource(30, image_size=32), tmp_path, shard_size=100, val_fraction=0)
    shard = split_shards(tmp_path, "train")[0]
    data = shard.read_bytes()
    lines = shard.with_suffix(".idx").read_text().splitlines()
    assert lines[0] == "v1.2 30"
    indices = []
    for line in lines[1:]:
        fields = line.split()
        for ext, offset, size, name in zip(*[iter(fields)] * 4, strict=True):
            payload = data[int(offset) : int(offset) + int(size)]
            if ext == "jpg":
                assert payload[:2] == b"\xff\xd8", name
            elif ext == LABEL_EXT:
                assert len(payload) == 4 and np.frombuffer(payload, "<i4")[0] in range(10)
            else:
                assert ext == INDEX_EXT and len(payload) == 8, name
                indices.append(decode_index(payload))
    assert indices == list(range(30))


def test_sample_indices_run_across_shards_and_resumed_writers(tmp_path: Path) -> None:
    source = SyntheticShapesSource(23, image_size=16)
    samples = [source.load(item) for item in source.items()]
    with ShardWriter(tmp_path, max_samples=5) as writer:
        for sample in samples[:10]:
            writer.write(sample)
    with ShardWriter(tmp_path, max_samples=5, first_index=2) as resumed:
        for sample in samples[10:]:
            resumed.write(sample)
    shards = list_shards(tmp_path)
    assert count_samples(shards) == 23
    dataset = wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False)
    assert [decode_index(s[INDEX_EXT]) for s in dataset] == list(range(23))


def test_ingest_is_deterministic(tmp_path: Path) -> None:
    source = SyntheticShapesSource(60, image_size=32, seed=3)
    first = ingest(source, tmp_path / "a", shard_size=20, val_fraction=0.2)
    second = ingest(source, tmp_path / "b", shard_size=20, val_fraction=0.2)
    assert first == second
    for split in ("train", "val"):
        for a, b in zip(
            split_shards(tmp_path / "a", split), split_shards(tmp_path / "b", split), strict=True
        ):
            assert a.read_bytes() == b.read_bytes()


def test_image_folder_of_cifar10(cifar_folder: Path, tmp_path: Path) -> None:
    manifest = ingest(ImageFolderSource(cifar_folder), tmp_path, shard_size=100, val_fraction=0.1)
    assert manifest["num_samples"] == 300
    assert manifest["classes"]["airplane"] == 0 and manifest["classes"]["truck"] == 9
    assert manifest["splits"]["val"]["num_samples"] == 30
    assert read_manifest(tmp_path) == json.loads((tmp_path / "manifest.json").read_text())
    samples = _read_back(split_shards(tmp_path, "train"))
    labels = sorted(label for _, label in samples.values())
    assert labels == sorted(list(range(10)) * 27)
    originals = {p.read_bytes() for p in cifar_folder.rglob("*.jpg")}
    assert all(image in originals for image, _ in samples.values())


def test_webdataset_default_decoders_read_the_shards(tmp_path: Path) -> None:
    """``.decode("pil")`` goes by the last part of each member's extension: images become PIL
    images, the binary ``.i32``/``.i64`` members stay bytes (a member named ``KEY.index`` would
    be parsed as ASCII text and fail)."""
    source = SyntheticShapesSource(12, image_size=16)
    ingest(source, tmp_path, shard_size=5, val_fraction=0)
    dataset = wds.WebDataset(
        [str(s) for s in split_shards(tmp_path, "train")], shardshuffle=False, empty_check=False
    ).decode("pil")
    samples = list(dataset)
    assert len(samples) == 12
    assert all(s["jpg"].size == (16, 16) for s in samples)
    assert sorted(decode_index(s[INDEX_EXT]) for s in samples) == list(range(12))
    expected = {item.key: item.label for item in source.items()}
    assert {s["__key__"]: decode_label(s[LABEL_EXT]) for s in samples} == expected


def test_shards_with_the_former_member_names_still_load(tmp_path: Path) -> None:
    """Shards ingested before the rename (``KEY.label``, ``KEY.index``) load on both backends."""
    ingest(SyntheticShapesSource(12, image_size=16), tmp_path / "new", shard_size=20,
           val_fraction=0)  # fmt: skip
    shard = split_shards(tmp_path / "new", "train")[0]
    old = tmp_path / "old.tar"
    with tarfile.open(shard) as new_tar, tarfile.open(old, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member in new_tar.getmembers():
            key, ext = member.name.split(".", 1)
            data = new_tar.extractfile(member).read()
            member.name = f"{key}.{LEGACY_EXTS.get(ext, ext)}"
            tar.addfile(member, io.BytesIO(data))
    lines = index_path(shard).read_text()
    for new, legacy in LEGACY_EXTS.items():
        lines = lines.replace(f".{new}", f".{legacy}").replace(f"{new} ", f"{legacy} ")
    index_path(old).write_text(lines)
    recipe = [ViewRecipe(size=8, crop_scale=None, flip_p=0)]
    config = LoaderConfig(batch_size=4, shuffle=False, drop_last=False, with_index=True,
                          num_threads=0)  # fmt: skip
    for backend in ("dali", "torch"):
        batches = list(build_loader(backend, [old], recipe, config))
        assert [int(i) for *_, indices in batches for i in indices] == list(range(12))
