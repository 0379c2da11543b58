"""Shard directories with faults planted at known places, and what one pass over them must count.

A shard is planned as a list of sample kinds. Every kind but ``ok`` is one fault the loader must
skip and count (or, for label ids outside the vocabulary, drop and count); ``cut_at`` truncates
the tar inside the image of that sample, so it and every later sample are lost and the shard is
counted once as ``truncated_tar``. Real JPEG bytes (tests/shard_factory), real tars, a real
info.json; an empty plan is a valid tar with no member at all.
"""
from __future__ import annotations

import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from data.shards.tar_writer import write_tar
from tests.shard_factory import Sample, photo_like, write_shard_dir

NUM_LABELS = 6
FOREIGN_LABEL = 99  # outside the 6-label vocabulary
SIZE = (40, 36)

# kind -> the skip reason one pass counts for it (None: the sample is used)
SKIP_OF_KIND = {"ok": None, "corrupt": "corrupt", "truncated": "truncated", "invalid_json": "invalid_json",
                "missing_json": "missing_json", "foreign_label": None, "no_label": "no_label"}
# kind -> label ids outside the vocabulary it carries (dropped and counted)
FOREIGN_IDS_OF_KIND = {"foreign_label": 1, "no_label": 1}


@dataclass(frozen=True)
class ShardPlan:
    kinds: tuple[str, ...]
    cut_at: int | None = None  # truncate the tar inside this sample's image

    def read(self) -> tuple[str, ...]:
        """The kinds one pass reaches: those before the cut."""
        return self.kinds if self.cut_at is None else self.kinds[:self.cut_at]


def plan(size: int, faults: dict[int, str], cut_at: int | None = None) -> ShardPlan:
    """``size`` samples, ``ok`` except ``faults`` (index -> kind)."""
    unknown = set(faults.values()) - set(SKIP_OF_KIND)
    assert not unknown, f"unknown sample kinds {unknown}"
    return ShardPlan(tuple(faults.get(i, "ok") for i in range(size)), cut_at)


def expected_skips(plans: Sequence[ShardPlan]) -> dict[str, int]:
    """Skips by reason of one pass over every shard (the eval loader's pass)."""
    counts = Counter(SKIP_OF_KIND[kind] for p in plans for kind in p.read() if SKIP_OF_KIND[kind])
    counts["truncated_tar"] += sum(p.cut_at is not None for p in plans)
    return {reason: n for reason, n in counts.items() if n}


def expected_dropped_labels(plans: Sequence[ShardPlan]) -> int:
    return sum(FOREIGN_IDS_OF_KIND.get(kind, 0) for p in plans for kind in p.read())


def expected_images(plans: Sequence[ShardPlan]) -> int:
    """Samples one pass delivers."""
    return sum(SKIP_OF_KIND[kind] is None for p in plans for kind in p.read())


def _sample(key: str, kind: str, index: int, rng: np.random.Generator) -> Sample:
    labels = [index % NUM_LABELS, (index * 7 + 3) % NUM_LABELS]
    good = photo_like(rng, *SIZE)
    if kind == "corrupt":
        return Sample(key, labels, image=good[:3] + bytes(400))  # a JPEG signature, then nothing readable
    if kind == "truncated":
        return Sample(key, labels, image=good[:len(good) // 2])
    if kind == "invalid_json":
        return Sample(key, labels, image=good, json_bytes=b'{"labels": [1, 2')
    if kind == "foreign_label":
        return Sample(key, labels + [FOREIGN_LABEL], image=good)
    if kind == "no_label":
        return Sample(key, [FOREIGN_LABEL], image=good)
    return Sample(key, labels, image=good)  # ok, missing_json (its json is removed after writing)


def write_dirty_shards(root: Path, split: str, plans: Sequence[ShardPlan], seed: int = 0) -> Path:
    """``root/<split>-NNNNNN.tar`` per plan and info.json; keys ``<split><shard>_<index>_<kind>``."""
    rng = np.random.default_rng(seed)
    shards = [[_sample(f"{split}{s}_{i:03d}_{kind}", kind, i, rng) for i, kind in enumerate(p.kinds)]
              for s, p in enumerate(plans)]
    write_shard_dir(root, shards, NUM_LABELS, split, size=SIZE, seed=seed)
    for s, p in enumerate(plans):
        tar = root / f"{split}-{s:06d}.tar"
        missing = {f"{split}{s}_{i:03d}_{kind}.json" for i, kind in enumerate(p.kinds) if kind == "missing_json"}
        if missing:
            _drop_members(tar, missing)
        if p.cut_at is not None:
            truncate_inside(tar, f"{split}{s}_{p.cut_at:03d}_{p.kinds[p.cut_at]}.jpg")
    return root


def good_keys(split: str, plans: Sequence[ShardPlan]) -> list[str]:
    """Keys of the samples one pass delivers."""
    return [f"{split}{s}_{i:03d}_{kind}" for s, p in enumerate(plans) for i, kind in enumerate(p.read())
            if SKIP_OF_KIND[kind] is None]


def _drop_members(tar: Path, names: set[str]) -> None:
    with tarfile.open(tar) as archive:
        members = [(m.name, archive.extractfile(m).read()) for m in archive.getmembers() if m.name not in names]
    write_tar(tar, members)


def truncate_inside(tar: Path, member: str) -> None:
    """Cut ``tar`` in the middle of ``member``'s data, as a copy that died mid-transfer would be."""
    with tarfile.open(tar) as archive:
        info = archive.getmember(member)
    tar.write_bytes(tar.read_bytes()[:info.offset_data + info.size // 2])
