"""The probes on known features (a weighted kNN checked by hand and against a direct search,
a linear probe on clusters) and the feature files they stream from."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sslpipe.datasets.shards import DALI_INDEX_VERSION, index_path
from sslpipe.pipelines.probe.classifiers import (
    Accuracy,
    Features,
    feature_stats,
    knn_probe,
    linear_probe,
)
from sslpipe.pipelines.probe.features import (
    ExtractionInputError,
    FeatureFile,
    RowWriter,
    ShardRun,
    create_file,
    cut_split,
    shares,
    write_run,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread (OpenMP's barriers cost seconds on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LINEAR = {"lr": 0.05, "weight_decay": 5e-4, "batch_size": 64, "seed": 0, "device": CPU}


def test_weighted_knn_votes_by_exp_similarity_over_temperature() -> None:
    train = Features(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), torch.tensor([0, 1, 1]))
    query = Features(torch.tensor([[1.0, 0.1]]), torch.tensor([0]))
    result = knn_probe(train, query, 2, ks=[2], temperature=0.07, device=CPU)["k2"]
    q = torch.nn.functional.normalize(query.x, dim=1)[0]
    s0, s1 = float(q @ train.x[0]), float(q @ train.x[1])  # the two nearest: rows 0 and 1
    votes = [math.exp(s0 / 0.07), math.exp(s1 / 0.07)]
    assert result["top1"] == (100.0 if votes[0] > votes[1] else 0.0)
    assert result["confusion"] == [[1, 0], [0, 0]]


def test_chunked_knn_with_one_search_matches_a_full_search_per_k() -> None:
    generator = torch.Generator().manual_seed(0)
    bank = Features(torch.randn(53, 8, generator=generator), torch.randint(0, 4, (53,)))
    queries = Features(torch.randn(19, 8, generator=generator), torch.randint(0, 4, (19,)))
    ks = [1, 5, 60]  # 60 > bank size: every bank row votes
    chunked = knn_probe(bank, queries, 4, ks=ks, temperature=0.1, device=CPU, chunk_rows=7)
    similarity = torch.nn.functional.normalize(queries.x, dim=1) @ (
        torch.nn.functional.normalize(bank.x, dim=1).T
    )
    for k in ks:
        top, index = similarity.topk(min(k, 53), dim=1)
        votes = torch.zeros(19, 4).scatter_add_(1, bank.labels[index], (top / 0.1).exp())
        expected = Accuracy(4)
        expected.update(votes, queries.labels)
        assert chunked[f"k{k}"] == expected.result()


def _clusters(n: int, dim: int = 16) -> Features:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(6, dim, generator=generator) * 4
    labels = torch.arange(6).repeat(n // 6)
    return Features(centres[labels] + torch.randn(len(labels), dim, generator=generator), labels)


def test_linear_probe_separates_clusters_and_reports_per_class() -> None:
    data = _clusters(240)
    train = Features(data.x[:180], data.labels[:180])
    test = Features(data.x[180:], data.labels[180:])
    result = linear_probe(train, test, 6, epochs=30, **LINEAR)
    assert result["top1"] > 95 and result["top5"] == 100.0
    assert len(result["per_class_top1"]) == 6


def test_linear_probe_does_not_depend_on_the_chunk_size() -> None:
    data = _clusters(120)
    train, test = Features(data.x[:96], data.labels[:96]), Features(data.x[96:], data.labels[96:])
    one, other = (
        linear_probe(train, test, 6, epochs=2, **{**LINEAR, "lr": 1e-3}, chunk_rows=rows)
        for rows in (16, 4096)
    )
    assert one == other


def test_streaming_feature_stats_match_torch() -> None:
    x = torch.randn(101, 5) * 3 + 7
    mean, std = feature_stats(x, CPU, chunk_rows=10)
    torch.testing.assert_close(mean, x.double().mean(dim=0).float())
    torch.testing.assert_close(std, x.double().std(dim=0).float() + 1e-6)


def test_accuracy_top5_missing_classes_and_accumulation() -> None:
    scores = torch.eye(6)[[0, 1, 2]] + 0.01 * torch.arange(6)
    labels = torch.tensor([0, 2, 2])
    accuracy = Accuracy(6)
    accuracy.update(scores[:1], labels[:1])
    accuracy.update(scores[1:], labels[1:])
    result = accuracy.result()
    assert math.isclose(result["top1"], 200 / 3, rel_tol=1e-6)
    assert result["top5"] == 100.0
    assert result["per_class_top1"][:3] == [100.0, None, 50.0]
    assert result["confusion"][2] == [0, 1, 1, 0, 0, 0]


def test_feature_file_rows_written_out_of_order_read_back(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    create_file(path, (10, 3), np.float16)
    values = np.arange(30, dtype=np.float16).reshape(10, 3)
    writer = RowWriter(path)
    writer.write(np.array([7, 8, 9, 0, 1]), values[[7, 8, 9, 0, 1]])
    writer.write(np.array([4, 2, 3, 6, 5]), values[[4, 2, 3, 6, 5]])
    writer.close()
    file = FeatureFile(path)
    assert file.shape == (10, 3)
    assert torch.equal(file[2:5], torch.from_numpy(values[2:5]))
    assert torch.equal(file[torch.tensor([9, 0, 4])], torch.from_numpy(values[[9, 0, 4]]))
    assert np.array_equal(np.load(path), values)


def _shards(folder: Path, counts: list[int]) -> list[Path]:
    """Shard paths whose DALI index files announce ``counts`` samples (no tar needed)."""
    folder.mkdir()
    shards = [folder / f"shard-{i:06d}.tar" for i in range(len(counts))]
    for shard, count in zip(shards, counts, strict=True):
        index_path(shard).write_text(f"{DALI_INDEX_VERSION} {count}\n")
    return shards


def test_shares_are_contiguous_and_cover_every_item() -> None:
    items = list(range(5))
    assert shares(items, 2) == [items[:3], items[3:]]
    assert shares(items, 7) == [[i] for i in items] + [[], []]


def test_cut_split_places_each_ingested_split_after_the_previous(tmp_path: Path) -> None:
    train, val = _shards(tmp_path / "train", [4, 4, 2]), _shards(tmp_path / "val", [3])
    rows, runs = cut_split([train, val], 2)
    assert rows == 13
    assert runs[0] == [
        ShardRun(tuple(train[:2]), range(0, 8), 0),
        ShardRun((val[0],), range(10, 13), 10),
    ]
    assert runs[1] == [ShardRun((train[2],), range(8, 10), 0)]


def test_write_run_rejects_indices_outside_or_missing_from_the_run(tmp_path: Path) -> None:
    create_file(tmp_path / "x.npy", (6, 2), np.float16)
    create_file(tmp_path / "labels.npy", (6,), np.int64)
    writers = {"x": RowWriter(tmp_path / "x.npy"), "labels": RowWriter(tmp_path / "labels.npy")}
    run = ShardRun((tmp_path / "shard-000000.tar",), range(2, 5), 2)

    def batch(indices: list[int]) -> tuple:
        n = len(indices)
        return np.array(indices), np.zeros(n, np.int64), {"x": np.ones((n, 2), np.float16)}

    assert write_run(run, [batch([0, 1]), batch([2])], writers) == 3
    with pytest.raises(ExtractionInputError, match="re-run the ingest"):
        write_run(run, [batch([0, 1]), batch([1, 2])], writers)  # index 1 twice
    with pytest.raises(ExtractionInputError, match="1 samples"):
        write_run(run, [batch([0, 1])], writers)
    with pytest.raises(ExtractionInputError, match="re-run the ingest"):
        write_run(run, [batch([0, 1, 2, 3])], writers)  # index 3 is not in this run
