"""One pretraining run: set up (process group, seed, model, optimiser, resume), train to the image
budget with evaluation, checkpoints and logging at their cadences, then export the trunk.

Every rank runs :func:`train`; the collectives (checkpoint state, log-step reductions, evaluation
sums) happen at the same steps on every rank because all cadences are counted in optimiser steps
and images, which are the same everywhere. Only rank 0 writes files.

Resume (``checkpoint.resume: auto``) restores the model, optimiser, lr schedule, scaler, step,
images seen and each rank's RNG state from ``<run dir>/checkpoint-latest.pt``, so a job restarted by
``torchrun --max-restarts`` continues by itself. The data stream restarts at an epoch boundary: a
checkpoint taken at the end of a loader epoch resumes into exactly the batches an uninterrupted
run would have seen; one taken mid-epoch resumes into the next epoch's stream (shards are drawn
with replacement, so no image is owed and the schedule, counted in images, is unchanged).
"""
from __future__ import annotations

import os
import resource
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from data.errors import UserError
from data.loader.pipeline import Loader, LoaderConfig, create_loader
from data.loader.resampling import union_target_weights
from data.shards.directory import ShardSource, resolve_shards
from pretrain.checkpoint import (TRUNK_FILE, export_trunk, load_resume, restore_training_state, save_checkpoint,
                                 training_state, unwrap_model)
from pretrain.config import PretrainConfig, config_to_dict, save_resolved
from pretrain.distributed import DistInfo, barrier, cleanup, init_distributed, seed_everything
from pretrain.divergence import stopping_streak
from pretrain.engine import Engine, Interval, Progress, StepSettings
from pretrain.evaluation import evaluate
from pretrain.label_distribution import (plot_label_distribution, realised_vs_target, target_name,
                                         target_shares)
from pretrain.label_prior import prior_bias
from pretrain.loss import create_loss
from pretrain.model import create_model, head_name, param_groups
from pretrain.run_directory import claimed_run_dir
from pretrain.schedule import ImageScheduler, LRSchedule
from pretrain.tracking import Tracker, read_metrics

LABEL_PLOT = "label_distribution.png"
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DebugOptions:
    """Switches for tests and debugging (command-line flags, not part of the recipe)."""

    stop_after_images: int | None = None  # checkpoint and stop cleanly once this many images are seen
    check_replicas: bool = False  # all-gather a parameter checksum every step and assert equality
    crash_rank: int | None = None  # this rank SIGKILLs itself once (first torchrun attempt only) ...
    crash_after_images: int | None = None  # ... after this many images
    max_nonfinite_steps: int | None = None  # overrides optim.max_nonfinite_steps


class EpochStream:
    """Endless batches over consecutive loader epochs, with the position a checkpoint records."""

    def __init__(self, loader: Loader, epoch: int = 0) -> None:
        self.loader, self.epoch, self.batch = loader, epoch, 0
        self._batches: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> "EpochStream":
        return self

    def __next__(self) -> dict[str, Any]:
        while True:
            if self._batches is None:
                self.loader.set_epoch(self.epoch)
                self._batches = iter(self.loader)
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches, self.epoch, self.batch = None, self.epoch + 1, 0
                continue
            self.batch += 1
            return batch

    def resume_epoch(self) -> int:
        """The epoch a run resumed from here starts: this one if untouched, else the next."""
        return self.epoch if self.batch == 0 else self.epoch + 1


@dataclass
class LogWindow:
    """Training time since the last log step (evaluation and checkpoint time left out)."""

    start: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0
    steps: int = 0
    excluded: float = 0.0

    def add(self, interval: Interval) -> None:
        self.data_wait += interval.data_wait_seconds
        self.steps += interval.steps

    def seconds(self) -> float:
        return max(time.perf_counter() - self.start - self.excluded, 1e-9)


def train(config: PretrainConfig, debug: DebugOptions = DebugOptions()) -> dict[str, Any]:
    """Run (or resume) the pretraining ``config`` describes on this rank; returns the final figures."""
    info = init_distributed(config.dist.backend, config.dist.timeout_s)
    try:
        with claimed_run_dir(config.run.run_dir(), "pretrain", info, say=tqdm.write):
            return Trainer(config, info, debug).fit()
    finally:
        cleanup()


