"""pretrain/schedule.py: linear scaling, warm-up, step decay at equally spaced points, cosine; all in images."""
from __future__ import annotations

import math

import copy

import pytest
import torch
from torch import nn

from data.loader.labels import multi_hot_targets, pack_labels
from pretrain.config import load_config
from pretrain.engine import Engine, Normalizer, Progress, StepSettings
from pretrain.loss import MultiLabelSoftmaxLoss
from pretrain.schedule import ImageScheduler, LRSchedule


def test_peak_lr_follows_the_linear_scaling_rule_from_the_config():
    optim = load_config(None, ["data.train=x", "optim.base_lr=0.1", "optim.total_images=1000"]).optim
    # 8 GPUs x 32 images x 2 accumulation steps = 512 images per step: 0.1 x 512 / 256
    assert LRSchedule.from_config(optim, 512).peak_lr == pytest.approx(0.2)
    assert LRSchedule.from_config(optim, 24 * 8).peak_lr == pytest.approx(0.075)


def test_warm_up_is_linear_in_images_from_zero_to_the_peak():
    schedule = LRSchedule(peak_lr=0.4, total_images=10_000, warmup_images=1_000, decay_steps=0)
    assert schedule.lr_at(0) == 0.0
    assert schedule.lr_at(250) == pytest.approx(0.1)
    assert schedule.lr_at(500) == pytest.approx(0.2)
    assert schedule.lr_at(999) == pytest.approx(0.4 * 999 / 1000)
    assert schedule.lr_at(1_000) == 0.4
    assert schedule.lr_at(9_999) == 0.4  # no decay points: constant after warm-up


def test_step_decay_halves_at_equally_spaced_points_after_warm_up():
    # 13 decays (the paper-style default) over 14,000 post-warm-up images: every 1,000 images.
    schedule = LRSchedule(peak_lr=1.0, total_images=15_000, warmup_images=1_000, kind="step",
                          decay_steps=13, decay_factor=0.5)
    assert schedule.decay_points() == [1_000 + 1_000 * i for i in range(1, 14)]
    assert schedule.lr_at(1_999) == 1.0
    assert schedule.lr_at(2_000) == 0.5
    assert schedule.lr_at(4_500) == 0.125
    assert schedule.lr_at(14_999) == 0.5 ** 13
    changes = [images for images in range(1_001, 15_000) if schedule.lr_at(images) != schedule.lr_at(images - 1)]
    assert changes == schedule.decay_points()


def test_cosine_goes_from_the_peak_to_zero_at_the_budget():
    schedule = LRSchedule(peak_lr=2.0, total_images=3_000, warmup_images=1_000, kind="cosine")
    assert schedule.lr_at(1_000) == pytest.approx(2.0)
    assert schedule.lr_at(2_000) == pytest.approx(1.0)
    assert schedule.lr_at(1_500) == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert schedule.lr_at(3_000) == pytest.approx(0.0, abs=1e-12)
    assert schedule.lr_at(5_000) == pytest.approx(0.0, abs=1e-12)  # past the budget: stays at 0
    lrs = [schedule.lr_at(i) for i in range(1_000, 3_001, 50)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def _optimizer() -> torch.optim.SGD:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))]},
                            {"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": 0.0}], lr=0.0)


def test_scheduler_sets_every_group_and_resumes_at_the_same_point():
    schedule = LRSchedule(peak_lr=0.8, total_images=1_024, warmup_images=256, decay_steps=3)
    optimizer = _optimizer()
    scheduler = ImageScheduler(optimizer, schedule)
    lrs = [scheduler.step(images) for images in range(64, 1_025, 64)]  # global batch 64
    assert lrs[0] == pytest.approx(0.2)  # set after the first step, for the second
    assert lrs[3] == pytest.approx(0.8)  # the peak, from the fifth step on
    assert lrs[-1] == pytest.approx(0.1)
    assert [g["lr"] for g in optimizer.param_groups] == [lrs[-1], lrs[-1]]
    # Stop half-way, restore into fresh objects: the lr continues where it was.
    half = ImageScheduler(_optimizer(), schedule)
    for images in range(64, 513, 64):
        half.step(images)
    state = half.state_dict()
    resumed_optimizer = _optimizer()
    resumed = ImageScheduler(resumed_optimizer, schedule)
    resumed.load_state_dict(state)
    assert resumed.images_seen == 512
    assert [g["lr"] for g in resumed_optimizer.param_groups] == [pytest.approx(lrs[7])] * 2
    assert [resumed.step(images) for images in range(576, 1_025, 64)] == lrs[8:]


def test_the_scheduler_sets_the_lr_at_zero_images_when_built():
    """The first optimiser step runs at lr_at(0), not at whatever lr the optimiser was built with
    (pretraining and fine-tuning build it with 0)."""
    optimizer = _optimizer()
    ImageScheduler(optimizer, LRSchedule(peak_lr=0.3, total_images=1_000, decay_steps=0))
    assert [g["lr"] for g in optimizer.param_groups] == [0.3, 0.3]
    warm = _optimizer()
    ImageScheduler(warm, LRSchedule(peak_lr=0.3, total_images=1_000, warmup_images=100))
    assert [g["lr"] for g in warm.param_groups] == [0.0, 0.0]


def test_the_first_engine_step_moves_the_weights_by_minus_lr_at_zero_times_the_gradient():
    """Through the real engine step with plain SGD (no momentum, no weight decay, built with lr 0
    as the trainer builds it): the update of step 1 is -lr_at(0) x the gradient of that batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    before = copy.deepcopy(model)
    schedule = LRSchedule(peak_lr=0.5, total_images=1_000, decay_steps=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.0, weight_decay=0.0, fused=True)
    engine = Engine(model, optimizer, MultiLabelSoftmaxLoss(), StepSettings(5), torch.device("cpu"),
                    ImageScheduler(optimizer, schedule))
    images = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = [[0], [1, 2], [3], [4, 0]]
    engine.step([{"image": images, "labels": pack_labels(labels)}], Progress(), global_batch=4)
    # The oracle gradient: plain autograd on an untouched copy, same batch and loss.
    targets = multi_hot_targets(pack_labels(labels), 5, torch.device("cpu"))
    MultiLabelSoftmaxLoss()(before(Normalizer(torch.device("cpu"))(images)), targets).backward()
    assert schedule.lr_at(0) == 0.5
    for updated, original in zip(model.parameters(), before.parameters()):
        assert original.grad.abs().max() > 0
        torch.testing.assert_close(updated.detach() - original.detach(), -schedule.lr_at(0) * original.grad)


def test_scheduler_state_loads_with_weights_only(tmp_path):
    scheduler = ImageScheduler(_optimizer(), LRSchedule(peak_lr=0.1, total_images=100, kind="cosine"))
    scheduler.step(40)
    torch.save(scheduler.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert state["images_seen"] == 40 and state["schedule"]["kind"] == "cosine"
