"""Classification evaluation: top-1 / top-5 exact under DDP, per-class accuracy, a confusion plot,
and a JSON result file.

Every rank scores its exact share of the dataset (:class:`transfer.datasets.ExactShardSampler`: no
padding, no duplicates, ranks may differ by one sample) and keeps sums locally; after the loop ONE
all-reduce adds the integer tallies (the confusion matrix, whose diagonal and row sums give top-1
and the per-class totals, plus top-5 hits per class), and one all-gather collects the per-sample
records (index, target, top-5), which double as the check that every scored index appears exactly
once. Skipped images (unreadable, corrupt, too many pixels) are counted by reason and excluded from
the denominator; the result file says how many.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.atomic_write import write_json, write_text
from data.errors import UserError
from data.figure_png import save_figure
from pretrain.engine import Normalizer
from transfer.datasets import ExactShardSampler, LabelledImages, collate, skip_report

TOPK = (1, 5)
RESULT_FILE = "eval.json"
PLOT_FILE = "eval_per_class.png"
PREDICTIONS_FILE = "predictions.csv"


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = TOPK) -> torch.Tensor:
    """``N x len(ks)`` bool: whether each sample's target is among its ``k`` highest logits. ``k``
    larger than the number of classes counts as all classes; a target scored ``-inf`` (a zero-shot
    class no hashtag maps to) is never a hit, even when fewer than ``k`` classes score higher."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be N x C and targets N, got {tuple(logits.shape)} and {tuple(targets.shape)}")
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = (top == targets[:, None]) & ~torch.isneginf(logits.gather(1, targets[:, None]))
    return torch.stack([hits[:, :k].any(dim=1) for k in ks], dim=1)


