"""Deterministic tars: the same members give the same bytes, on any machine, at any time.

Every header field that tar would otherwise take from the environment is fixed: mtime 0, uid/gid 0,
empty user and group names, mode 0644, POSIX ustar format. Members are written in the order given,
each header made by :mod:`tarfile` itself, the data, padding and end-of-archive blocks laid out as
``tarfile`` lays them out (tests/data/shards/test_tar_writer.py compares the bytes), without its
per-member copying. The file is written atomically, so a reader never sees half a shard, and hashed
as it is written, so its sha256 costs no second read.
"""
from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Iterable

from data.atomic_write import atomic_open


def _header(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _padding(size: int, unit: int) -> bytes:
    return bytes(-size % unit)


def write_tar(path: str | Path, members: Iterable[tuple[str, bytes]]) -> tuple[int, str]:
    """Write ``(name, data)`` members to ``path`` atomically; returns its size in bytes and sha256."""
    sha256 = hashlib.sha256()
    size = 0
    with atomic_open(path, "wb") as f:
        def put(data: bytes) -> None:
            nonlocal size
            sha256.update(data)
            f.write(data)
            size += len(data)

        for name, data in members:
            put(_header(name, len(data)).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"))
            put(data)
            put(_padding(len(data), tarfile.BLOCKSIZE))
        put(bytes(2 * tarfile.BLOCKSIZE))  # the end-of-archive blocks, then zeros to a whole record
        put(_padding(size, tarfile.RECORDSIZE))
    return size, sha256.hexdigest()
