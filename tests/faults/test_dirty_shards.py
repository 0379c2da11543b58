"""Dirty shards: 5 % corrupt JPEGs, truncated JPEGs, truncated tars, invalid and missing json, label
ids outside the vocabulary, uneven and empty shards. Pretraining under a real 2-process torchrun
reaches its image budget; every skip is counted under its reason, exactly.

Exact means: the held-out pass (every sample read once) counts precisely the faults planted in the
val shards, and the training totals in metrics.jsonl equal a replay of both ranks' loader streams
(the same seeds, the same epochs) in this process, so no skip is lost between a DataLoader worker
and the log. Equal batches per rank is what lets the 2-rank run finish at all (DDP all-reduces
every step); it is also checked directly, per rank and worker count, on the loaders.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from data.loader.pipeline import LoaderConfig, create_loader
from pretrain.config import load_config
from pretrain.tracking import read_metrics
from pretrain.train import Trainer
from tests.faults.dirty_shards import (expected_dropped_labels, expected_images, expected_skips, good_keys, plan,
                                       write_dirty_shards)
from tests.pretrain_runs import REPO, job_env, torchrun, write_config

# 100 training samples in 6 shards of uneven size, one of them empty and one cut short:
# 5 corrupt JPEGs (5 %), 2 truncated JPEGs, 3 invalid json, 1 missing json, 2 samples with a label
# id outside the vocabulary (one of them has no other label).
TRAIN = [
    plan(40, {3: "corrupt", 17: "truncated", 25: "invalid_json", 31: "corrupt"}),
    plan(3, {}),
    plan(0, {}),
    plan(25, {2: "corrupt", 9: "invalid_json", 14: "foreign_label", 20: "no_label"}),
    plan(20, {4: "corrupt", 8: "missing_json", 11: "truncated"}, cut_at=16),
    plan(12, {6: "corrupt", 10: "invalid_json"}),
]
VAL = [
    plan(10, {1: "corrupt", 5: "invalid_json", 7: "foreign_label"}),
    plan(6, {1: "truncated", 2: "missing_json"}, cut_at=4),
    plan(0, {}),
]
EPOCHS = 3  # total_images 96 = 3 loader epochs of 32 images


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dirty")
    return write_dirty_shards(root / "train", "train", TRAIN, seed=0), write_dirty_shards(root / "val", "val", VAL, 1)


def test_the_plan_is_what_the_issue_asks_for():
    kinds = Counter(kind for p in TRAIN for kind in p.kinds)
    assert sum(kinds.values()) == 100 and kinds["corrupt"] == 5
    assert expected_skips(VAL) == {"corrupt": 1, "invalid_json": 1, "truncated": 1, "missing_json": 1,
                                   "truncated_tar": 1}


def _trainer_loader_config(config_path: Path) -> tuple[object, LoaderConfig]:
    """The train loader settings the trainer derives from the config (its own method, on CPU)."""
    config = load_config(config_path)
    trainer = SimpleNamespace(config=config, info=SimpleNamespace(device=torch.device("cpu")))
    return config, Trainer._loader_config(trainer, config.data.batch_size)


def _replay(config_path: Path, world_size: int, epochs: int) -> tuple[dict[str, int], int, int]:
    """Skips by reason, dropped label ids and batches of every rank's train stream, as the run read them."""
    config, loader_config = _trainer_loader_config(config_path)
    skips: Counter = Counter()
    dropped = batches = 0
    for rank in range(world_size):
        loader = create_loader(config.data.train, loader_config, mode="train", rank=rank, world_size=world_size)
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            batches += sum(1 for _ in loader)
        skips.update(loader.skip_counts())
        dropped += loader.dropped_labels()
    return dict(skips), dropped, batches


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")
def test_pretraining_on_dirty_shards_reaches_its_budget_with_exact_skip_counts(shards, tmp_path):
    train, val = shards
    config = write_config(tmp_path / "run.yaml", train, val, tmp_path / "runs", "dirty",
                          tracking={"log_every_steps": 4})
    done = torchrun(["--config", str(config), "--check-replicas"], job_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    rows = read_metrics(tmp_path / "runs" / "dirty")
    last = [r for r in rows if "loss" in r][-1]
    # The budget is met, and the replicas stayed identical every step (so no rank ran short).
    assert last["images"] == 96 and last["replica_checks"] == 12
    # Held out: one pass, so exactly the faults planted (the cut-off samples are the shard's one count).
    evaluation = [r for r in rows if "eval/images" in r][-1]
    eval_skips = {k.removeprefix("eval/skipped/"): v for k, v in evaluation.items() if k.startswith("eval/skipped/")}
    assert eval_skips == expected_skips(VAL)
    assert evaluation["eval/images"] == expected_images(VAL) == 10
    # Training: the logged totals are every skip both ranks' streams made, no more, no fewer.
    replayed, dropped, batches = _replay(config, world_size=2, epochs=EPOCHS)
    train_skips = {k.removeprefix("skipped/"): v for k, v in last.items() if k.startswith("skipped/")}
    assert train_skips == replayed and last["skipped_total"] == sum(replayed.values())
    assert last["dropped_label_ids"] == dropped
    assert batches == 12 * 2  # 12 steps on each of the 2 ranks
    # Shards are drawn with replacement, so the training counts are not the planted numbers; every
    # kind of damage was met, and nothing else.
    assert set(train_skips) == set(expected_skips(TRAIN)), train_skips
    print(f"dirty-shard run: training skipped {train_skips}, dropped {dropped} foreign label ids; "
          f"held-out pass skipped {eval_skips} of {sum(len(p.kinds) for p in VAL)} samples")


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_one_pass_counts_exactly_the_planted_faults_on_any_rank_and_worker_split(shards):
    train, _ = shards
    for world_size, workers in ((1, 0), (2, 2), (3, 3)):
        config = LoaderConfig(batch_size=4, num_workers=workers, image_size=16, split="train")
        skips: Counter = Counter()
        keys: list[str] = []
        dropped = 0
        for rank in range(world_size):
            loader = create_loader(train, config, mode="eval", rank=rank, world_size=world_size)
            keys += [key for batch in loader for key in batch["keys"]]  # 3 ranks x 3 workers > 5 non-empty shards
            skips.update(loader.skip_counts())
            dropped += loader.dropped_labels()
        assert dict(skips) == expected_skips(TRAIN)
        assert dropped == expected_dropped_labels(TRAIN) == 2
        assert sorted(keys) == sorted(good_keys("train", TRAIN))


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_every_rank_gets_the_same_number_of_full_batches_from_uneven_and_empty_shards(shards, workers):
    train, _ = shards
    config = LoaderConfig(batch_size=4, num_workers=workers, image_size=16, epoch_images=40, shuffle_buffer=8,
                          shuffle_initial=2)
    expected = math.ceil(math.ceil(40 / (4 * 2)) / workers) * workers
    for rank in range(2):
        loader = create_loader(train, config, rank=rank, world_size=2)
        sizes = [len(batch["keys"]) for batch in loader]
        assert sizes == [4] * expected == [4] * loader.batches_per_epoch


@pytest.mark.heavy
@pytest.mark.xdist_group("torchrun")
def test_torchrun_ranks_get_equal_batches_and_every_good_sample_once_from_dirty_shards(shards, tmp_path):
    train, _ = shards
    out = tmp_path / "out"
    out.mkdir()
    worker = REPO / "tests" / "data" / "loader" / "ddp_loader_worker.py"  # 2 epochs with an all-reduce per batch, then one eval pass
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
               str(train), str(out)]
    done = subprocess.run(command, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    # 100 listed samples / (4 per batch x 2 ranks) = 13 batches, rounded up to the 2 workers: 14
    assert [r["batches"] for r in ranks] == [[14, 14], [14, 14]]
    assert sorted(ranks[0]["eval_keys"] + ranks[1]["eval_keys"]) == sorted(good_keys("train", TRAIN))
