"""A shard corrupted in place after it was built (bytes overwritten with its size and modification
time kept, or cut short) is not kept: a rerun of the builder and ``--finalize`` each read every
shard back, compare it with the sha256 its manifest recorded, and rebuild the ones that differ, to
the bytes of an undamaged build. Each says which shards it rebuilt."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.shard_corpus import builder_command, make_parquet_corpus, node_command
from tests.shard_factory import built_files


def _overwrite_in_place(tar: Path) -> None:
    """Flip bytes in the middle of ``tar`` without changing its size or modification time."""
    stat = tar.stat()
    with open(tar, "r+b") as f:
        f.seek(stat.st_size // 2)
        chunk = f.read(64)
        f.seek(stat.st_size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    os.utime(tar, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture
def built(tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    make_parquet_corpus(tmp_path, good=24)
    out = tmp_path / "out"
    subprocess.run(node_command(tmp_path, out, 0, 1, 1), check=True, capture_output=True)
    return tmp_path, out, built_files(out)


@pytest.mark.parametrize("how", ["rerun", "finalize"])
def test_a_shard_damaged_in_place_is_rebuilt(built, how):
    root, out, reference = built
    _overwrite_in_place(out / "train-000001.tar")
    with open(out / "val-000000.tar", "r+b") as f:  # and one cut short
        f.truncate(1000)
    assert built_files(out) != reference
    if how == "rerun":
        command = node_command(root, out, 0, 1, 2)
    else:
        command = builder_command("--out", str(out), "--finalize", "--workers", "2", "--no-progress")
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert "rebuilt 2 shard(s) whose bytes no longer matched their recorded sha256: " in said
    assert "train-000001" in said and "val-000000" in said
    assert built_files(out) == reference
