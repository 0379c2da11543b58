"""Process pools for the data stages: forked where possible, fed a bounded number of tasks ahead,
and never outliving the process that started them.

The vocabulary counter and every phase of the shard builder fan work out the same way:

- :func:`start_pool` starts a ``multiprocessing.Pool`` with ``fork`` where the platform has it
  (workers start in milliseconds with the parent's state, e.g. a corpus reader or an index, already
  in memory), ``spawn`` elsewhere (the state is pickled to each worker by the initializer);
- :func:`ordered_map` is ``pool.imap`` that reads its input only ``ahead`` tasks in front of the
  consumer, so a corpus of any size never sits in the task queue at once;
- every worker watches its parent: when the parent dies (``kill -9``, the OOM killer, a node
  lost), a worker blocked on the task queue would wait forever, since the queue's other end is
  inherited by the workers themselves and so never closes. A daemon thread in each worker checks
  the parent's pid once every :data:`PARENT_CHECK_S` seconds and ends the worker when it changed.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: how often a worker checks that the process that started it is still alive
PARENT_CHECK_S = 0.5


def pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` where available (Linux), else ``spawn`` (Windows, macOS' default)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def start_pool(workers: int, initializer: Callable[..., None] | None = None,
               initargs: tuple = ()) -> multiprocessing.pool.Pool:
    """A pool of ``workers`` processes that end by themselves when this process dies; each runs
    ``initializer(*initargs)`` first."""
    return pool_context().Pool(workers, initializer=_start_worker, initargs=(os.getpid(), initializer, initargs))


def _start_worker(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()
    if initializer is not None:
        initializer(*initargs)


def _watch_parent(parent: int) -> None:
    # A dead parent's children are re-parented (to init or a subreaper): getppid() changes.
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def ordered_map(pool: Any, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """``pool.imap(fn, items)`` that stops reading ``items`` ``ahead`` results in front of the
    consumer (``imap`` itself would read the whole input into its task queue)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
