"""Errors that must reach the user as the one line of ``data.errors.cli_main`` (``error: …``, exit 2,
no traceback), wherever in the process they are raised: inside a DataLoader worker, while claiming
the run directory, while reading a checkpoint."""
from __future__ import annotations

import sys
from pathlib import Path

from tests.faults import child_process
from tests.faults.dirty_shards import plan, write_dirty_shards
from tests.pretrain_runs import job_env, write_config


def _pretrain(config: Path, *overrides: str) -> child_process.Finished:
    return child_process.run([sys.executable, "-m", "pretrain", "--config", str(config), *overrides],
                             env=job_env(), timeout=300)


def test_a_user_error_raised_in_a_dataloader_worker_is_its_one_line(tmp_path):
    # Every image corrupt: the loader's stall guard raises a UserError inside the worker process,
    # which torch re-raises in the main process from the worker's formatted traceback.
    shards = write_dirty_shards(tmp_path / "shards", "train", [plan(40, {i: "corrupt" for i in range(40)})] * 2)
    config = write_config(tmp_path / "run.yaml", shards, None, tmp_path / "runs", "corrupt", data={"workers": 1})
    line = _pretrain(config).assert_one_error_line()
    assert line.startswith("error: read ") and "without one usable sample; check the shards" in line, line
    assert "DataLoader worker" not in line
