"""Claiming a run directory: create it, check that it holds no other kind of run, and lock it while
this run writes it (pretraining and every transfer command that writes one).

- ``run.json`` records the kind of run the directory holds (``pretrain``, ``finetune``, ``linear``,
  ``evaluate``), written by its first run. A run of another kind stops with one line before it
  writes anything: no config.yaml, metrics or model file of another run is ever overwritten.
- ``run.lock`` exists while a run writes the directory and names its holder (host, pid, kind, start
  time). The holder keeps a POSIX lock (``fcntl.lockf``) on it, which the kernel releases when the
  process ends, however it ends; a second run finds the lock held and stops with one line naming
  the holder. A lock file left by a run that died (kill -9, a node lost) is taken over with one
  line. POSIX locks are per process: DataLoader workers forked by the holder do not inherit it.
  On a filesystem without POSIX locks (some Lustre and FUSE mounts), the file's content decides:
  a holder on this host whose pid is gone is stale, one on another host is taken as alive.

Under torchrun, rank 0 claims the directory after the process group is up and broadcasts the
outcome, so when it refuses every rank stops with the same line (none waits in a collective).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from data.atomic_write import write_json
from data.errors import UserError
from pretrain.distributed import DistInfo, broadcast_from_main

KIND_FILE = "run.json"
LOCK_FILE = "run.lock"
TRANSFER_KINDS = ("finetune", "linear", "evaluate")
_HELD = (errno.EACCES, errno.EAGAIN)  # lockf: another process holds it


@contextlib.contextmanager
def claimed_run_dir(run_dir: Path, kind: str, info: DistInfo,
                    say: Callable[[str], None] = print) -> Iterator[None]:
    """Hold ``run_dir`` for a ``kind`` run for the duration of the block (a collective under torchrun:
    call on every rank). UserError, on every rank, when rank 0 cannot claim it."""
    lock, refusal = None, None
    if info.is_main:
        try:
            lock = RunLock.claim(Path(run_dir), kind, say)
        except UserError as err:
            refusal = str(err)
    refusal = broadcast_from_main(refusal)
    if refusal is not None:
        raise UserError(refusal)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


class RunLock:
    """rank 0's hold on a run directory (see the module doc)."""

    def __init__(self, path: Path, fd: int, created: bool) -> None:
        self.path, self.fd = path, fd
        self.created = created  # the directory did not exist before this claim
        self.recorded_kind = False  # this claim wrote run.json

    @classmethod
    def claim(cls, run_dir: Path, kind: str, say: Callable[[str], None] = print) -> "RunLock":
        created = _make_directory(run_dir)
        _check_kind(run_dir, kind)  # before anything is written
        path = run_dir / LOCK_FILE
        fd, kernel_locked = _open_locked(path)
        lock, previous = cls(path, fd, created), None
        try:
            previous = _holder(fd)
            if previous is not None:
                if not kernel_locked and _may_be_alive(previous):
                    raise UserError(_in_use(run_dir, path, previous, kernel_locked))
                say(f"took over the stale lock {path} of {_describe(previous)}: that process ended without "
                    "releasing it")
            _check_kind(run_dir, kind)  # again, under the lock: a run of another kind may have just ended
            if not (run_dir / KIND_FILE).is_file():
                write_json(run_dir / KIND_FILE, {"kind": kind})
                lock.recorded_kind = True
            _write_holder(fd, {"host": socket.gethostname(), "pid": os.getpid(), "kind": kind,
                               "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        except BaseException:
            lock.release(remove=previous is None)
            raise
        return lock

    def release(self, remove: bool = True) -> None:
        """Remove the lock file (when ``remove``) and drop the lock; idempotent. A run that wrote
        nothing besides run.json (it stopped while setting up) takes run.json, and the directory if
        it made it, away with it."""
        if self.fd < 0:
            return
        run_dir = self.path.parent
        if self.recorded_kind and set(os.listdir(run_dir)) <= {KIND_FILE, LOCK_FILE}:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(run_dir / KIND_FILE)
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)  # drops the POSIX lock
        self.fd = -1
        if self.created and remove:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only if empty


def _make_directory(run_dir: Path) -> bool:
    """Create ``run_dir`` (and its parents); True when it did not exist."""
    existed = run_dir.is_dir()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return not existed
    except FileExistsError:
        raise UserError(f"cannot create the run directory {run_dir}: a file of that name is in the way; "
                        "set run.dir (or run.name) to a directory") from None
    except OSError as err:
        raise UserError(f"cannot create the run directory {run_dir}: {err.strerror}; set run.dir to a directory "
                        "you can write") from None


def _open_locked(path: Path) -> tuple[int, bool]:
    """An fd of ``path`` holding its POSIX lock (True) or, where the filesystem has none, unlocked (False)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise UserError(f"cannot write in the run directory {path.parent}: {err.strerror}; set run.dir to a "
                            "directory you can write") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            kernel_locked = True
        except OSError as err:
            if err.errno in _HELD:
                holder = _holder(fd)
                os.close(fd)
                raise UserError(_in_use(path.parent, path, holder, True)) from None
            kernel_locked = False  # ENOLCK, ENOSYS, EOPNOTSUPP, EINVAL: no POSIX locks on this filesystem
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            return fd, kernel_locked
        os.close(fd)  # its holder removed it between our open and our lock: try the new one


def _holder(fd: int) -> dict[str, Any] | None:
    """Who the lock file names (None: nobody, or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096)
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _write_holder(fd: int, holder: dict[str, Any]) -> None:
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _may_be_alive(holder: dict[str, Any]) -> bool:
    """Without kernel locks: a holder on this host whose pid is gone is dead; any other may be alive."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "a run that is starting (its lock file names no holder yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')} (a {holder.get('kind', '?')} run, since "
            f"{holder.get('since', '?')})")


def _in_use(run_dir: Path, path: Path, holder: dict[str, Any] | None, kernel_locked: bool) -> str:
    unsure = ("" if kernel_locked else
              "; this filesystem has no POSIX locks, so whether it still runs cannot be checked from here: if it "
              f"has ended, delete {path} and rerun")
    return (f"run directory {run_dir} is in use by {_describe(holder)}, which holds {path}; wait for it to end or "
            f"choose another run.name{unsure}")


def _check_kind(run_dir: Path, kind: str) -> None:
    held = run_kind(run_dir)
    if held is None or held == kind or (held == "transfer" and kind in TRANSFER_KINDS):
        return
    raise UserError(f"run directory {run_dir} holds a {held} run ({_kind_source(run_dir)}), not a {kind} run; a run "
                    "writes only into a directory of its own kind: choose another run.name (or run.dir). Nothing "
                    "was written")


def run_kind(run_dir: Path) -> str | None:
    """The kind of run ``run_dir`` holds: from run.json; for a directory written before run.json
    existed, ``pretrain`` or ``transfer`` from its config.yaml; None for a new or empty one."""
    recorded = run_dir / KIND_FILE
    if recorded.is_file():
        with contextlib.suppress(OSError, ValueError):
            kind = json.loads(recorded.read_text(encoding="utf-8")).get("kind")
            if isinstance(kind, str):
                return kind
        raise UserError(f"{recorded} is not the JSON object {{\"kind\": ...}} openwsl writes; restore it or "
                        "choose another run.name")
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    try:
        keys = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if isinstance(keys, dict) and "optim" in keys:
        return "pretrain"
    if isinstance(keys, dict) and "init" in keys:
        return "transfer"
    return None


def _kind_source(run_dir: Path) -> str:
    return KIND_FILE if (run_dir / KIND_FILE).is_file() else "its config.yaml"
