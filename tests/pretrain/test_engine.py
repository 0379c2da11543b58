"""pretrain/engine.py: gradient accumulation. ``optim.grad_accum = 2`` over micro-batches of B images
gives the update of one batch of 2B, through the real ``Engine.run`` (loss / k per micro-batch, DDP's
``no_sync`` on all but the last micro-batch, fused SGD with Nesterov momentum and weight decay).

The network is the built-in ResNeXt with GroupNorm in place of BN: GroupNorm normalises each image
on its own, so splitting a batch cannot change the forward pass (BN's batch statistics would), and
the comparison isolates the accumulation arithmetic. Every image carries a label, as the loader
guarantees (unlabelled samples are skipped): the softmax loss averages over labelled rows, so the
mean of two half-batch means is the mean over the whole batch.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from data.loader.labels import pack_labels
from pretrain.engine import Engine, Progress, StepSettings
from pretrain.loss import MultiLabelSoftmaxLoss
from pretrain.model import create_model, param_groups
from pretrain.schedule import ImageScheduler, LRSchedule

CLASSES = 10
MICRO = 4  # B
STEPS = 2
LR = 0.05


def _network() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnext_micro", CLASSES, zero_init_residual=False,
                        norm_layer=lambda channels: nn.GroupNorm(4, channels))


def _engine(model: nn.Module, grad_accum: int) -> Engine:
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=LR, momentum=0.9, nesterov=True, fused=True)
    scheduler = ImageScheduler(optimizer, LRSchedule(peak_lr=LR, total_images=10_000, decay_steps=0))
    settings = StepSettings(CLASSES, grad_accum=grad_accum)
    return Engine(model, optimizer, MultiLabelSoftmaxLoss(), settings, torch.device("cpu"), scheduler)


def _images_and_labels(count: int) -> tuple[torch.Tensor, list[list[int]]]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = [sorted(set(torch.randint(0, CLASSES, (int(torch.randint(1, 4, (1,), generator=generator)),),
                                       generator=generator).tolist())) for _ in range(count)]
    return images, labels


def _batches(images: torch.Tensor, labels: list[list[int]], size: int) -> list[dict]:
    return [{"image": images[i:i + size], "labels": pack_labels(labels[i:i + size])}
            for i in range(0, len(images), size)]


def _train(model: nn.Module, grad_accum: int, batch_size: int) -> tuple[Engine, Progress]:
    images, labels = _images_and_labels(STEPS * 2 * MICRO)
    engine = _engine(model, grad_accum)
    progress = Progress()
    engine.run(iter(_batches(images, labels, batch_size)), STEPS, progress, global_batch=2 * MICRO)
    return engine, progress


@pytest.mark.parametrize("wrapper", ["none", "ddp"])
def test_two_accumulated_micro_batches_give_the_update_of_one_batch_twice_as_large(wrapper, tmp_path):
    whole_model = _network()
    split_network = copy.deepcopy(whole_model)
    split_model: nn.Module = split_network
    if wrapper == "ddp":  # one gloo rank: the no_sync path of the first micro-batch runs for real
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        split_model = nn.parallel.DistributedDataParallel(split_network)
    try:
        whole, whole_progress = _train(whole_model, grad_accum=1, batch_size=2 * MICRO)
        split, split_progress = _train(split_model, grad_accum=2, batch_size=MICRO)
    finally:
        if wrapper == "ddp":
            dist.destroy_process_group()
    assert (split_progress.step, split_progress.images_seen) == (whole_progress.step, whole_progress.images_seen) \
        == (STEPS, STEPS * 2 * MICRO)
    moved = 0.0
    initial = _network().state_dict()
    for (name, a), b in zip(whole_model.state_dict().items(), split_network.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, (a - initial[name]).abs().max().item())
    assert moved > 1e-3, "the steps changed the weights (a zero lr would make the comparison empty)"
    for group_a, group_b in zip(whole.optimizer.param_groups, split.optimizer.param_groups):
        for a, b in zip(group_a["params"], group_b["params"]):
            torch.testing.assert_close(split.optimizer.state[b]["momentum_buffer"],
                                       whole.optimizer.state[a]["momentum_buffer"], rtol=1e-5, atol=1e-6)
    # The logged loss is the mean over the step's images either way.
    assert split.read_stats()["loss"] == pytest.approx(whole.read_stats()["loss"], rel=1e-5)
