"""What every fault test asks of a pretraining run directory afterwards."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.checkpoint import LATEST, load_checkpoint, numbered_checkpoints
from pretrain.tracking import read_metrics


def assert_every_checkpoint_loads(run_dir: Path) -> dict[str, Any]:
    """Every file NAMED as a checkpoint loads (weights-only) and says the images its name says;
    checkpoint-latest.pt is the newest. Returns the latest."""
    numbered = numbered_checkpoints(run_dir)
    assert numbered, f"no checkpoint in {run_dir}"
    for images, path in numbered:
        assert load_checkpoint(path, mmap=True)["images_seen"] == images, path
    latest = load_checkpoint(run_dir / LATEST)
    assert latest["images_seen"] == numbered[-1][0]
    return latest


def restarts(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics rows a restarted attempt writes: where it resumed and the logged work it redid."""
    return [row for row in read_metrics(run_dir) if "restart/from_images" in row]


def train_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [row for row in read_metrics(run_dir) if "loss" in row]
