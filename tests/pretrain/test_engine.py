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
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from data.loader.labels import pack_labels
from pretrain.engine import BufferGuard, Engine, Progress, StepSettings
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


# -- the non-finite guard's buffers ---------------------------------------------------------------

class _Counter(TorchDispatchMode):
    """Counts the aten ops dispatched (on a GPU each is at least one kernel launch)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _guard_ops(name: str) -> tuple[int, int]:
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        model = create_model(name, CLASSES)
    buffers = list(model.buffers())
    guard, skipped = BufferGuard(buffers), torch.zeros((), dtype=torch.bool, device="meta")
    with _Counter() as counter:
        guard.save()
        guard.restore_if(skipped)
    return len(buffers), counter.ops


def test_the_buffer_guard_costs_the_same_few_ops_whatever_the_number_of_bn_layers():
    micro_buffers, micro_ops = _guard_ops("resnext_micro")
    big_buffers, big_ops = _guard_ops("resnext101_32x4d")
    assert (micro_buffers, big_buffers) == (3 * 17, 3 * 104)  # running mean, var and count per BN
    # Two dtypes (float32 statistics, int64 counts), four ops each: a copy (cat) before the step; a
    # cat, a where and one foreach copy after it. A copy and a where per buffer would be 625 ops.
    assert micro_ops == big_ops == 8


def test_the_buffer_guard_puts_back_every_buffer_of_a_skipped_step_and_keeps_a_finite_ones():
    module = nn.BatchNorm2d(3)
    module.register_buffer("strided", torch.arange(12.0).view(3, 4).t())  # non-contiguous: no flat view
    assert not module.strided.is_contiguous()
    guard = BufferGuard(list(module.buffers()))

    def bump() -> None:
        for buffer in module.buffers():
            buffer.add_(torch.ones((), dtype=buffer.dtype))  # in place, as BN's forward does

    for skipped in (True, False):
        saved = [buffer.clone() for buffer in module.buffers()]
        guard.save()
        bump()
        bumped = [buffer.clone() for buffer in module.buffers()]
        guard.restore_if(torch.tensor(skipped))
        expected = saved if skipped else bumped
        assert all(torch.equal(a, b) for a, b in zip(module.buffers(), expected)), skipped


# -- on a GPU -------------------------------------------------------------------------------------

def _cuda_engine(model: nn.Module, autocast: torch.dtype | None, channels_last: bool, lr: float = LR) -> Engine:
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=lr, momentum=0.9, nesterov=True, fused=True)
    scheduler = ImageScheduler(optimizer, LRSchedule(peak_lr=lr, total_images=10_000, decay_steps=0))
    settings = StepSettings(CLASSES, autocast_dtype=autocast, channels_last=channels_last)
    return Engine(model, optimizer, MultiLabelSoftmaxLoss(), settings, torch.device("cuda"), scheduler)


def _pinned_batch(count: int) -> dict:
    images, labels = _images_and_labels(count)
    return {"image": images.pin_memory(), "labels": pack_labels(labels).pin_memory()}


@pytest.mark.cuda
def test_bf16_channels_last_steps_on_cuda_track_fp32_and_fit_a_batch():
    """bf16 autocast + channels_last, as the GPU recipes train: the first loss within 2 % of fp32's,
    a fixed batch fitted (loss down by a third in 30 steps) as in fp32, weights kept channels_last."""
    torch.manual_seed(0)
    template = create_model("resnext_micro", CLASSES, zero_init_residual=False)
    batch = _pinned_batch(16)
    losses = {}
    for name, autocast, channels_last in (("fp32", None, False), ("bf16", torch.bfloat16, True)):
        model = copy.deepcopy(template).cuda()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        engine, progress = _cuda_engine(model, autocast, channels_last), Progress()
        losses[name] = []
        for _ in range(30):
            engine.step([batch], progress, 16)
            losses[name].append(engine.read_stats()["loss"])
            engine.reset_stats()
        if channels_last:
            assert engine.normalize(batch["image"]).is_contiguous(memory_format=torch.channels_last)
            assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for name, values in losses.items():
        assert all(math.isfinite(v) for v in values), name
        assert values[-1] < 0.67 * values[0], (name, values[0], values[-1])
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=0.02)


@pytest.mark.cuda
def test_a_non_finite_step_on_cuda_leaves_weights_momentum_and_bn_statistics_untouched():
    """The device-side skip (fused SGD's found_inf, the buffer guard) on CUDA in bf16 + channels_last,
    with no host synchronisation in the skipped step."""
    torch.manual_seed(0)
    model = create_model("resnext_micro", CLASSES).cuda().to(memory_format=torch.channels_last)
    engine, progress = _cuda_engine(model, torch.bfloat16, True), Progress()
    engine.step([_pinned_batch(8)], progress, 8)  # a finite step: momentum buffers exist from here on
    with torch.no_grad():
        model.fc.weight.mul_(1e38)  # the logits overflow: loss and gradients become non-finite
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = [state["momentum_buffer"].clone() for state in engine.optimizer.state.values()]
    bad = _pinned_batch(8)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation inside the step raises
    try:
        engine.step([bad], progress, 8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"a skipped step changed {changed}"
    assert all(torch.equal(a, state["momentum_buffer"]) for a, state in zip(momentum, engine.optimizer.state.values()))
    stats = engine.read_stats()
    assert stats["nonfinite_steps"] == 1 and stats["consecutive_nonfinite"] == 1
