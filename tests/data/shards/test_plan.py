"""The plan phase (data/shards/plan.py): over scan parts written for many chunks, it decides exactly
what the record-by-record rule decides (here as the oracle: labels, first claim of a sample key,
first copy of the image bytes in corpus order, split, units of shard_size in the order they fill)."""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.corpus.table import TableReader
from data.images.sources import ImageResolver
from data.shards.plan import first_occurrences, make_plan, read_plan
from data.shards.scan import Scanner, read_candidates, split_of, tar_safe_key
from data.vocab.vocabulary import Label, Vocabulary
from tests.shard_factory import photo_like

WORDS = ["cat", "dog", "bird"]


def test_first_occurrences_marks_the_first_of_each_value():
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(300, 16), dtype=np.uint8)
    # Values that share their first 8 bytes with another value and differ only in the last 8: the
    # sort on the first 8 bytes alone cannot tell them apart.
    pool[1:40, :8] = pool[0, :8]
    values = pool[rng.integers(0, len(pool), size=20_000)]

    def expected(rows: np.ndarray) -> list[bool]:
        seen: set[bytes] = set()
        firsts = []
        for value in map(bytes, rows):
            firsts.append(value not in seen)
            seen.add(value)
        return firsts

    assert first_occurrences(values).tolist() == expected(values)
    assert first_occurrences(values[7:5007]).tolist() == expected(values[7:5007])
    distinct_leads = np.delete(values, np.flatnonzero((values[:, :8] == pool[0, :8]).all(axis=1)), axis=0)
    assert first_occurrences(distinct_leads).tolist() == expected(distinct_leads)
    assert first_occurrences(np.zeros((0, 16), np.uint8)).tolist() == []


def _table(root: Path, rows: int, seed: int = 0) -> tuple[Path, list[dict]]:
    """A Parquet table of ``rows`` records in row groups of 9 (each a chunk) over 30 image files,
    with unlabelled rows, missing images, keys that collide once made tar-safe, byte-identical files."""
    rng = random.Random(seed)
    photos = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    for i in range(30):
        (root / "img" / f"{i}.jpg").write_bytes(photo_like(photos, 24, 16))
    for i in range(5):  # the same bytes under another name
        (root / "img" / f"copy{i}.jpg").write_bytes((root / "img" / f"{i}.jpg").read_bytes())
    names = [f"{i}.jpg" for i in range(30)] + [f"copy{i}.jpg" for i in range(5)] + ["gone.jpg"]
    records = []
    for i in range(rows):
        key = rng.choice([f"r{i}", f"r.{i // 2}", f"r/{i // 2}"])
        tags = rng.choice([["cat"], ["Dog", "cat"], ["bird"], ["tree"], []])
        records.append({"key": key, "tags": tags, "image": f"img/{rng.choice(names)}"})
    pq.write_table(pa.Table.from_pylist(records), root / "t.parquet", row_group_size=9)
    return root / "t.parquet", records


def _oracle(records: list[dict], vocab: Vocabulary, root: Path, shard_size: int, val_fraction: float):
    """Record by record, in corpus order: the skips and the units (source keys, in order)."""
    skips, keys, digests = Counter(), set(), set()
    buffers: dict[str, list[str]] = {"train": [], "val": []}
    units = []
    for record in records:
        if not vocab.label_ids(record["tags"]):
            skips["no_label"] += 1
            continue
        key = tar_safe_key(record["key"])
        if key in keys:
            skips["duplicate_key"] += 1
            continue
        keys.add(key)
        path = root / record["image"]
        if not path.is_file():
            skips["missing_image"] += 1
            continue
        digest = hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
        if digest in digests:
            skips["duplicate"] += 1
            continue
        digests.add(digest)
        split = split_of(record["key"], val_fraction)
        buffers[split].append(record["key"])
        if len(buffers[split]) == shard_size:
            units.append((split, buffers[split]))
            buffers[split] = []
    units += [(split, keys) for split, keys in buffers.items() if keys]
    return dict(skips), units


def test_the_plan_over_many_parts_is_the_record_by_record_rule(tmp_path):
    table, records = _table(tmp_path, 400)
    vocab = Vocabulary([Label(i, w, 1) for i, w in enumerate(WORDS)])
    reader = TableReader(table)
    scanner = Scanner(reader, vocab, ImageResolver(tmp_path), 0.3, tmp_path / "scan")
    chunks = list(reader.chunks())
    assert len(chunks) == 45
    for index in random.Random(1).sample(range(len(chunks)), len(chunks)):  # any order, as nodes would
        scanner((index, chunks[index]))
    header = {"what": "the settings"}
    plan = make_plan(tmp_path / "scan", len(chunks), 7, header, "settings", "scan", tmp_path)
    assert read_plan(tmp_path) == plan
    skips, units = _oracle(records, vocab, tmp_path, 7, 0.3)
    assert plan.records_read == 400 and plan.skips.counts == skips
    assert set(skips) == {"no_label", "duplicate_key", "missing_image", "duplicate"}
    by_order = sorted(plan.units, key=lambda u: u.order)
    got = [(u.split, [c.source_key for c in read_candidates(tmp_path / "scan", plan.candidate_refs(tmp_path, u))])
           for u in by_order]
    assert got == units
    assert [u.index for u in by_order if u.split == "val"] == list(range(sum(s == "val" for s, _ in units)))
    # Skip examples: the first keys of each reason, in corpus order.
    assert plan.skips.examples["no_label"] == [r["key"] for r in records if not vocab.label_ids(r["tags"])][:20]
    # Fingerprints differ between units and follow the settings.
    assert len({u.fingerprint for u in plan.units}) == len(plan.units)
    other = make_plan(tmp_path / "scan", len(chunks), 7, header, "other settings", "scan", tmp_path)
    assert not {u.fingerprint for u in plan.units} & {u.fingerprint for u in other.units}
    assert json.loads((tmp_path / "plan.json").read_text())["settings_digest"] == "other settings"
