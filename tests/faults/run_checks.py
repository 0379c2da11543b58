"""What every fault test asks of a pretraining run directory afterwards, and of a command run in
this process that must stop with one error line."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

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


def one_error_line(main: Callable[[list[str]], Any], argv: list[str], capsys) -> str:
    """Run a command's ``main`` in this process: it must exit 2 with exactly one ``error:`` line and no
    traceback (data.errors.cli_main); that line. (A child process: child_process.Finished.)"""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]
