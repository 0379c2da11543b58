"""Integer counters that DataLoader worker processes write and the training process reads.

Each worker owns one row of a table in shared memory and is its only writer, so no lock is needed;
the trainer sums the rows whenever it wants (a row read mid-update is at most one increment
behind). The table must be created before the workers start: it travels to them when the dataset
is forked or pickled at spawn time, like ``multiprocessing.Value``.
"""
from __future__ import annotations

import ctypes
import multiprocessing

import numpy as np


class SharedCounts:
    """A ``rows x columns`` table of int64 counters in shared memory."""

    def __init__(self, rows: int, columns: int) -> None:
        if rows < 1 or columns < 1:
            raise ValueError(f"need at least one row and one column, got {rows}x{columns}")
        self.rows, self.columns = rows, columns
        self._buffer = multiprocessing.Array(ctypes.c_int64, rows * columns, lock=False)

    def table(self) -> np.ndarray:
        """A writable ``rows x columns`` view of the counters (no copy)."""
        return np.frombuffer(self._buffer, dtype=np.int64).reshape(self.rows, self.columns)

    def row(self, index: int) -> np.ndarray:
        return self.table()[index % self.rows]

    def totals(self) -> np.ndarray:
        """Column sums over all rows (a copy)."""
        return self.table().sum(axis=0)
