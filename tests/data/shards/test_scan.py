"""The scan phase (data/shards/scan.py): its per-record rules (the train/val split of a key, the
tar-safe sample key) and the manifest part it writes for a chunk."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from data.corpus.table import TableReader
from data.images.sources import FileImage, ImageResolver
from data.shards.scan import (IMAGE_MISSING, IMAGE_OK, IMAGE_TOO_LARGE, ROW_GROUP_ROWS, Candidate, Scanner, part_name,
                              read_candidates, read_summary, split_of, tar_safe_key)
from data.vocab.vocabulary import Label, Vocabulary
from tests.shard_factory import photo_like


def test_val_split_is_a_stable_fraction_of_keys():
    keys = [f"photo{i}" for i in range(20_000)]
    share = sum(split_of(k, 0.2) == "val" for k in keys) / len(keys)
    assert abs(share - 0.2) < 0.015  # binomial sd 0.0028: more than 5 sd
    assert [split_of(k, 0.2) for k in keys[:100]] == [split_of(k, 0.2) for k in keys[:100]]
    assert all(split_of(k, 0.0) == "train" for k in keys[:1000])


def test_sample_keys_are_tar_safe_stable_and_unique():
    assert tar_safe_key("12345") == "12345" and tar_safe_key("a_b-C") == "a_b-C"
    odd = ["a.b", "a/b", "a_b.", "../etc/passwd", "ünïcode", "x" * 300, ".", "a b"]
    keys = [tar_safe_key(k) for k in odd]
    assert len(set(keys)) == len(keys)
    assert all(len(k) <= 93 and "." not in k and "/" not in k and k for k in keys)
    assert keys == [tar_safe_key(k) for k in odd]


def _corpus(root: Path) -> tuple[Path, Vocabulary, dict[str, bytes]]:
    """A JSONL table over real JPEG files: labelled and unlabelled rows, a missing image, one over
    the size limit, two rows naming the same file, provenance fields, a key that needs cleaning."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    images = {f"p{i}.jpg": photo_like(rng, 40 + 8 * i, 30) for i in range(6)}
    images["big.jpg"] = photo_like(rng, 400, 300)
    for name, data in images.items():
        (root / "img" / name).write_bytes(data)
    rows = [
        {"key": "a", "tags": ["Cat", "dog"], "image": "img/p0.jpg", "photo_id": "11", "license": "by",
         "url": "http://x/a.jpg", "title": "not provenance"},
        {"key": "b", "tags": ["holiday"], "image": "img/p1.jpg"},
        {"key": "c", "tags": ["DOG", "#dog"], "image": "img/p2.jpg", "photo_id": ""},
        {"key": "d", "tags": ["cat"], "image": "img/none.jpg"},
        {"key": "e", "tags": ["bird+song"], "image": "img/big.jpg"},
        {"key": "f/g.h", "tags": ["bird"], "image": "img/p2.jpg"},
        {"key": "i", "tags": [], "image": "img/p3.jpg"},
        {"key": "j", "tags": ["Bird Song", "%41"], "image": "img/p4.jpg", "id": 7},
    ]
    (root / "t.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    vocab = Vocabulary([Label(0, "dog", 3), Label(1, "cat", 2), Label(2, "bird", 1, aliases=["birdsong"])])
    return root / "t.jsonl", vocab, images


def test_a_chunk_becomes_a_part_of_its_labelled_rows(tmp_path):
    table, vocab, images = _corpus(tmp_path)
    reader = TableReader(table)
    limit = len(images["big.jpg"]) - 1
    scanner = Scanner(reader, vocab, ImageResolver(tmp_path), 0.5, tmp_path / "scan", max_image_bytes=limit)
    (chunk,) = list(reader.chunks())
    summary = scanner((3, chunk))
    assert (summary.index, summary.records, summary.labelled) == (3, 8, 6)
    assert summary.no_label.counts == {"no_label": 2} and summary.no_label.examples == {"no_label": ["b", "i"]}
    # Each image the labelled rows name is read once (p2 serves two rows); unlabelled rows' images and
    # the one over the limit are not read.
    assert summary.image_bytes == sum(len(images[name]) for name in ("p0.jpg", "p2.jpg", "p4.jpg"))
    part = pq.read_table(tmp_path / "scan" / part_name(3))
    assert read_summary(tmp_path / "scan" / part_name(3)) == summary
    keys = ["a", "c", "d", "e", "f/g.h", "j"]
    assert part["source_key"].to_pylist() == keys
    assert part["key"].to_pylist() == [tar_safe_key(k) for k in keys]
    assert part["key_hash"].to_pylist() == [hashlib.blake2b(tar_safe_key(k).encode(), digest_size=16).digest()
                                            for k in keys]
    assert part["val"].to_pylist() == [split_of(k, 0.5) == "val" for k in keys]
    assert part["image"].to_pylist() == [IMAGE_OK, IMAGE_OK, IMAGE_MISSING, IMAGE_TOO_LARGE, IMAGE_OK, IMAGE_OK]
    blake = lambda name: hashlib.blake2b(images[name], digest_size=16).digest()
    assert part["digest"].to_pylist() == [blake("p0.jpg"), blake("p2.jpg"), bytes(16), bytes(16), blake("p2.jpg"),
                                          blake("p4.jpg")]
    # What the build phase reads back: the sample's labels, decoded tags, image and provenance.
    got = read_candidates(tmp_path / "scan", [(3, 5), (3, 0), (3, 1)])
    assert got == [
        Candidate("j", "j", (2,), ("Bird Song", "%41"), FileImage(str(tmp_path / "img" / "p4.jpg")), (("id", 7),)),
        Candidate("a", "a", (0, 1), ("Cat", "dog"), FileImage(str(tmp_path / "img" / "p0.jpg")),
                  (("photo_id", "11"), ("url", "http://x/a.jpg"), ("license", "by"))),
        Candidate("c", "c", (0,), ("DOG", "#dog"), FileImage(str(tmp_path / "img" / "p2.jpg")), ()),
    ]
    assert [c.labels for c in read_candidates(tmp_path / "scan", [(3, i) for i in range(6)])] == [
        tuple(vocab.label_ids(tags)) for tags in (["Cat", "dog"], ["DOG", "#dog"], ["cat"], ["bird+song"], ["bird"],
                                                   ["Bird Song", "%41"])]


def test_parts_are_read_back_row_group_by_row_group(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.jpg").write_bytes(photo_like(rng, 20, 20))
    rows = [{"key": f"k{i}", "tags": ["cat"], "image": "img/x.jpg"} for i in range(2 * ROW_GROUP_ROWS + 10)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    reader = TableReader(tmp_path / "t.jsonl")
    scanner = Scanner(reader, Vocabulary([Label(0, "cat", 1)]), ImageResolver(tmp_path), 0.0, tmp_path / "scan")
    (chunk,) = list(reader.chunks())
    scanner((0, chunk))
    assert pq.ParquetFile(tmp_path / "scan" / part_name(0)).num_row_groups == 3
    wanted = [2 * ROW_GROUP_ROWS + 9, 0, ROW_GROUP_ROWS, 5, 2 * ROW_GROUP_ROWS]
    assert [c.source_key for c in read_candidates(tmp_path / "scan", [(0, r) for r in wanted])] == [
        f"k{r}" for r in wanted]
