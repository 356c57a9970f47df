"""Ingestion: every source kind round-trips, bad inputs are rejected with a reason, runs are
deterministic for any worker count and resume cleanly after an interruption."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.layout import MANIFEST, PARTIAL, parse_shard_size
from sslpipe.datasets.loaders import LoaderConfig, build_loader
from sslpipe.datasets.recipes import apply_overrides, get_recipe
from sslpipe.datasets.samples import Sample
from sslpipe.datasets.shards import IMAGE_EXTS, LABEL_EXT, decode_label
from sslpipe.datasets.sources import (
    FileListSource,
    ImageFolderSource,
    Item,
    SyntheticShapesSource,
    TarSource,
)
from sslpipe.pipelines.cli.main import main

CLASSES = ("cat", "dog", "émeu")


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _good_images(count: int = 24) -> dict[str, bytes]:
    """``class/name`` → bytes of valid JPEGs (synthetic shapes) in three classes."""
    source = SyntheticShapesSource(count, image_size=32)
    return {
        f"{CLASSES[i % 3]}/img_{i:03d}.jpg": source.load(item).image
        for i, item in enumerate(source.items())
    }


def _odd_but_valid() -> dict[str, bytes]:
    """Images DALI must accept and decode to RGB: gray, CMYK, alpha, 16-bit, GIF, unicode."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 30, 3), np.uint8))
    deep = Image.fromarray(np.arange(24 * 30, dtype=np.uint16).reshape(24, 30) * 90)
    return {
        "cat/gray.jpg": _encode(rgb.convert("L"), "JPEG"),
        "cat/cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "dog/alpha.png": _encode(rgb.convert("RGBA"), "PNG"),
        "dog/deep16.png": _encode(deep, "PNG"),
        "dog/anim.gif": _encode(rgb.convert("P"), "GIF"),
        "émeu/naïve café.jpeg": _encode(rgb, "JPEG"),
        "émeu/png_named.jpg": _encode(rgb, "PNG"),
    }


