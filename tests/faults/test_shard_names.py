"""A shard directory from elsewhere cannot run a command or reach outside itself through info.json.

The loader joins each shard name in info.json to the directory and opens it with webdataset's
``gopen``, which runs ``pipe:`` URLs as shell commands. With ``data.train=.``, a name
``pipe:touch marker`` (beside a file of that name, so the "listed but missing" check passes) was
the URL ``pipe:touch marker``, and reading the shards ran it. Names must be plain ``.tar`` file
names in the directory; anything else is one error line naming info.json and the name.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from data.errors import UserError
from data.loader.pipeline import LoaderConfig, create_loader
from data.shards.directory import resolve_shards
from tests.faults.child_process import REPO, run
from tests.shard_factory import Sample, write_shard_dir

COMMAND = "pipe:touch marker"


def _hostile_directory(root: Path, names: list) -> Path:
    """A real shard directory whose info.json also lists ``names`` (each present as a file)."""
    write_shard_dir(root, [[Sample("a", [0]), Sample("b", [1])]], num_labels=2)
    info = json.loads((root / "info.json").read_text())
    for name in names:
        if isinstance(name, str) and "/" not in name:
            (root / name).write_bytes(b"")
        info["shards"]["train"].append({"name": name, "samples": 1})
    (root / "info.json").write_text(json.dumps(info))
    return root


def test_a_pipe_name_in_info_json_is_refused_and_never_run(tmp_path, monkeypatch):
    shards = _hostile_directory(tmp_path / "shards", [COMMAND])
    monkeypatch.chdir(shards)
    with pytest.raises(UserError) as refused:
        loader = create_loader(".", LoaderConfig(batch_size=2, num_workers=0, image_size=16, split="train"), mode="eval",
                               rank=0, world_size=1)
        list(loader)
    message = str(refused.value)
    assert "\n" not in message and "info.json" in message and repr(COMMAND) in message
    assert not (shards / "marker").exists(), "the command in info.json ran"


@pytest.mark.parametrize("name", ["../train-000000.tar", "/etc/passwd", "sub/x.tar", "https://example.com/x.tar",
                                  "-", ".tar", "x.tar; rm -rf x", "train-000001.tar\n", "x", 7, None])
def test_every_name_that_is_not_a_plain_tar_file_name_is_refused(tmp_path, name):
    shards = _hostile_directory(tmp_path / "shards", [name])
    with pytest.raises(UserError, match="not a plain .tar file name") as refused:
        resolve_shards(shards)
    assert "\n" not in str(refused.value)


def test_pretraining_on_such_a_directory_stops_with_one_line_and_runs_nothing(tmp_path):
    shards = _hostile_directory(tmp_path / "shards", [COMMAND])
    done = run([sys.executable, "-m", "pretrain", "--config", str(REPO / "configs" / "pretrain" / "cpu_demo.yaml"),
                "data.train=.", f"run.dir={tmp_path / 'runs'}", "tracking.wandb=disabled"], cwd=shards,
               env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    line = done.assert_one_error_line()
    assert repr(COMMAND) in line and str(Path("info.json")) in line
    assert not (shards / "marker").exists()