@dataclass
class Tally:
    """One rank's integer sums plus its per-sample records (see the module doc)."""

    num_classes: int
    confusion: torch.Tensor = field(init=False)  # [target, prediction]
    top5_hits: torch.Tensor = field(init=False)  # per target class
    records: list[tuple[int, int, list[int]]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.top5_hits = torch.zeros(self.num_classes, dtype=torch.int64)

    def add(self, indices: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits, targets = logits.detach().float().cpu(), targets.cpu()
        top = logits.topk(min(5, self.num_classes), dim=1).indices
        hits = topk_correct(logits, targets, TOPK)
        flat = targets * self.num_classes + top[:, 0]
        self.confusion += torch.bincount(flat, minlength=self.num_classes ** 2).view_as(self.confusion)
        self.top5_hits += torch.bincount(targets[hits[:, 1]], minlength=self.num_classes)
        self.records.extend(zip(indices.tolist(), targets.tolist(), top.tolist()))

    def reduce(self) -> "Tally":
        """The sum over ranks (a collective: call on every rank; one all-reduce, one all-gather)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        flat = torch.cat([self.confusion.flatten(), self.top5_hits])
        if dist.get_backend() == "nccl":
            flat = flat.cuda()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.cpu()
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self.records, self.skipped))
        total = Tally(self.num_classes)
        total.confusion = flat[: self.num_classes ** 2].view(self.num_classes, self.num_classes)
        total.top5_hits = flat[self.num_classes ** 2:]
        for records, skipped in parts:
            total.records.extend(records)
            total.skipped.extend(skipped)
        return total


@dataclass
class EvalResult:
    top1: float
    top5: float
    scored: int
    per_class: list[dict[str, Any]]
    confusion: np.ndarray
    skips: dict[str, Any]
    records: list[tuple[int, int, list[int]]]

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "scored": self.scored, "skipped": self.skips,
                "per_class": self.per_class}


def summarise(tally: Tally, dataset: LabelledImages) -> EvalResult:
    """Accuracies from a reduced tally, after checking that every index was scored or skipped once."""
    seen = [index for index, _, _ in tally.records] + [index for index, _ in tally.skipped]
    if len(seen) != len(set(seen)) or len(seen) != len(dataset):
        raise RuntimeError(f"evaluation covered {len(set(seen))} distinct of {len(dataset)} samples with "
                           f"{len(seen) - len(set(seen))} duplicates: the sampler is broken")
    totals = tally.confusion.sum(dim=1)
    scored = int(totals.sum())
    if scored == 0:
        raise UserError(f"{dataset.description}: every image was skipped ({skip_report(tally.skipped, dataset.names).counts}); "
                        "nothing to evaluate")
    correct = tally.confusion.diagonal()
    per_class = [{"class": name, "images": int(n), "top1": _ratio(c, n), "top5": _ratio(h, n)}
                 for name, n, c, h in zip(dataset.classes, totals, correct, tally.top5_hits)]
    return EvalResult(100.0 * int(correct.sum()) / scored, 100.0 * int(tally.top5_hits.sum()) / scored, scored,
                      per_class, tally.confusion.numpy(), skip_report(tally.skipped, dataset.names).to_dict(),
                      sorted(tally.records))


def _ratio(hits: torch.Tensor, total: torch.Tensor) -> float | None:
    return 100.0 * int(hits) / int(total) if int(total) else None


def eval_loader(dataset: LabelledImages, batch_size: int, workers: int, rank: int, world_size: int) -> DataLoader:
    """This rank's exact share of ``dataset``, in index order."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ExactShardSampler(len(dataset), rank, world_size),
                      num_workers=workers, collate_fn=collate, persistent_workers=False)


@torch.inference_mode()
def evaluate_model(model: nn.Module, dataset: LabelledImages, *, device: torch.device, rank: int = 0,
                   world_size: int = 1, batch_size: int = 64, workers: int = 0, channels_last: bool = False,
                   autocast_dtype: torch.dtype | None = None,
                   head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> EvalResult:
    """Score ``model`` (``head`` maps its outputs to class logits, e.g. zero-shot) on ``dataset``;
    every rank calls it and every rank gets the same result."""
    model.eval()
    normalise = Normalizer(device, channels_last)
    tally = Tally(len(dataset.classes))
    loader = eval_loader(dataset, batch_size, workers, rank, world_size)
    for batch in tqdm(loader, desc="evaluate", disable=rank != 0, unit="batch"):
        tally.skipped.extend(batch.skipped)
        if len(batch.indices) == 0:
            continue
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(normalise(batch.images))
        tally.add(batch.indices, head(logits.float()) if head is not None else logits, batch.targets)
    return summarise(tally.reduce(), dataset)


def write_results(result: EvalResult, dataset: LabelledImages, run_dir: Path, settings: dict[str, Any], *,
                  plot: bool = True, predictions: bool = True, name: str = RESULT_FILE) -> Path:
    """``<run_dir>/eval.json`` (result + settings: transform, interpolation, init, model), the
    predictions CSV and the plot; all atomic. Call on rank 0 only."""
    path = Path(run_dir) / name
    files = {}
    if predictions:
        files["predictions"] = str(write_predictions(result, dataset, Path(run_dir) / PREDICTIONS_FILE))
    if plot:
        files["plot"] = str(plot_per_class(result, Path(run_dir) / PLOT_FILE))
    write_json(path, {**result.to_dict(), "dataset": dataset.description, "num_images": len(dataset),
                      "classes": dataset.classes, "settings": settings, "files": files})
    return path


def write_predictions(result: EvalResult, dataset: LabelledImages, path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "image", "target", "top1_correct", "top5"])
    for index, target, top in result.records:
        writer.writerow([index, dataset.names[index], dataset.classes[target], int(top[0] == target),
                         " ".join(dataset.classes[c] for c in top)])
    write_text(path, buffer.getvalue())
    return path


def plot_per_class(result: EvalResult, path: Path, max_confusion: int = 40) -> Path:
    """Sorted per-class top-1 (left) and the row-normalised confusion matrix (right; with many
    classes, the ``max_confusion`` least accurate ones)."""
    import matplotlib  # noqa: PLC0415 - only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    rows = [(c["class"], c["top1"]) for c in result.per_class if c["top1"] is not None]
    rows.sort(key=lambda r: r[1])
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    left.plot(range(len(rows)), [r[1] for r in rows], marker="o" if len(rows) <= 50 else None)
    left.axhline(result.top1, color="grey", linestyle="--", label=f"overall top-1 {result.top1:.2f}%")
    left.set(xlabel="classes, by accuracy", ylabel="top-1 (%)", ylim=(0, 100.5), title="per-class top-1")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(loc="lower right")
    shown = _worst_classes(result, max_confusion)
    matrix = result.confusion[np.ix_(shown, shown)].astype(float)
    matrix /= np.maximum(result.confusion[shown].sum(axis=1, keepdims=True), 1)
    image = right.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    names = [result.per_class[i]["class"] for i in shown]
    if len(shown) <= 40:
        right.set_xticks(range(len(shown)), names, rotation=90, fontsize=7)
        right.set_yticks(range(len(shown)), names, fontsize=7)
    subset = "" if len(shown) == len(result.per_class) else f" ({len(shown)} least accurate classes)"
    right.set(xlabel="predicted", ylabel="true", title=f"confusion, row-normalised{subset}")
    fig.colorbar(image, ax=right, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _worst_classes(result: EvalResult, limit: int) -> list[int]:
    scored = [i for i, c in enumerate(result.per_class) if c["top1"] is not None]
    if len(scored) <= limit:
        return scored
    return sorted(sorted(scored, key=lambda i: result.per_class[i]["top1"])[:limit])
