"""Hashtag-prediction metrics on held-out shards: precision@1, recall@5 and mean average precision.

- **precision@1**: the share of images whose top-scored hashtag is one of their hashtags;
- **recall@5**: per image, the share of its hashtags among the 5 top-scored, averaged over images;
- **mAP**: per hashtag present in the held-out set, the average precision of ranking all held-out
  images by that hashtag's score, averaged over those hashtags.

Images without a hashtag in the vocabulary are left out of precision@1 and recall@5; mAP ranks
them with the others, as a negative of every hashtag (scikit-learn's ``average_precision_score``
per hashtag with a positive, macro-averaged, is this definition exactly). The eval loader reads every
sample once across ranks, and ranks may get different numbers of batches, so nothing here runs a
collective per batch: each rank keeps its own sums and scores, and the collectives run once at the
end.

mAP is exact under DDP without moving the N x K score matrix. Average precision with ties resolved
per threshold (as scikit-learn computes it) is the mean, over a hashtag's positive images i with
score s_i, of ``TP(>= s_i) / N(>= s_i)``: positives scoring at least s_i over all images scoring at
least s_i. So (1) every rank's positives, (hashtag, score) pairs, a few per image, are gathered to
all ranks; (2) each rank counts, for every positive, its own images scoring at least as high on
that hashtag (one sort per hashtag column); (3) one all-reduce sums the counts. The scores stay
on the rank that computed them (N_r x K floats on the host: bound the set with ``eval.shards`` for a
very large vocabulary).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from data.loader.labels import multi_hot_targets

TOP_K = 5


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict[str, Any]], normalize: Callable[[torch.Tensor], torch.Tensor],
             num_classes: int, device: torch.device,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict[str, float]:
    """Metrics over all ranks' ``batches``; ``model`` must be the bare network (not DDP, whose
    forward runs collectives that ranks with fewer batches would never join). Call on all ranks."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # precision@1 hits, recall@5 sum, images
    scores, labels = [], []
    try:
        for batch in batches:
            batch_labels = batch["labels"].masked_fill(batch["labels"] >= num_classes, -1)
            with autocast():
                logits = model(normalize(batch["image"]))
            logits = logits.float()
            sums += _batch_sums(logits, multi_hot_targets(batch_labels, num_classes, device))
            scores.append(logits.cpu())
            labels.append(batch_labels)
    finally:
        model.train(was_training)
    if _distributed():
        dist.all_reduce(sums)
    hits, recall, images = sums.tolist()
    local_scores = torch.cat(scores) if scores else torch.zeros(0, num_classes)
    local_labels = torch.cat([_pad_width(x, max(l.shape[1] for l in labels)) for x in labels]) if labels \
        else torch.full((0, 1), -1, dtype=torch.long)
    average_precision = mean_average_precision(local_scores, local_labels, device)
    return {"precision_at_1": hits / images if images else float("nan"),
            "recall_at_5": recall / images if images else float("nan"),
            "mAP": average_precision, "images": int(images)}


def _batch_sums(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    per_image = targets.sum(dim=1)
    labelled = (per_image > 0).double()
    top = logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices
    hits = targets.gather(1, top).double()
    recall = hits.sum(dim=1) / per_image.double().clamp(min=1.0)
    return torch.stack([(hits[:, 0] * labelled).sum(), (recall * labelled).sum(), labelled.sum()])


def _pad_width(labels: torch.Tensor, width: int) -> torch.Tensor:
    if labels.shape[1] == width:
        return labels
    return torch.nn.functional.pad(labels, (0, width - labels.shape[1]), value=-1)


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor,
                           device: torch.device | None = None) -> float:
    """Exact mAP over all ranks' images (see the module docstring); ``scores`` N_r x K on the host,
    ``labels`` this rank's padded label ids (-1 pads). A collective when distributed."""
    rows, columns = torch.nonzero(labels >= 0, as_tuple=True)
    hashtags = labels[rows, columns]
    positive_scores = scores[rows, hashtags].float()
    hashtags, positive_scores = _all_positives(hashtags.numpy(), positive_scores.numpy())
    if len(hashtags) == 0:
        return float("nan")
    at_least = torch.from_numpy(_local_counts_at_least(scores, hashtags, positive_scores))
    if _distributed():
        at_least = at_least.to(device)
        dist.all_reduce(at_least)
    return _map_from_counts(hashtags, positive_scores, at_least.cpu().numpy())


def _all_positives(hashtags: np.ndarray, positive_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's (hashtag, score) positives, concatenated in rank order (identical on all ranks)."""
    if not _distributed():
        return hashtags, positive_scores
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (hashtags, positive_scores))
    return np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered])


def _local_counts_at_least(scores: torch.Tensor, hashtags: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each (hashtag, threshold): this rank's images whose score on that hashtag is >= threshold."""
    counts = np.zeros(len(hashtags), dtype=np.int64)
    if scores.shape[0] == 0:
        return counts
    matrix = scores.numpy()
    for hashtag in np.unique(hashtags):
        where = np.flatnonzero(hashtags == hashtag)
        column = np.sort(matrix[:, hashtag])
        counts[where] = len(column) - np.searchsorted(column, thresholds[where], side="left")
    return counts


def _map_from_counts(hashtags: np.ndarray, positive_scores: np.ndarray, at_least: np.ndarray) -> float:
    precisions = []
    for hashtag in np.unique(hashtags):
        where = np.flatnonzero(hashtags == hashtag)
        own = np.sort(positive_scores[where])
        true_at_least = len(own) - np.searchsorted(own, positive_scores[where], side="left")
        precisions.append(float(np.mean(true_at_least / at_least[where])))
    return float(np.mean(precisions))
