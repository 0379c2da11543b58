"""Shards without info.json (a brace pattern, as when streaming from object storage): data.num_labels
supplies the classifier's width that info.json otherwise gives, data.epoch_images the epoch length
(docs/config.md, docs/loader.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.errors import UserError
from pretrain.__main__ import main as pretrain_main
from tests.faults.run_checks import one_error_line
from tests.pretrain_runs import NUM_LABELS, make_shards, write_config


@pytest.fixture(scope="module")
def pattern(tmp_path_factory) -> str:
    train = make_shards(tmp_path_factory.mktemp("shards"))[0]
    return str(train / "train-{000000..000002}.tar")


def _config(tmp_path: Path, pattern: str, **data) -> Path:
    return write_config(tmp_path / "run.yaml", pattern, None, tmp_path / "runs", "stream",
                        data={"workers": 0, "sampling": {"q": None}, **data},
                        optim={"warmup_images": 4, "total_images": 8, "decay_steps": 1},
                        checkpoint={"every_images": 8}, tracking={"log_every_steps": 1, "wandb": "disabled"})


def test_pretrains_two_steps_from_a_brace_pattern_with_data_num_labels(tmp_path, pattern):
    pretrain_main(["--config", str(_config(tmp_path, pattern, num_labels=NUM_LABELS))])
    run = tmp_path / "runs" / "stream"
    resolved = (run / "config.yaml").read_text()
    assert f"num_labels: {NUM_LABELS}" in resolved and "train-{000000..000002}.tar" in resolved
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "loss" in row]
    assert steps == [1, 2], rows
    assert (run / "trunk.safetensors").is_file()


def test_without_data_num_labels_the_error_names_the_key(tmp_path, pattern, capsys):
    line = one_error_line(pretrain_main, ["--config", str(_config(tmp_path, pattern))], capsys)
    assert "the number of hashtags is unknown" in line and "set data.num_labels" in line, line


def test_data_num_labels_that_disagrees_with_info_json_is_one_line(tmp_path, pattern, capsys):
    directory = str(Path(pattern).parent)          # the shard directory, whose info.json knows K
    config = write_config(tmp_path / "run.yaml", directory, None, tmp_path / "runs", "mismatch",
                          data={"workers": 0, "num_labels": NUM_LABELS + 1},
                          optim={"warmup_images": 4, "total_images": 8, "decay_steps": 1},
                          tracking={"wandb": "disabled"})
    line = one_error_line(pretrain_main, ["--config", str(config)], capsys)
    assert f"data.num_labels={NUM_LABELS + 1}" in line and f"carries {NUM_LABELS} hashtags" in line, line
    assert not (tmp_path / "runs" / "mismatch" / "checkpoint-latest.pt").exists()
