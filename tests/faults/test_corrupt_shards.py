"""A shard whose bytes changed after it was built is never fed to training: skipped and counted.

The shard builder records each shard's sha256 in info.json. Here a real build's shard is damaged
in place the way a faulty disk or a careless tool would: bytes inside one picture are overwritten,
so the file is still a valid tar of the same size whose images still decode. The loader hashes a
drawn shard before reading it (data/loader/shard_digests.py) and skips it as ``corrupt_shard``
with a log line naming it; the other shards are read as before. Before, the damaged shard's samples
were trained on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from pathlib import Path

import numpy as np

from data.corpus import open_corpus
from data.loader.pipeline import LoaderConfig, create_loader
from data.shards.build import BuildConfig, build_shards
from data.vocab.vocabulary import Label, Vocabulary
from tests.shard_factory import photo_like

WORDS = ["cat", "dog", "bird"]


def _built_shards(root: Path) -> Path:
    """A real shard directory from the builder: 3 train shards of 4 photos."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    with open(root / "table.jsonl", "w", encoding="utf-8") as table:
        for i in range(12):
            (root / "img" / f"p{i}.jpg").write_bytes(photo_like(rng, 64, 48))
            table.write(json.dumps({"key": f"p{i}", "tags": [WORDS[i % 3]], "image": f"img/p{i}.jpg"}) + "\n")
    Vocabulary([Label(i, w, 4) for i, w in enumerate(WORDS)]).save(root / "vocab.json")
    build_shards(open_corpus("jsonl", root / "table.jsonl"),
                 BuildConfig(root / "shards", root / "vocab.json", str(root), shard_size=4, val_fraction=0.0))
    return root / "shards"


def _damage_in_place(tar: Path) -> set[str]:
    """Overwrite 64 bytes in the middle of the first picture (same size, still a valid tar); the
    keys of the shard's samples."""
    with tarfile.open(tar) as archive:
        members = archive.getmembers()
    picture = next(m for m in members if m.name.endswith(".jpg"))
    with open(tar, "r+b") as f:
        f.seek(picture.offset_data + picture.size // 2)
        f.write(bytes(range(64)))
    with tarfile.open(tar) as archive:
        assert [m.name for m in archive.getmembers()] == [m.name for m in members]
    return {m.name.split(".")[0] for m in members}


def test_info_json_records_each_shards_sha256(tmp_path):
    shards = _built_shards(tmp_path)
    entries = json.loads((shards / "info.json").read_text())["shards"]["train"]
    assert len(entries) == 3
    for entry in entries:
        assert entry["sha256"] == hashlib.sha256((shards / entry["name"]).read_bytes()).hexdigest()


def test_a_shard_changed_in_place_is_skipped_and_counted_once_per_read(tmp_path, caplog):
    shards = _built_shards(tmp_path)
    damaged = shards / json.loads((shards / "info.json").read_text())["shards"]["train"][1]["name"]
    lost = _damage_in_place(damaged)
    config = LoaderConfig(batch_size=4, num_workers=0, image_size=16, split="train")
    with caplog.at_level(logging.WARNING, logger="openwsl.data.stream"):
        loader = create_loader(shards, config, mode="eval")
        keys = {key for batch in loader for key in batch["keys"]}
    assert len(keys) == 8 and not keys & lost
    assert loader.skip_counts() == {"corrupt_shard": 1}
    assert any(str(damaged) in record.getMessage() and "sha256" in record.getMessage() for record in caplog.records)

    # Training draws shards with replacement: every draw of the damaged one is skipped.
    train = create_loader(shards, LoaderConfig(batch_size=4, num_workers=0, image_size=16, epoch_images=64,
                                               shuffle_buffer=4, shuffle_initial=1), mode="train")
    trained = {key for batch in train for key in batch["keys"]}
    assert trained and not trained & lost and train.skip_counts()["corrupt_shard"] >= 1

    # The check can be turned off: then the damaged shard's samples are read.
    unchecked = create_loader(shards, LoaderConfig(batch_size=4, num_workers=0, image_size=16, split="train",
                                                   verify_shards=False), mode="eval")
    assert {key for batch in unchecked for key in batch["keys"]} == keys | lost