def _num_classes(source: ShardSource, key: str, configured: int | None) -> int:
    """The classifier's width: info.json's vocabulary size, else ``data.num_labels``; both must agree."""
    known = int(source.num_labels) if source.num_labels else None
    if known is not None and configured is not None and known != configured:
        raise UserError(f"data.num_labels={configured}, but {key}={source.description} carries {known} hashtags "
                        "(its info.json); drop data.num_labels or point it at the shards it was meant for")
    if known is None and configured is None:
        raise UserError(f"{key}={source.description}: the number of hashtags is unknown (no info.json with "
                        "label_counts or vocab.num_labels); set data.num_labels to the vocabulary's size, or "
                        "point it at a directory built by scripts/build_shards.py")
    return known if known is not None else int(configured)


class Trainer:
    def __init__(self, config: PretrainConfig, info: DistInfo, debug: DebugOptions) -> None:
        self.config, self.info, self.debug = config, info, debug
        self.run_dir = config.run.run_dir()
        seed_everything(config.run.seed, info.rank)
        self.source = resolve_shards(config.data.train, "train")
        self.num_classes = _num_classes(self.source, "data.train", config.data.num_labels)
        vocab = self.source.info.get("vocab", {})
        self.vocab = {k: v for k, v in vocab.items() if k != "tags"} if isinstance(vocab, dict) else {}
        self.vocab_tags = vocab.get("tags") if isinstance(vocab, dict) else None
        self.global_batch = config.data.batch_size * info.world_size * config.optim.grad_accum
        self.network = self._network()
        self.optimizer = self._optimizer()
        self.scheduler = ImageScheduler(self.optimizer, LRSchedule.from_config(config.optim, self.global_batch))
        self.scaler = self._scaler()
        self.progress, position = self._resume()
        self.start_step = self.progress.step
        self.model = self._wrap(self.network)
        self.engine = Engine(self.model, self.optimizer, create_loss(config.loss.name),
                             StepSettings(self.num_classes, config.optim.grad_accum, config.optim.clip_grad,
                                          self._autocast_dtype(), config.model.channels_last),
                             info.device, self.scheduler, self.scaler, debug.check_replicas)
        self.loader = create_loader(config.data.train, self._loader_config(config.data.batch_size),
                                    mode="train", rank=info.rank, world_size=info.world_size)
        self.stream = EpochStream(self.loader, position)
        if info.is_main:
            save_resolved(config, self.run_dir)
        interrupted = self._interrupted_images() if info.is_main else None
        self.tracker = Tracker(self.run_dir, config_to_dict(config), config.tracking.wandb, config.tracking.project,
                               config.tracking.entity, config.tracking.name or config.run.name, config.tracking.tags,
                               is_main=info.is_main, resume_step=self.progress.step)
        self._log_restart(interrupted)
        if self.resumed_from is None:  # a resumed run keeps the checkpoint's head and its record
            self.tracker.summary(self.head_init)
        self._window = LogWindow()

    # -- setup ----------------------------------------------------------------------------------

    def _network(self) -> nn.Module:
        config = self.config.model
        network = create_model(config.name, self.num_classes, head_bias=self._head_bias(),
                               zero_init_residual=config.zero_init_residual)
        network = network.to(self.info.device)
        if config.channels_last:
            network = network.to(memory_format=torch.channels_last)
        if self.config.dist.sync_bn and self.info.distributed:
            if self.info.device.type != "cuda":
                raise UserError("dist.sync_bn=true needs CUDA GPUs (PyTorch's SyncBatchNorm is GPU-only); "
                                "set dist.sync_bn=false on CPU")
            network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
        return network

    def _head_bias(self) -> np.ndarray | None:
        """The classifier's starting bias (``loss.bias_init``): the sigmoid's label prior of the stream
        the loss sees (pretrain/label_prior.py), or None for zero. A resumed run then loads the
        checkpoint's head over it. Sets ``self.head_init``, what the run records."""
        if not self.config.loss.starts_at_prior():
            self.head_init = {"head_bias_init": "zero"}
            return None
        q, counts = self.config.data.sampling.q, self.source.label_counts
        bias = prior_bias(counts, self.source.num_samples, q, self.num_classes)
        stream = "natural stream" if q is None else f"resampled stream, q={q:g}"
        source = (f"prior: info.json label_counts, {stream}" if counts is not None
                  else "prior: no label_counts, every hashtag at 1/K (-log(K-1))")
        self.head_init = {"head_bias_init": source, "head_bias_min": float(bias.min()),
                          "head_bias_max": float(bias.max())}
        return bias

    def _optimizer(self) -> torch.optim.Optimizer:
        optim = self.config.optim
        if optim.decay_bn_bias:
            groups = [{"params": [p for p in self.network.parameters() if p.requires_grad],
                       "weight_decay": optim.weight_decay}]
        else:
            groups = param_groups(self.network, optim.weight_decay)
        # Fused SGD: one kernel per step, and it honours the device-side skip flag (engine.py).
        return torch.optim.SGD(groups, lr=0.0, momentum=optim.momentum,
                               nesterov=optim.nesterov and optim.momentum > 0, fused=True)

    def _autocast_dtype(self) -> torch.dtype | None:
        precision = self.config.precision
        return AUTOCAST_DTYPES[precision.dtype] if precision.autocast else None

    def _scaler(self) -> torch.amp.GradScaler | None:
        if self._autocast_dtype() is not torch.float16:
            return None  # bf16 keeps fp32's exponent range: nothing to scale (the checkpoint slot stays None)
        if self.info.device.type != "cuda":
            raise UserError("precision.dtype=float16 needs a CUDA device; use precision.dtype=bfloat16 on CPU")
        return torch.amp.GradScaler("cuda")

    def _wrap(self, network: nn.Module) -> nn.Module:
        model = network
        if self.info.distributed:
            device_ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(network, device_ids=device_ids,
                                                        gradient_as_bucket_view=True)
        return torch.compile(model) if self.config.model.compile else model

    def _loader_config(self, batch_size: int) -> LoaderConfig:
        data = self.config.data
        return LoaderConfig(batch_size=batch_size, num_workers=data.workers, seed=self.config.run.seed,
                            image_size=data.image_size, crop_scale=(data.crop_scale_min, 1.0),
                            epoch_images=data.epoch_images,
                            shuffle_buffer=data.shuffle_buffer, shuffle_initial=min(500, data.shuffle_buffer),
                            sampling_q=data.sampling.q, sampling_cap=data.sampling.cap, decode=data.decode,
                            pin_memory=data.pin_memory and self.info.device.type == "cuda")

    def _resume(self) -> tuple[Progress, int]:
        resumed = load_resume(self.run_dir, self.config.checkpoint.resume, say=self._say)
        self.resumed_from = resumed.path if resumed is not None else None
        if resumed is None:
            return Progress(), 0
        path, state = resumed.path, resumed.state
        self._check_vocabulary(path, state)
        try:
            restored_rng = restore_training_state(state, self.network, self.optimizer, self.scheduler, self.scaler,
                                                  rank=self.info.rank, world_size=self.info.world_size)
        except (RuntimeError, ValueError, KeyError) as err:
            raise UserError(f"{path} does not fit this run's model or optimiser ({_abridged(err)}); "
                            "resume with the model.name and shards it was trained with, or pass "
                            "checkpoint.resume=none to start over") from None
        position = state.get("data_position") or {}
        self._say(f"resumed from {path}: step {state['step']}, {state['images_seen']:,} images"
                  + ("" if restored_rng else " (world size changed: fresh per-rank RNG seeds)"))
        return Progress(int(state["step"]), int(state["images_seen"])), int(position.get("resume_epoch", 0))

    def _check_vocabulary(self, path: Path, state: dict[str, Any]) -> None:
        """The checkpoint's hashtags are data.train's, label by label: shards of another vocabulary of
        the same size would otherwise train every head row on another hashtag, silently."""
        saved, current = state.get("vocab_tags"), self.vocab_tags
        if saved is None or current is None or list(saved) == list(current):
            return
        differ = next((i for i, (a, b) in enumerate(zip(saved, current)) if a != b), min(len(saved), len(current)))
        where = (f"label {differ} is {saved[differ]!r} there and {current[differ]!r} here"
                 if differ < min(len(saved), len(current)) else f"{len(saved)} labels there, {len(current)} here")
        raise UserError(f"{path} was trained on the vocabulary {_vocabulary(state.get('vocab') or {}, saved)}, but "
                        f"data.train={self.source.description} carries {_vocabulary(self.vocab, current)} ({where}); "
                        "resume on the shards it was trained on, or pass checkpoint.resume=none to start over")

    def _interrupted_images(self) -> int | None:
        """How far an interrupted earlier attempt had got (images), from its metrics.jsonl rows past
        the resume point, which the tracker is about to drop; None when there are none."""
        logged = [row["images"] for row in read_metrics(self.run_dir)
                  if isinstance(row.get("step"), int) and row["step"] > self.progress.step
                  and isinstance(row.get("images"), int)]
        return max(logged) if logged else None

    def _log_restart(self, interrupted: int | None) -> None:
        """A metrics row per restart: where it resumed and the logged work it recomputes (lost work)."""
        start = self.progress.images_seen
        if interrupted is None and self.progress.step == 0:
            return  # a fresh run
        recomputed = max(0, (interrupted or start) - start)
        self.tracker.log(self.progress.step, {"restart/from_images": start, "restart/recomputed_images": recomputed})
        if recomputed:
            self._say(f"the interrupted attempt had logged {recomputed:,} images past that point: recomputing them")

    # -- the loop -------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        config, progress = self.config, self.progress
        self._say(f"{config.model.name}: {self.num_classes} hashtags, world size {self.info.world_size}, global batch "
                  f"{self.global_batch}, peak lr {self.scheduler.schedule.peak_lr:g}, run dir {self.run_dir}")
        if self.source.parts:
            self._say(_mixture_line(self.source, config.data.sampling.q))
        if self.resumed_from is None:
            init = self.head_init
            spread = (f" ({init['head_bias_min']:.2f} to {init['head_bias_max']:.2f})"
                      if "head_bias_min" in init else "")
            self._say(f"{config.loss.name} loss, classifier bias {init['head_bias_init']}{spread}")
        bar = tqdm(total=config.optim.total_images, initial=progress.images_seen, unit="img", unit_scale=True,
                   disable=not self.info.is_main, dynamic_ncols=True)
        self._window = LogWindow()
        try:
            while progress.images_seen < self._budget():
                before = progress.images_seen
                interval = self.engine.run(self.stream, self._steps_to_next_event(), progress, self.global_batch,
                                           self._on_step)
                bar.update(progress.images_seen - before)
                self._window.add(interval)
                checkpointed = self._events(before, bar)
                if self._stopped_early():
                    if not checkpointed:
                        self._checkpoint()
                    self._say(f"stopped at {progress.images_seen:,} images (--stop-after-images)")
                    return {"images_seen": progress.images_seen, "stopped_early": True}
            return self._finish()
        finally:
            bar.close()
            self.tracker.finish()
            # The persistent workers end now, not whenever the garbage collector reaches the loader
            # (an error's traceback keeps this Trainer alive).
            del self.stream, self.loader

    def _budget(self) -> int:
        return self.config.optim.total_images

    def _stopped_early(self) -> bool:
        stop = self.debug.stop_after_images
        return stop is not None and self.progress.images_seen >= stop and self.progress.images_seen < self._budget()

    def _steps_to_next_event(self) -> int:
        images, step = self.progress.images_seen, self.progress.step
        targets = [self._budget()]
        for every in (self.config.checkpoint.every_images, self._eval_every()):
            if every:
                targets.append((images // every + 1) * every)
        if self.debug.stop_after_images is not None and self.debug.stop_after_images > images:
            targets.append(self.debug.stop_after_images)
        image_steps = min(-(-(target - images) // self.global_batch) for target in targets)
        log_every = self.config.tracking.log_every_steps
        return max(1, min(image_steps, log_every - step % log_every))

    def _eval_every(self) -> int | None:
        return self.config.eval.every_images if self.config.data.val else None

    @staticmethod
    def _crossed(before: int, after: int, every: int | None) -> bool:
        return bool(every) and after // every > before // every

    def _events(self, images_before: int, bar: tqdm) -> bool:
        """Log, evaluate and checkpoint where due (the end's own are in _finish); True if checkpointed."""
        images, done = self.progress.images_seen, self.progress.images_seen >= self._budget()
        if self.progress.step % self.config.tracking.log_every_steps == 0 or done:
            self._log(bar, done)
        paused = time.perf_counter()
        if self._crossed(images_before, images, self._eval_every()) and not done:
            self._evaluate()
        checkpoint = self._crossed(images_before, images, self.config.checkpoint.every_images) and not done
        if checkpoint:
            self._checkpoint()
        self._window.excluded += time.perf_counter() - paused  # images/s measures training only
        return checkpoint

    def _on_step(self, progress: Progress) -> None:
        debug = self.debug
        if (debug.crash_rank == self.info.rank and debug.crash_after_images is not None
                and progress.images_seen >= debug.crash_after_images
                and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
            os.kill(os.getpid(), signal.SIGKILL)  # a hard failure: no cleanup, no checkpoint

    # -- log steps ------------------------------------------------------------------------------

    def _log(self, bar: tqdm, done: bool = False) -> None:
        stats = self.engine.read_stats()  # the one host sync of the interval
        window, self._window = self._window, LogWindow()
        seconds, steps = window.seconds(), window.steps
        mine = {"loss": stats["loss"], "data_wait": window.data_wait / seconds, "skipped": self.loader.skip_counts(),
                "dropped_labels": self.loader.dropped_labels(),
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if self.info.device.type == "cuda" else 0.0}
        ranks = _gather(mine)
        losses = [r["loss"] for r in ranks if np.isfinite(r["loss"])]
        skipped = _summed([r["skipped"] for r in ranks])
        metrics = {"loss": float(np.mean(losses)) if losses else float("nan"), "lr": self.scheduler.last_lr,
                   "images": self.progress.images_seen, "epoch": self.stream.epoch,
                   "images_per_s": steps * self.global_batch / seconds,
                   "data_wait": float(np.mean([r["data_wait"] for r in ranks])),
                   "grad_norm": stats["grad_norm"], "nonfinite_steps": stats["nonfinite_steps"],
                   "memory/max_rss_mb": max(r["rss_mb"] for r in ranks),
                   "skipped_total": sum(skipped.values()),
                   "dropped_label_ids": sum(r["dropped_labels"] for r in ranks),
                   **{f"skipped/{reason}": count for reason, count in sorted(skipped.items())}}
        if self.info.device.type == "cuda":
            metrics["memory/cuda_max_allocated_mb"] = max(r["cuda_mb"] for r in ranks)
        if self.debug.check_replicas:
            metrics["replica_checks"] = self.engine.replica_checks
        self.tracker.log(self.progress.step, metrics)
        self.engine.reset_stats()
        if self.info.is_main:
            bar.write(f"step {self.progress.step} images {self.progress.images_seen:,} loss {metrics['loss']:.4f} "
                      f"lr {metrics['lr']:.4g} img/s {metrics['images_per_s']:.1f} "
                      f"data-wait {metrics['data_wait']:.0%} grad-norm {metrics['grad_norm']:.3g}")
        streak = stopping_streak(stats["consecutive_nonfinite"], self.progress.step - self.start_step,
                                 self._max_nonfinite_steps(), finished=done)
        if streak is not None:
            self._diverged(streak)

    def _max_nonfinite_steps(self) -> int:
        override = self.debug.max_nonfinite_steps
        return override if override is not None else self.config.optim.max_nonfinite_steps

    def _diverged(self, streak: int) -> None:
        if streak < self.progress.step - self.start_step:
            steps = f"the last {streak} optimiser steps"
            weights = f"the weights before them are in {self._checkpoint()}"  # skipped steps changed nothing
        else:  # the weights are still those the run started from: no checkpoint of them at a later step
            steps = f"every optimiser step of this run ({streak}, since step {self.start_step})"
            weights = (f"the weights are still those of {self.resumed_from}" if self.resumed_from else
                       "the weights are still the initial ones; no checkpoint was written")
        raise UserError(f"training diverged: {steps} had a non-finite loss or gradient (step {self.progress.step}, "
                        f"{self.progress.images_seen:,} images); nothing was exported; {weights}; lower "
                        "optim.base_lr, set optim.clip_grad, or lengthen optim.warmup_images, then resume")

    # -- checkpoints, evaluation, the end -------------------------------------------------------

    def _checkpoint(self) -> Path:
        state = training_state(self.model, self.optimizer, self.scheduler, self.scaler, step=self.progress.step,
                               config=config_to_dict(self.config), vocab_tags=self.vocab_tags)  # collective
        state["vocab"] = self.vocab  # where the tags came from: info.json's vocab path and sha256
        state["data_position"] = {"epoch": self.stream.epoch, "batch": self.stream.batch,
                                  "resume_epoch": self.stream.resume_epoch()}
        path = self.run_dir / f"checkpoint-{self.progress.images_seen}.pt"
        if self.info.is_main:
            path = save_checkpoint(self.run_dir, state, self.progress.images_seen, self.config.checkpoint.keep_last)
        barrier()
        return path

    def _evaluate(self) -> dict[str, float]:
        config = self.config
        source: Any = config.data.val
        if config.eval.shards is not None:
            source = list(resolve_shards(config.data.val, "val").urls[:config.eval.shards])
        loader_config = replace(self._loader_config(config.eval.batch_size or config.data.batch_size),
                                sampling_q=None, sampling_cap=None)
        loader = create_loader(source, loader_config, mode="eval", rank=self.info.rank,
                               world_size=self.info.world_size)
        metrics = evaluate(self.network, loader, self.engine.normalize, self.num_classes, self.info.device,
                           self.engine.autocast)
        skipped = _summed(_gather(loader.skip_counts()))  # every sample was read once: exact counts
        del loader  # its worker processes end here
        logged = {f"eval/{key}": value for key, value in metrics.items()}
        logged.update({f"eval/skipped/{reason}": count for reason, count in sorted(skipped.items())})
        self.tracker.log(self.progress.step, logged)
        self._say(f"eval at {self.progress.images_seen:,} images: precision@1 {metrics['precision_at_1']:.4f} "
                  f"recall@5 {metrics['recall_at_5']:.4f} mAP {metrics['mAP']:.4f} ({metrics['images']} images)")
        return logged

    def _finish(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"images_seen": self.progress.images_seen, "steps": self.progress.step}
        if self.config.data.val:
            summary.update(self._evaluate())
        path = self._checkpoint()
        summary.update(self._label_distribution())
        if self.info.is_main and self.config.checkpoint.export_trunk:
            trunk = export_trunk(unwrap_model(self.network).state_dict(), self.run_dir / TRUNK_FILE,
                                 architecture=self.config.model.name, head_prefix=head_name(self.network) + ".",
                                 source_checkpoint=path.name, images_seen=self.progress.images_seen)
            self._say(f"trunk for transfer: {trunk}")
        self.tracker.summary(summary)
        if self.tracker.sync_command:
            self._say(f"upload the offline wandb run with: {self.tracker.sync_command}")
        return summary

    def _label_distribution(self) -> dict[str, float]:
        """All labels of the delivered images and, when resampling, the drawn hashtags (all ranks) vs
        the natural counts and the target: a plot, and the sampler's total-variation distance."""
        realised = self.loader.realised_label_counts()
        if realised is None or self.source.label_counts is None:
            return {}
        drawn = self.loader.drawn_label_counts()  # None without resampling, on every rank alike
        rows = [realised] if drawn is None else [realised, drawn]
        counts = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.info.device)
        if self.info.distributed:
            dist.all_reduce(counts)
        if not self.info.is_main:
            return {}
        totals = counts.cpu().numpy()
        realised_total, drawn_total = totals[0], (totals[1] if drawn is not None else None)
        q = self.config.data.sampling.q
        target = target_shares(self.source, q)
        png = plot_label_distribution(realised_total, self.source.label_counts, target, target_name(self.source, q),
                                      self.run_dir / LABEL_PLOT, drawn=drawn_total)
        self.tracker.log_image("plot/label_distribution", png, step=self.progress.step)
        return {"label_distribution_tv": realised_vs_target(realised_total, target, drawn=drawn_total)}

    def _say(self, message: str) -> None:
        if self.info.is_main:
            tqdm.write(message)


def _mixture_line(source: ShardSource, q: float | None) -> str:
    """The set shares a mixture trains on, beside those that would reproduce one corpus made of their
    union (docs/sampling.md, "Mixtures of shard sets")."""
    parts = source.parts
    shares = np.asarray(source.weights) / sum(source.weights)
    line = "mixing at shard level: " + ", ".join(f"{p.description} {s:.1%}" for p, s in zip(parts, shares))
    if all(p.label_counts is not None for p in parts):
        union = union_target_weights([p.label_counts for p in parts], [p.num_samples for p in parts], q)
        line += (" of the images (one corpus of their union would give " + " / ".join(f"{u:.1%}" for u in union)
                 + ("" if q is None else f" at sampling.q={q:g}") + ")")
    return line


def _vocabulary(source: dict[str, Any], tags: list[str]) -> str:
    """A vocabulary for an error line: its file and digest where info.json recorded them."""
    named = f"{source['path']} (sha256 {str(source.get('sha256', '?'))[:12]}, " if source.get("path") else "("
    return f"{named}{len(tags)} tags)"


def _abridged(err: Exception, limit: int = 240) -> str:
    """An exception's message on one line (PyTorch's state-dict errors span many)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    """Per-reason counts of all ranks added up."""
    total: dict[str, int] = {}
    for rank_counts in counts:
        for reason, count in rank_counts.items():
            total[reason] = total.get(reason, 0) + count
    return total


def _gather(value: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``value`` (one object all-gather; log steps only)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
