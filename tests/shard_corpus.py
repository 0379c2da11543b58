"""A small corpus for the shard builder's tests, and the builder's command line: a JSONL table (or
the same rows as Parquet in row groups of 4, so that it comes in many chunks for several nodes) over
an image folder with good photos and one record of each bad kind."""
from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.vocab.vocabulary import Label, Vocabulary
from tests.shard_factory import photo_like

REPO = Path(__file__).resolve().parents[1]
WORDS = ["cat", "dog", "bird", "fish", "tree"]


def _png_bomb_header(width: int = 60_000, height: int = 60_000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def make_corpus(root: Path, good: int = 30, size: tuple[int, int] = (80, 60), seed: int = 0) -> dict:
    """A JSONL table + image folder with ``good`` labelled photos and one record of each bad kind."""
    rng = np.random.default_rng(seed)
    images = root / "img"
    images.mkdir(parents=True)
    rows = []
    for i in range(good):
        (images / f"p{i}.jpg").write_bytes(photo_like(rng, *size))
        # Spelling variants of the vocab words: '#Cat', 'BIRD', 'tree ' canonicalise to labels.
        tags = [["#Cat", "Dog"], ["BIRD"], ["fish", "tree ", "holiday"], ["dog"], ["tree", "cat"]][i % 5]
        rows.append({"key": f"p{i}", "tags": tags, "image": f"img/p{i}.jpg"})
    (images / "dup.jpg").write_bytes((images / "p3.jpg").read_bytes())
    cut = photo_like(rng, 200, 150)
    (images / "cut.jpg").write_bytes(cut[: len(cut) // 2])
    (images / "bomb.png").write_bytes(_png_bomb_header())
    (images / "odd.jpg").write_bytes(photo_like(rng, *size))
    rows += [
        {"key": "nolabel1", "tags": ["holiday", "2015"], "image": "img/p0.jpg"},
        {"key": "nolabel2", "tags": [], "image": "img/p1.jpg"},
        {"key": "gone", "tags": ["cat"], "image": "img/not-there.jpg"},
        {"key": "copy-of-p3", "tags": ["fish"], "image": "img/dup.jpg"},
        {"key": "cut", "tags": ["dog"], "image": "img/cut.jpg"},
        {"key": "bomb", "tags": ["bird"], "image": "img/bomb.png"},
        {"key": "users/42/photo.v2", "tags": ["cat"], "image": "img/odd.jpg"},
    ]
    with open(root / "table.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    Vocabulary([Label(i, w, 10 - i) for i, w in enumerate(WORDS)]).save(root / "vocab.json")
    return {row["key"]: row for row in rows}


def make_parquet_corpus(root: Path, good: int = 30, size: tuple[int, int] = (80, 60), row_group: int = 4) -> dict:
    """:func:`make_corpus`, its rows as ``table.parquet`` in row groups of ``row_group`` (one chunk each):
    ``p3`` is in the first chunk, its byte-identical copy ``copy-of-p3`` several chunks later."""
    rows = make_corpus(root, good, size)
    pq.write_table(pa.Table.from_pylist(list(rows.values())), root / "table.parquet", row_group_size=row_group)
    return rows


def builder_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "build_shards.py"), *args]


def corpus_arguments(root: Path, out: Path) -> list[str]:
    """The builder's arguments for the Parquet corpus in ``root`` (shards of 4, a quarter held out)."""
    return ["--source", "parquet", "--input", str(root / "table.parquet"), "--images", str(root), "--vocab",
            str(root / "vocab.json"), "--out", str(out), "--shard-size", "4", "--val-fraction", "0.25", "--no-progress"]


def node_command(root: Path, out: Path, rank: int, nodes: int, workers: int) -> list[str]:
    """One node's command for the Parquet corpus in ``root``."""
    return builder_command(*corpus_arguments(root, out), "--workers", str(workers), "--node-rank", str(rank),
                           "--num-nodes", str(nodes))
