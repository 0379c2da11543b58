"""Skipped samples in a stream: counted by reason across worker processes, logged at a bounded rate.

A stream never stops for a bad sample and never drops one silently: every skip is counted under a
named reason in shared memory (:class:`~data.loader.shared_counts.SharedCounts`, one row per DataLoader
worker), where the trainer reads the running totals at any time, and logged at most once per
``log_every_s`` seconds per reason and worker, so a dirty shard cannot flood the log. Nothing here
sleeps (webdataset's ``warn_and_continue`` does, for half a second per bad sample).
"""
from __future__ import annotations

import logging
import time

from data.loader.shared_counts import SharedCounts

LOG = logging.getLogger("openwsl.data.stream")

#: every reason a stream can skip for; the image reasons are those of data.images.decode.ImageSkip
REASONS = (
    "unreadable_shard",  # the shard could not be opened (missing file, failed pipe: command)
    "corrupt_shard",  # the shard's bytes differ from the sha256 info.json records; none of it used
    "truncated_tar",  # the shard ended mid-member; the samples before the cut were used
    "too_large",  # a member over its cap (64 MiB images, 1 MiB json), never read
    "missing_image",  # a sample without an image member
    "missing_json",  # a sample without its .json member
    "invalid_json",  # the .json is not a JSON object with a 'labels' list of integers, or nests too deep
    "no_label",  # no label id inside the vocabulary
    "corrupt",  # image bytes that do not decode
    "truncated",  # image data cut short
    "too_many_pixels",  # header size above the pixel limit (checked before decoding)
    "unsupported_format",  # not an allowlisted raster format
    "unsupported_mode",  # pixel format with no sensible RGB conversion
)
#: not a skip: label ids outside the vocabulary, removed from a sample's labels (the sample is kept
#: when another id remains, else skipped as ``no_label``); counted per id, apart from the skips
DROPPED_LABEL = "dropped_label_id"
_COLUMN = {reason: i for i, reason in enumerate(REASONS + (DROPPED_LABEL,))}


class SkipCounter:
    """Counts skips by reason; ``slots`` is the number of processes that write (DataLoader workers,
    or 1 when data is loaded in the training process)."""

    def __init__(self, slots: int, log_every_s: float = 60.0) -> None:
        self.slots = slots
        self._counts = SharedCounts(slots, len(_COLUMN))
        self.log_every_s = log_every_s
        self._slot = 0
        self._last_logged: dict[str, float] = {}

    def bind(self, slot: int) -> None:
        """Make this process write row ``slot`` (call once in each worker)."""
        self._slot = slot

    def add(self, reason: str, key: str, detail: str = "") -> None:
        row = self._counts.row(self._slot)
        row[_COLUMN[reason]] += 1
        if self._log_due(reason):
            LOG.warning("skipped sample %s: %s%s (%d %s skips so far in worker %d; logged at most "
                        "every %gs per reason)", key, reason, f" ({detail})" if detail else "",
                        row[_COLUMN[reason]], reason, self._slot, self.log_every_s)

    def drop_labels(self, count: int, key: str, detail: str = "") -> None:
        """Count ``count`` label ids of sample ``key`` that lie outside the vocabulary."""
        row = self._counts.row(self._slot)
        row[_COLUMN[DROPPED_LABEL]] += count
        if self._log_due(DROPPED_LABEL):
            LOG.warning("sample %s: dropped %d label id(s) outside the vocabulary%s (%d dropped so far in "
                        "worker %d; were the shards built with another vocab.json?)", key, count,
                        f" ({detail})" if detail else "", row[_COLUMN[DROPPED_LABEL]], self._slot)

    def _log_due(self, reason: str) -> bool:
        now = time.monotonic()
        last = self._last_logged.get(reason)
        if last is None or now - last >= self.log_every_s:
            self._last_logged[reason] = now
            return True
        return False

    def own_total(self) -> int:
        """Skipped samples counted by this process's row, all reasons."""
        return int(self._counts.row(self._slot)[:len(REASONS)].sum())

    def counts(self) -> dict[str, int]:
        """Skipped samples: totals over all workers, reasons with at least one skip only."""
        totals = self._counts.totals()
        return {reason: int(totals[i]) for i, reason in enumerate(REASONS) if totals[i]}

    def dropped_labels(self) -> int:
        """Label ids dropped as outside the vocabulary, all workers."""
        return int(self._counts.totals()[_COLUMN[DROPPED_LABEL]])
