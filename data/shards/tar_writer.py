"""Deterministic tar files: the same members give the same bytes, on any machine, at any time.

Every header field that tar would otherwise take from the environment is fixed: mtime 0, uid/gid 0,
empty user and group names, mode 0644, POSIX ustar format. Members are written in the order given.
The file is written atomically, so a reader never sees half a shard.
"""
from __future__ import annotations

import io
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


def write_tar(path: str | Path, members: Iterable[tuple[str, bytes]]) -> int:
    """Write ``(name, data)`` members to ``path`` atomically; returns the file size in bytes."""
    with atomic_open(path, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for name, data in members:
                archive.addfile(_header(name, len(data)), io.BytesIO(data))
        size = f.tell()
    return size
