"""Commands run as child processes the way the fault tests need them: under a file-size limit (a
full disk, without mounting a small filesystem) and with their peak memory measured.

The peak is the command's own ``ru_maxrss`` from ``wait4``: the largest resident set of the command
or of any process it waited for (its worker pools), never of other tests' processes, which a
``getrusage(RUSAGE_CHILDREN)`` in the long-lived pytest worker would mix in. The command is started
by a small launcher process, not by pytest itself: Linux carries a process's RSS high-water mark
across fork and exec, so a child forked from a pytest worker holding torch would report the
worker's gigabyte as its own peak.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Sequence

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mib: float

    def assert_one_error_line(self) -> str:
        """The run failed with exit status 2 and ONE ``error:`` line, no traceback; that line."""
        assert self.returncode == 2, (self.returncode, self.stderr[-3000:])
        assert "Traceback" not in self.stderr, self.stderr[-3000:]
        errors = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, self.stderr[-3000:]
        assert self.stderr.rstrip().endswith(errors[0]), "the error is the last thing printed"
        return errors[0]


def file_size_limit(max_bytes: int) -> Callable[[], None]:
    """A preexec_fn: no file written may grow past ``max_bytes``, and a write that would fails with
    EFBIG (SIGXFSZ ignored) instead of killing the process: what a full disk looks like to it."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


_LAUNCHER = r"""
import json, os, subprocess, sys
command = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(command.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"status": status, "maxrss_kib": usage.ru_maxrss}, f)
"""


def run(command: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 300.0,
        max_file_bytes: int | None = None) -> Finished:
    """Run ``command`` to the end; its output, exit status and peak RSS."""
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "rusage.json"
        process = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(result), *command], cwd=cwd, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                   preexec_fn=file_size_limit(max_file_bytes) if max_file_bytes else None)
        out, err = _PipeReader(process.stdout), _PipeReader(process.stderr)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the command
            process.wait()
            raise
        usage = json.loads(result.read_text())
    return Finished(os.waitstatus_to_exitcode(usage["status"]), out.text(), err.text(), usage["maxrss_kib"] / 1024)


class _PipeReader:
    """Reads a pipe to its end on a thread, so a chatty child never blocks on a full pipe."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._parts: list[bytes] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            while chunk := stream.read(1 << 16):
                self._parts.append(chunk)

    def text(self) -> str:
        self._thread.join(timeout=30)
        return b"".join(self._parts).decode("utf-8", "replace")


def alive(pid: int) -> bool:
    """The process runs (it is neither gone nor a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to end; those still running."""
    deadline = time.monotonic() + timeout
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def workers_left_after_killing(parent: subprocess.Popen, workers: Sequence[int], timeout: float) -> list[int]:
    """SIGKILL ``parent`` (whose running pool ``workers`` are) and wait up to ``timeout`` seconds for
    the workers to end; those still running. Whatever the outcome, nothing is left running after."""
    try:
        assert workers and all(map(alive, workers)), f"pool workers {workers} were not all running"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        return wait_gone(workers, timeout)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
