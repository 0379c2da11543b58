"""The training step and the hot loop: uint8 batches in, one SGD step per ``grad_accum`` micro-batches.

One optimiser step, all on the device and without a host synchronisation:

1. each micro-batch's uint8 images are copied (non-blocking, from pinned memory on CUDA) and
   normalised there with the ImageNet mean/std (optionally into channels_last); the label index
   lists become the dense multi-hot target by one scatter;
2. forward and loss under autocast (bf16 on CUDA and CPU, or fp16 with a gradient scaler), backward;
   DDP's gradient all-reduce runs on the final micro-batch only (``no_sync`` on the others);
3. the global gradient norm is computed (and clipped when configured); a non-finite norm, which is
   the same on every rank after the all-reduce, sets a device-side flag that fused SGD reads to skip
   the update: weights and momentum stay as they were, the buffers the forward passes changed (BN
   running statistics) are put back from a copy taken before them (:class:`BufferGuard`, a fixed
   handful of kernels whatever the number of buffers), and the step is counted;
4. the lr for the images seen after the step is set.

Loss, grad norm and the non-finite counters accumulate in device tensors; :meth:`Engine.read_stats`
is the only place that copies them to the host, and the loop calls it at log steps only.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from data.loader.labels import multi_hot_targets
from pretrain.schedule import ImageScheduler

# torchvision's ImageNet statistics, on the 0..255 scale of the uint8 batches.
MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class Normalizer:
    """uint8 ``N x 3 x H x W`` on the host -> normalised float on the device."""

    def __init__(self, device: torch.device, channels_last: bool = False) -> None:
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(MEAN_255, device=device).view(1, 3, 1, 1)
        self.inv_std = 1.0 / torch.tensor(STD_255, device=device).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).to(memory_format=self.memory_format)
        return (images.float() - self.mean) * self.inv_std


class BufferGuard:
    """A copy of a module's buffers taken before a step, put back if the step is skipped.

    BN updates its running statistics in the forward pass, before anyone knows whether the step is
    finite: a skipped step must restore them, or one inf activation would poison them for good.
    ResNeXt-101 has 312 such buffers (running mean, variance and batch count of 104 BNs); a copy and
    a ``torch.where`` per buffer would cost over 300 kernel launches a step, a sixth of the ops an
    eager step dispatches. Here the buffers of each dtype are read as one flat tensor (``torch.cat``
    of flat views, which alias the buffers) and written back with one foreach copy: saving and
    restoring take a few kernels whatever the model, and no host synchronisation.
    """

    def __init__(self, buffers: Sequence[torch.Tensor]) -> None:
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        self._loose: list[tuple[torch.Tensor, torch.Tensor]] = []  # non-contiguous: no flat view aliases them
        for buffer in buffers:
            buffer = buffer.detach()
            if buffer.is_contiguous():
                groups.setdefault((buffer.dtype, buffer.device), []).append(buffer.view(-1))
            else:
                self._loose.append((buffer, buffer.clone()))
        # Per dtype: the flat views, the saved values, and a scratch tensor with its views made once
        # (splitting a tensor into 200 views costs more host time than the kernels themselves).
        self._groups = []
        for views in groups.values():
            sizes = [view.numel() for view in views]
            before, scratch = (torch.empty(sum(sizes), dtype=views[0].dtype, device=views[0].device)
                               for _ in range(2))
            self._groups.append((views, before, scratch, list(scratch.split(sizes))))

    @torch.no_grad()
    def save(self) -> None:
        for views, before, _, _ in self._groups:
            torch.cat(views, out=before)
        for buffer, before in self._loose:
            before.copy_(buffer)

    @torch.no_grad()
    def restore_if(self, skipped: torch.Tensor) -> None:
        """Put the saved values back if ``skipped`` (a 0-dim bool tensor, on the device) is true."""
        for views, before, scratch, scratch_views in self._groups:
            torch.cat(views, out=scratch)
            torch.where(skipped, before, scratch, out=scratch)
            torch._foreach_copy_(views, scratch_views)
        for buffer, before in self._loose:
            torch.where(skipped, before, buffer, out=buffer)

@dataclass(frozen=True)
class StepSettings:
    """What a training step needs besides the model, optimiser and loss."""

    num_classes: int
    grad_accum: int = 1
    clip_grad: float | None = None
    autocast_dtype: torch.dtype | None = None  # None: full precision
    channels_last: bool = False


@dataclass
class Progress:
    """Where the run is: optimiser steps done and images processed (all ranks together)."""

    step: int = 0
    images_seen: int = 0


class Engine:
    """The training step of one rank; ``model`` may be wrapped in DDP and/or torch.compile."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                 settings: StepSettings, device: torch.device, scheduler: ImageScheduler,
                 scaler: torch.amp.GradScaler | None = None, check_replicas: bool = False) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.settings, self.device, self.scheduler, self.scaler = settings, device, scheduler, scaler
        self.normalize = Normalizer(device, settings.channels_last)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        _zero_momentum_buffers(optimizer)
        buffers = list(model.buffers())
        # None: nothing to guard (or, in scripts/gpu_check.py, the guard's cost measured by its absence).
        self.buffer_guard: BufferGuard | None = BufferGuard(buffers) if buffers else None
        self.check_replicas = check_replicas
        self.replica_checks = 0
        self._zero = torch.zeros((), device=device)
        self.reset_stats()
        self.consecutive_nonfinite = self._zero.clone()  # survives reset_stats: a streak spans log steps
        self.nonfinite_total = self._zero.clone()

    # -- stats (device tensors; read at log steps only) ----------------------------------------

    def reset_stats(self) -> None:
        self.loss_sum = self._zero.clone()
        self.finite_steps = self._zero.clone()
        self.grad_norm_sum = self._zero.clone()
        self.steps = 0

    def read_stats(self) -> dict[str, float]:
        """Means since the last reset (one host sync); non-finite steps are left out of the means."""
        values = torch.stack([self.loss_sum, self.finite_steps, self.grad_norm_sum,
                              self.consecutive_nonfinite, self.nonfinite_total]).tolist()
        loss_sum, finite, norm_sum, consecutive, total = values
        return {"loss": loss_sum / finite if finite else float("nan"),
                "grad_norm": norm_sum / finite if finite else float("nan"),
                "nonfinite_steps": int(total), "consecutive_nonfinite": int(consecutive)}

    # -- one step ---------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.settings.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _micro_step(self, batch: dict[str, Any], sync: bool) -> torch.Tensor:
        images = self.normalize(batch["image"])
        targets = multi_hot_targets(batch["labels"], self.settings.num_classes, self.device)
        no_sync = getattr(self.model, "no_sync", None)
        with contextlib.nullcontext() if sync or no_sync is None else no_sync():
            with self.autocast():
                loss = self.loss_fn(self.model(images), targets)
            scaled = loss / self.settings.grad_accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach()

    def step(self, micro_batches: Sequence[dict[str, Any]], progress: Progress, global_batch: int) -> None:
        """One optimiser step over ``grad_accum`` micro-batches; advances ``progress``."""
        loss = self._zero.clone()
        if self.buffer_guard is not None:
            self.buffer_guard.save()
        last = len(micro_batches) - 1
        for i, batch in enumerate(micro_batches):
            loss += self._micro_step(batch, sync=i == last)
        loss /= len(micro_batches)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if self.settings.clip_grad is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.settings.clip_grad, norm, foreach=True)
        found_inf = (~torch.isfinite(norm)).float()
        self._optimizer_step(found_inf)
        if self.buffer_guard is not None:
            self.buffer_guard.restore_if(found_inf.bool())
        self.optimizer.zero_grad(set_to_none=True)
        self._accumulate(loss, norm, found_inf)
        progress.step += 1
        progress.images_seen += global_batch
        self.scheduler.step(progress.images_seen)
        if self.check_replicas:
            self._assert_replicas_equal(progress.step)

    def _optimizer_step(self, found_inf: torch.Tensor) -> None:
        if self.scaler is not None:  # fp16: the scaler sets (and removes) its own found_inf
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return
        # Fused SGD reads found_inf on the device and leaves weights and momentum untouched when it
        # is non-zero: a skipped step costs no host sync.
        self.optimizer.found_inf = found_inf  # type: ignore[attr-defined]
        self.optimizer.step()

    def _accumulate(self, loss: torch.Tensor, norm: torch.Tensor, found_inf: torch.Tensor) -> None:
        finite = 1.0 - found_inf
        self.loss_sum += torch.where(torch.isfinite(loss), loss, self._zero) * finite
        self.grad_norm_sum += torch.where(torch.isfinite(norm), norm, self._zero)
        self.finite_steps += finite
        self.nonfinite_total += found_inf
        self.consecutive_nonfinite.add_(found_inf).mul_(found_inf)
        self.steps += 1

    def _assert_replicas_equal(self, step: int) -> None:
        """Debug: every rank holds bit-identical parameters (one all-gather per step)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        checksum = torch.stack([p.detach().double().sum() for p in self.params]).cpu()
        gathered = [torch.empty_like(checksum) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, checksum)
        if any(not torch.equal(gathered[0], other) for other in gathered[1:]):
            raise RuntimeError(f"replicas diverged at step {step}: per-parameter sums differ across ranks")
        self.replica_checks += 1

    # -- the hot loop ------------------------------------------------------------------------------

    def run(self, batches: Iterator[dict[str, Any]], steps: int, progress: Progress,
            global_batch: int, on_step: Callable[[Progress], None] | None = None) -> "Interval":
        """``steps`` optimiser steps; returns the time spent waiting for data (the caller times the
        interval, after the host sync of its log step)."""
        self.model.train()
        waited = 0.0
        for _ in range(steps):
            micro_batches = []
            for _ in range(self.settings.grad_accum):
                before = time.perf_counter()
                micro_batches.append(next(batches))
                waited += time.perf_counter() - before
            self.step(micro_batches, progress, global_batch)
            if on_step is not None:
                on_step(progress)
        return Interval(steps, waited)


def _zero_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Zero momentum buffers where SGD has none yet (a fresh run; a resumed one has them).

    Fused SGD makes them with ``torch.empty_like`` on its first step and fills them only if that
    step is not skipped: a non-finite first step would leave uninitialised memory in them, and every
    later step would add it to the weights (seen on CPU: NaN weights after the next finite step).
    With dampening 0 a zero buffer gives exactly what the first step would store (0.9 x 0 + g = g).
    """
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if not group.get("momentum") or group.get("dampening"):  # dampening: the first step differs
            continue
        for param in group["params"]:
            state = optimizer.state[param]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)


@dataclass(frozen=True)
class Interval:
    steps: int
    data_wait_seconds: float
