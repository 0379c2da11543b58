"""transfer/linear.py: the logistic-regression probe converges to the regularised optimum, holds out
a stratified slice of the training set, and reports every weight decay it tried."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from data.errors import UserError
from transfer.linear import choose_weight_decay, fit_logistic, holdout_split, probe


def _blobs(n_per_class: int, centres: torch.Tensor, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(n_per_class)
    # Features on a wild scale and offset, as pooled ReLU features are: standardisation must cope.
    x = (centres[labels] + noise * torch.randn(len(labels), centres.shape[1], generator=g)) * 40 + 7
    return x, labels


CENTRES = torch.tensor([[2.0, 0, 0, 0, 0, 0], [0, 2.0, 0, 0, 0, 0], [0, 0, 2.0, 0, 0, 0], [0, 0, 0, 2.0, 0, 0]])


def test_fit_reaches_the_regularised_optimum():
    x, y = _blobs(30, CENTRES, noise=1.0, seed=0)
    fit = fit_logistic(x, y, 4, weight_decay=1e-2, max_iter=300)
    # At the optimum the gradient of the convex objective (in standardised space) vanishes.
    weight = fit.weight.double().requires_grad_()
    bias = fit.bias.double().requires_grad_()
    z = (x.double() - fit.mean.double()) / fit.std.double()
    loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * 1e-2 * weight.pow(2).sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4
    assert fit.final_loss == pytest.approx(loss.item(), rel=1e-5)
    # The folded fc layer is the same map on raw features.
    weight_raw, bias_raw = fit.folded()
    assert torch.allclose(x @ weight_raw.T + bias_raw, fit.logits(x), atol=1e-3)


def test_heavier_penalty_shrinks_the_weights():
    x, y = _blobs(30, CENTRES, noise=1.0, seed=1)
    norms = [fit_logistic(x, y, 4, wd, 60).weight.norm().item() for wd in (1e-4, 1e-2, 1.0)]
    assert norms[0] > norms[1] > norms[2]


def test_holdout_is_stratified_seeded_and_disjoint():
    y = torch.tensor([0] * 20 + [1] * 10 + [2] * 3)
    fit_idx, held_idx = holdout_split(y, 0.2, seed=5)
    assert sorted(fit_idx.tolist() + held_idx.tolist()) == list(range(33))
    assert torch.bincount(y[held_idx], minlength=3).tolist() == [4, 2, 1]
    again_fit, again_held = holdout_split(y, 0.2, seed=5)
    assert torch.equal(held_idx, again_held) and not torch.equal(held_idx, holdout_split(y, 0.2, seed=6)[1])
    with pytest.raises(UserError, match="too small"):
        holdout_split(torch.tensor([0, 1, 2]), 0.2, seed=0)


def test_weight_decay_grid_is_reported_and_the_probe_generalises():
    # Fixed seeds; 4 Gaussian blobs 2.83 apart with unit noise: the Bayes accuracy is 82.3% (Monte
    # Carlo, 2M draws). A probe fitted on 100 images per class loses a little to estimation; on 800
    # fresh images the standard error is 1.4 points, so [76, 87] is the Bayes rate -6 / +3 SE.
    x, y = _blobs(100, CENTRES, noise=1.0, seed=2)
    val_x, val_y = _blobs(200, CENTRES, noise=1.0, seed=3)
    best, table = choose_weight_decay(x, y, 4, [1e-5, 1e-2, 10.0], 0.2, 60, seed=0)
    assert [row["weight_decay"] for row in table] == [1e-5, 1e-2, 10.0]
    assert best == max(table, key=lambda r: (r["top1"], r["top5"], r["weight_decay"]))["weight_decay"]
    fit, outcome = probe(x, y, val_x, val_y, 4, [1e-5, 1e-2, 10.0], 0.2, 60, seed=0)
    assert outcome["weight_decay"] == best and outcome["val_images"] == 800
    assert 76.0 <= outcome["val"]["top1"] <= 87.0
    assert outcome["grid"] == table
