"""Label index lists in a batch and the dense targets made from them (data/loader/labels.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.loader.labels import multi_hot_targets, pack_labels


def test_pack_labels_pads_with_minus_one_and_dedups():
    packed = pack_labels([[3, 1, 3], [], [0]])
    assert packed.tolist() == [[1, 3], [-1, -1], [0, -1]] and packed.dtype == torch.long
    assert pack_labels([[], []]).shape == (2, 1)


def test_multi_hot_targets_mark_each_label_and_leave_unlabelled_rows_zero():
    rng = np.random.default_rng(9)
    rows = [sorted(set(rng.integers(0, 50, rng.integers(0, 6)).tolist())) for _ in range(300)]
    rows[0] = [0]  # label 0 next to padding, which also scatters into column 0
    expected = torch.zeros(300, 50)
    for i, row in enumerate(rows):
        expected[i, row] = 1.0
    targets = multi_hot_targets(pack_labels(rows), 50, "cpu")
    assert targets.dtype == torch.float32 and torch.equal(targets, expected)
    with pytest.raises(ValueError):
        multi_hot_targets(pack_labels([[50]]), 50)
