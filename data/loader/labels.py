"""Labels as index lists in a batch, and the dense targets the loss needs, made on the device.

A batch carries each image's label ids as one row of a padded ``LongTensor`` (``-1`` pads the
rows of images with fewer labels), so a 17k-label vocabulary costs a few integers per image between
processes instead of a 17k-wide row. The dense target is built where the loss runs, in one scatter:
:func:`multi_hot_targets`, 1 on each of the image's labels; rows without labels stay all zero. Both
losses of pretrain/loss.py take it as it is (the softmax loss divides each row by its k labels).
"""
from __future__ import annotations

from typing import Sequence

import torch

PAD = -1


def pack_labels(labels: Sequence[Sequence[int]]) -> torch.Tensor:
    """``N x L`` int64, row i holding the distinct ids of ``labels[i]`` (sorted), ``-1`` padded;
    L is the longest row (at least 1)."""
    rows = [sorted(set(row)) for row in labels]
    width = max((len(row) for row in rows), default=0)
    packed = torch.full((len(rows), max(width, 1)), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        packed[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return packed


def multi_hot_targets(labels: torch.Tensor, num_classes: int,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """``N x num_classes`` float32 with 1 at each packed label of each row."""
    # Checked where the batch arrives (the host, normally), so the device is never synchronised.
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"label id {int(labels.max())} is outside 0..{num_classes - 1}")
    labels = labels.to(device=device, non_blocking=True)
    present = labels >= 0
    targets = torch.zeros(labels.shape[0], num_classes, dtype=torch.float32, device=labels.device)
    # Padding scatters 0 into column 0, which leaves a real label 0 untouched (add, not assign).
    targets.scatter_add_(1, labels.clamp(min=0), present.to(torch.float32))
    return targets.clamp_(max=1.0)
