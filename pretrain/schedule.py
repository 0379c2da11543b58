"""The learning-rate schedule, counted in images processed (all ranks together), never in epochs.

Goyal et al.'s recipe, as the paper used it: the peak lr follows the linear scaling rule
(``base_lr x global batch / 256``), a linear warm-up takes the lr from 0 to the peak over
``warmup_images``, then either

- ``step``: the lr is multiplied by ``decay_factor`` (0.5) at ``decay_steps`` points equally spaced
  over the post-warm-up images (``decay_steps`` points cut that span into ``decay_steps + 1`` equal
  pieces), or
- ``cosine``: half a cosine from the peak down to 0 at ``total_images``.

:class:`ImageScheduler` applies the schedule to an optimiser and is what a checkpoint stores
(``state_dict`` / ``load_state_dict``). It sets the optimiser's lr when it is built (the lr at 0
images, whatever lr the optimiser was built with) and when a checkpoint's position is loaded (the lr
at the images seen); the engine then calls ``step(images_after)`` once each optimiser step is done,
which sets the lr at ``s + global batch`` for the NEXT step. So a step that takes the run from ``s``
to ``s + global batch`` images runs at the lr at ``s``, the first one included: with a warm-up that
lr is 0 (the first step only fills the momentum buffers), without one it is the peak. The lr logged
at a step is the one set after it.

The values come checked: the config schema refuses a ``kind`` other than step or cosine and a
warm-up that is not shorter than the budget (``optim.warmup_images < optim.total_images``), and
fine-tuning's schedule keeps its warm-up, rounded to whole images, below its total.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch


@dataclass(frozen=True)
class LRSchedule:
    """lr as a pure function of the images processed."""

    peak_lr: float
    total_images: int
    warmup_images: int = 0
    kind: str = "step"
    decay_steps: int = 13
    decay_factor: float = 0.5

    @classmethod
    def from_config(cls, optim: Any, global_batch: int) -> "LRSchedule":
        """The schedule an ``OptimConfig`` describes, for ``global_batch`` images per optimiser step."""
        return cls(peak_lr=optim.peak_lr(global_batch), total_images=optim.total_images,
                   warmup_images=optim.warmup_images, kind=optim.schedule, decay_steps=optim.decay_steps,
                   decay_factor=optim.decay_factor)

    def decay_points(self) -> list[float]:
        """Images at which the step schedule multiplies the lr by ``decay_factor``."""
        span = self.total_images - self.warmup_images
        return [self.warmup_images + span * i / (self.decay_steps + 1) for i in range(1, self.decay_steps + 1)]

    def lr_at(self, images: int) -> float:
        """The lr once ``images`` images have been processed."""
        if images < self.warmup_images:
            return self.peak_lr * images / self.warmup_images
        if self.kind == "cosine":
            progress = min(1.0, (images - self.warmup_images) / (self.total_images - self.warmup_images))
            return self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        decays = sum(1 for point in self.decay_points() if images >= point)
        return self.peak_lr * self.decay_factor ** decays


class ImageScheduler:
    """Sets an optimiser's lr from an :class:`LRSchedule` before each step: at construction the lr
    at 0 images (for the first step), then ``step(images_after)``, called once per optimiser step
    with the images seen when that step is done, the lr for the next one."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self._set(0)

    def step(self, images_after: int) -> float:
        return self._set(images_after)

    def _set(self, images: int) -> float:
        """Move to ``images`` images seen and give every parameter group the lr there."""
        self.images_seen = int(images)
        self.last_lr = self.schedule.lr_at(self.images_seen)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr
        return self.last_lr

    def state_dict(self) -> dict[str, Any]:
        return {"images_seen": self.images_seen, "last_lr": self.last_lr, "schedule": asdict(self.schedule)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the position; the schedule itself comes from the (possibly edited) config, so a
        resumed run may change e.g. total_images and the lr follows the new schedule from here on."""
        self._set(state["images_seen"])
