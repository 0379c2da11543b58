"""Deterministic tars: the same members give the same bytes, on any machine, at any time.

Every header field that tar would otherwise take from the environment is fixed: mtime 0, uid/gid 0,
empty user and group names, mode 0644, POSIX ustar format. Members are written in the order given.
The file is written atomically, so a reader never sees half a shard, and hashed as it is written,
so its sha256 costs no second read.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import IO, Iterable

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


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes what passes through it to ``target``."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)


def write_tar(path: str | Path, members: Iterable[tuple[str, bytes]]) -> tuple[int, str]:
    """Write ``(name, data)`` members to ``path`` atomically; returns its size in bytes and sha256."""
    with atomic_open(path, "wb") as f:
        stream = _Hashing(f)
        with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for name, data in members:
                archive.addfile(_header(name, len(data)), io.BytesIO(data))
    return stream.size, stream.sha256.hexdigest()
