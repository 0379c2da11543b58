"""The linear probe: L2-regularised multinomial logistic regression on frozen pooled features.

Features are standardised with the training set's mean and standard deviation (L-BFGS converges in
far fewer iterations on a well-conditioned problem), then the objective

    mean cross-entropy + weight_decay / 2 * ||W||^2      (no penalty on the bias)

is minimised full-batch with L-BFGS (strong-Wolfe line search), on CPU or the device: it is convex,
so the result does not depend on the seed. ``weight_decay`` is chosen on a held-out, per-class
stratified slice of the TRAINING set (every value of the grid is reported), then the classifier is
refitted on the whole training set and scored on the validation features. The standardisation is
folded back into an ordinary ``fc`` layer, so the probe is saved as a complete model
(``linear_model.safetensors``) that ``evaluate`` scores on raw images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data.errors import UserError
from transfer.evaluate import TOPK, topk_correct

MODEL_FILE = "linear_model.safetensors"
RESULT_FILE = "linear.json"


@dataclass
class LogisticFit:
    """``logits = standardise(x) @ weight.T + bias``."""

    weight: torch.Tensor  # C x D
    bias: torch.Tensor  # C
    mean: torch.Tensor  # D
    std: torch.Tensor  # D
    weight_decay: float
    final_loss: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the same map on raw features: an ordinary ``fc`` layer."""
        weight = self.weight / self.std
        return weight, self.bias - weight @ self.mean


def fit_logistic(features: torch.Tensor, targets: torch.Tensor, num_classes: int, weight_decay: float,
                 max_iter: int = 200, device: torch.device | str = "cpu") -> LogisticFit:
    """Minimise mean cross-entropy + weight_decay/2 ||W||^2 over (W, b) by full-batch L-BFGS, in
    float64 on CPU and float32 on a GPU (ImageNet-sized feature sets: 1.28M x 2048)."""
    device = torch.device(device)
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    x, targets = features.to(device, dtype), targets.to(device)
    mean = x.mean(dim=0)
    std = x.std(dim=0).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(mean)  # constant features stay 0
    z = (x - mean) / std
    del x  # the standardised copy is all the fit needs
    weight = torch.zeros(num_classes, z.shape[1], dtype=dtype, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=dtype, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, targets) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    with torch.no_grad():  # step() returns the first evaluation's loss; report the final one
        loss = F.cross_entropy(z @ weight.T + bias, targets) + 0.5 * weight_decay * weight.pow(2).sum()
    return LogisticFit(*(t.detach().float().cpu() for t in (weight, bias, mean, std)), weight_decay, float(loss))


def accuracy(fit: LogisticFit, features: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    hits = topk_correct(fit.logits(features), targets, TOPK).double().mean(dim=0) * 100
    return {f"top{k}": float(h) for k, h in zip(TOPK, hits)}


def holdout_split(targets: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, held-out indices): ``fraction`` of each class (rounded, at least one of every class
    with two or more samples) held out, chosen by a seeded permutation."""
    rng = np.random.default_rng(seed)
    labels = targets.numpy()
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        take = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.append(members[:take])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    fit_idx = np.setdiff1d(np.arange(len(labels)), held_idx)
    if len(held_idx) == 0:
        raise UserError("the training set is too small to hold out a slice for choosing the weight decay "
                        "(every class has one image); add images or give linear.weight_decays a single value")
    return torch.from_numpy(fit_idx), torch.from_numpy(held_idx)


def choose_weight_decay(features: torch.Tensor, targets: torch.Tensor, num_classes: int, grid: Sequence[float],
                        holdout_fraction: float, max_iter: int, seed: int,
                        device: torch.device | str = "cpu") -> tuple[float, list[dict[str, float]]]:
    """The grid value with the best held-out top-1 (ties: the larger, i.e. simpler, model), and the
    table of every value's held-out top-1 / top-5."""
    if len(grid) == 1:
        return float(grid[0]), []
    fit_idx, held_idx = holdout_split(targets, holdout_fraction, seed)
    table = []
    for wd in grid:
        fit = fit_logistic(features[fit_idx], targets[fit_idx], num_classes, wd, max_iter, device)
        table.append({"weight_decay": float(wd), **accuracy(fit, features[held_idx], targets[held_idx])})
    best = max(table, key=lambda row: (row["top1"], row["top5"], row["weight_decay"]))
    return best["weight_decay"], table


def probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
          num_classes: int, grid: Sequence[float], holdout_fraction: float, max_iter: int,
          seed: int, device: torch.device | str = "cpu") -> tuple[LogisticFit, dict[str, Any]]:
    """Choose the weight decay on a held-out slice of the training features, refit on all of
    them, score the validation features."""
    best, table = choose_weight_decay(train_x, train_y, num_classes, grid, holdout_fraction, max_iter, seed, device)
    fit = fit_logistic(train_x, train_y, num_classes, best, max_iter, device)
    return fit, {"weight_decay": best, "grid": table, "holdout_fraction": holdout_fraction,
                 "train": accuracy(fit, train_x, train_y), "val": accuracy(fit, val_x, val_y),
                 "train_images": len(train_y), "val_images": len(val_y), "final_loss": fit.final_loss}
