"""What every transfer command sets up the same way: the process group and device, the seed, the
run directory (resolved config.yaml), the tracker, the datasets and the eval transform, and the
settings recorded next to every result (transform, interpolation, init, model)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from data.errors import UserError
from data.loader.transforms import EvalTransform
from pretrain.config import config_to_dict, save_resolved
from pretrain.distributed import DistInfo, cleanup, init_distributed, seed_everything
from pretrain.run_directory import claimed_run_dir
from pretrain.tracking import Tracker
from transfer.config import TransferConfig
from transfer.datasets import LabelledImages, open_dataset

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Session:
    config: TransferConfig
    dist: DistInfo
    run_dir: Path
    tracker: Tracker

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """Autocast on CUDA only: CPU bfloat16 would change the logits of a float32 evaluation."""
        if self.config.precision.autocast and self.dist.device.type == "cuda":
            return AUTOCAST_DTYPES[self.config.precision.dtype]
        return None

    def transform(self) -> EvalTransform:
        data = self.config.data
        return EvalTransform(size=data.image_size, resize=data.resize_size, max_pixels=data.max_pixels)

    def transform_settings(self) -> dict[str, Any]:
        data = self.config.data
        return {"resize": data.resize_size, "crop": data.image_size, "interpolation": data.interpolation,
                "antialias": True, "max_pixels": data.max_pixels,
                "normalise": "ImageNet mean/std (torchvision)"}

    def val_dataset(self, classes: list[str] | None = None) -> LabelledImages:
        data = self.config.data
        dataset = open_dataset(data.val, data.kind, val_labels=data.val_labels, synsets=data.synsets,
                               classes=classes)
        return dataset.with_transform(self.transform())

    def train_dataset(self) -> LabelledImages:
        data = self.config.data
        if not data.train:
            raise UserError("data.train is required for this command: set it in the config or pass data.train=<dir>")
        kind = data.kind if data.kind in ("imagefolder", "wds") else "auto"
        return open_dataset(data.train, kind).with_transform(self.transform())

    def log(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)


@contextmanager
def session(config: TransferConfig, kind: str) -> Iterator[Session]:
    """Join the process group, seed, claim the run directory for a ``kind`` run (finetune, linear,
    evaluate: pretrain/run_directory.py; rank 0 writes config.yaml and metrics.jsonl) and leave
    the process group at the end."""
    info = init_distributed(config.dist.backend, config.dist.timeout_s)
    try:
        seed_everything(config.run.seed, info.rank)
        run_dir = config.run.run_dir()
        with claimed_run_dir(run_dir, kind, info):
            if info.is_main:
                save_resolved(config, run_dir)
            tracking = config.tracking
            with Tracker(run_dir, config_to_dict(config), tracking.wandb, tracking.project, tracking.entity,
                         tracking.name or config.run.name, tracking.tags, is_main=info.is_main) as tracker:
                yield Session(config, info, run_dir, tracker)
    finally:
        cleanup()
