"""Perceptual hashing and near-duplicate exclusion against an evaluation set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.corpus.table import TableReader
from data.errors import UserError
from data.images.near_duplicates import (DEFAULT_THRESHOLD, altered_copy, build_eval_index, hamming,
                                  hash_bytes, measure_separation)
from data.images.sources import MAX_IMAGE_BYTES
from data.shards.build import BuildConfig, build_shards
from data.shards.tar_writer import write_tar
from data.vocab.vocabulary import Label, Vocabulary
from tests.shard_factory import photo_like


def photos(count: int, seed: int, size: tuple[int, int] = (160, 120)) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [photo_like(rng, *size) for _ in range(count)]


def test_threshold_separates_copies_from_unrelated_real_photos(shared_data):
    files = sorted((shared_data / "imagenet_samples").glob("*.JPEG"))[::3]
    assert len(files) >= 80
    separation = measure_separation(files)
    summary = separation.summary()
    # Measured on all 250 photos: copies <= 4 bits, unrelated pairs >= 16 (docs/shards.md).
    assert summary["copies_missed_at_threshold"] == 0 and summary["copy_max"] <= DEFAULT_THRESHOLD - 3
    assert summary["unrelated_flagged_at_threshold"] == 0 and summary["unrelated_min"] > DEFAULT_THRESHOLD + 3
    assert summary["unrelated_p01"] > 2 * DEFAULT_THRESHOLD


def test_phash_survives_resize_and_reencode_but_not_another_picture():
    originals = photos(12, seed=3)
    hashes = [hash_bytes(data) for data in originals]
    for data, value in zip(originals, hashes):
        for side, quality in ((60, 50), (100, 30), (240, 95)):
            assert hamming(value, hash_bytes(altered_copy(data, side, quality))) <= DEFAULT_THRESHOLD
    unrelated = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(unrelated) > DEFAULT_THRESHOLD
    assert hash_bytes(b"not an image") is None


def test_eval_index_from_an_image_folder_tree(tmp_path):
    images = photos(4, seed=4)
    for i, data in enumerate(images):
        folder = tmp_path / "val" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"x{i}.JPEG").write_bytes(data)
    (tmp_path / "val" / "class0" / "broken.jpg").write_bytes(images[0][:100])
    (tmp_path / "val" / "notes.txt").write_text("not an image")
    with open(tmp_path / "val" / "class1" / "huge.png", "wb") as huge:  # sparse: no disk, no read
        huge.truncate(MAX_IMAGE_BYTES + 1)
    index = build_eval_index(tmp_path / "val")
    assert index.names == ["class0/x0.JPEG", "class0/x2.JPEG", "class1/x1.JPEG", "class1/x3.JPEG"]
    assert index.unreadable == 2
    assert index.match(hash_bytes(altered_copy(images[1], 80, 60))) [0] == "class1/x1.JPEG"
    assert index.match(hash_bytes(photos(1, seed=99)[0])) is None


def test_eval_index_from_shards_reads_tar_members(tmp_path):
    images = photos(3, seed=5)
    write_tar(tmp_path / "val-000000.tar", [(f"k{i}.jpg", data) for i, data in enumerate(images)]
              + [("k0.json", b"{}")])
    for location in (tmp_path, tmp_path / "val-000000.tar", str(tmp_path / "val-*.tar")):
        index = build_eval_index(location)
        assert index.names == ["val-000000.tar:k0.jpg", "val-000000.tar:k1.jpg", "val-000000.tar:k2.jpg"]


def test_eval_index_refuses_missing_or_empty_locations(tmp_path):
    with pytest.raises(UserError, match="no-such"):
        build_eval_index(tmp_path / "no-such")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        build_eval_index(tmp_path / "empty")


@pytest.fixture
def corpus_with_eval_copies(tmp_path):
    corpus = photos(16, seed=6)
    (tmp_path / "img").mkdir()
    with open(tmp_path / "table.jsonl", "w") as table:
        for i, data in enumerate(corpus):
            (tmp_path / "img" / f"c{i}.jpg").write_bytes(data)
            table.write(json.dumps({"key": f"c{i}", "tags": ["cat"], "image": f"img/c{i}.jpg"}) + "\n")
    Vocabulary([Label(0, "cat", 16)]).save(tmp_path / "vocab.json")
    evaluation = tmp_path / "eval" / "val" / "n0001"
    evaluation.mkdir(parents=True)
    copied = {3: (96, 70), 7: (200, 40), 11: (64, 90), 12: (120, 50)}  # index -> (short side, quality)
    for i, (side, quality) in copied.items():
        (evaluation / f"e{i}.jpg").write_bytes(altered_copy(corpus[i], side, quality))
    for j, data in enumerate(photos(5, seed=7)):
        (evaluation / f"other{j}.jpg").write_bytes(data)
    return tmp_path, copied


def test_builder_drops_near_duplicates_of_the_eval_set(corpus_with_eval_copies):
    root, copied = corpus_with_eval_copies
    outputs = {}
    for workers in (1, 2):
        config = BuildConfig(root / f"out{workers}", root / "vocab.json", str(root), shard_size=5,
                             val_fraction=0.0, exclude_near=str(root / "eval"), workers=workers)
        result = build_shards(TableReader(root / "table.jsonl"), config)
        report = json.loads((config.out / "report.json").read_text())
        near = report["near_duplicates_of_eval"]
        assert near["count"] == len(copied)
        assert sorted(m["key"] for m in near["matches"]) == sorted(f"c{i}" for i in copied)
        assert all(m["eval"] == f"val/n0001/e{m['key'][1:]}.jpg" and m["distance"] <= DEFAULT_THRESHOLD
                   for m in near["matches"])
        assert near["eval_set"]["images"] == 9 and near["eval_set"]["threshold"] == DEFAULT_THRESHOLD
        assert result.info["num_samples"]["train"] == 16 - len(copied)
        assert result.info["skipped"]["counts"] == {"near_duplicate_of_eval": len(copied)}
        outputs[workers] = {p.name: p.read_bytes() for p in config.out.iterdir() if p.is_file()}
    assert outputs[1] == outputs[2]
