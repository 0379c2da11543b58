"""Atomic file writes: temp file in the same directory, fsync, rename.

A reader (or a restarted job) sees either the old complete file or the new complete file, never a
partial one. Used for vocab.json, info.json, shards, reports and checkpoints. The file gets the
permissions a plain ``open()`` would give it: 0666 less the user's umask.

A write that fails because the disk (or a quota, or a file-size limit) is full removes its temp
file and raises one :class:`~data.errors.UserError` line naming the file, whatever layer saw the
error first (``torch.save`` turns it into a RuntimeError, for one): the commands resume, so the
fix is to free space and rerun.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator

from data.errors import UserError

#: errno values that mean "no room to write": disk full, quota exceeded, file-size limit (RLIMIT_FSIZE)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside ``path``; on clean exit fsync it and rename it over ``path``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports 'wb' and 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = disk_full_error(err)
        if full is not None:
            raise UserError(f"cannot write {path}: {os.strerror(full.errno)} (the disk, a quota or a file-size "
                            "limit is full); free space and rerun the same command: finished work is "
                            "kept") from None
        raise
    fsync_dir(path.parent)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temp file ``.<name>.<random>.tmp`` beside ``path``, open for writing, with the mode a
    plain ``open()`` gives (0666 less the user's umask). ``tempfile.mkstemp`` would make it 0600
    whatever the umask, and the rename would hand that to the output: shards and checkpoints on a
    shared filesystem unreadable by anyone else."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def disk_full_error(err: BaseException | None) -> OSError | None:
    """The out-of-space OSError behind ``err``: itself, or one it was raised from or while handling."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return err
        seen.add(id(err))
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return None


def fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")
