"""The pretraining losses: the paper's multi-label softmax, and per-label sigmoid BCE.

Both are called as ``loss(logits, targets)`` with ``logits`` N x K and ``targets`` the N x K 0/1
multi-hot rows of the batch (``data.loader.labels.multi_hot_targets``). Both compute in float32
(float64 stays float64) whatever autocast does to the logits, so a bf16 run sums its 17k-way
softmax in full precision.

- :class:`MultiLabelSoftmaxLoss` (the paper's choice): softmax over all K hashtags, cross-entropy
  against a target of 1/k on each of the row's k hashtags.
- :class:`MultiLabelSigmoidLoss`: K independent binary problems, the weaker alternative the paper
  compares against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _full_precision(logits: torch.Tensor,
                    targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the shapes; upcast half-precision inputs to float32 (float64 stays float64)."""
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(f"loss needs N x K logits and targets of the same shape, got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return logits.to(dtype), targets.to(dtype)


class MultiLabelSoftmaxLoss(nn.Module):
    """``-(1/k) * sum_{h in row} log softmax(logits)_h``, averaged over the rows with >= 1 label.

    Rows are normalised by their own sum, so 0/1 multi-hot rows and already-normalised 1/k rows
    give the same loss. A row without labels has no target
    distribution: it is left out of the mean, and a batch with none labelled gives 0 (with the
    graph still connected, so backward and DDP's gradient all-reduce run as usual).
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _full_precision(logits, targets)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            log_probs = F.log_softmax(logits, dim=1)
            labels_per_row = targets.sum(dim=1)
            labelled = (labels_per_row > 0).to(logits.dtype)
            # Unlabelled rows have all-zero targets, so their cross-entropy is 0 already; the
            # clamps keep 0/0 out without a host sync to count or index them.
            row_loss = -(targets * log_probs).sum(dim=1) / labels_per_row.clamp(min=1e-12)
            return (row_loss * labelled).sum() / labelled.sum().clamp(min=1.0)


class MultiLabelSigmoidLoss(nn.Module):
    """Per-label binary cross-entropy with logits, summed over the K labels, averaged over rows.

    The sum over labels (not a mean over all N x K entries) gives each logit the gradient
    ``(sigmoid(z) - y) / N``, the same form and scale as the softmax's ``(p - y/k) / N``, so both
    losses train at the same learning rate. What a K-way sigmoid needs besides is a head whose bias
    starts at the label prior (``loss.bias_init``, pretrain/label_prior.py): from zero bias every
    logit starts at p = 0.5 and the first steps kill most of the trunk's features, with a sum or a
    mean over K alike (on the demo world an earlier mean-over-K run and the summed one collapsed
    the same way; the K-fold smaller gradient was not the cause). Unlike the softmax, a row without
    labels is a valid all-negative example and counts.
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _full_precision(logits, targets)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            per_entry = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            return per_entry.sum(dim=1).mean()


LOSSES: dict[str, type[nn.Module]] = {
    "softmax": MultiLabelSoftmaxLoss,
    "sigmoid": MultiLabelSigmoidLoss,
}


def create_loss(name: str) -> nn.Module:
    """The loss named in the config (``loss.name``, which the schema restricts to these names):
    ``'softmax'`` (the paper's) or ``'sigmoid'``."""
    return LOSSES[name]()
