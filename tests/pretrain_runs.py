"""Tiny real pretraining runs for the tests: shard directories of real JPEG tars (tests/shard_factory),
a recipe YAML around them, and the environment a CPU torchrun job gets."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests.shard_factory import Sample, write_shard_dir

REPO = Path(__file__).resolve().parents[1]
NUM_LABELS = 6
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE", "GROUP_RANK")


def make_shards(root: Path) -> tuple[Path, Path]:
    """Train (3 shards, 48 images) and val (2 shards, 16 images) directories; 1-2 of 6 labels per image."""
    rng = np.random.default_rng(0)

    def samples(split: str, shards: int, per_shard: int) -> list[list[Sample]]:
        return [[Sample(f"{split}{s}_{i:03d}", sorted({int(x) for x in rng.integers(0, NUM_LABELS, rng.integers(1, 3))}))
                 for i in range(per_shard)] for s in range(shards)]

    train = write_shard_dir(root / "train", samples("train", 3, 16), NUM_LABELS, "train", size=(40, 36), seed=0)
    val = write_shard_dir(root / "val", samples("val", 2, 8), NUM_LABELS, "val", size=(40, 36), seed=1)
    return train, val


def write_config(path: Path, train: Path, val: Path | None, run_dir: Path, name: str,
                 **sections: dict[str, Any]) -> Path:
    """A CPU recipe: resnext_tiny at 32 px, batch 4 per rank, 2 workers, 32-image loader epochs."""
    config: dict[str, Any] = {
        "data": {"train": str(train), "val": str(val) if val else None, "batch_size": 4, "workers": 2,
                 "image_size": 32, "shuffle_buffer": 20, "epoch_images": 32, "pin_memory": False,
                 "sampling": {"q": 0.5}},
        "model": {"name": "resnext_tiny", "channels_last": False},
        "optim": {"warmup_images": 16, "total_images": 96, "decay_steps": 2},
        "precision": {"autocast": False},
        "checkpoint": {"every_images": 32, "keep_last": 2},
        "tracking": {"log_every_steps": 2},
        "run": {"dir": str(run_dir), "name": name},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def job_env(**extra: str) -> dict[str, str]:
    """This environment minus any torchrun variables, one intra-op thread per process, no GPU."""
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARS}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", WANDB_SILENT="true", **extra)
    return env


def torchrun(args: list[str], env: dict[str, str], timeout: float, nproc: int = 2,
             launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *launcher, "-m", "pretrain", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
