"""Full fine-tuning: a new head for the target classes, the whole network trained with SGD.

Pretraining's machinery does the work (reused, not copied): :class:`pretrain.engine.Engine` runs
the step (autocast, channels_last, DDP gradient sync, gradient clipping, non-finite steps skipped
on the device), :class:`pretrain.schedule.ImageScheduler` the warm-up + cosine/step schedule counted
in images (``epochs x train images``), :mod:`pretrain.checkpoint` the atomic checkpoints with RNG
state and resume, :class:`pretrain.tracking.Tracker` metrics.jsonl and wandb. What is specific
here: single-label targets (one-hot, optionally label-smoothed, through pretraining's softmax
cross-entropy, which on one-hot rows is ordinary cross-entropy), RandomResizedCrop + flip drawn per
(seed, epoch, image), an exact evaluation on data.val after every epoch, an optional EMA of the
weights, and the model files ``model-last.safetensors`` / ``model-best.safetensors`` (by val
top-1) / ``model-ema.safetensors``, which ``evaluate`` loads like any weights file.

Every rank takes the same number of batches per epoch (torch's DistributedSampler pads the last
few indices by repeating some, and the loader drops a ragged last batch), because every step
all-reduces gradients; evaluation needs no such padding and uses the exact sampler.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import safetensors.torch
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler

from data.atomic_write import write_bytes
from data.errors import UserError
from data.loader.labels import pack_labels
from data.loader.transforms import TrainTransform
from pretrain.checkpoint import load_resume, restore_training_state, save_checkpoint, training_state, unwrap_model
from pretrain.config import config_to_dict
from pretrain.distributed import all_reduce_mean
from pretrain.divergence import stopping_streak
from pretrain.engine import Engine, Progress, StepSettings
from pretrain.loss import MultiLabelSoftmaxLoss
from pretrain.model import param_groups
from pretrain.schedule import ImageScheduler, LRSchedule
from transfer.config import FinetuneConfig, TransferConfig
from transfer.datasets import Batch, LabelledImages, collate
from transfer.evaluate import EvalResult, evaluate_model
from transfer.init import build_model
from transfer.session import Session, session

LAST_MODEL, BEST_MODEL, EMA_MODEL = "model-last.safetensors", "model-best.safetensors", "model-ema.safetensors"


class SmoothedCrossEntropy(nn.Module):
    """Cross-entropy against ``(1 - eps) * one_hot + eps / K`` (pretraining's softmax loss does the
    arithmetic in float32 whatever autocast produced).

    ``torch.nn.functional.cross_entropy(..., label_smoothing=eps)`` gives the same loss and gradient
    to 1e-6 (tests/transfer/test_transfer_finetune.py), bit for bit at eps = 0, but not at eps > 0:
    this loss divides each row by its smoothed targets' float32 sum, which is not exactly 1. A
    10-epoch run drifts from those last bits (the demo's fine-tuning, seed 0: 34.0% top-1 with
    torch's instead of 35.0%), so the swap waits for a release that may change the figures."""

    def __init__(self, smoothing: float) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.inner = MultiLabelSoftmaxLoss()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.smoothing:
            targets = targets * (1.0 - self.smoothing) + self.smoothing / targets.shape[1]
        return self.inner(logits, targets)


def lr_schedule(config: FinetuneConfig, train_images: int, global_batch: int) -> LRSchedule:
    """The schedule in images: epochs and warm-up epochs times the whole steps of an epoch. The
    config keeps ``warmup_epochs < epochs``; the warm-up rounded to whole images stays below the
    total too (0.999 of a one-epoch run of 64 images warms up over 63)."""
    steps_per_epoch = max(1, train_images // global_batch)
    images_per_epoch = steps_per_epoch * global_batch
    total_images = config.epochs * images_per_epoch
    return LRSchedule(peak_lr=config.base_lr * global_batch / config.reference_batch, total_images=total_images,
                      warmup_images=min(round(config.warmup_epochs * images_per_epoch), total_images - 1),
                      kind=config.schedule, decay_steps=config.decay_steps, decay_factor=config.decay_factor)


class FineTuner:
    def __init__(self, s: Session) -> None:
        self.s, self.config = s, s.config
        self.train, self.val = self._datasets()
        self.num_classes = len(self.train.classes)
        self.global_batch = self.config.finetune.batch_size * s.dist.world_size
        if len(self.train) < self.global_batch:
            raise UserError(f"{self.train.description} has {len(self.train)} images, fewer than one global batch "
                            f"({self.global_batch}); lower finetune.batch_size")
        self.network = self._network()
        self.optimizer, self.scheduler = self._optimizer()
        self.scaler = torch.amp.GradScaler("cuda") if s.autocast_dtype is torch.float16 else None
        ema_decay = self.config.finetune.ema_decay
        self.ema = (AveragedModel(self.network, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
                    if ema_decay else None)
        self.progress, self.epoch, self.best = Progress(), 0, -1.0
        self._resume()
        self.start_step = self.progress.step
        self.model = self._wrap(self.network)
        self.engine = Engine(self.model, self.optimizer, SmoothedCrossEntropy(self.config.finetune.label_smoothing),
                             StepSettings(self.num_classes, 1, self.config.finetune.clip_grad, s.autocast_dtype,
                                          self.config.model.channels_last),
                             s.dist.device, self.scheduler, self.scaler)
        self.sampler, self.loader = self._train_loader()
        self.skipped: dict[str, int] = {}

    def _datasets(self) -> tuple[LabelledImages, LabelledImages]:
        data, ft = self.config.data, self.config.finetune
        augment = TrainTransform(size=data.image_size, scale=(ft.crop_scale_min, 1.0), max_pixels=data.max_pixels)
        train = self.s.train_dataset().with_transform(augment, seed=self.config.run.seed)
        return train, self.s.val_dataset(train.classes)

    def _network(self) -> nn.Module:
        network, report = build_model(self.config.model.name, self.num_classes, self.config.init,
                                      seed=self.config.run.seed)
        self.s.log(report.summary())
        memory_format = torch.channels_last if self.config.model.channels_last else torch.contiguous_format
        return network.to(self.s.dist.device, memory_format=memory_format)

    def _optimizer(self) -> tuple[torch.optim.Optimizer, ImageScheduler]:
        ft = self.config.finetune
        # Fused SGD honours the engine's device-side flag that skips a non-finite step.
        optimizer = torch.optim.SGD(param_groups(self.network, ft.weight_decay), lr=0.0, momentum=ft.momentum,
                                    nesterov=ft.nesterov and ft.momentum > 0, fused=True)
        return optimizer, ImageScheduler(optimizer, lr_schedule(ft, len(self.train), self.global_batch))

    def _train_loader(self) -> tuple[DistributedSampler, DataLoader]:
        dist_info = self.s.dist
        sampler = DistributedSampler(self.train, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=True, seed=self.config.run.seed)
        loader = DataLoader(self.train, batch_size=self.config.finetune.batch_size, sampler=sampler, drop_last=True,
                            num_workers=self.config.data.workers, collate_fn=collate,
                            pin_memory=dist_info.device.type == "cuda")
        return sampler, loader

    def _wrap(self, network: nn.Module) -> nn.Module:
        if not self.s.dist.distributed:
            return network
        device_ids = [self.s.dist.device.index] if self.s.dist.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(network, device_ids=device_ids, gradient_as_bucket_view=True)

    def _resume(self) -> None:
        resumed = load_resume(self.s.run_dir, self.config.finetune.resume, say=self.s.log)
        if resumed is None:
            return
        path, state = resumed.path, resumed.state
        restore_training_state(state, self.network, self.optimizer, self.scheduler, self.scaler,
                               rank=self.s.dist.rank, world_size=self.s.dist.world_size)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.progress = Progress(int(state["step"]), int(state["images_seen"]))
        self.epoch, self.best = int(state["epoch"]) + 1, float(state["best_top1"])
        self.s.log(f"resumed from {path}: epoch {self.epoch} of {self.config.finetune.epochs}, best top-1 {self.best:.2f}%")

    # -- the loop ---------------------------------------------------------------------------------

    def fit(self, stop_after_epochs: int | None = None) -> dict[str, Any]:
        """Train to ``finetune.epochs`` (or stop cleanly, checkpointed, after ``stop_after_epochs``)."""
        ft, s = self.config.finetune, self.s
        s.log(f"finetune {self.config.model.name}: {len(self.train)} train / {len(self.val)} val images, "
              f"{self.num_classes} classes, world size {s.dist.world_size}, global batch {self.global_batch}, "
              f"peak lr {self.scheduler.schedule.peak_lr:g}, {len(self.loader)} steps per epoch")
        result: dict[str, Any] = {}
        last = ft.epochs if stop_after_epochs is None else min(ft.epochs, stop_after_epochs)
        for epoch in range(self.epoch, last):
            self.epoch = epoch
            self.sampler.set_epoch(epoch)
            self.train.epoch = epoch  # workers are forked per epoch and copy it: fresh crops each epoch
            self.engine.reset_stats()
            start = time.perf_counter()
            batches, left = self._batches(), len(self.loader)
            while left:  # in stretches of tracking.log_every_steps, each ended by the non-finite check
                steps = min(left, self.config.tracking.log_every_steps)
                self.engine.run(batches, steps, self.progress, self.global_batch, self._on_step)
                left -= steps
                self._stop_if_diverging(epoch_ended=not left)
            stats = self.engine.read_stats()  # a host sync: the epoch's time is complete after it
            seconds = time.perf_counter() - start
            stats["loss"] = float(all_reduce_mean(torch.tensor(stats["loss"], dtype=torch.float64,
                                                               device=s.dist.device)))
            result = self._end_of_epoch(stats, seconds)
        s.tracker.summary({"finetune/best_top1": self.best, **result})
        return {"best_top1": self.best, **result}

    def _stop_if_diverging(self, epoch_ended: bool) -> None:
        """Stop with one line, before this epoch's evaluation and files, on a streak of non-finite steps
        (pretrain/divergence.py): the epoch's end counts as the end of the run, so an epoch with no
        finite step since the run started never writes a model file."""
        consecutive = self.engine.read_stats()["consecutive_nonfinite"]  # one host sync
        steps_run = self.progress.step - self.start_step
        streak = stopping_streak(consecutive, steps_run, self.config.finetune.max_nonfinite_steps, epoch_ended)
        if streak is None:
            return
        steps = (f"the last {streak} optimiser steps" if streak < steps_run
                 else f"every optimiser step of this run ({streak})")
        raise UserError(f"fine-tuning diverged: {steps} had a non-finite loss or gradient (epoch {self.epoch + 1}, "
                        f"step {self.progress.step}); nothing of this epoch was saved (the last checkpoint and model "
                        f"files in {self.s.run_dir} are those of earlier epochs); lower finetune.base_lr, set "
                        "finetune.clip_grad or lengthen finetune.warmup_epochs, then run again: it resumes")

    def _batches(self) -> Iterator[dict[str, Any]]:
        previous: Batch | None = None
        for batch in self.loader:
            for _, reason in batch.skipped:
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
            if len(batch.indices) < 2 and previous is not None:
                # Every image of this batch was unusable: repeat the last good one, since each rank
                # must take a step (the gradient all-reduce) and BN cannot train on < 2 images.
                self.skipped["batch_repeated"] = self.skipped.get("batch_repeated", 0) + 1
                batch = previous
            previous = batch
            yield {"image": batch.images, "labels": pack_labels([[t] for t in batch.targets.tolist()])}

    def _on_step(self, progress: Progress) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.network)

    def _evaluate(self, model: nn.Module) -> EvalResult:
        s, data = self.s, self.config.data
        return evaluate_model(model, self.val, device=s.dist.device, rank=s.dist.rank, world_size=s.dist.world_size,
                              batch_size=data.batch_size, workers=data.workers,
                              channels_last=self.config.model.channels_last, autocast_dtype=s.autocast_dtype)

    def _end_of_epoch(self, stats: dict[str, float], seconds: float) -> dict[str, Any]:
        s = self.s
        evaluation = self._evaluate(self.network)
        metrics: dict[str, Any] = {"epoch": self.epoch + 1, "loss": stats["loss"], "lr": self.scheduler.last_lr,
                                   "images": self.progress.images_seen, "val/top1": evaluation.top1,
                                   "val/top5": evaluation.top5, "grad_norm": stats["grad_norm"],
                                   "nonfinite_steps": stats["nonfinite_steps"], "epoch_seconds": seconds,
                                   **{f"skipped/{k}": v for k, v in sorted(self.skipped.items())}}
        if self.ema is not None:
            ema = self._evaluate(self.ema.module)
            metrics.update({"val_ema/top1": ema.top1, "val_ema/top5": ema.top5})
        improved = evaluation.top1 > self.best
        self.best = max(self.best, evaluation.top1)
        s.tracker.log(self.progress.step, metrics)
        state = training_state(self.network, self.optimizer, self.scheduler, self.scaler, step=self.progress.step,
                               config=config_to_dict(self.config))
        if s.dist.is_main:
            state.update(epoch=self.epoch, best_top1=self.best, ema=self.ema.state_dict() if self.ema else None)
            save_checkpoint(s.run_dir, state, self.progress.images_seen, self.config.finetune.keep_last)
            self._save_model(self.network, LAST_MODEL)
            if improved:
                self._save_model(self.network, BEST_MODEL)
            if self.ema is not None:
                self._save_model(self.ema.module, EMA_MODEL)
            s.log(f"epoch {self.epoch + 1}/{self.config.finetune.epochs}: loss {stats['loss']:.4f} val top-1 "
                  f"{evaluation.top1:.2f}% top-5 {evaluation.top5:.2f}% (best {self.best:.2f}%)")
        return {"last_top1": evaluation.top1, "last_top5": evaluation.top5}

    def _save_model(self, model: nn.Module, name: str) -> Path:
        state = {k: v.detach().cpu().contiguous() for k, v in unwrap_model(model).state_dict().items()}
        metadata = {"format": "openwsl-finetuned", "classes": json.dumps(self.train.classes),
                    "epoch": str(self.epoch + 1), "model": self.config.model.name}
        path = self.s.run_dir / name
        write_bytes(path, safetensors.torch.save(state, metadata=metadata))
        return path


def run_finetune(config: TransferConfig, stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Fine-tune ``init`` (or random init) on data.train, evaluating on data.val every epoch."""
    with session(config, "finetune") as s:
        return FineTuner(s).fit(stop_after_epochs)

