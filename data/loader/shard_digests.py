"""A shard is read only when its bytes are the bytes info.json recorded.

The shard builder records each shard's sha256 in info.json. A shard changed after that (bytes
overwritten in place by a faulty disk, a copy or a careless tool) may still be a valid tar whose
pictures or labels are wrong, and nothing in the stream would notice. So, when a shard is drawn,
its file is hashed first and its samples are read only when the digest matches; otherwise the draw
is skipped and counted as ``corrupt_shard`` (the log line names the shard).

Hashing *while* streaming would cost no second read but cannot help: the samples are yielded, and
trained on, before the digest is known. Hashing first reads the shard once more; the second read
comes from the page cache when the shard fits in memory (shards are ~30 MB at the builder's
defaults). ``scripts/bench/loader.py`` measures the cost: see docs/loader.md, "Shard digests".
``LoaderConfig.verify_shards=False`` turns the check off.
"""
from __future__ import annotations

import hashlib
from typing import Mapping


class ShardDigests:
    """The recorded sha256 of each shard URL (URLs without one are not checked)."""

    def __init__(self, digests: Mapping[str, str]) -> None:
        self.digests = dict(digests)

    def mismatch(self, url: str) -> str | None:
        """Why ``url``'s bytes are not the recorded ones, or None when they are (or nothing is
        recorded, or the file cannot be read: opening it reports that)."""
        expected = self.digests.get(url)
        if expected is None:
            return None
        try:
            with open(url, "rb") as f:
                actual = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            return None
        if actual == expected:
            return None
        return (f"its sha256 is {actual[:16]}..., info.json records {expected[:16]}...: the file changed after "
                "it was built; rerun scripts/build_shards.py on the directory to rebuild it")
