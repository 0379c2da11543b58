"""A shard that goes missing or becomes unreadable while a run is on (a network mount dropping a file,
a copy replaced by a directory) in resampled mode: logged, skipped, counted, and training continues
to its budget. Missing at start, a shard listed in info.json is one clear error instead: the
directory is not what the user thinks it is."""
from __future__ import annotations

import logging

import pytest

from data.errors import UserError
from data.shards.directory import resolve_shards
from pretrain.config import load_config
from pretrain.distributed import cleanup, init_distributed
from pretrain.train import DebugOptions, Trainer
from tests.faults.run_checks import assert_every_checkpoint_loads, train_rows
from tests.pretrain_runs import make_shards, write_config


@pytest.mark.slow
def test_shards_lost_during_a_run_are_logged_skipped_and_training_reaches_its_budget(tmp_path, one_thread, caplog):
    train, _ = make_shards(tmp_path)  # 3 shards of 16 images
    # Workers 0: the loader runs in this process, so its log lines reach caplog.
    config = load_config(write_config(tmp_path / "run.yaml", train, None, tmp_path / "runs", "lost",
                                      data={"workers": 0}, optim={"total_images": 128}))
    info = init_distributed(config.dist.backend)
    try:
        trainer = Trainer(config, info, DebugOptions())  # the shards are resolved and checked here
        (train / "train-000001.tar").unlink()  # gone
        (train / "train-000002.tar").unlink()
        (train / "train-000002.tar").mkdir()  # there, but not a readable file
        with caplog.at_level(logging.WARNING, logger="openwsl.data.stream"):
            summary = trainer.fit()
    finally:
        cleanup()
    assert summary["images_seen"] == 128
    run_dir = tmp_path / "runs" / "lost"
    assert assert_every_checkpoint_loads(run_dir)["images_seen"] == 128
    last = train_rows(run_dir)[-1]
    assert last["skipped/unreadable_shard"] > 0 and last["skipped_total"] == last["skipped/unreadable_shard"]
    # Logged with the shard and the cause (at most one line per reason a minute, so the first one).
    (line,) = [record.getMessage() for record in caplog.records if "unreadable_shard" in record.getMessage()]
    assert ("train-000001.tar: unreadable_shard (FileNotFoundError" in line
            or "train-000002.tar: unreadable_shard (IsADirectoryError" in line), line
    print(f"two of three shards lost mid-run: {last['skipped/unreadable_shard']} draws of them skipped, "
          f"budget reached")


def test_a_shard_missing_at_the_start_is_one_clear_error(tmp_path):
    train, _ = make_shards(tmp_path)
    (train / "train-000001.tar").unlink()
    with pytest.raises(UserError, match=r"train-000001.tar is listed in .*info.json but missing; rebuild or "
                                        r"finalize the shard directory"):
        resolve_shards(train, "train")
