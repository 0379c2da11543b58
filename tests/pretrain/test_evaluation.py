"""pretrain/evaluation.py: precision@1, recall@5 and mAP, by hand, against scikit-learn's
``average_precision_score`` (ties included), and exact across 2 gloo ranks with uneven shares of the
eval set."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn.metrics import average_precision_score
from torch import nn

from data.loader.labels import pack_labels
from pretrain.evaluation import evaluate, mean_average_precision


class ScoreTable(nn.Module):
    """Stand-in network: image i (its index written in pixel [0, 0, 0]) scores ``table[i]``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[images[:, 0, 0, 0].long()]


def _batches(labels: list[list[int]], start: int, stop: int, batch_size: int) -> list[dict]:
    batches = []
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        images = torch.zeros(hi - lo, 3, 2, 2, dtype=torch.uint8)
        images[:, 0, 0, 0] = torch.arange(lo, hi, dtype=torch.uint8)
        batches.append({"image": images, "labels": pack_labels(labels[lo:hi]), "keys": [str(i) for i in range(lo, hi)]})
    return batches


def _identity(images: torch.Tensor) -> torch.Tensor:
    return images.float()


def sklearn_map(scores: np.ndarray, labels: list[list[int]]) -> float:
    """The definition the module documents: per hashtag with at least one positive image, the average
    precision of ranking every image by its score (scikit-learn: precision at each distinct
    threshold, weighted by the recall it adds, so tied scores form one threshold), then the mean."""
    truth = np.zeros(scores.shape, dtype=bool)
    for row, ids in enumerate(labels):
        truth[row, ids] = True
    present = truth.any(axis=0)
    return float(average_precision_score(truth[:, present], scores[:, present], average="macro"))


def test_metrics_by_hand():
    table = torch.tensor([[0.9, 0.1, 0.5, 0.0, 0.0, 0.0],    # labels {0}:  top-1 hit, all in top 5
                          [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],    # labels {0, 3}: top-1 miss
                          [0.7, 0.3, 0.6, 0.5, 0.4, 0.2],    # labels {5}: 6th of 6 -> recall@5 = 0
                          [0.3, 0.3, 0.9, 0.0, 0.0, 0.0]])   # no label: left out
    labels = [[0], [0, 3], [5], []]
    metrics = evaluate(ScoreTable(table), _batches(labels, 0, 4, 3), _identity, 6, torch.device("cpu"))
    assert metrics["images"] == 3
    assert metrics["precision_at_1"] == pytest.approx(1 / 3)
    # image 1: label 0 (0.1) is 2nd of 6; label 3 (0.0) ties with three other zeros for the last three
    # places, so ask topk which it kept rather than assume a tie order.
    top5 = table[1].topk(5).indices.tolist()
    recall_1 = (0 in top5) / 2 + (3 in top5) / 2
    assert metrics["recall_at_5"] == pytest.approx((1 + recall_1 + 0) / 3)
    # Every image is ranked, the unlabelled one too (a negative for every label).
    # label 0: positives at 0.9 (1 image >= 0.9) and 0.1 (all 4 images >= 0.1, 2 positive) -> (1 + 2/4) / 2
    # label 3: one positive at 0.0, and all 4 images score >= 0.0 -> 1/4
    # label 5: one positive at 0.2, the only image >= 0.2 -> 1
    assert metrics["mAP"] == pytest.approx(((1 + 2 / 4) / 2 + 1 / 4 + 1.0) / 3)


@pytest.mark.parametrize("seed, levels", [(3, 6), (4, 2), (5, None)])
def test_map_equals_scikit_learn_ties_included(seed, levels):
    rng = np.random.default_rng(seed)
    # levels: integer scores from so few values that most are tied (2: nearly every image ties), or
    # continuous ones (None); 12 labels of which some have no positive image (left out of the mean).
    scores = (rng.integers(0, levels, size=(80, 12)) if levels else rng.normal(size=(80, 12))).astype(np.float32)
    labels = [sorted(set(rng.integers(0, 9, size=rng.integers(0, 4)).tolist())) for _ in range(80)]
    got = mean_average_precision(torch.from_numpy(scores), pack_labels(labels))
    assert got == pytest.approx(sklearn_map(scores, labels), abs=1e-12)


def test_labels_outside_the_vocabulary_are_ignored_and_no_labels_give_nan():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    metrics = evaluate(ScoreTable(table), _batches([[0, 7], [9]], 0, 2, 2), _identity, 2, torch.device("cpu"))
    assert metrics["images"] == 1 and metrics["precision_at_1"] == 1.0 and metrics["mAP"] == 1.0
    empty = evaluate(ScoreTable(table), [], _identity, 2, torch.device("cpu"))
    assert empty["images"] == 0 and np.isnan(empty["mAP"]) and np.isnan(empty["precision_at_1"])


def _rank(rank: int, init_file: str, table: torch.Tensor, labels: list[list[int]], cut: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    start, stop = (0, cut) if rank == 0 else (cut, len(labels))
    metrics = evaluate(ScoreTable(table), _batches(labels, start, stop, 4), _identity, table.shape[1],
                       torch.device("cpu"))
    with open(f"{out}.{rank}", "w") as f:
        json.dump(metrics, f)
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo file rendezvous")
def test_two_ranks_with_uneven_shares_give_the_single_process_metrics(tmp_path):
    rng = np.random.default_rng(5)
    table = torch.from_numpy(rng.normal(size=(30, 7)).astype(np.float32)).round(decimals=1)  # some ties
    labels = [sorted(set(rng.integers(0, 7, size=rng.integers(0, 3)).tolist())) for _ in range(30)]
    single = evaluate(ScoreTable(table), _batches(labels, 0, 30, 4), _identity, 7, torch.device("cpu"))
    # Rank 0 gets 5 batches (19 images), rank 1 three: a per-batch collective would hang here.
    mp.spawn(_rank, args=(str(tmp_path / "init"), table, labels, 19, str(tmp_path / "m")), nprocs=2, join=True)
    for rank in range(2):
        ranked = json.loads((tmp_path / f"m.{rank}").read_text())
        assert ranked["images"] == single["images"]
        for key in ("precision_at_1", "recall_at_5", "mAP"):
            assert ranked[key] == pytest.approx(single[key], abs=1e-12), key
    assert single["mAP"] == pytest.approx(sklearn_map(table.numpy(), labels), abs=1e-12)