def _bad() -> dict[str, tuple[bytes, str]]:
    noise = np.random.default_rng(1).integers(0, 255, (48, 64, 3), np.uint8)
    jpeg = _encode(Image.fromarray(noise), "JPEG")  # noise: the cut falls in the scan data
    return {
        "cat/empty.jpg": (b"", "empty"),
        "cat/cut.jpg": (jpeg[: len(jpeg) // 2], "truncated_or_corrupt"),
        "dog/notes.txt": (b"just some text, no pixels\n" * 4, "not_an_image"),
        "dog/old.pcx": (_encode(Image.new("RGB", (8, 8)), "PCX"), "unsupported_format"),
        "émeu/bomb.png": (_encode(Image.new("L", (2500, 2000)), "PNG"), "decompression_bomb"),
    }


MAX_PIXELS = 4_000_000  # the "bomb" above has 5 megapixels


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _read_back(data_dir: Path) -> dict[str, tuple[bytes, int]]:
    """key → (image bytes, label) over both splits, asserting each key appears once."""
    found: dict[str, tuple[bytes, int]] = {}
    for split in ("train", "val"):
        urls = [str(s) for s in split_shards(data_dir, split)]
        if not urls:
            continue
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            assert sample["__key__"] not in found
            ext = next(e for e in IMAGE_EXTS if e in sample)
            found[sample["__key__"]] = (sample[ext], decode_label(sample[LABEL_EXT]))
    return found


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("messy") / "root"
    _write_tree(root, _good_images() | _odd_but_valid())
    _write_tree(root, {name: data for name, (data, _) in _bad().items()})
    _write_tree(root, {".git/hidden.jpg": b"x", "cat/.DS_Store": b"\0\0"})
    outside = root.parent / "outside.jpg"
    outside.write_bytes(next(iter(_good_images(1).values())))
    (root / "dog" / "escape.jpg").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def messy_ingest(messy_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("messy_out")
    ingest(ImageFolderSource(messy_folder), out, shard_size=10, val_fraction=0.2,
           max_pixels=MAX_PIXELS)  # fmt: skip
    return out


def test_each_bad_input_is_rejected_with_its_reason(messy_ingest: Path) -> None:
    manifest = json.loads((messy_ingest / MANIFEST).read_text())
    rejected = [json.loads(line) for line in (messy_ingest / "rejected.jsonl").open()]
    by_path = {r["locator"]: r["reason"] for r in rejected}
    expected = {name: reason for name, (_, reason) in _bad().items()}
    expected["dog/escape.jpg"] = "unsafe_path"
    assert by_path == expected
    assert manifest["num_rejected"] == len(expected)
    assert sum(manifest["rejected"].values()) == len(expected)
    assert manifest["num_samples"] == 24 + 7  # hidden files are skipped, not rejected
    assert manifest["classes"] == {"cat": 0, "dog": 1, "émeu": 2}
    assert not (messy_ingest / PARTIAL).exists()


def test_odd_formats_are_stored_and_decode_to_rgb_with_dali(messy_ingest: Path) -> None:
    stored = _read_back(messy_ingest)
    originals = set(_odd_but_valid().values()) - {_odd_but_valid()["dog/anim.gif"]}
    kept = {image for image, _ in stored.values()}
    assert originals <= kept, "DALI-decodable images are stored byte for byte"
    assert any(image.startswith(b"\x89PNG") for image, _ in stored.values())  # GIF → PNG
    shards = split_shards(messy_ingest, "train") + split_shards(messy_ingest, "val")
    recipe = apply_overrides(get_recipe("eval"), {"size": 16})
    config = LoaderConfig(batch_size=8, shuffle=False, drop_last=False, num_threads=1)
    batches = list(build_loader("dali", shards, recipe, config))
    assert sum(len(labels) for _, labels in batches) == 31
    assert all(views[0].shape[1:] == (3, 16, 16) for views, _ in batches)


def _ingest_all(source, out: Path, **options) -> dict[str, tuple[bytes, int]]:
    ingest(source, out, shard_size=7, val_fraction=0.25, **options)
    return _read_back(out)


def _as_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_folder_tar_nested_tar_and_file_lists_give_the_same_samples(tmp_path: Path) -> None:
    files = _good_images()
    expected = sorted((data, CLASSES.index(name.split("/")[0])) for name, data in files.items())
    folder = _write_tree(tmp_path / "folder", files)
    tar = _as_tar(tmp_path / "train.tar", {f"train/{n}": d for n, d in files.items()})
    per_class = {}
    for label in CLASSES:
        members = {n.split("/")[1]: d for n, d in files.items() if n.startswith(label + "/")}
        per_class[f"{label}.tar"] = _as_tar(tmp_path / f"{label}.tar", members).read_bytes()
    nested = _as_tar(tmp_path / "nested.tar", per_class)
    names = sorted(files)
    (tmp_path / "list.csv").write_text(
        "path,label\n" + "".join(f"folder/{n},{n.split('/')[0]}\n" for n in names)
    )
    (tmp_path / "list.jsonl").write_text(
        "".join(json.dumps({"path": f"folder/{n}", "label": n.split("/")[0]}) + "\n"
                for n in names)
    )  # fmt: skip
    sources = {
        "folder": ImageFolderSource(folder),
        "tar": TarSource(tar),
        "nested": TarSource(nested),
        "csv": FileListSource(tmp_path / "list.csv"),
        "jsonl": FileListSource(tmp_path / "list.jsonl"),
    }
    for name, source in sources.items():
        assert source.classes == list(CLASSES), name
        samples = _ingest_all(source, tmp_path / f"out_{name}")
        assert sorted(samples.values()) == expected, name


def test_unlabelled_folder_gets_minus_one(tmp_path: Path) -> None:
    folder = _write_tree(tmp_path / "flat", {f"a/b/{i}.jpg": d for i, d in
                                             enumerate(_good_images(6).values())})  # fmt: skip
    manifest = ingest(ImageFolderSource(folder, labelled=False), tmp_path / "out", val_fraction=0)
    assert {label for _, label in _read_back(tmp_path / "out").values()} == {-1}
    assert manifest["num_classes"] == 0
    assert manifest["splits"]["train"]["class_counts"] == {"unlabelled": 6}


def test_unsafe_tar_members_are_rejected(tmp_path: Path) -> None:
    good = _good_images(3)
    files = {f"x/{n}": d for n, d in good.items()}
    files["/etc/evil.jpg"] = next(iter(good.values()))
    files["x/cat/../../up.jpg"] = next(iter(good.values()))
    source = TarSource(_as_tar(tmp_path / "bad.tar", files))
    assert {r.reason for r in source.rejections} == {"unsafe_path"}
    assert len(source.rejections) == 2 and len(source.items()) == 3


def test_every_sample_once_per_epoch_across_two_dali_ranks(tmp_path: Path) -> None:
    """A file list with one label per image, so labels identify images."""
    folder = _write_tree(tmp_path / "imgs", {f"{i}.jpg": d for i, d in
                                             enumerate(_good_images(37).values())})  # fmt: skip
    (tmp_path / "list.csv").write_text(
        "path,label\n" + "".join(f"imgs/{i}.jpg,{i}\n" for i in range(37))
    )
    assert folder.is_dir()
    ingest(FileListSource(tmp_path / "list.csv"), tmp_path / "out", shard_size=20,
           val_fraction=0)  # fmt: skip
    shards = split_shards(tmp_path / "out", "train")
    assert len(shards) == 2
    recipe = apply_overrides(get_recipe("eval"), {"size": 16})
    labels = []
    for rank in range(2):
        config = LoaderConfig(batch_size=5, shard_id=rank, num_shards=2, shuffle=False,
                              drop_last=False, num_threads=1)  # fmt: skip
        labels += [
            int(x) for _, batch in build_loader("dali", shards, recipe, config) for x in batch
        ]
    assert sorted(labels) == list(range(37))


def test_output_is_identical_for_any_worker_count(tmp_path: Path) -> None:
    source = SyntheticShapesSource(80, image_size=32, seed=5)
    a = ingest(source, tmp_path / "a", shard_size=15, val_fraction=0.2, workers=1)
    b = ingest(source, tmp_path / "b", shard_size=15, val_fraction=0.2, workers=2)
    assert a == b
    for split in ("train", "val"):
        for x, y in zip(split_shards(tmp_path / "a", split), split_shards(tmp_path / "b", split),
                        strict=True):  # fmt: skip
            assert x.read_bytes() == y.read_bytes()
            assert x.with_suffix(".idx").read_bytes() == y.with_suffix(".idx").read_bytes()
    assert (tmp_path / "a" / MANIFEST).read_bytes() == (tmp_path / "b" / MANIFEST).read_bytes()


class _Interrupted(SyntheticShapesSource):
    """Dies (like Ctrl-C) when loading item number ``stop_after``."""

    def __init__(self, *args, stop_after: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loaded, self.stop_after = 0, stop_after

    def load(self, item: Item) -> Sample:
        self.loaded += 1
        if self.loaded > self.stop_after:
            raise KeyboardInterrupt
        return super().load(item)


def test_interrupted_ingest_resumes_to_identical_output(tmp_path: Path) -> None:
    clean = ingest(SyntheticShapesSource(60, image_size=32), tmp_path / "clean", shard_size=8)
    broken = _Interrupted(60, image_size=32, stop_after=30)
    with pytest.raises(KeyboardInterrupt):
        ingest(broken, tmp_path / "out", shard_size=8)
    assert not (tmp_path / "out" / MANIFEST).exists()
    assert not list((tmp_path / "out").glob("train/shard-*.tar")), "nothing visible yet"
    partial = tmp_path / "out" / PARTIAL
    assert len(list(partial.glob("train/shard-*.tar"))) == 3  # 30 loaded, 8 per shard
    resumed_source = _Interrupted(60, image_size=32, stop_after=10**9)
    resumed = ingest(resumed_source, tmp_path / "out", shard_size=8)
    assert resumed_source.loaded == 60 - 24, "finished shards are not redone"
    assert resumed == clean
    for split in ("train", "val"):
        for x, y in zip(split_shards(tmp_path / "out", split),
                        split_shards(tmp_path / "clean", split), strict=True):  # fmt: skip
            assert x.read_bytes() == y.read_bytes()


def test_shard_size_in_bytes() -> None:
    assert parse_shard_size("500") == (500, None)
    assert parse_shard_size("2MB")[1] == 2_000_000
    assert parse_shard_size("1GiB")[1] == 1 << 30
    with pytest.raises(ValueError):
        parse_shard_size("lots")


def test_byte_capped_shards(tmp_path: Path) -> None:
    ingest(SyntheticShapesSource(40, image_size=32), tmp_path, shard_bytes=20_000, val_fraction=0)
    shards = split_shards(tmp_path, "train")
    assert len(shards) > 1
    # Members stay under the cap; tar then adds 2 end blocks and pads to whole records.
    limit = -(-(20_000 + 2 * tarfile.BLOCKSIZE) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE
    assert all(s.stat().st_size <= limit for s in shards)


def test_cli_ingest_and_bench_loader(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["ingest", "synthetic:40", "--out", str(out), "--shard-size", "20",
                 "--workers", "1"]) == 0  # fmt: skip
    assert "40 images" in capsys.readouterr().out
    for backend in ("dali", "torch"):
        code = main(["bench-loader", str(out), "--recipe", "vicreg_cifar", "--batch-size", "8",
                     "--seconds", "0.2", "--threads", "1", "--backend", backend,
                     "--decode", "per_view", "--json"])  # fmt: skip
        assert code == 0
        result = json.loads(capsys.readouterr().out)
        assert result["backend"] == backend and result["images_per_s"] > 0


@pytest.mark.parametrize(
    ("argv", "exit_code"),
    [
        (["ingest", "does/not/exist", "--out", "OUT"], 1),
        (["ingest", "synthetic:10", "--out", "OUT", "--shard-size", "many"], 2),
        (["ingest", "synthetic:10", "--out", "OUT", "--val-fraction", "1.5"], 2),
        (["ingest", "synthetic:0", "--out", "OUT"], 2),
        (["ingest", "BADTAR", "--out", "OUT"], 1),
        (["bench-loader", "does/not/exist"], 1),
        (["bench-loader", "BADTAR", "--hw-decoder-load", "2"], 2),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(
    argv: list[str], exit_code: int, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An invalid option exits 2 (a mistake in the arguments); a source or shards that are
    not there or not readable exit 1."""
    (tmp_path / "bad.tar").write_bytes(b"\x1f\x8b" + b"\0" * 100)
    argv = [a.replace("OUT", str(tmp_path / "out")).replace("BADTAR", str(tmp_path / "bad.tar"))
            for a in argv]  # fmt: skip
    assert main(argv) == exit_code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_stage_config_accepts_every_source_kind(tmp_path: Path) -> None:
    from sslpipe.pipelines.stages.ingest import IngestConfig

    for source in (
        {"kind": "synthetic", "num_images": 5},
        {"kind": "image_folder", "path": "x"},
        {"kind": "unlabelled_folder", "path": "x"},
        {"kind": "tar", "path": "x.tar"},
        {"kind": "file_list", "path": "x.csv"},
    ):
        config = IngestConfig.model_validate({"name": "data", "type": "ingest", "source": source})
        assert config.source.kind == source["kind"]
