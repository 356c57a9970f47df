"""Shards written by the ingest code read back with plain webdataset, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import webdataset as wds

from sslpipe.datasets.ingest import ingest, read_manifest, split_shards
from sslpipe.datasets.shards import (
    ShardWriter,
    count_samples,
    decode_index,
    decode_label,
    list_shards,
)
from sslpipe.datasets.sources import ImageFolderSource, SyntheticShapesSource


def _read_back(shards: list[Path]) -> dict[str, tuple[bytes, int]]:
    dataset = wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False)
    return {s["__key__"]: (s["jpg"], decode_label(s["label"])) for s in dataset}


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
            elif ext == "label":
                assert len(payload) == 4 and np.frombuffer(payload, "<i4")[0] in range(10)
            else:
                assert ext == "index" and len(payload) == 8, name
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
    assert [decode_index(s["index"]) for s in dataset] == list(range(23))


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
